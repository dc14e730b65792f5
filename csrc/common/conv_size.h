// Output size of a convolution along one axis, and the compile-time tap-count dispatch,
// shared by every kernel of the extension (CPU and the CUDA host code).
#pragma once

#include <cstdint>
#include <type_traits>

namespace fuseops {

// ceil(a / b) for a >= 0, b >= 1.
inline int64_t ceil_div_nonneg(int64_t a, int64_t b) { return (a + b - 1) / b; }

// floor((size + 2p - d(k-1) - 1) / s) + 1, with Python's floor division: when the padded
// input is shorter than the dilated kernel the numerator is negative, and C++'s
// truncation would round it up to an output of 1 (for s >= 2) where F.conv2d has none;
// callers reject sizes < 1, so a too-small input never reaches a kernel.
inline int64_t conv_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  const int64_t num = size + 2 * padding - dilation * (kernel - 1) - 1;
  const int64_t q = num >= 0 ? num / stride : -ceil_div_nonneg(-num, stride);
  return q + 1;
}

// Calls f(std::integral_constant<int, K>{}) when kernel is one of Ks, else
// f(std::integral_constant<int, 0>{}) (the kernels' runtime tap count): the tap loops of
// the listed sizes are unrolled and keep their weights in registers.
template <int... Ks, typename F>
void dispatch_tap_count(int64_t kernel, F&& f) {
  const bool listed = ((kernel == Ks ? (f(std::integral_constant<int, Ks>{}), true) : false) || ...);
  if (!listed) f(std::integral_constant<int, 0>{});
}

}  // namespace fuseops
