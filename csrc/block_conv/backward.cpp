// Block convolution on the CPU, backward (torch.ops.fuseops_ext.block_conv2d_backward).
//
// The backward re-gathers x, gathers grad_out per block, runs at::convolution_backward
// per size class and scatters the padded-block gradient back onto grad_x: each block's
// padding maps only onto that block's own pixels, so blocks never write to the same
// element of grad_x and the scatter is race-free and deterministic (fixed order within
// a block, no atomics).  Depthwise convs at stride 1 take the direct kernel below.
#include "block_conv/buffers.h"
#include "block_conv/depthwise.h"
#include "block_conv/geometry.h"
#include "block_conv/ops.h"
#include "block_conv/tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

namespace fuseops::block_conv {

namespace {

// The backward of one block with a compile-time tap count.  gf: the output-gradient block
// at the padded row pitch (zeros past each row's outputs) with `guard` zeros before it and
// guard + kSpanStep after; padded: the padded input block (+ kSpanStep slack).
//   gp[q] = sum_t w[t] * gf[q - off[t]]  for q < round_up_span(ph * pitch)  (transposed conv)
//   wgrad[t] += sum_q gf[q] * padded[q + off[t]]  over the output positions q (keep[q] != 0)
// With kMasked, keep (see output_positions) drops the columns past each row's outputs and
// the rounding slack: their gradient is zero, but 0 * inf = NaN if the padded block holds
// an inf there.  The select made the whole backward markedly slower (about 1.5x in a
// noisy A/B), so planes that are all finite (checked once per plane, see all_finite) run
// unmasked: there every dropped product is an exact zero.
// The weight sums keep kSpanStep fixed lanes per tap and add them in a fixed order, so
// they vectorise without reassociation and are deterministic.
template <int KH, int KW, bool kMasked, typename acc_t>
inline void depthwise_block_backward_fixed(acc_t* __restrict gp, acc_t* __restrict wgrad, const acc_t* __restrict gf,
                                           const acc_t* __restrict padded, const uint8_t* __restrict keep,
                                           int64_t span, int64_t padded_area, int64_t pitch, int64_t dh, int64_t dw,
                                           const acc_t* w) {
  constexpr int T = KH * KW;
  const TapTable<KH, KW, acc_t> taps(w, pitch, dh, dw);
  const int64_t gp_end = round_up_span(padded_area);
#pragma omp simd
  for (int64_t q = 0; q < gp_end; ++q) {
    acc_t sum = 0;
    for (int t = 0; t < T; ++t) sum += taps.w[t] * gf[q - taps.off[t]];
    gp[q] = sum;
  }
  acc_t lanes[T][kSpanStep] = {};
  const int64_t end = round_up_span(span);
  for (int64_t q = 0; q < end; q += kSpanStep) {
    for (int t = 0; t < T; ++t) {
#pragma omp simd
      for (int64_t l = 0; l < kSpanStep; ++l) {
        const acc_t product = gf[q + l] * padded[q + l + taps.off[t]];
        if constexpr (kMasked) {
          lanes[t][l] += keep[q + l] ? product : acc_t(0);
        } else {
          lanes[t][l] += product;
        }
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    acc_t dot = 0;
    for (int64_t l = 0; l < kSpanStep; ++l) dot += lanes[t][l];
    wgrad[t] += dot;
  }
}

// keep[q] = 1 where q (< round_up_span(span)) is an output position of a block walked at
// the padded row pitch: q < span and q % pitch < ow.
inline std::vector<uint8_t> output_positions(int64_t span, int64_t pitch, int64_t ow) {
  std::vector<uint8_t> keep(round_up_span(span), 0);
  for (int64_t row = 0; row * pitch < span; ++row) {
    std::fill_n(keep.begin() + row * pitch, std::min(ow, span - row * pitch), uint8_t(1));
  }
  return keep;
}

// Whether n values are all finite: x * 0 is NaN exactly for inf and NaN.
template <typename scalar_t>
bool all_finite(const scalar_t* values, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t probe = 0;
#pragma omp simd reduction(+ : probe)
  for (int64_t i = 0; i < n; ++i) probe += static_cast<acc_t>(values[i]) * acc_t(0);
  return probe == acc_t(0);
}

// Depthwise backward at stride 1 (channel multiplier 1), the adjoint of the direct forward:
// per (n, c) plane and block, the padded block and the output-gradient block sit in cache;
// each tap's weight gradient is a dot product over the block and the padded-block
// gradient gathers the taps back; that gradient is then folded onto the block's pixels
// (padding positions add onto the pixels they were read from).  Planes are independent,
// so grad_x needs no atomics; per-plane weight-gradient partials are summed over the
// batch in a fixed order (deterministic).
template <typename scalar_t>
void depthwise_direct_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                               at::Tensor& grad_x, at::Tensor& grad_weight, const std::vector<SizeClass>& row_classes,
                               const std::vector<SizeClass>& col_classes, c10::IntArrayRef dilation) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t kh = weight.size(2), kw = weight.size(3), taps = kh * kw;
  const int64_t out_h = grad_out.size(2), out_w = grad_out.size(3);
  const int64_t dh = dilation[0], dw = dilation[1];
  int64_t max_ph = 0, max_pw = 0;
  for (const auto& r : row_classes) max_ph = std::max<int64_t>(max_ph, r.table.size());
  for (const auto& c : col_classes) max_pw = std::max<int64_t>(max_pw, c.table.size());
  std::vector<acc_t> partial(n_batch * channels * taps, acc_t(0));
  // The output positions of each (row class, column class) block shape, built once.
  std::vector<std::vector<std::vector<uint8_t>>> keeps;
  for (const auto& rows : row_classes) {
    const int64_t oh = static_cast<int64_t>(rows.table.size()) - dh * (kh - 1);
    keeps.emplace_back();
    for (const auto& cols : col_classes) {
      const int64_t pw_total = cols.table.size(), ow = pw_total - dw * (kw - 1);
      keeps.back().push_back(output_positions((oh - 1) * pw_total + ow, pw_total, ow));
    }
  }
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  const scalar_t* gsrc = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* wts = weight.const_data_ptr<scalar_t>();
  scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, n_batch * channels, 1, [&](int64_t begin, int64_t end) {
    const int64_t area = max_ph * max_pw;
    // gf sits `guard` zeros into gfull so that the transposed conv of the fixed-tap path
    // reads zeros before the block; every buffer has kSpanStep elements of slack.
    const int64_t guard = (kh - 1) * dh * max_pw + (kw - 1) * dw;
    std::vector<acc_t> padded(area + kSpanStep), gfull(guard + area + guard + kSpanStep), gpad(area + kSpanStep),
        w(taps);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % channels;
      const scalar_t* in = src + plane * height * width;
      const scalar_t* g = gsrc + plane * out_h * out_w;
      scalar_t* gxp = gx + plane * height * width;
      acc_t* wgrad = partial.data() + plane * taps;
      for (int64_t q = 0; q < taps; ++q) w[q] = static_cast<acc_t>(wts[c * taps + q]);
      const bool finite_plane = all_finite(in, height * width);
      for (const auto& rows : row_classes) {
        const int64_t ph_total = rows.table.size();
        const int64_t oh = ph_total - dh * (kh - 1);
        for (const auto& cols : col_classes) {
          const int64_t pw_total = cols.table.size();
          const int64_t ow = pw_total - dw * (kw - 1);
          const int64_t span = (oh - 1) * pw_total + ow;
          const std::vector<uint8_t>& keep = keeps[&rows - row_classes.data()][&cols - col_classes.data()];
          for (size_t i = 0; i < rows.in_starts.size(); ++i) {
            for (size_t j = 0; j < cols.in_starts.size(); ++j) {
              const int64_t r0 = rows.in_starts[i], c0 = cols.in_starts[j];
              pad_block(padded.data(), in, width, rows, cols, r0, c0);
              // The unmasked weight sums read kSpanStep elements past the padded block, against
              // zero output gradients; a previous (larger) block's values there, from another
              // plane too, could be inf, and 0 * inf would put a NaN into this channel's sums.
              std::fill(padded.data() + ph_total * pw_total, padded.data() + ph_total * pw_total + kSpanStep,
                        acc_t(0));
              // The output-gradient block laid out with the padded block's row pitch.
              acc_t* __restrict gf = gfull.data() + guard;
              for (int64_t q = 0; q < ph_total * pw_total + kSpanStep; ++q) gf[q] = acc_t(0);
              for (int64_t r = 0; r < oh; ++r) {
                const scalar_t* grow = g + (rows.out_starts[i] + r) * out_w + cols.out_starts[j];
                copy_row(gf + r * pw_total, grow, ow);
              }
              acc_t* __restrict gp = gpad.data();
              const bool fixed = dispatch_fixed_taps(kh, kw, [&](auto fixed_taps) {
                using Taps = decltype(fixed_taps);
                if (finite_plane) {
                  depthwise_block_backward_fixed<Taps::kH, Taps::kW, false>(
                      gp, wgrad, gf, padded.data(), keep.data(), span, ph_total * pw_total, pw_total, dh, dw, w.data());
                } else {
                  depthwise_block_backward_fixed<Taps::kH, Taps::kW, true>(
                      gp, wgrad, gf, padded.data(), keep.data(), span, ph_total * pw_total, pw_total, dh, dw, w.data());
                }
              });
              if (!fixed) for (int64_t q = 0; q < ph_total * pw_total; ++q) gp[q] = acc_t(0);
              for (int64_t a = 0; a < kh && !fixed; ++a) {
                for (int64_t bcol = 0; bcol < kw; ++bcol) {
                  const int64_t off = a * dh * pw_total + bcol * dw;
                  const acc_t* __restrict p0 = padded.data() + off;
                  acc_t* __restrict gp0 = gp + off;
                  const acc_t wv = w[a * kw + bcol];
                  for (int64_t q = 0; q < span; ++q) gp0[q] += wv * gf[q];
                  // Eight fixed partial sums: vectorisable without reassociating (deterministic).
                  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                  int64_t q = 0;
                  for (; q + 8 <= span; q += 8) {
                    for (int64_t l = 0; l < 8; ++l) {
                      const acc_t product = gf[q + l] * p0[q + l];
                      lanes[l] += keep[q + l] ? product : acc_t(0);  // output positions only (see keep)
                    }
                  }
                  acc_t dot = 0;
                  for (; q < span; ++q) dot += keep[q] ? gf[q] * p0[q] : acc_t(0);
                  for (int64_t l = 0; l < 8; ++l) dot += lanes[l];
                  wgrad[a * kw + bcol] += dot;
                }
              }
              for (int64_t t = 0; t < ph_total; ++t) {
                const int64_t sr = rows.table[t];
                if (sr < 0) continue;
                scalar_t* line = gxp + (r0 + sr) * width + c0;
                const acc_t* grow = gp + t * pw_total;
                // The interior columns map onto the block's pixels one to one (every
                // mode); only the pad columns go through the table.
                const int64_t pad = (pw_total - cols.size) / 2;
                add_row(line, grow + pad, cols.size);
                for_each_pad_column(cols, pad, [&](int64_t u, int64_t sc) {
                  if (sc >= 0) line[sc] = static_cast<acc_t>(line[sc]) + grow[u];
                });
              }
            }
          }
        }
      }
    }
  });
  scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t q = 0; q < taps; ++q) {
      acc_t total = 0;
      for (int64_t n = 0; n < n_batch; ++n) total += partial[(n * channels + c) * taps + q];
      gw[c * taps + q] = static_cast<scalar_t>(total);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
    c10::string_view padding_mode) {
  // bias is checked, not read: grad_bias does not depend on it.
  const Geometry g = make_geometry(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds,
                                   std::string(padding_mode));
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == x.size(0) && grad_out.size(1) == weight.size(0) &&
                  grad_out.size(2) == g.out_h && grad_out.size(3) == g.out_w,
              "block_conv2d_backward: grad_out has shape ", grad_out.sizes(), ", expected (", x.size(0), ", ",
              weight.size(0), ", ", g.out_h, ", ", g.out_w, ")");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "block_conv2d_backward: grad_out dtype differs from x");
  const bool one_block = row_bounds.size() == 2 && col_bounds.size() == 2;
  if (one_block && g.mode == PadMode::kConstant) {  // the plain conv's backward (see the forward)
    auto grads = at::convolution_backward(grad_out, x, weight, c10::nullopt, stride, padding, dilation, false, {0, 0},
                                          groups, {true, true, false});
    return {std::get<0>(grads).contiguous(), std::get<1>(grads).contiguous(), grad_out.sum({0, 2, 3})};
  }
  if (groups == x.size(1) && weight.size(0) == groups && weight.size(1) == 1 && stride[0] == 1 && stride[1] == 1) {
    const at::Tensor xc = x.contiguous();
    const at::Tensor wc = weight.contiguous();
    const at::Tensor gc = grad_out.contiguous();
    at::Tensor grad_x = at::zeros(x.sizes(), x.options());
    at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_depthwise_direct_backward", [&] {
      depthwise_direct_backward<scalar_t>(gc, xc, wc, grad_x, grad_weight, g.rows, g.cols, dilation);
    });
    return {grad_x, grad_weight, grad_out.sum({0, 2, 3})};
  }
  at::Tensor grad_x = at::zeros(x.sizes(), x.options());
  at::Tensor grad_weight;
  for (const auto& rows : g.rows) {
    for (const auto& cols : g.cols) {
      at::Tensor buf = gather_class(x, rows, cols, padding[1]);
      const int64_t oh = conv_out_size(rows.size, weight.size(2), stride[0], padding[0], dilation[0]);
      const int64_t ow = conv_out_size(cols.size, weight.size(3), stride[1], padding[1], dilation[1]);
      at::Tensor grad_blocks;
      if (one_block) {
        grad_blocks = grad_out.contiguous(kBufferFormat);
      } else {
        grad_blocks = workspace(kGatherGrad, {buf.size(0), weight.size(0), oh, ow}, grad_out.options(), kBufferFormat);
        AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_gather_out", [&] {
          move_blocks<scalar_t>(grad_blocks, grad_out, rows, cols, oh, ow, false);
        });
      }
      auto grads = at::convolution_backward(grad_blocks, buf, weight, c10::nullopt, stride, {0, 0}, dilation, false,
                                            {0, 0}, groups, {true, true, false});
      const at::Tensor& grad_buf = std::get<0>(grads);
      const at::Tensor& gw = std::get<1>(grads);
      grad_weight = grad_weight.defined() ? grad_weight.add_(gw) : gw.contiguous();
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_scatter_padded",
                                     [&] { scatter_padded<scalar_t>(grad_buf, grad_x, rows, cols, padding[1]); });
    }
  }
  at::Tensor grad_bias = grad_out.sum({0, 2, 3});
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace fuseops::block_conv
