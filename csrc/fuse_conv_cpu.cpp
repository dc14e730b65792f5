// FuSe (fully separable) convolution, CPU kernels.
//
//   torch.ops.fuseops_ext.fuse_conv2d_forward(x, weight_row, weight_col, bias?, full,
//                                             stride, padding, dilation, activation)
//   torch.ops.fuseops_ext.fuse_conv2d_backward(grad_out, x, weight_row, weight_col, bias?,
//                                              full, stride, padding, dilation, activation)
//       -> (grad_x, grad_weight_row, grad_weight_col, grad_bias)
//
// Geometry (see fuseops/fuse_conv/geometry.py, the one definition this mirrors):
//   * row part: output channels [0, c_row) read x channels [0, c_row) and convolve along W
//     with a 1xK filter, padding (0, p);
//   * column part: output channels [c_row, c_row + c_col) read x channels
//     [col_start, col_start + c_col) and convolve along H with a Kx1 filter, padding (p, 0).
//     col_start is c_row for "half" and 0 for "full".
//   Stride s applies in both directions, dilation d along the conv axis.
//
// Both kernels work one output row at a time in a thread-local accumulator of W_out
// elements, so the forward reads x once and writes the output once (no padded copy, no
// intermediate of output size).  Borders are not branch-checked per element: for each
// tap the range of output columns whose input lies inside the image is computed once
// (row part), and taps that fall on padding rows are skipped (column part), so every
// inner loop is a branch-free, unit- or s-strided loop the compiler vectorises.
//
// x, grad_out and the weights must be contiguous (NCHW); the Python launcher
// (fuseops/fuse_conv/cpu_impl.py) makes that copy explicitly and docs/fuse_conv_cpu.md says
// when it happens.  All offsets are int64_t.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "fuse_conv_cpu_runs.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace fuseops {
namespace {

using Act = runs::RunAct;  // none, relu, relu6, hardswish (fuse_conv_cpu_runs.h)

Act parse_activation(const std::string& name) {
  if (name == "none") return Act::None;
  if (name == "relu") return Act::Relu;
  if (name == "relu6") return Act::Relu6;
  if (name == "hardswish") return Act::Hardswish;
  TORCH_CHECK(false, "fuse_conv2d: activation must be one of 'none', 'relu', 'relu6', 'hardswish', got '",
              name, "'");
  return Act::None;
}

template <Act A, typename T>
inline T activate(T v) {
  if constexpr (A == Act::Relu) {
    return v < T(0) ? T(0) : v;  // a NaN stays NaN, as in torch.relu
  } else if constexpr (A == Act::Relu6) {
    return std::min(std::max(v, T(0)), T(6));
  } else if constexpr (A == Act::Hardswish) {
    return v * std::min(std::max(v + T(3), T(0)), T(6)) / T(6);
  } else {
    return v;
  }
}

// d act(pre) / d pre * g, with PyTorch's choices at the kinks (relu'(0) = 0,
// relu6'(0) = relu6'(6) = 0, aten::hardswish_backward's branches).
template <Act A, typename T>
inline T activate_grad(T g, T pre) {
  if constexpr (A == Act::Relu) {
    return pre > T(0) ? g : T(0);
  } else if constexpr (A == Act::Relu6) {
    return (pre > T(0) && pre < T(6)) ? g : T(0);
  } else if constexpr (A == Act::Hardswish) {
    return pre < T(-3) ? T(0) : (pre <= T(3) ? g * (pre / T(3) + T(0.5)) : g);
  } else {
    return g;
  }
}

// 16-bit types accumulate in float; float and double in themselves.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline int64_t ceil_div_nonneg(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Output columns [lo, hi) whose input column o*s + offset lies in [0, size).
inline void valid_range(int64_t offset, int64_t size, int64_t stride, int64_t out_size, int64_t& lo,
                        int64_t& hi) {
  lo = offset >= 0 ? 0 : ceil_div_nonneg(-offset, stride);
  hi = (size - 1 - offset) < 0 ? 0 : (size - 1 - offset) / stride + 1;
  hi = std::min(hi, out_size);
  lo = std::min(lo, hi);
}

struct Geometry {
  int64_t batch, channels, height, width, kernel;
  int64_t c_row, c_col, col_start, stride, padding, dilation, out_height, out_width;
  bool full;
  int64_t out_channels() const { return c_row + c_col; }
};

int64_t conv_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  // floor division as Python's //, numerator may be negative for tiny inputs
  const int64_t num = size + 2 * padding - dilation * (kernel - 1) - 1;
  const int64_t q = num >= 0 ? num / stride : -ceil_div_nonneg(-num, stride);
  return q + 1;
}

Geometry check_inputs(const char* fn, const at::Tensor& x, const at::Tensor& weight_row,
                      const at::Tensor& weight_col, const c10::optional<at::Tensor>& bias, bool full,
                      int64_t stride, int64_t padding, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, fn, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight_row.dim() == 4 && weight_row.size(1) == 1 && weight_row.size(2) == 1, fn,
              ": weight_row must have shape (C_r, 1, 1, K), got ", weight_row.sizes());
  const int64_t kernel = weight_row.size(3);
  TORCH_CHECK(kernel >= 1, fn, ": K must be >= 1, got ", kernel);
  TORCH_CHECK(weight_col.dim() == 4 && weight_col.size(1) == 1 && weight_col.size(2) == kernel &&
                  weight_col.size(3) == 1,
              fn, ": weight_col must have shape (C_c, 1, ", kernel, ", 1), got ", weight_col.sizes());
  TORCH_CHECK(x.device().is_cpu(), fn, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                  x.scalar_type() == at::kBFloat16,
              fn, ": x must be float32, float64 or bfloat16, got ", x.scalar_type());
  for (const at::Tensor* t : {&weight_row, &weight_col}) {
    TORCH_CHECK(t->device() == x.device() && t->scalar_type() == x.scalar_type(), fn,
                ": weights must match x's dtype ", x.scalar_type(), " and device ", x.device(), ", got ",
                t->scalar_type(), " on ", t->device());
    TORCH_CHECK(t->is_contiguous(), fn, ": weights must be contiguous");
  }
  TORCH_CHECK(x.is_contiguous(), fn,
              ": x must be contiguous NCHW (the Python launcher copies other layouts explicitly)");
  TORCH_CHECK(stride >= 1, fn, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation >= 1, fn, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(padding >= 0, fn, ": padding must be >= 0, got ", padding);

  Geometry g;
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.kernel = kernel;
  g.c_row = weight_row.size(0);
  g.c_col = weight_col.size(0);
  g.col_start = full ? 0 : g.c_row;
  g.full = full;
  g.stride = stride;
  g.padding = padding;
  g.dilation = dilation;
  if (full) {
    TORCH_CHECK(g.c_row == g.channels && g.c_col == g.channels, fn,
                ": full variant needs C filters in each weight, got ", g.c_row, " and ", g.c_col, " for C=",
                g.channels);
  } else {
    TORCH_CHECK(g.c_row + g.c_col == g.channels, fn, ": half variant needs C_r + C_c == C, got ", g.c_row,
                " + ", g.c_col, " for C=", g.channels);
  }
  const int64_t row_h = conv_out_size(g.height, 1, stride, 0, 1);
  const int64_t row_w = conv_out_size(g.width, kernel, stride, padding, dilation);
  const int64_t col_h = conv_out_size(g.height, kernel, stride, padding, dilation);
  const int64_t col_w = conv_out_size(g.width, 1, stride, 0, 1);
  if (g.c_row > 0 && g.c_col > 0) {
    TORCH_CHECK(row_h == col_h && row_w == col_w, fn, ": the row part's output (", row_h, ", ", row_w,
                ") and the column part's output (", col_h, ", ", col_w, ") differ in size");
  }
  g.out_height = g.c_row > 0 || g.c_col == 0 ? row_h : col_h;
  g.out_width = g.c_row > 0 || g.c_col == 0 ? row_w : col_w;
  TORCH_CHECK(g.out_height > 0 && g.out_width > 0, fn, ": input too small, output would be ", g.out_height,
              "x", g.out_width);
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == g.out_channels(), fn, ": bias must have shape (",
                g.out_channels(), ",), got ", b.sizes());
    TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(), fn,
                ": bias must match x's dtype and device");
    TORCH_CHECK(b.is_contiguous(), fn, ": bias must be contiguous");
  }
  return g;
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

// The flat layout of one part (row or column), shared by all its planes in a call:
// tap offsets and the flat range [lo, hi) whose taps all read inside the plane.
// Column part: the positions outside [lo, hi) are whole border rows, recomputed with
// row loops over the in-image taps.  Row part: inside [lo, hi) a tap that left its row
// read the neighbouring row instead of a zero pad, so that term is subtracted, and the
// at most 2p positions outside [lo, hi) get their in-image taps added.  These
// corrections (2p per row) are precomputed once per call as (index, source, signed
// tap); each touches a different index or is adjacent to one, so they do not form a
// long store-to-load dependency chain.
struct TapFix {
  int64_t index, source, signed_tap;  // acc[index] += signed_w[signed_tap] * x[source]
};

struct FlatPart {
  bool row_part;
  std::vector<int64_t> off;
  int64_t lo = 0, hi = 0;
  std::vector<TapFix> fixes;

  FlatPart(const Geometry& g, bool row) : row_part(row), off(g.kernel) {
    const int64_t H = g.height, W = g.width, HW = H * W, K = g.kernel;
    const int64_t unit = row_part ? 1 : W;
    for (int64_t k = 0; k < K; ++k) off[k] = (k * g.dilation - g.padding) * unit;
    lo = std::min(HW, std::max<int64_t>(0, -off[0]));
    hi = std::max(lo, HW - std::max<int64_t>(0, off[K - 1]));
    if (!row_part) return;
    for (int64_t i = 0; i < HW; ++i) {
      const int64_t j = i % W;
      const bool inside = i >= lo && i < hi;
      for (int64_t k = 0; k < K; ++k) {
        const bool valid = j + off[k] >= 0 && j + off[k] < W;
        if (inside && !valid) fixes.push_back({i, i + off[k], K + k});  // subtract
        if (!inside && valid) fixes.push_back({i, i + off[k], k});      // add
      }
    }
  }
};

template <int KT, typename scalar_t, Act A>
void forward_plane_flat(scalar_t* __restrict__ out, acc_type<scalar_t>* __restrict__ acc,
                        const scalar_t* __restrict__ x, const acc_type<scalar_t>* signed_w,
                        acc_type<scalar_t> bias, const FlatPart& part, const Geometry& g) {
  // acc: a plane-sized accumulator, which is `out` itself when scalar_t == acc_t.
  // signed_w: the K weights, then their negatives.
  using acc_t = acc_type<scalar_t>;
  const int64_t lo = part.lo, hi = part.hi, plane_size = g.height * g.width, W = g.width;
  tap_loop<KT>(x, part.off.data(), signed_w, g.kernel, lo, hi, bias, [&](int64_t i, acc_t s) { acc[i] = s; });
  if (part.row_part) {
    for (int64_t i = 0; i < lo; ++i) acc[i] = bias;
    for (int64_t i = hi; i < plane_size; ++i) acc[i] = bias;
    for (const TapFix& f : part.fixes) acc[f.index] += signed_w[f.signed_tap] * static_cast<acc_t>(x[f.source]);
  } else {
    for (int64_t r = 0; r * W < lo; ++r) pre_activation_row(acc + r * W, x, signed_w, bias, false, r, g);
    for (int64_t r = hi / W; r < g.height; ++r) pre_activation_row(acc + r * W, x, signed_w, bias, false, r, g);
  }
  // Epilogue: activation and conversion, one vectorised pass over the (cached) plane.
#pragma omp simd
  for (int64_t i = 0; i < plane_size; ++i) out[i] = static_cast<scalar_t>(activate<A>(acc[i]));
}

// Thread-local padded planes for one part's backward.  Row part: p zero columns each
// side (row pitch W + 2p); column part: p zero rows above and below.  Pads (and a slack
// of p elements at each end) are zeroed once and never written, so every tap in the
// flat loops reads either real data or a zero.
template <typename acc_t>
struct PaddedPlanes {
  int64_t pad_w, pad_h, pitch, unit, slack, size;
  std::vector<acc_t> x_buf, g_buf, t_buf;
  PaddedPlanes(const Geometry& g, bool row_part) {
    pad_w = row_part ? g.padding : 0;
    pad_h = row_part ? 0 : g.padding;
    pitch = g.width + 2 * pad_w;
    unit = row_part ? 1 : pitch;
    slack = g.padding;
    size = (g.height + 2 * pad_h) * pitch;
    x_buf.assign(size + 2 * slack, acc_t(0));
    g_buf.assign(size + 2 * slack, acc_t(0));
    t_buf.assign(size + 2 * slack, acc_t(0));
  }
  acc_t* x() { return x_buf.data() + slack; }
  acc_t* grad() { return g_buf.data() + slack; }
  acc_t* tmp() { return t_buf.data() + slack; }
  int64_t real(int64_t r) const { return (r + pad_h) * pitch + pad_w; }  // row r, column 0
};

// One part of one plane's backward on the flat fast path; see backward_part for what
// it accumulates.
template <int KT, typename scalar_t, Act A>
void backward_part_flat(acc_type<scalar_t>* __restrict__ gx, acc_type<scalar_t>* __restrict__ partial,
                        PaddedPlanes<acc_type<scalar_t>>& pl, const scalar_t* __restrict__ x_plane,
                        const scalar_t* __restrict__ go_plane, const acc_type<scalar_t>* w,
                        acc_type<scalar_t> bias, const Geometry& g, int64_t* off) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = g.height, W = g.width, K = g.kernel;
  acc_t* xp = pl.x();
  acc_t* gp = pl.grad();
  acc_t* tp = pl.tmp();
  for (int64_t k = 0; k < K; ++k) off[k] = (k * g.dilation - g.padding) * pl.unit;
  // Copy x and grad_out into the padded planes' real positions (converting 16-bit types once).
  for (int64_t r = 0; r < H; ++r) {
    acc_t* xr = xp + pl.real(r);
    acc_t* gr = gp + pl.real(r);
    const scalar_t* xs = x_plane + r * W;
    const scalar_t* gs = go_plane + r * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      xr[j] = static_cast<acc_t>(xs[j]);
      gr[j] = static_cast<acc_t>(gs[j]);
    }
  }
  // The flat domain: the padded rows that hold real rows (pad columns included; their
  // grad is zero).
  const int64_t lo = pl.real(0) - pl.pad_w, hi = lo + H * pl.pitch;
  if constexpr (A != Act::None) {
    // grad_pre = act'(pre) * grad_out, recomputing pre in registers (never stored).
    tap_loop<KT>(xp, off, w, K, lo, hi, bias, [&](int64_t i, acc_t pre) { gp[i] = activate_grad<A>(gp[i], pre); });
  }
  acc_t bias_sum = 0;
#pragma omp simd reduction(+ : bias_sum)
  for (int64_t i = lo; i < hi; ++i) bias_sum += gp[i];
  partial[K] = bias_sum;
  for (int64_t k = 0; k < K; ++k) {
    acc_t tap_sum = 0;
    const acc_t* xs = xp + off[k];
#pragma omp simd reduction(+ : tap_sum)
    for (int64_t i = lo; i < hi; ++i) tap_sum += gp[i] * xs[i];
    partial[k] = tap_sum;
  }
  // grad_x = the transposed conv: taps mirrored (offset -off[K-1-k] with weight w[K-1-k]).
  int64_t mirrored_off[64];
  acc_t mirrored_w[64];
  const bool small = K <= 64;
  if (small) {
    for (int64_t k = 0; k < K; ++k) {
      mirrored_off[k] = -off[K - 1 - k];
      mirrored_w[k] = w[K - 1 - k];
    }
    tap_loop<KT>(gp, mirrored_off, mirrored_w, K, lo, hi, acc_t(0), [&](int64_t i, acc_t s) { tp[i] = s; });
  } else {
    for (int64_t i = lo; i < hi; ++i) {
      acc_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += w[k] * gp[i - off[k]];
      tp[i] = s;
    }
  }
  for (int64_t r = 0; r < H; ++r) {
    const acc_t* tr = tp + pl.real(r);
    acc_t* gr = gx + r * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) gr[j] += tr[j];
  }
}

template <typename F>
void dispatch_kernel_size(int64_t kernel, F&& f) {
  switch (kernel) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 9: f(std::integral_constant<int, 9>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;  // any other K: runtime tap count
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

// out[i] = act(bias + sum_k mask_k[i] ? w[k] * x[i + off[k]] : 0) over the whole plane.
template <int KT, typename scalar_t, Act A>
inline void forward_plane_small(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                const acc_type<scalar_t>* w, acc_type<scalar_t> bias, const SmallPart& part) {
  using acc_t = acc_type<scalar_t>;
  const int64_t HW = part.size;
  if constexpr (KT > 0) {
    acc_t wl[KT];
    int64_t ol[KT];
    const int32_t* ml[KT];
    for (int k = 0; k < KT; ++k) {
      wl[k] = w[k];
      ol[k] = part.off[k];
      ml[k] = part.fwd_mask.data() + k * HW;
    }
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) {
      acc_t s = bias;
      for (int k = 0; k < KT; ++k) {
        const acc_t v = static_cast<acc_t>(x[i + ol[k]]);
        s += wl[k] * (ml[k][i] ? v : acc_t(0));
      }
      out[i] = static_cast<scalar_t>(activate<A>(s));
    }
  } else {
    const int64_t K = part.kernel;
    for (int64_t i = 0; i < HW; ++i) {
      acc_t s = bias;
      for (int64_t k = 0; k < K; ++k) {
        const acc_t v = static_cast<acc_t>(x[i + part.off[k]]);
        s += w[k] * (part.fwd_mask[k * HW + i] ? v : acc_t(0));
      }
      out[i] = static_cast<scalar_t>(activate<A>(s));
    }
  }
}

// The full variant on the small-plane path: both output planes of one input plane in
// one loop, so the plane's x values are loaded once for the two parts.
template <int KT, typename scalar_t, Act A>
inline void forward_pair_small(scalar_t* __restrict__ out_row, scalar_t* __restrict__ out_col,
                               const scalar_t* __restrict__ x, const acc_type<scalar_t>* w_row,
                               const acc_type<scalar_t>* w_col, acc_type<scalar_t> bias_row,
                               acc_type<scalar_t> bias_col, const SmallPart& row, const SmallPart& col) {
  using acc_t = acc_type<scalar_t>;
  const int64_t HW = row.size;
  acc_t wr[KT], wc[KT];
  int64_t orr[KT], oc[KT];
  const int32_t* mr[KT];
  const int32_t* mc[KT];
  for (int k = 0; k < KT; ++k) {
    wr[k] = w_row[k];
    wc[k] = w_col[k];
    orr[k] = row.off[k];
    oc[k] = col.off[k];
    mr[k] = row.fwd_mask.data() + k * HW;
    mc[k] = col.fwd_mask.data() + k * HW;
  }
#pragma omp simd
  for (int64_t i = 0; i < HW; ++i) {
    acc_t sr = bias_row, sc = bias_col;
    for (int k = 0; k < KT; ++k) {
      const acc_t vr = static_cast<acc_t>(x[i + orr[k]]);
      const acc_t vc = static_cast<acc_t>(x[i + oc[k]]);
      sr += wr[k] * (mr[k][i] ? vr : acc_t(0));
      sc += wc[k] * (mc[k][i] ? vc : acc_t(0));
    }
    out_row[i] = static_cast<scalar_t>(activate<A>(sr));
    out_col[i] = static_cast<scalar_t>(activate<A>(sc));
  }
}

// One part of one plane's backward on the small-plane path.  gp: a thread-local buffer
// of HW + 2 * reach elements (pointer at its centre) for grad_pre; the masks keep every
// read of it that matters inside [0, HW).  Writes (accumulate == false) or adds the
// part's grad_x into gx and sets partial[0..K] to the tap and bias sums.
template <int KT, typename scalar_t, Act A>
void backward_plane_small(acc_type<scalar_t>* __restrict__ gx, bool accumulate,
                          acc_type<scalar_t>* __restrict__ partial, acc_type<scalar_t>* __restrict__ gp,
                          const scalar_t* __restrict__ x, const scalar_t* __restrict__ go,
                          const acc_type<scalar_t>* w, acc_type<scalar_t> bias, const SmallPart& part) {
  using acc_t = acc_type<scalar_t>;
  constexpr int KN = KT > 0 ? KT : 1;
  const int64_t HW = part.size, K = KT > 0 ? KT : part.kernel;
  if constexpr (KT == 0) {
    // Any other K: plain loops with a runtime tap count.
    acc_t bsum = 0;
    for (int64_t i = 0; i < HW; ++i) {
      acc_t g = static_cast<acc_t>(go[i]);
      if constexpr (A != Act::None) {
        acc_t s = bias;
        for (int64_t k = 0; k < K; ++k)
          s += w[k] * (part.fwd_mask[k * HW + i] ? static_cast<acc_t>(x[i + part.off[k]]) : acc_t(0));
        g = activate_grad<A>(g, s);
      }
      gp[i] = g;
      bsum += g;
    }
    partial[K] = bsum;
    for (int64_t k = 0; k < K; ++k) {
      acc_t t = 0;
      for (int64_t i = 0; i < HW; ++i)
        t += gp[i] * (part.fwd_mask[k * HW + i] ? static_cast<acc_t>(x[i + part.off[k]]) : acc_t(0));
      partial[k] = t;
    }
    for (int64_t j = 0; j < HW; ++j) {
      acc_t s = accumulate ? gx[j] : acc_t(0);
      for (int64_t k = 0; k < K; ++k) s += w[k] * (part.bwd_mask[k * HW + j] ? gp[j - part.off[k]] : acc_t(0));
      gx[j] = s;
    }
  } else {
    acc_t wl[KN];
    int64_t ol[KN];
    const int32_t* fm[KN];
    const int32_t* bm[KN];
    for (int k = 0; k < KT; ++k) {
      wl[k] = w[k];
      ol[k] = part.off[k];
      fm[k] = part.fwd_mask.data() + k * HW;
      bm[k] = part.bwd_mask.data() + k * HW;
    }
    if constexpr (KT <= 5) {
      // K <= 5: one pass gives grad_pre = act'(pre) * grad_out (pre recomputed in
      // registers), the bias sum and every tap sum, each tap's masked x value loaded once.
      acc_t bsum = 0, t0 = 0, t1 = 0, t2 = 0, t3 = 0, t4 = 0;
#pragma omp simd reduction(+ : bsum, t0, t1, t2, t3, t4)
      for (int64_t i = 0; i < HW; ++i) {
        acc_t v[KN];
        acc_t s = bias;
        for (int k = 0; k < KT; ++k) {
          const acc_t xv = static_cast<acc_t>(x[i + ol[k]]);
          v[k] = fm[k][i] ? xv : acc_t(0);
          s += wl[k] * v[k];
        }
        acc_t g = static_cast<acc_t>(go[i]);
        if constexpr (A != Act::None) g = activate_grad<A>(g, s);
        gp[i] = g;
        bsum += g;
        t0 += g * v[0];
        if constexpr (KT > 1) {
          t1 += g * v[1];
          t2 += g * v[2];
        }
        if constexpr (KT > 3) {
          t3 += g * v[3];
          t4 += g * v[4];
        }
      }
      const acc_t sums[5] = {t0, t1, t2, t3, t4};
      for (int k = 0; k < KT; ++k) partial[k] = sums[k];
      partial[KT] = bsum;
    } else {
    // grad_pre = act'(pre) * grad_out (pre recomputed in registers) and the bias sum.
    acc_t bsum = 0;
#pragma omp simd reduction(+ : bsum)
    for (int64_t i = 0; i < HW; ++i) {
      acc_t g = static_cast<acc_t>(go[i]);
      if constexpr (A != Act::None) {
        acc_t s = bias;
        for (int k = 0; k < KT; ++k) {
          const acc_t v = static_cast<acc_t>(x[i + ol[k]]);
          s += wl[k] * (fm[k][i] ? v : acc_t(0));
        }
        g = activate_grad<A>(g, s);
      }
      gp[i] = g;
      bsum += g;
    }
    partial[KT] = bsum;
    for (int k = 0; k < KT; ++k) {
      acc_t t = 0;
      const scalar_t* xs = x + ol[k];
      const int32_t* m = fm[k];
#pragma omp simd reduction(+ : t)
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t v = static_cast<acc_t>(xs[i]);
        t += gp[i] * (m[i] ? v : acc_t(0));
      }
      partial[k] = t;
    }
    }
    // grad_x: the transposed conv, input j collects tap k of output j - off[k].
#pragma omp simd
    for (int64_t j = 0; j < HW; ++j) {
      acc_t s = accumulate ? gx[j] : acc_t(0);
      for (int k = 0; k < KT; ++k) {
        const acc_t v = gp[j - ol[k]];
        s += wl[k] * (bm[k][j] ? v : acc_t(0));
      }
      gx[j] = s;
    }
  }
}

template <typename scalar_t, Act A>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                    const c10::optional<at::Tensor>& bias, at::Tensor& out, const Geometry& g) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* x_data = x.data_ptr<scalar_t>();
  const scalar_t* wr = weight_row.data_ptr<scalar_t>();
  const scalar_t* wc = weight_col.data_ptr<scalar_t>();
  const scalar_t* b = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
  scalar_t* out_data = out.data_ptr<scalar_t>();
  const int64_t c_out = g.out_channels();
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_height * g.out_width;
  // Tasks are *input* planes (n, ci), each producing its one (half) or two (full)
  // output planes back to back, so the full variant's second part reads x from cache:
  // x is read from memory once.
  const int64_t planes = g.batch * g.channels;
  // Enough planes per task that scheduling is negligible.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, out_plane));
  const bool flat = flat_plane(g);
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;

  // Calls part(n, ci, co, row_part, w) for each output plane that input plane (n, ci) feeds.
  auto for_each_part = [&](int64_t plane, auto&& part) {
    const int64_t n = plane / g.channels, ci = plane % g.channels;
    if (ci < g.c_row) part(n, ci, ci, true, wr + ci * g.kernel);
    if (ci >= g.col_start && ci < g.col_start + g.c_col) {
      const int64_t j = ci - g.col_start;
      part(n, ci, g.c_row + j, false, wc + j * g.kernel);
    }
  };

  if (flat) {
    const FlatPart row_layout(g, true), col_layout(g, false);
    const bool small = small_plane(g);
    std::unique_ptr<SmallPart> row_small, col_small;
    if (small) {
      row_small = std::make_unique<SmallPart>(g, true);
      col_small = std::make_unique<SmallPart>(g, false);
    }
    const scalar_t* x_end = x_data + x.numel();
    dispatch_kernel_size(g.kernel, [&](auto kt) {
      at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> plane_buffer(direct ? 0 : out_plane), w_buffer(2 * g.kernel);
        std::vector<acc_t> w_col_buffer(g.kernel);
        for (int64_t plane = begin; plane < end; ++plane) {
          if constexpr (decltype(kt)::value > 0) {
            if (small && g.c_row == g.channels && g.c_col == g.channels) {
              // Full variant: both parts of this input plane in one loop.
              const int64_t n = plane / g.channels, ci = plane % g.channels;
              const scalar_t* x_plane = x_data + plane * in_plane;
              if (row_small->reads_inside(x_plane, x_data, x_end, sizeof(scalar_t)) &&
                  col_small->reads_inside(x_plane, x_data, x_end, sizeof(scalar_t))) {
                for (int64_t k = 0; k < g.kernel; ++k) {
                  w_buffer[k] = static_cast<acc_t>(wr[ci * g.kernel + k]);
                  w_col_buffer[k] = static_cast<acc_t>(wc[ci * g.kernel + k]);
                }
                const int64_t co_col = g.c_row + ci;
                forward_pair_small<decltype(kt)::value, scalar_t, A>(
                    out_data + (n * c_out + ci) * out_plane, out_data + (n * c_out + co_col) * out_plane, x_plane,
                    w_buffer.data(), w_col_buffer.data(), b ? static_cast<acc_t>(b[ci]) : acc_t(0),
                    b ? static_cast<acc_t>(b[co_col]) : acc_t(0), *row_small, *col_small);
                continue;
              }
            }
          }
          for_each_part(plane, [&](int64_t n, int64_t ci, int64_t co, bool row_part, const scalar_t* w) {
            for (int64_t k = 0; k < g.kernel; ++k) {
              w_buffer[k] = static_cast<acc_t>(w[k]);
              w_buffer[g.kernel + k] = -w_buffer[k];
            }
            scalar_t* out_plane_ptr = out_data + (n * c_out + co) * out_plane;
            const scalar_t* x_plane = x_data + (n * g.channels + ci) * in_plane;
            const acc_t bias_value = b ? static_cast<acc_t>(b[co]) : acc_t(0);
            if (small) {
              const SmallPart& sp = row_part ? *row_small : *col_small;
              if (sp.reads_inside(x_plane, x_data, x_end, sizeof(scalar_t))) {
                forward_plane_small<decltype(kt)::value, scalar_t, A>(out_plane_ptr, x_plane, w_buffer.data(),
                                                                      bias_value, sp);
                return;
              }
            }
            acc_t* acc_plane = direct ? reinterpret_cast<acc_t*>(out_plane_ptr) : plane_buffer.data();
            forward_plane_flat<decltype(kt)::value, scalar_t, A>(
                out_plane_ptr, acc_plane, x_data + (n * g.channels + ci) * in_plane, w_buffer.data(),
                b ? static_cast<acc_t>(b[co]) : acc_t(0), row_part ? row_layout : col_layout, g);
          });
        }
      });
    });
    return;
  }
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_buffer(g.out_width);
    acc_t* acc = acc_buffer.data();
    for (int64_t plane = begin; plane < end; ++plane) {
      for_each_part(plane, [&](int64_t n, int64_t ci, int64_t co, bool row_part, const scalar_t* w) {
        const scalar_t* x_plane = x_data + (n * g.channels + ci) * in_plane;
        scalar_t* out_plane_ptr = out_data + (n * c_out + co) * out_plane;
        const acc_t bias_value = b ? static_cast<acc_t>(b[co]) : acc_t(0);
        for (int64_t oh = 0; oh < g.out_height; ++oh) {
          pre_activation_row(acc, x_plane, w, bias_value, row_part, oh, g);
          scalar_t* out_row = out_plane_ptr + oh * g.out_width;
#pragma omp simd
          for (int64_t o = 0; o < g.out_width; ++o) out_row[o] = static_cast<scalar_t>(activate<A>(acc[o]));
        }
      });
    }
  });
}

// One part (row or column) of one (n, c) input plane: accumulates the plane's grad_x
// into gx (H*W, acc_t), and returns the weight-tap and bias sums in partial[0..K].
template <typename scalar_t, Act A>
void backward_part(acc_type<scalar_t>* __restrict__ gx, acc_type<scalar_t>* __restrict__ partial,
                   acc_type<scalar_t>* __restrict__ pre, acc_type<scalar_t>* __restrict__ grad_pre,
                   const scalar_t* __restrict__ x_plane, const scalar_t* __restrict__ go_plane,
                   const scalar_t* __restrict__ w, acc_type<scalar_t> bias_value, bool row_part,
                   const Geometry& g) {
  using acc_t = acc_type<scalar_t>;
  const int64_t wo = g.out_width, s = g.stride, width = g.width;
  for (int64_t k = 0; k <= g.kernel; ++k) partial[k] = acc_t(0);
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    const scalar_t* go_row = go_plane + oh * wo;
    if constexpr (A == Act::None) {
      for (int64_t o = 0; o < wo; ++o) grad_pre[o] = static_cast<acc_t>(go_row[o]);
    } else {
      // Recompute this row's pre-activation (L1-resident) instead of saving it in the forward.
      pre_activation_row(pre, x_plane, w, bias_value, row_part, oh, g);
#pragma omp simd
      for (int64_t o = 0; o < wo; ++o) grad_pre[o] = activate_grad<A>(static_cast<acc_t>(go_row[o]), pre[o]);
    }
    acc_t bias_sum = 0;
#pragma omp simd reduction(+ : bias_sum)
    for (int64_t o = 0; o < wo; ++o) bias_sum += grad_pre[o];
    partial[g.kernel] += bias_sum;

    for (int64_t k = 0; k < g.kernel; ++k) {
      const acc_t wk = static_cast<acc_t>(w[k]);
      const scalar_t* src;
      acc_t* dst;
      int64_t lo, hi;
      if (row_part) {
        const int64_t offset = k * g.dilation - g.padding;
        valid_range(offset, width, s, wo, lo, hi);
        src = x_plane + oh * s * width + offset;
        dst = gx + oh * s * width + offset;
      } else {
        const int64_t ih = oh * s - g.padding + k * g.dilation;
        if (ih < 0 || ih >= g.height) continue;
        lo = 0;
        hi = wo;
        src = x_plane + ih * width;
        dst = gx + ih * width;
      }
      acc_t tap_sum = 0;
      if (s == 1) {
#pragma omp simd reduction(+ : tap_sum)
        for (int64_t o = lo; o < hi; ++o) {
          tap_sum += grad_pre[o] * static_cast<acc_t>(src[o]);
          dst[o] += wk * grad_pre[o];
        }
      } else {
        for (int64_t o = lo; o < hi; ++o) {
          tap_sum += grad_pre[o] * static_cast<acc_t>(src[o * s]);
          dst[o * s] += wk * grad_pre[o];
        }
      }
      partial[k] += tap_sum;
    }
  }
}

template <typename scalar_t, Act A>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight_row,
                     const at::Tensor& weight_col, const c10::optional<at::Tensor>& bias,
                     at::Tensor& grad_x, at::Tensor& grad_wr, at::Tensor& grad_wc, at::Tensor& grad_b,
                     const Geometry& g) {
  using acc_t = acc_type<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
  const scalar_t* x_data = x.data_ptr<scalar_t>();
  const scalar_t* go_data = grad_out.data_ptr<scalar_t>();
  const scalar_t* wr = weight_row.data_ptr<scalar_t>();
  const scalar_t* wc = weight_col.data_ptr<scalar_t>();
  const scalar_t* b = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
  scalar_t* gx_data = grad_x.data_ptr<scalar_t>();
  const int64_t c_out = g.out_channels(), kernel = g.kernel;
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_height * g.out_width;
  // partials[(n * c_out + co) * (K + 1) + k]: tap k's (k < K) and the bias's (k = K)
  // sum over one plane.  Reduced over n below in a fixed order, so the weight and bias
  // gradients do not depend on the thread count or the scheduling.
  std::vector<acc_t> partials(static_cast<size_t>(g.batch * c_out * (kernel + 1)), acc_t(0));
  const int64_t planes = g.batch * g.channels;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, in_plane));
  const bool flat = flat_plane(g);
  const bool small = small_plane(g);
  std::unique_ptr<SmallPart> row_small, col_small;
  int64_t small_reach = 0;
  if (small) {
    row_small = std::make_unique<SmallPart>(g, true);
    col_small = std::make_unique<SmallPart>(g, false);
    small_reach = std::max(row_small->reach, col_small->reach);
  }
  const scalar_t* x_end = x_data + x.numel();

  // Tasks are *input* planes (n, ci): in the full variant both parts' grad_x land in the
  // same plane, and one task owns it, so no two threads write the same grad_x element.
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> pre(g.out_width), grad_pre(g.out_width), w_buffer(kernel);
    std::vector<acc_t> gx_buffer(direct ? 0 : in_plane);
    std::vector<int64_t> offsets(kernel);
    std::unique_ptr<PaddedPlanes<acc_t>> row_planes, col_planes;
    if (flat && g.c_row > 0 && begin < end) row_planes = std::make_unique<PaddedPlanes<acc_t>>(g, true);
    if (flat && g.c_col > 0 && begin < end) col_planes = std::make_unique<PaddedPlanes<acc_t>>(g, false);
    std::vector<acc_t> gp_buffer(small ? in_plane + 2 * small_reach : 0, acc_t(0));
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.channels, ci = plane % g.channels;
      acc_t* gx = direct ? reinterpret_cast<acc_t*>(gx_data + plane * in_plane) : gx_buffer.data();
      const scalar_t* x_plane = x_data + plane * in_plane;
      const bool has_row = ci < g.c_row, has_col = ci >= g.col_start && ci < g.col_start + g.c_col;
      if (small && (has_row || has_col) &&
          row_small->reads_inside(x_plane, x_data, x_end, sizeof(scalar_t)) &&
          col_small->reads_inside(x_plane, x_data, x_end, sizeof(scalar_t))) {
        auto run_part = [&](bool accumulate, int64_t co, const scalar_t* w, const SmallPart& sp) {
          for (int64_t k = 0; k < kernel; ++k) w_buffer[k] = static_cast<acc_t>(w[k]);
          dispatch_kernel_size(kernel, [&](auto kt) {
            backward_plane_small<decltype(kt)::value, scalar_t, A>(
                gx, accumulate, partials.data() + (n * c_out + co) * (kernel + 1), gp_buffer.data() + small_reach,
                x_plane, go_data + (n * c_out + co) * out_plane, w_buffer.data(),
                b ? static_cast<acc_t>(b[co]) : acc_t(0), sp);
          });
        };
        if (has_row) run_part(false, ci, wr + ci * kernel, *row_small);
        if (has_col) {
          const int64_t j = ci - g.col_start;
          run_part(has_row, g.c_row + j, wc + j * kernel, *col_small);
        }
        if constexpr (!direct) {
          scalar_t* dst = gx_data + plane * in_plane;
          for (int64_t i = 0; i < in_plane; ++i) dst[i] = static_cast<scalar_t>(gx[i]);
        }
        continue;
      }
      std::fill(gx, gx + in_plane, acc_t(0));
      if (flat) {
        auto run_part = [&](bool row_part, int64_t co, const scalar_t* w, PaddedPlanes<acc_t>& planes_buf) {
          for (int64_t k = 0; k < kernel; ++k) w_buffer[k] = static_cast<acc_t>(w[k]);
          dispatch_kernel_size(kernel, [&](auto kt) {
            backward_part_flat<decltype(kt)::value, scalar_t, A>(
                gx, partials.data() + (n * c_out + co) * (kernel + 1), planes_buf, x_plane,
                go_data + (n * c_out + co) * out_plane, w_buffer.data(), b ? static_cast<acc_t>(b[co]) : acc_t(0),
                g, offsets.data());
          });
        };
        if (ci < g.c_row) run_part(true, ci, wr + ci * kernel, *row_planes);
        if (ci >= g.col_start && ci < g.col_start + g.c_col) {
          const int64_t j = ci - g.col_start;
          run_part(false, g.c_row + j, wc + j * kernel, *col_planes);
        }
      } else {
      if (ci < g.c_row) {
        const int64_t co = ci;
        backward_part<scalar_t, A>(gx, partials.data() + (n * c_out + co) * (kernel + 1), pre.data(),
                                   grad_pre.data(), x_plane, go_data + (n * c_out + co) * out_plane,
                                   wr + ci * kernel, b ? static_cast<acc_t>(b[co]) : acc_t(0), true, g);
      }
      if (ci >= g.col_start && ci < g.col_start + g.c_col) {
        const int64_t j = ci - g.col_start, co = g.c_row + j;
        backward_part<scalar_t, A>(gx, partials.data() + (n * c_out + co) * (kernel + 1), pre.data(),
                                   grad_pre.data(), x_plane, go_data + (n * c_out + co) * out_plane,
                                   wc + j * kernel, b ? static_cast<acc_t>(b[co]) : acc_t(0), false, g);
      }
      }
      if constexpr (!direct) {
        scalar_t* dst = gx_data + plane * in_plane;
        for (int64_t i = 0; i < in_plane; ++i) dst[i] = static_cast<scalar_t>(gx[i]);
      }
    }
  });

  scalar_t* gwr = grad_wr.data_ptr<scalar_t>();
  scalar_t* gwc = grad_wc.data_ptr<scalar_t>();
  scalar_t* gb = grad_b.data_ptr<scalar_t>();
  for (int64_t co = 0; co < c_out; ++co) {
    for (int64_t k = 0; k <= kernel; ++k) {
      acc_t sum = 0;
      for (int64_t n = 0; n < g.batch; ++n) sum += partials[(n * c_out + co) * (kernel + 1) + k];
      if (k == kernel) {
        gb[co] = static_cast<scalar_t>(sum);
      } else if (co < g.c_row) {
        gwr[co * kernel + k] = static_cast<scalar_t>(sum);
      } else {
        gwc[(co - g.c_row) * kernel + k] = static_cast<scalar_t>(sum);
      }
    }
  }
}


// Stride-2 forwards on planes up to this size run as the stride-1 run path plus a
// subsampling copy (fuse_conv2d_forward_cpu).  Above it the 4x-sized intermediate costs
// more than it saves: a fresh 29 MB buffer per call for 144x56x56 full (page faults)
// made that case 2x slower than the per-plane kernel (docs/fuse_conv_cpu.md, "Why the run
// path looks as it does").
constexpr int64_t kMaxPlaneStride2ViaRuns = 1024;

// The run path (fuse_conv_cpu_runs.h) takes float32 calls on small stride-1 "same" planes
// when the build has AVX-512; it returns the geometry it needs, or nothing.
std::optional<runs::RunGeometry> run_geometry(const at::Tensor& x, const Geometry& g, bool backward) {
  if (x.scalar_type() != at::kFloat || !flat_plane(g)) return std::nullopt;
  const runs::RunGeometry rg{g.batch, g.channels, g.height,  g.width,    g.kernel,
                             g.c_row, g.c_col,    g.padding, g.dilation, g.full};
  if (!runs::run_path_applies(rg, backward)) return std::nullopt;
  return rg;
}


at::Tensor fuse_conv2d_forward_cpu(const at::Tensor& x, const at::Tensor& weight_row,
                                   const at::Tensor& weight_col, const c10::optional<at::Tensor>& bias,
                                   bool full, int64_t stride, int64_t padding, int64_t dilation,
                                   c10::string_view activation) {
  const Act act = parse_activation(std::string(activation));
  const Geometry g =
      check_inputs("fuse_conv2d_forward", x, weight_row, weight_col, bias, full, stride, padding, dilation);
  at::Tensor out = at::empty({g.batch, g.out_channels(), g.out_height, g.out_width}, x.options());
  if (out.numel() == 0) return out;
  if (const auto rg = run_geometry(x, g, /*backward=*/false)) {
    runs::forward_runs(x.data_ptr<float>(), weight_row.data_ptr<float>(), weight_col.data_ptr<float>(),
                       bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr<float>(), *rg,
                       act);
    return out;
  }
  // Only "same" padding (2p == d(K-1)) lines the parts up at stride 1 as well: with other
  // paddings (an even K, say) the parts may line up at stride 2 alone, and the stride-1
  // geometry does not exist.
  if (stride == 2 && g.height * g.width <= kMaxPlaneStride2ViaRuns && 2 * padding == dilation * (g.kernel - 1)) {
    // Stride 2 on small planes the run path takes at stride 1: the stride-1 output subsampled
    // ([::2, ::2]) is exactly the stride-2 output (each output is computed on its own,
    // with the same taps in the same order), and computing the 4x outputs on the run path
    // then copying a quarter of them costs less than the per-plane kernel's strided rows
    // (docs/fuse_conv_cpu.md, "Why the run path looks as it does": 576x14x14 full 1.94 ->
    // 0.66-0.76 ms).
    const Geometry g1 =
        check_inputs("fuse_conv2d_forward", x, weight_row, weight_col, bias, full, 1, padding, dilation);
    if (const auto rg = run_geometry(x, g1, /*backward=*/false)) {
      at::Tensor dense = at::empty({g1.batch, g1.out_channels(), g1.out_height, g1.out_width}, x.options());
      runs::forward_runs(x.data_ptr<float>(), weight_row.data_ptr<float>(), weight_col.data_ptr<float>(),
                         bias.has_value() ? bias->data_ptr<float>() : nullptr, dense.data_ptr<float>(), *rg,
                         act);
      const at::Tensor sampled = dense.slice(2, 0, g1.out_height, 2).slice(3, 0, g1.out_width, 2);
      TORCH_INTERNAL_ASSERT(sampled.size(2) == g.out_height && sampled.size(3) == g.out_width,
                            "fuse_conv2d_forward: subsampled stride-1 output has the wrong shape");
      out.copy_(sampled);
      return out;
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fuse_conv2d_forward", [&] {
    dispatch_activation(act, [&](auto a) {
      forward_kernel<scalar_t, decltype(a)::value>(x, weight_row, weight_col, bias, out, g);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fuse_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight_row,
    const at::Tensor& weight_col, const c10::optional<at::Tensor>& bias, bool full, int64_t stride,
    int64_t padding, int64_t dilation, c10::string_view activation) {
  const Act act = parse_activation(std::string(activation));
  const Geometry g =
      check_inputs("fuse_conv2d_backward", x, weight_row, weight_col, bias, full, stride, padding, dilation);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.batch && grad_out.size(1) == g.out_channels() &&
                  grad_out.size(2) == g.out_height && grad_out.size(3) == g.out_width,
              "fuse_conv2d_backward: grad_out must have shape (", g.batch, ", ", g.out_channels(), ", ",
              g.out_height, ", ", g.out_width, "), got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(),
              "fuse_conv2d_backward: grad_out must match x's dtype and device");
  TORCH_CHECK(grad_out.is_contiguous(), "fuse_conv2d_backward: grad_out must be contiguous");
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_wr = at::empty_like(weight_row, at::MemoryFormat::Contiguous);
  at::Tensor grad_wc = at::empty_like(weight_col, at::MemoryFormat::Contiguous);
  at::Tensor grad_b = at::empty({g.out_channels()}, x.options());
  if (x.numel() > 0 && grad_out.numel() > 0) {
    if (const auto rg = run_geometry(x, g, /*backward=*/true)) {
      runs::backward_runs(grad_out.data_ptr<float>(), x.data_ptr<float>(), weight_row.data_ptr<float>(),
                          weight_col.data_ptr<float>(), bias.has_value() ? bias->data_ptr<float>() : nullptr,
                          grad_x.data_ptr<float>(), grad_wr.data_ptr<float>(), grad_wc.data_ptr<float>(),
                          grad_b.data_ptr<float>(), *rg, act);
      return {grad_x, grad_wr, grad_wc, grad_b};
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fuse_conv2d_backward", [&] {
    dispatch_activation(act, [&](auto a) {
      backward_kernel<scalar_t, decltype(a)::value>(grad_out, x, weight_row, weight_col, bias, grad_x, grad_wr,
                                                    grad_wc, grad_b, g);
    });
  });
  return {grad_x, grad_wr, grad_wc, grad_b};
}

}  // namespace
}  // namespace fuseops

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) {
  m.def(
      "fuse_conv2d_forward(Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, bool full, "
      "int stride, int padding, int dilation, str activation) -> Tensor");
  m.def(
      "fuse_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, "
      "bool full, int stride, int padding, int dilation, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fuseops_ext, CPU, m) {
  m.impl("fuse_conv2d_forward", &fuseops::fuse_conv2d_forward_cpu);
  m.impl("fuse_conv2d_backward", &fuseops::fuse_conv2d_backward_cpu);
}
