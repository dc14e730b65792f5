// Geometry of one block_conv2d / block_pad call: the block bounds along each axis split
// into size classes (blocks of equal size share one gathered batch and one conv call),
// the padded coordinate -> source tables of each class, and the checks the CPU entry
// points run before any kernel indexes with them.
//
// Python validates every argument for users (fuseops/block_conv/api.py); the ops
// torch.ops.fuseops_ext.block_conv2d_* / block_pad_* can still be called directly, so
// this checks what the kernels' indexing relies on: ranks, dtypes and devices that
// match, channel counts consistent with groups, a bias of C_out elements, kernel sizes
// >= 1, stride/dilation >= 1 and padding >= 0, bounds from 0 to the map size and strictly
// increasing, reflect padding smaller than every block, and an output for every block.
#pragma once

#include "common/conv_size.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fuseops::block_conv {

enum class PadMode { kConstant, kReplicate, kReflect };

PadMode parse_mode(const std::string& mode);

// One dimension's blocks of one size: their starts in the input and in the output.
struct SizeClass {
  int64_t size = 0;                 // block pixels
  std::vector<int64_t> in_starts;   // block starts in x
  std::vector<int64_t> out_starts;  // block starts in the output
  std::vector<int64_t> table;       // padded coordinate -> source offset in the block (-1: zero)
};

// Splits one dimension's block bounds into size classes, in order of first appearance.
std::vector<SizeClass> size_classes(const std::vector<int64_t>& bounds, int64_t extent, int64_t kernel,
                                    int64_t stride, int64_t pad, int64_t dilation, PadMode mode, const char* dim);

// values must hold two entries (h, w), each >= minimum.
void check_list(c10::IntArrayRef values, const char* name, int64_t minimum);

struct Geometry {
  std::vector<SizeClass> rows, cols;
  int64_t out_h = 0, out_w = 0;
  PadMode mode = PadMode::kConstant;
};

// The checks and size classes of a block_conv2d call (forward and backward).
Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds, const std::string& padding_mode);

}  // namespace fuseops::block_conv
