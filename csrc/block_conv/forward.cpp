// Block convolution on the CPU, forward (torch.ops.fuseops_ext.block_conv2d_forward).
//
// Every block is padded with its own values only, so a blocked conv is an ordinary conv
// (padding 0) over a batch of padded blocks.  Blocks of equal size (all of them when the
// map divides; up to four size classes with ragged last blocks or hierarchical spans that
// differ by one pixel) are gathered in one pass into an (N*blocks, C, bh+2ph, bw+2pw)
// buffer and handed to at::convolution as one batch, so the conv itself runs at the speed
// of the plain conv and the cost over it is the gather and the output scatter.  Depthwise
// convs take the direct kernels below instead.
#include "block_conv/buffers.h"
#include "block_conv/depthwise.h"
#include "block_conv/geometry.h"
#include "block_conv/ops.h"
#include "block_conv/tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>

#include <vector>

namespace fuseops::block_conv {

namespace {

// acc[q] = b0 + sum_t w[t] * padded[q + off[t]] for q < round_up_span(span).
template <int KH, int KW, typename acc_t>
inline void depthwise_span_fixed(acc_t* __restrict acc, const acc_t* __restrict padded, int64_t span, int64_t pitch,
                                 int64_t dh, int64_t dw, const acc_t* w, acc_t b0) {
  constexpr int T = KH * KW;
  const TapTable<KH, KW, acc_t> taps(w, pitch, dh, dw);
  const int64_t end = round_up_span(span);
#pragma omp simd
  for (int64_t q = 0; q < end; ++q) {
    acc_t sum = b0;
    for (int t = 0; t < T; ++t) sum += taps.w[t] * padded[q + taps.off[t]];
    acc[q] = sum;
  }
}

// What the direct depthwise forwards read and write per (n, c) plane of contiguous x and
// out: the plane pointers, and channel c's taps and bias in opmath.  The bias is held
// contiguous since the kernels index it themselves, and it may be a strided view such as b[::2].
template <typename scalar_t>
class DepthwisePlanes {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  DepthwisePlanes(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  at::Tensor& out)
      : channels_(x.size(1)),
        in_area_(x.size(2) * x.size(3)),
        out_area_(out.size(2) * out.size(3)),
        taps_(weight.size(2) * weight.size(3)),
        src_(x.const_data_ptr<scalar_t>()),
        wts_(weight.const_data_ptr<scalar_t>()),
        bias_(bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor()),
        bias_ptr_(bias_.defined() ? bias_.const_data_ptr<scalar_t>() : nullptr),
        dst_(out.mutable_data_ptr<scalar_t>()) {}

  const scalar_t* input(int64_t plane) const { return src_ + plane * in_area_; }
  scalar_t* output(int64_t plane) const { return dst_ + plane * out_area_; }

  // Writes the plane's channel taps to w and returns its bias (0 without one).
  acc_t load_channel(int64_t plane, acc_t* w) const {
    const int64_t c = plane % channels_;
    for (int64_t q = 0; q < taps_; ++q) w[q] = static_cast<acc_t>(wts_[c * taps_ + q]);
    return bias_ptr_ ? static_cast<acc_t>(bias_ptr_[c]) : acc_t(0);
  }

 private:
  int64_t channels_, in_area_, out_area_, taps_;
  const scalar_t* src_;
  const scalar_t* wts_;
  at::Tensor bias_;
  const scalar_t* bias_ptr_;
  scalar_t* dst_;
};

// Stride-1 depthwise forward with a compile-time tap count, one block *row* at a time:
// the padded blocks of a block row are laid side by side in one strip (each keeps its own
// padding), so one long register-accumulating loop convolves the whole strip, and the
// per-block costs (loop set-up, the partial vector at the end of a block) are paid once
// per strip.  A block's outputs only read its own padded columns: output column u of a
// block of padded width pw reads columns u .. u + (kw-1)*dw < pw.
template <int KH, int KW, typename scalar_t>
void depthwise_direct_strips(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::Tensor& out, const std::vector<SizeClass>& row_classes,
                             const std::vector<SizeClass>& col_classes, int64_t dh, int64_t dw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_batch = x.size(0), channels = x.size(1), width = x.size(3);
  const int64_t out_w = out.size(3);
  struct ColumnBlock {
    int64_t offset, pw, pad, size, in_start, out_start, ow;
    const int64_t* table;
  };
  std::vector<ColumnBlock> blocks;
  int64_t strip_w = 0, max_ph = 0;
  for (const auto& cols : col_classes) {
    const int64_t pw = cols.table.size();
    for (size_t j = 0; j < cols.in_starts.size(); ++j) {
      blocks.push_back({strip_w, pw, (pw - cols.size) / 2, cols.size, cols.in_starts[j], cols.out_starts[j],
                        pw - dw * (KW - 1), cols.table.data()});
      strip_w += pw;
    }
  }
  for (const auto& r : row_classes) max_ph = std::max<int64_t>(max_ph, r.table.size());
  const DepthwisePlanes<scalar_t> planes(x, weight, bias, out);
  at::parallel_for(0, n_batch * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> strip(max_ph * strip_w + kSpanStep), acc(max_ph * strip_w + kSpanStep), w(KH * KW);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* in = planes.input(plane);
      scalar_t* o = planes.output(plane);
      const acc_t b0 = planes.load_channel(plane, w.data());
      for (const auto& rows : row_classes) {
        const int64_t ph = rows.table.size(), oh = ph - dh * (KH - 1);
        for (size_t i = 0; i < rows.in_starts.size(); ++i) {
          for (int64_t t = 0; t < ph; ++t) {
            acc_t* prow = strip.data() + t * strip_w;
            const int64_t sr = rows.table[t];
            if (sr < 0) {
              std::fill(prow, prow + strip_w, acc_t(0));
              continue;
            }
            const scalar_t* line = in + (rows.in_starts[i] + sr) * width;
            for (const auto& b : blocks) pad_block_row(prow + b.offset, line + b.in_start, b.size, b.pad, b.table);
          }
          const int64_t span = (oh - 1) * strip_w + strip_w - dw * (KW - 1);
          depthwise_span_fixed<KH, KW>(acc.data(), strip.data(), span, strip_w, dh, dw, w.data(), b0);
          for (int64_t r = 0; r < oh; ++r) {
            scalar_t* orow = o + (rows.out_starts[i] + r) * out_w;
            const acc_t* arow = acc.data() + r * strip_w;
            for (const auto& b : blocks) copy_row(orow + b.out_start, arow + b.offset, b.ow);
          }
        }
      }
    }
  });
}

// Depthwise (groups == C_in == C_out) forward without the gather/conv/stitch passes: a
// depthwise conv is memory-bound, so the extra passes would dominate.  Per (n, c) plane
// and block, the padded block is built in a small cache-resident buffer and convolved
// straight into the stitched output: x is read once and the output written once, like
// the plain conv.  Accumulates in opmath (float for bfloat16).
template <typename scalar_t>
void depthwise_direct(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::Tensor& out, const std::vector<SizeClass>& row_classes,
                      const std::vector<SizeClass>& col_classes, c10::IntArrayRef stride, c10::IntArrayRef dilation) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_batch = x.size(0), channels = x.size(1), width = x.size(3);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  const int64_t out_w = out.size(3);
  const int64_t sh = stride[0], sw = stride[1], dh = dilation[0], dw = dilation[1];
  int64_t max_ph = 0, max_pw = 0, max_ow = 0;
  for (const auto& r : row_classes) max_ph = std::max<int64_t>(max_ph, r.table.size());
  for (const auto& c : col_classes) {
    max_pw = std::max<int64_t>(max_pw, c.table.size());
    max_ow = std::max<int64_t>(max_ow, (static_cast<int64_t>(c.table.size()) - dw * (kw - 1) - 1) / sw + 1);
  }
  const DepthwisePlanes<scalar_t> planes(x, weight, bias, out);
  at::parallel_for(0, n_batch * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> padded(max_ph * max_pw + kSpanStep), full_acc(max_ph * max_pw + kSpanStep), row(max_ow),
        w(kh * kw);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* in = planes.input(plane);
      scalar_t* o = planes.output(plane);
      const acc_t b0 = planes.load_channel(plane, w.data());
      for (const auto& rows : row_classes) {
        const int64_t ph_total = rows.table.size();
        const int64_t oh = (ph_total - dh * (kh - 1) - 1) / sh + 1;
        for (const auto& cols : col_classes) {
          const int64_t pw_total = cols.table.size();
          const int64_t ow = (pw_total - dw * (kw - 1) - 1) / sw + 1;
          for (size_t i = 0; i < rows.in_starts.size(); ++i) {
            for (size_t j = 0; j < cols.in_starts.size(); ++j) {
              const int64_t r0 = rows.in_starts[i], c0 = cols.in_starts[j];
              pad_block(padded.data(), in, width, rows, cols, r0, c0);
              if (sh == 1 && sw == 1) {
                // Stride 1: accumulate over the padded block's full width, so each of the
                // kh*kw taps is one long contiguous (vectorised) loop; the (pw_total - ow)
                // columns past each output row are computed and dropped.
                const int64_t span = (oh - 1) * pw_total + ow;
                acc_t* __restrict acc = full_acc.data();
                // (3x3 and 5x5 at stride 1 take depthwise_direct_strips instead.)
                for (int64_t q = 0; q < span; ++q) acc[q] = b0;
                for (int64_t a = 0; a < kh; ++a) {
                  for (int64_t bcol = 0; bcol < kw; ++bcol) {
                    const acc_t wv = w[a * kw + bcol];
                    const acc_t* __restrict p0 = padded.data() + a * dh * pw_total + bcol * dw;
                    for (int64_t q = 0; q < span; ++q) acc[q] += wv * p0[q];
                  }
                }
                for (int64_t r = 0; r < oh; ++r) {
                  scalar_t* __restrict orow = o + (rows.out_starts[i] + r) * out_w + cols.out_starts[j];
                  copy_row(orow, acc + r * pw_total, ow);
                }
                continue;
              }
              acc_t* __restrict acc = row.data();
              for (int64_t r = 0; r < oh; ++r) {
                for (int64_t u = 0; u < ow; ++u) acc[u] = b0;
                for (int64_t a = 0; a < kh; ++a) {
                  const acc_t* prow = padded.data() + (r * sh + a * dh) * pw_total;
                  for (int64_t bcol = 0; bcol < kw; ++bcol) {
                    const acc_t wv = w[a * kw + bcol];
                    const acc_t* __restrict p0 = prow + bcol * dw;
                    if (sw == 1) {
                      for (int64_t u = 0; u < ow; ++u) acc[u] += wv * p0[u];
                    } else {
                      for (int64_t u = 0; u < ow; ++u) acc[u] += wv * p0[u * sw];
                    }
                  }
                }
                scalar_t* __restrict orow = o + (rows.out_starts[i] + r) * out_w + cols.out_starts[j];
                for (int64_t u = 0; u < ow; ++u) orow[u] = static_cast<scalar_t>(acc[u]);
              }
            }
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor block_conv2d_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                                c10::string_view padding_mode) {
  const Geometry g = make_geometry(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds,
                                   std::string(padding_mode));
  const bool one_block = row_bounds.size() == 2 && col_bounds.size() == 2;
  if (one_block && g.mode == PadMode::kConstant) {
    // One block with zero padding is exactly the plain conv: no gather at all.
    return at::convolution(x, weight, bias, stride, padding, dilation, false, {0, 0}, groups).contiguous();
  }
  at::Tensor out = at::empty({x.size(0), weight.size(0), g.out_h, g.out_w}, x.options());
  if (groups == x.size(1) && weight.size(0) == groups && weight.size(1) == 1) {  // depthwise: direct kernels
    const at::Tensor xc = x.contiguous();
    const at::Tensor wc = weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_depthwise_direct", [&] {
      const bool strips = stride[0] == 1 && stride[1] == 1 &&
                          dispatch_fixed_taps(wc.size(2), wc.size(3), [&](auto taps) {
                            using Taps = decltype(taps);
                            depthwise_direct_strips<Taps::kH, Taps::kW, scalar_t>(xc, wc, bias, out, g.rows, g.cols,
                                                                                   dilation[0], dilation[1]);
                          });
      if (!strips) depthwise_direct<scalar_t>(xc, wc, bias, out, g.rows, g.cols, stride, dilation);
    });
    return out;
  }
  for (const auto& rows : g.rows) {
    for (const auto& cols : g.cols) {
      at::Tensor buf = gather_class(x, rows, cols, padding[1]);
      at::Tensor y = at::convolution(buf, weight, bias, stride, {0, 0}, dilation, false, {0, 0}, groups);
      if (one_block) return y.contiguous();
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_scatter_out", [&] {
        move_blocks<scalar_t>(y, out, rows, cols, y.size(2), y.size(3), true);
      });
    }
  }
  return out;
}

}  // namespace fuseops::block_conv
