// The run path's backward (float32, AVX-512, small stride-1 "same" planes); see runs.h.
#include "fuse_conv/runs_common.h"

#include <c10/util/Exception.h>

#include <memory>

namespace fuseops::runs {

#if defined(__AVX512F__)
namespace {

// The backward of one segment [c0, c1) of one run, for every sample:
//   grad_pre = act'(pre) * grad_out (pre recomputed), kept in gp for chunks
//   [e0, e1) = [c0 - halo, c1 + halo) so that the transposed conv below can read its
//   neighbours; the tap and bias sums of every position, accumulated over the batch into
//   sums (row k at sums + k * sums_stride, starting at chunk c0); and this part's share of grad_x for [c0, c1), written
//   (first part) or added (second part) into gx.
template <int KT, Activation A>
void backward_segment(const RunView& v, int64_t chunks, const float* go, const float* x, float* gx,
                      bool accumulate, float* gp, float* sums, int64_t sums_stride, int64_t c0, int64_t c1,
                      int64_t halo) {
  const int64_t K = KT > 0 ? KT : v.kernel;
  const int64_t e0 = std::max<int64_t>(0, c0 - halo), e1 = std::min(chunks, c1 + halo);
  ChunkCursor at(v, e0);
  PreActivation<KT> pre;
  for (int64_t c = e0; c < e1; ++c, at.next(v)) {
    const int64_t i = c * kLanes;
    const __mmask16 live = v.tail(c);
    const __m512 g = _mm512_maskz_loadu_ps(live, go + i);
    __m512 gpv;
    if constexpr (A == Activation::None) {
      gpv = g;
    } else {
      gpv = activate_grad<A>(g, pre(v, x, c, at, live));
    }
    _mm512_storeu_ps(gp + (c - e0) * kLanes, gpv);
    if (c >= c0 && c < c1) {
      float* s = sums + (c - c0) * kLanes;
      for (int64_t k = 0; k < K; ++k) {
        const __m512 xv = _mm512_maskz_loadu_ps(v.fwd[k][at.q] & live, x + i + v.off[k]);
        float* sk = s + k * sums_stride;
        _mm512_storeu_ps(sk, _mm512_fmadd_ps(gpv, xv, _mm512_loadu_ps(sk)));
      }
      float* sb = s + K * sums_stride;
      _mm512_storeu_ps(sb, _mm512_add_ps(gpv, _mm512_loadu_ps(sb)));
    }
  }
  // grad_x[j] = sum_k w_k * grad_pre[j - off_k] where output j - off_k's tap k reads j
  // (that output is in j's plane, so it has j's channel's weights).
  const float* gp_run = gp - e0 * kLanes;  // indexed by position in the run
  ChunkCursor at_x(v, c0);
  [[maybe_unused]] std::conditional_t<(KT > 0), WeightWindow<(KT > 0 ? KT : 1)>, int> window{};
  for (int64_t c = c0; c < c1; ++c, at_x.next(v)) {
    const int64_t j = c * kLanes, ch = at_x.channel(v);
    const __m512i lanes = at_x.lanes(v);
    const __mmask16 live = v.tail(c);
    __m512 acc = accumulate ? _mm512_maskz_loadu_ps(live, gx + j) : _mm512_setzero_ps();
    if constexpr (KT > 0) {
      const __m512i index = window.cover(v, ch, lanes);
      for (int k = 0; k < KT; ++k) {
        const __m512 gv = _mm512_maskz_loadu_ps(v.bwd[k][at_x.q] & live, gp_run + j - v.off[k]);
        acc = _mm512_fmadd_ps(window.weight(k, index), gv, acc);
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        const __m512 gv = _mm512_maskz_loadu_ps(v.bwd[k][at_x.q] & live, gp_run + j - v.off[k]);
        acc = _mm512_fmadd_ps(per_lane(v.weight + k * v.weight_stride, ch, lanes), gv, acc);
      }
    }
    _mm512_mask_storeu_ps(gx + j, live, acc);
  }
}

// backward_segment for a block of `samples` samples, chunks outside and samples inside (as
// forward_segment_batched): the lane weights and masks of a chunk are permuted once for
// the block, the x values loaded to recompute pre-activation also feed the tap sums, and
// each position's tap and bias sums stay in registers over the block and are written
// once (first block, `add_sums` false) or added to the earlier blocks' (later blocks).
// gp holds grad_pre of chunks [e0, e1) for each sample: [n * gp_stride + (c - e0) * 16].
template <int KT, Activation A>
void backward_segment_batched(const RunView& v, int64_t chunks, const float* go, const float* x, float* gx,
                              int64_t x_sample, int64_t out_sample, int64_t samples, bool accumulate, bool add_sums,
                              float* gp, int64_t gp_stride, float* sums, int64_t sums_stride, int64_t c0, int64_t c1,
                              int64_t halo) {
  const int64_t e0 = std::max<int64_t>(0, c0 - halo), e1 = std::min(chunks, c1 + halo);
  int64_t off[KT];
  for (int k = 0; k < KT; ++k) off[k] = v.off[k];
  ChunkCursor at(v, e0);
  WeightWindow<KT> window;
  for (int64_t c = e0; c < e1; ++c, at.next(v)) {
    const int64_t i = c * kLanes;
    const __mmask16 live = v.tail(c);
    const bool owned = c >= c0 && c < c1;
    const ChunkTaps<KT> taps(window, v, at.channel(v), at.lanes(v), at.q, v.fwd, live);
    const auto& weight = taps.weight;
    const auto& mask = taps.mask;
    __m512 tap_sum[KT];
    for (int k = 0; k < KT; ++k) tap_sum[k] = _mm512_setzero_ps();
    __m512 bias_sum = _mm512_setzero_ps();
    for (int64_t n = 0; n < samples; ++n) {
      const float* xn = x + n * x_sample + i;
      const __m512 g = _mm512_maskz_loadu_ps(live, go + n * out_sample + i);
      __m512 xv[KT];
      if (A != Activation::None || owned) {
        for (int k = 0; k < KT; ++k) xv[k] = _mm512_maskz_loadu_ps(mask[k], xn + off[k]);
      }
      __m512 gpv = g;
      if constexpr (A != Activation::None) {
        __m512 pre = taps.bias;
        for (int k = 0; k < KT; ++k) pre = _mm512_fmadd_ps(weight[k], xv[k], pre);
        gpv = activate_grad<A>(g, pre);
      }
      _mm512_storeu_ps(gp + n * gp_stride + (c - e0) * kLanes, gpv);
      if (owned) {
        for (int k = 0; k < KT; ++k) tap_sum[k] = _mm512_fmadd_ps(gpv, xv[k], tap_sum[k]);
        bias_sum = _mm512_add_ps(bias_sum, gpv);
      }
    }
    if (owned) {
      float* s = sums + (c - c0) * kLanes;
      for (int k = 0; k <= KT; ++k) {
        const __m512 total = k < KT ? tap_sum[k] : bias_sum;
        float* sk = s + k * sums_stride;
        _mm512_storeu_ps(sk, add_sums ? _mm512_add_ps(_mm512_loadu_ps(sk), total) : total);
      }
    }
  }
  // grad_x[j] = sum_k w_k * grad_pre[j - off_k] where output j - off_k's tap k reads j
  // (that output is in j's plane, so it has j's channel's weights).
  ChunkCursor at_x(v, c0);
  for (int64_t c = c0; c < c1; ++c, at_x.next(v)) {
    const int64_t j = c * kLanes;
    const __mmask16 live = v.tail(c);
    const ChunkTaps<KT> taps(window, v, at_x.channel(v), at_x.lanes(v), at_x.q, v.bwd, live);
    for (int64_t n = 0; n < samples; ++n) {
      const float* gp_run = gp + n * gp_stride - e0 * kLanes;  // indexed by position in the run
      float* gxn = gx + n * x_sample + j;
      __m512 acc = accumulate ? _mm512_maskz_loadu_ps(live, gxn) : _mm512_setzero_ps();
      for (int k = 0; k < KT; ++k) {
        acc = _mm512_fmadd_ps(taps.weight[k], _mm512_maskz_loadu_ps(taps.mask[k], gp_run + j - off[k]), acc);
      }
      _mm512_mask_storeu_ps(gxn, live, acc);
    }
  }
}

// sums_all: [(K + 1) * padded] per-position sums over the batch -> per-channel gradients.
void reduce_channels(const Run& r, int64_t padded, const float* sums_all, float* grad_w, float* grad_bias) {
  const int64_t K = r.kernel, channels = r.channels;
  at::parallel_for(0, channels, 64, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      for (int64_t k = 0; k <= K; ++k) {
        const float* s = sums_all + k * padded + ch * r.plane;
        // Each position already holds its sum over the batch; the plane's (at most
        // kMaxPlane) positions are added in double, in vector lanes.
        double total = 0.0;
#pragma omp simd reduction(+ : total)
        for (int64_t p = 0; p < r.plane; ++p) total += static_cast<double>(s[p]);
        if (k < K) {
          grad_w[ch * K + k] = static_cast<float>(total);
        } else {
          grad_bias[r.out_channel + ch] = static_cast<float>(total);
        }
      }
    }
  });
}

}  // namespace

void backward_runs(const float* grad_out, const float* x, const float* w_row, const float* w_col,
                   const float* bias, float* grad_x, float* grad_w_row, float* grad_w_col, float* grad_bias,
                   const RunGeometry& g, Activation act) {
  const Parts parts(g, w_row, w_col, bias, /*backward=*/true);
  const int64_t plane = g.height * g.width, K = g.kernel;
  const int64_t x_sample = g.channels * plane, out_sample = (g.c_row + g.c_col) * plane;
  const int64_t seg_row = segments_of(parts.row), seg_col = segments_of(parts.col);
  const int64_t items = g.full ? seg_row : seg_row + seg_col;
  const int64_t reach = std::max(parts.row.reach, parts.col.reach);
  const int64_t halo = (reach + kLanes - 1) / kLanes;
  // Per-position tap and bias sums over the batch; each position is written by exactly
  // one work item, so the items need no reduction between them.
  const int64_t padded_row = parts.row.chunks * kLanes, padded_col = parts.col.chunks * kLanes;
  // Not zero-filled here: every work item zeroes the positions it owns, in parallel.
  std::unique_ptr<float[]> sums_row(new float[(K + 1) * padded_row]), sums_col(new float[(K + 1) * padded_col]);

  dispatch_tap_count<3, 5, 7>(g.kernel, [&](auto kt) {
    dispatch_activation(act, [&](auto a) {
      constexpr int KT = decltype(kt)::value;
      constexpr Activation A = decltype(a)::value;
      at::parallel_for(0, items, grain_for(items, g.batch * out_sample), [&](int64_t begin, int64_t end) {
        const int64_t gp_stride =
            (std::min(kSegmentChunks, std::max(parts.row.chunks, parts.col.chunks)) + 2 * halo) * kLanes;
        std::vector<float> gp(gp_stride * (KT > 0 ? kSampleBlock : 1));
        auto run_item = [&](const Run& r, int64_t s, bool accumulate, float* sums_all) {
          const int64_t padded = r.chunks * kLanes;
          const int64_t c0 = s * kSegmentChunks, c1 = std::min(r.chunks, c0 + kSegmentChunks);
          float* sums = sums_all + c0 * kLanes;
          const RunView view(r);
          if constexpr (KT > 0) {
            for (int64_t n0 = 0; n0 < g.batch; n0 += kSampleBlock) {
              backward_segment_batched<KT, A>(view, r.chunks, grad_out + n0 * out_sample + r.out_offset,
                                              x + n0 * x_sample + r.x_offset, grad_x + n0 * x_sample + r.x_offset,
                                              x_sample, out_sample, std::min(kSampleBlock, g.batch - n0), accumulate,
                                              /*add_sums=*/n0 > 0, gp.data(), gp_stride, sums, padded, c0, c1, halo);
            }
            return;
          }
          for (int64_t k = 0; k <= K; ++k) std::fill(sums + k * padded, sums + k * padded + (c1 - c0) * kLanes, 0.0f);
          for (int64_t n = 0; n < g.batch; ++n) {
            backward_segment<KT, A>(view, r.chunks, grad_out + n * out_sample + r.out_offset,
                                    x + n * x_sample + r.x_offset, grad_x + n * x_sample + r.x_offset, accumulate,
                                    gp.data(), sums, padded, c0, c1, halo);
          }
        };
        for (int64_t item = begin; item < end; ++item) {
          if (g.full) {
            run_item(parts.row, item, false, sums_row.get());
            run_item(parts.col, item, true, sums_col.get());
          } else if (item < seg_row) {
            run_item(parts.row, item, false, sums_row.get());
          } else {
            run_item(parts.col, item - seg_row, false, sums_col.get());
          }
        }
      });
    });
  });
  reduce_channels(parts.row, padded_row, sums_row.get(), grad_w_row, grad_bias);
  reduce_channels(parts.col, padded_col, sums_col.get(), grad_w_col, grad_bias);
}

#else  // no AVX-512 in this build: run_path_applies() is false, the per-plane kernels run

void backward_runs(const float*, const float*, const float*, const float*, const float*, float*, float*, float*,
                   float*, const RunGeometry&, Activation) {
  TORCH_CHECK(false, "fuse_conv2d: the run path needs a build with AVX-512");
}

#endif

}  // namespace fuseops::runs
