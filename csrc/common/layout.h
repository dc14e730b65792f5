// The memory-format rule every op follows, as nn.Conv2d does: the output and grad_x take
// x's memory format.  x "stored channels_last" is channels_last-contiguous and not also
// NCHW-contiguous (C == 1 or H == W == 1 is both); everything else counts as NCHW.  The
// same rule as fuseops/_layout.py.
#pragma once

#include <ATen/core/Tensor.h>

namespace fuseops {

inline bool stored_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format_of(const at::Tensor& x) {
  return stored_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace fuseops
