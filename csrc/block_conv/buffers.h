// Buffers of the gather / conv / stitch path: the per-thread scratch workspace the
// gathered blocks live in, and the gather of one (row class, col class) pair into it.
#pragma once

#include "block_conv/geometry.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fuseops::block_conv {

// The gathered padded blocks (and so ATen's conv on them) are channels_last whatever x's
// layout: oneDNN's CPU conv is fastest there (depthwise ~10x faster than NCHW), and the
// gather transposes NCHW input for free while it pads (docs/block-conv.md, "channels_last
// buffers").
constexpr auto kBufferFormat = at::MemoryFormat::ChannelsLast;

// Which cached buffer a call's scratch tensor comes from (see workspace() in buffers.cpp).
enum WorkspaceSlot { kGatherX = 0, kGatherGrad = 1, kWorkspaceSlots = 2 };

// A tensor of `sizes` in `format` for use within one op call, backed by the calling
// thread's cached buffer of `slot` when that is free and large enough.
at::Tensor workspace(WorkspaceSlot slot, at::IntArrayRef sizes, const at::TensorOptions& options,
                     at::MemoryFormat format);

// Frees the calling thread's cached buffers (op block_conv2d_release_workspace).
void release_workspace();

// The padded blocks of one (row class, col class) pair of x, gathered into
// (N*nr*nc, C, ph, pw); scratch: from the workspace (valid until the thread's next call),
// else a fresh tensor.
at::Tensor gather_class(const at::Tensor& x, const SizeClass& rows, const SizeClass& cols, int64_t pad_w,
                        at::MemoryFormat format = kBufferFormat, bool scratch = true);


}  // namespace fuseops::block_conv
