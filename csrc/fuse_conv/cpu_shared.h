// What the FuSe CPU forward (forward.cpp) and backward (backward.cpp) share: the CPU
// entry points' input checks, the row helpers of the general per-plane kernels, the
// flat-plane tap loop, the small-plane tap masks, and the choice of the run path.
//
// Templates the hot loops call live here so each kernel TU inlines them.  x, grad_out
// and the weights must be contiguous (NCHW); the Python launcher
// (fuseops/fuse_conv/cpu_impl.py) makes that copy explicitly and docs/fuse_conv_cpu.md
// says when it happens.  All offsets are int64_t.
#pragma once

#include "common/activation.h"
#include "common/conv_size.h"
#include "fuse_conv/geometry.h"
#include "fuse_conv/runs.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fuseops::fuse_conv {

using Act = Activation;

// The CPU entry points' checks: check_geometry's, plus CPU tensors of a dtype the kernels
// are built for.
inline Geometry check_cpu_geometry(const char* fn, const at::Tensor& x, const at::Tensor& weight_row,
                                   const at::Tensor& weight_col, const std::optional<at::Tensor>& bias, bool full,
                                   int64_t stride, int64_t padding, int64_t dilation) {
  TORCH_CHECK(x.device().is_cpu(), fn, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kBFloat16,
              fn, ": x must be float32, float64 or bfloat16, got ", x.scalar_type());
  return check_geometry(fn, x, weight_row, weight_col, bias, full, stride, padding, dilation);
}

// check_cpu_geometry's checks, plus contiguous NCHW tensors: the per-plane kernels index
// by plane, not by stride.  (The channels_last kernels make their own dense copies.)
inline Geometry check_cpu_inputs(const char* fn, const at::Tensor& x, const at::Tensor& weight_row,
                                 const at::Tensor& weight_col, const std::optional<at::Tensor>& bias, bool full,
                                 int64_t stride, int64_t padding, int64_t dilation) {
  const Geometry g = check_cpu_geometry(fn, x, weight_row, weight_col, bias, full, stride, padding, dilation);
  TORCH_CHECK(x.is_contiguous(), fn,
              ": x must be contiguous NCHW (the Python launcher copies other layouts explicitly)");
  TORCH_CHECK(weight_row.is_contiguous() && weight_col.is_contiguous(), fn, ": weights must be contiguous");
  TORCH_CHECK(!bias.has_value() || bias->is_contiguous(), fn, ": bias must be contiguous");
  return g;
}

// 16-bit types accumulate in float; float and double in themselves.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Output columns [lo, hi) whose input column o*s + offset lies in [0, size).
inline void valid_range(int64_t offset, int64_t size, int64_t stride, int64_t out_size, int64_t& lo,
                        int64_t& hi) {
  lo = offset >= 0 ? 0 : ceil_div_nonneg(-offset, stride);
  hi = (size - 1 - offset) < 0 ? 0 : (size - 1 - offset) / stride + 1;
  hi = std::min(hi, out_size);
  lo = std::min(lo, hi);
}

// acc[o] += w * src[o * s] for o in [lo, hi).
template <typename scalar_t, typename acc_t>
inline void axpy_strided(acc_t* __restrict__ acc, const scalar_t* __restrict__ src, acc_t w, int64_t lo,
                         int64_t hi, int64_t s) {
  if (s == 1) {
#pragma omp simd
    for (int64_t o = lo; o < hi; ++o) acc[o] += w * static_cast<acc_t>(src[o]);
  } else {
    for (int64_t o = lo; o < hi; ++o) acc[o] += w * static_cast<acc_t>(src[o * s]);
  }
}

// One output row of the pre-activation into acc[0, W_out): the bias, then every tap.
//   row part: input row x_plane[oh*s], taps along W;
//   column part: input rows oh*s - p + k*d, full width.
template <typename scalar_t, typename acc_t, typename weight_t>
inline void pre_activation_row(acc_t* __restrict__ acc, const scalar_t* __restrict__ x_plane,
                               const weight_t* __restrict__ w, acc_t bias_value, bool row_part,
                               int64_t oh, const Geometry& g) {
  const int64_t wo = g.out_width, s = g.stride;
  for (int64_t o = 0; o < wo; ++o) acc[o] = bias_value;
  if (row_part) {
    const scalar_t* x_row = x_plane + oh * s * g.width;
    for (int64_t k = 0; k < g.kernel; ++k) {
      const int64_t offset = k * g.dilation - g.padding;
      int64_t lo, hi;
      valid_range(offset, g.width, s, wo, lo, hi);
      axpy_strided(acc, x_row + offset, static_cast<acc_t>(w[k]), lo, hi, s);
    }
  } else {
    for (int64_t k = 0; k < g.kernel; ++k) {
      const int64_t ih = oh * s - g.padding + k * g.dilation;
      if (ih < 0 || ih >= g.height) continue;  // the tap sits on a padding row
      axpy_strided(acc, x_plane + ih * g.width, static_cast<acc_t>(w[k]), 0, wo, s);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Flat-plane fast path.  With stride 1 and "same" padding (2p == d(K-1), which is what
// the op's default gives and what every FuSe network uses) an output plane has the
// input plane's shape, so a tap is a fixed offset in the *flattened* plane: +-(k*d - p)
// for the row part, +-(k*d - p)*W for the column part.  One loop over the whole plane
// then replaces H short row loops (a 7x7 plane has 7-element rows), and its body,
// K taps unrolled (KT > 0) and accumulated in registers, is what the compiler
// vectorises.  Positions whose taps fall on padding are recomputed afterwards with
// bounds checks (forward) or read from zero pads of a thread-local padded plane
// (backward).
inline bool flat_plane(const Geometry& g) {
  return g.stride == 1 && g.out_height == g.height && g.out_width == g.width;
}

// store(i, init + sum_k w[k] * src[i + off[k]]) for i in [lo, hi).
template <int KT, typename in_t, typename acc_t, typename Store>
inline void tap_loop(const in_t* __restrict__ src, const int64_t* __restrict__ off, const acc_t* __restrict__ w,
                     int64_t kernel, int64_t lo, int64_t hi, acc_t init, Store&& store) {
  if constexpr (KT > 0) {
    acc_t wl[KT];
    int64_t ol[KT];
    for (int k = 0; k < KT; ++k) {
      wl[k] = w[k];
      ol[k] = off[k];
    }
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      acc_t s = init;
      for (int k = 0; k < KT; ++k) s += wl[k] * static_cast<acc_t>(src[i + ol[k]]);
      store(i, s);
    }
  } else {
    for (int64_t i = lo; i < hi; ++i) {
      acc_t s = init;
      for (int64_t k = 0; k < kernel; ++k) s += w[k] * static_cast<acc_t>(src[i + off[k]]);
      store(i, s);
    }
  }
}


// ---------------------------------------------------------------------------------------
// Small-plane path (flat geometry, planes of at most kSmallPlane elements: 14x14, 7x7).
// There the border work of the flat path (the correction list, the recomputed border
// rows, the separate activation pass, the padded copies in the backward) costs more than
// the plane's useful work.  Instead every tap carries a per-position mask, precomputed
// once per call: tap k of output i is added only where it reads inside the image.  One
// loop over the whole plane then computes bias + taps + activation with no special
// cases.  The masked-off reads still happen (they land in the neighbouring plane, i.e.
// inside x; planes for which they would leave x take the flat path) and are discarded
// with a select, never a multiply by zero, so an inf or NaN next door cannot leak in.
constexpr int64_t kSmallPlane = 256;

inline bool small_plane(const Geometry& g) { return flat_plane(g) && g.height * g.width <= kSmallPlane; }

struct SmallPart {
  int64_t kernel = 0, size = 0, reach = 0;
  std::vector<int64_t> off;
  std::vector<int32_t> fwd_mask;  // [k * HW + i]: output i's tap k reads inside the image
  std::vector<int32_t> bwd_mask;  // [k * HW + j]: input j is read by tap k of a valid output

  SmallPart(const Geometry& g, bool row_part)
      : kernel(g.kernel), size(g.height * g.width), off(g.kernel),
        fwd_mask(g.kernel * g.height * g.width), bwd_mask(g.kernel * g.height * g.width) {
    const int64_t H = g.height, W = g.width, HW = size, K = kernel;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t t = k * g.dilation - g.padding;
      off[k] = row_part ? t : t * W;
      reach = std::max(reach, off[k] < 0 ? -off[k] : off[k]);
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t pos = (row_part ? i % W : i / W) + t, extent = row_part ? W : H;
        fwd_mask[k * HW + i] = pos >= 0 && pos < extent;
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t j = 0; j < HW; ++j) {
        const int64_t i = j - off[k];
        bwd_mask[k * HW + j] = i >= 0 && i < HW ? fwd_mask[k * HW + i] : 0;
      }
    }
  }
  // Whether every (masked) read of this plane, reach elements either side, lies inside x.
  bool reads_inside(const void* plane, const void* begin, const void* end, int64_t elem) const {
    const char* p = static_cast<const char*>(plane);
    return p - reach * elem >= static_cast<const char*>(begin) &&
           p + (size + reach) * elem <= static_cast<const char*>(end);
  }
};


// The run path (fuse_conv/runs.h) takes float32 calls on small stride-1 "same" planes
// when the build has AVX-512; it returns the geometry it needs, or nothing.
inline std::optional<runs::RunGeometry> run_geometry(const at::Tensor& x, const Geometry& g, bool backward) {
  if (x.scalar_type() != at::kFloat || !flat_plane(g)) return std::nullopt;
  const runs::RunGeometry rg{g.batch, g.channels, g.height,  g.width,    g.kernel,
                             g.c_row, g.c_col,    g.padding, g.dilation, g.full};
  if (!runs::run_path_applies(rg, backward)) return std::nullopt;
  return rg;
}

// The op's forward and backward entry signatures: one kernel pair per layout implements them.
using ForwardEntry = at::Tensor(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                                const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding,
                                int64_t dilation, c10::string_view activation);
using BackwardEntry = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
    const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding, int64_t dilation,
    c10::string_view activation);

// The NCHW kernels' entry points (forward.cpp, backward.cpp).  ops.cpp registers the op
// entry that picks these or the channels_last ones by x's layout.
ForwardEntry fuse_conv2d_forward_cpu;
BackwardEntry fuse_conv2d_backward_cpu;

// The channels_last kernels' entry points (channels_last.cpp): output and grad_x in channels_last.
ForwardEntry fuse_conv2d_forward_nhwc;
BackwardEntry fuse_conv2d_backward_nhwc;

}  // namespace fuseops::fuse_conv
