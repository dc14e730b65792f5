// FuSe convolution, CPU backward (torch.ops.fuseops_ext.fuse_conv2d_backward): the entry
// point and the per-plane backward kernels.  The run path (float32, AVX-512) is in
// runs_backward.cpp.
//
// Each task owns one input plane and computes its grad_x and per-plane partial sums of
// the weight and bias gradients, which are reduced over the batch in a fixed order at
// the end: the gradients do not depend on the thread count.  Activations other than
// none recompute the pre-activation instead of saving it in the forward.
#include "fuse_conv/cpu_shared.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <memory>

namespace fuseops::fuse_conv {
namespace {

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
                     const at::Tensor& weight_col, const std::optional<at::Tensor>& bias,
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
          dispatch_tap_count<1, 3, 5, 7, 9>(kernel, [&](auto kt) {
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
          dispatch_tap_count<1, 3, 5, 7, 9>(kernel, [&](auto kt) {
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

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fuse_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight_row,
    const at::Tensor& weight_col, const std::optional<at::Tensor>& bias, bool full, int64_t stride,
    int64_t padding, int64_t dilation, c10::string_view activation) {
  const Act act = parse_activation(std::string(activation));
  const Geometry g =
      check_cpu_inputs("fuse_conv2d_backward", x, weight_row, weight_col, bias, full, stride, padding, dilation);
  check_grad_out("fuse_conv2d_backward", grad_out, x, g);
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

}  // namespace fuseops::fuse_conv
