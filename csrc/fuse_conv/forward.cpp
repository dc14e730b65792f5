// FuSe convolution, CPU forward (torch.ops.fuseops_ext.fuse_conv2d_forward): the entry
// point, which picks a path, and the per-plane forward kernels.  The run path (float32,
// AVX-512) is in runs_forward.cpp.
//
// The general kernel works one output row at a time in a thread-local accumulator of
// W_out elements, so the forward reads x once and writes the output once (no padded
// copy, no intermediate of output size).  Borders are not branch-checked per element:
// for each tap the range of output columns whose input lies inside the image is computed
// once (row part), and taps that fall on padding rows are skipped (column part), so every
// inner loop is a branch-free, unit- or s-strided loop the compiler vectorises.  Stride-1
// "same" planes take the flat and small-plane kernels (cpu_shared.h says what they are).
#include "fuse_conv/cpu_shared.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <memory>

namespace fuseops::fuse_conv {
namespace {

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

template <typename scalar_t, Act A>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                    const std::optional<at::Tensor>& bias, at::Tensor& out, const Geometry& g) {
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
    dispatch_tap_count<1, 3, 5, 7, 9>(g.kernel, [&](auto kt) {
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

// Stride-2 forwards on planes up to this size run as the stride-1 run path plus a
// subsampling copy (fuse_conv2d_forward_cpu).  Above it the 4x-sized intermediate costs
// more than it saves: a fresh 29 MB buffer per call for 144x56x56 full (page faults)
// made that case 2x slower than the per-plane kernel (docs/fuse_conv_cpu.md, "Why the run
// path looks as it does").
constexpr int64_t kMaxPlaneStride2ViaRuns = 1024;

}  // namespace

at::Tensor fuse_conv2d_forward_cpu(const at::Tensor& x, const at::Tensor& weight_row,
                                   const at::Tensor& weight_col, const std::optional<at::Tensor>& bias,
                                   bool full, int64_t stride, int64_t padding, int64_t dilation,
                                   c10::string_view activation) {
  const Act act = parse_activation(std::string(activation));
  const Geometry g =
      check_cpu_inputs("fuse_conv2d_forward", x, weight_row, weight_col, bias, full, stride, padding, dilation);
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
    // The stride-1 geometry: "same" padding keeps each plane's shape.
    Geometry g1 = g;
    g1.stride = 1;
    g1.out_height = g.height;
    g1.out_width = g.width;
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

}  // namespace fuseops::fuse_conv
