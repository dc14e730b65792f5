// The run path's forward (float32, AVX-512, small stride-1 "same" planes); see runs.h.
#include "fuse_conv/runs_common.h"

#include <c10/util/Exception.h>

namespace fuseops::runs {

#if defined(__AVX512F__)
namespace {

template <int KT, Activation A>
void forward_chunks(const Run& r, const float* x, float* out, int64_t c0, int64_t c1) {
  const RunView v(r);
  ChunkCursor at(v, c0);
  PreActivation<KT> pre;
  const int64_t full_end = std::min(c1, v.length / kLanes);  // chunks with all 16 lanes live
  int64_t c = c0;
  for (; c < full_end; ++c, at.next(v)) {
    _mm512_storeu_ps(out + c * kLanes, activate<A>(pre(v, x, c, at, 0xFFFF)));
  }
  for (; c < c1; ++c, at.next(v)) {
    const __mmask16 live = v.tail(c);
    _mm512_mask_storeu_ps(out + c * kLanes, live, activate<A>(pre(v, x, c, at, live)));
  }
}

// The half variant's forward over a segment of chunks of one part, for every sample of
// the batch: the chunk loop outside, the sample loop inside.  A chunk's lane weights, bias
// and tap masks depend only on its place in the run, not on the sample, so they are
// permuted out of the register window once per chunk and stay in registers while the
// batch's samples run through them.  forward_chunks (sample outside) permutes them again
// for every sample: K + 1 permutes and K mask moves per chunk, all on port 5, which the
// FMAs share.  The sample loop walks 2N streams (x and out of each sample), which the
// prefetchers follow.
template <int KT, Activation A>
void forward_segment_batched(const Run& r, const float* x, float* out, int64_t x_sample, int64_t out_sample,
                             int64_t batch, int64_t c0, int64_t c1) {
  const RunView v(r);
  ChunkCursor at(v, c0);
  WeightWindow<KT> window;
  const int64_t full_end = std::min(c1, v.length / kLanes);
  int64_t off[KT];
  for (int k = 0; k < KT; ++k) off[k] = v.off[k];
  for (int64_t c = c0; c < c1; ++c, at.next(v)) {
    const int64_t i = c * kLanes;
    const __mmask16 live = c < full_end ? __mmask16(0xFFFF) : v.tail(c);
    const ChunkTaps<KT> taps(window, v, at.channel(v), at.lanes(v), at.q, v.fwd, live);
    const float* xn = x + i;
    float* on = out + i;
    for (int64_t n = 0; n < batch; ++n, xn += x_sample, on += out_sample) {
      __m512 acc = taps.bias;
      for (int k = 0; k < KT; ++k) {
        acc = _mm512_fmadd_ps(taps.weight[k], _mm512_maskz_loadu_ps(taps.mask[k], xn + off[k]), acc);
      }
      _mm512_mask_storeu_ps(on, live, activate<A>(acc));
    }
  }
}

// The full variant's forward_segment_batched: both parts read the same x run and have
// the same channel layout, so one cursor and one lane index serve both, and each sample
// carries two independent FMA chains.  Weights and masks of both parts stay in registers
// over the batch.
//
// kSame (dilation 1, "same" padding, odd K: every FuSe network): the row taps' offsets are
// the compile-time -KT/2 .. KT/2, so they are immediate displacements and do not hold
// general registers, and the centre tap is one load shared by both parts.
template <int KT, Activation A, bool kSame>
void forward_pair_batched(const Run& row, const Run& col, const float* x, float* out_row, float* out_col,
                          int64_t x_sample, int64_t out_sample, int64_t batch, int64_t c0, int64_t c1) {
  static_assert(!kSame || KT % 2 == 1, "same padding with dilation 1 needs an odd tap count");
  constexpr int kCentre = KT / 2;
  const RunView vr(row), vc(col);
  ChunkCursor at(vr, c0);
  WeightWindow<KT> wr, wc;
  const int64_t full_end = std::min(c1, vr.length / kLanes);
  int64_t off_row[KT], off_col[KT];
  for (int k = 0; k < KT; ++k) {
    off_row[k] = vr.off[k];
    off_col[k] = vc.off[k];
  }
  for (int64_t c = c0; c < c1; ++c, at.next(vr)) {
    const int64_t i = c * kLanes;
    const __mmask16 live = c < full_end ? __mmask16(0xFFFF) : vr.tail(c);
    const int64_t ch = at.channel(vr);
    const __m512i lanes = at.lanes(vr);
    const __m512i index_row = wr.cover(vr, ch, lanes), index_col = wc.cover(vc, ch, lanes);
    __m512 weight_row[KT], weight_col[KT];
    __mmask16 mask_row[KT], mask_col[KT];
    for (int k = 0; k < KT; ++k) {
      weight_row[k] = wr.weight(k, index_row);
      weight_col[k] = wc.weight(k, index_col);
      mask_row[k] = vr.fwd[k][at.q] & live;
      mask_col[k] = vc.fwd[k][at.q] & live;
    }
    const __m512 bias_row = vr.bias == nullptr ? _mm512_setzero_ps() : wr.bias(index_row);
    const __m512 bias_col = vc.bias == nullptr ? _mm512_setzero_ps() : wc.bias(index_col);
    const float* xn = x + i;
    float* on_row = out_row + i;
    float* on_col = out_col + i;
    for (int64_t n = 0; n < batch; ++n, xn += x_sample, on_row += out_sample, on_col += out_sample) {
      __m512 acc_row = bias_row, acc_col = bias_col;
      if constexpr (kSame) {
        const __m512 centre = _mm512_maskz_loadu_ps(live, xn);
        for (int k = 0; k < KT; ++k) {
          if (k == kCentre) {
            acc_row = _mm512_fmadd_ps(weight_row[k], centre, acc_row);
            acc_col = _mm512_fmadd_ps(weight_col[k], centre, acc_col);
          } else {
            acc_row = _mm512_fmadd_ps(weight_row[k], _mm512_maskz_loadu_ps(mask_row[k], xn + (k - kCentre)), acc_row);
            acc_col = _mm512_fmadd_ps(weight_col[k], _mm512_maskz_loadu_ps(mask_col[k], xn + off_col[k]), acc_col);
          }
        }
      } else {
        for (int k = 0; k < KT; ++k) {
          acc_row = _mm512_fmadd_ps(weight_row[k], _mm512_maskz_loadu_ps(mask_row[k], xn + off_row[k]), acc_row);
          acc_col = _mm512_fmadd_ps(weight_col[k], _mm512_maskz_loadu_ps(mask_col[k], xn + off_col[k]), acc_col);
        }
      }
      _mm512_mask_storeu_ps(on_row, live, activate<A>(acc_row));
      _mm512_mask_storeu_ps(on_col, live, activate<A>(acc_col));
    }
  }
}

}  // namespace

void forward_runs(const float* x, const float* w_row, const float* w_col, const float* bias, float* out,
                  const RunGeometry& g, Activation act) {
  const Parts parts(g, w_row, w_col, bias, /*backward=*/false);
  const int64_t plane = g.height * g.width;
  const int64_t x_sample = g.channels * plane, out_sample = (g.c_row + g.c_col) * plane;
  const int64_t seg_row = segments_of(parts.row), seg_col = segments_of(parts.col);
  const int64_t per_sample = g.full ? seg_row : seg_row + seg_col;
  dispatch_tap_count<3, 5, 7>(g.kernel, [&](auto kt) {
    dispatch_activation(act, [&](auto a) {
      constexpr int KT = decltype(kt)::value;
      constexpr Activation A = decltype(a)::value;
      auto run_segment = [&](const Run& r, int64_t n, int64_t s) {
        const int64_t c0 = s * kSegmentChunks, c1 = std::min(r.chunks, c0 + kSegmentChunks);
        forward_chunks<KT, A>(r, x + n * x_sample + r.x_offset, out + n * out_sample + r.out_offset, c0, c1);
      };
      if constexpr (KT > 0) {
        // Items are (segment, block of up to kSampleBlock samples) pairs, segment-major
        // (forward_segment_batched): a block shares its chunks' permuted weights, and
        // large batches of few channels still give every thread work.
        const int64_t blocks = (g.batch + kSampleBlock - 1) / kSampleBlock, items = per_sample * blocks;
        at::parallel_for(0, items, grain_for(items, g.batch * out_sample), [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end; ++item) {
            const int64_t s = item / blocks, n0 = (item % blocks) * kSampleBlock;
            const int64_t samples = std::min(kSampleBlock, g.batch - n0);
            const float* xb = x + n0 * x_sample;
            float* ob = out + n0 * out_sample;
            if (g.full) {
              const int64_t c0 = s * kSegmentChunks, c1 = std::min(parts.row.chunks, c0 + kSegmentChunks);
              const bool same = g.dilation == 1 && KT % 2 == 1 && 2 * g.padding == KT - 1;
              if constexpr (KT % 2 == 1) {
                if (same) {
                  forward_pair_batched<KT, A, true>(parts.row, parts.col, xb, ob, ob + parts.col.out_offset, x_sample,
                                                    out_sample, samples, c0, c1);
                  continue;
                }
              }
              forward_pair_batched<KT, A, false>(parts.row, parts.col, xb, ob, ob + parts.col.out_offset, x_sample,
                                                 out_sample, samples, c0, c1);
            } else {
              const bool row_part = s < seg_row;
              const Run& r = row_part ? parts.row : parts.col;
              const int64_t c0 = (row_part ? s : s - seg_row) * kSegmentChunks;
              const int64_t c1 = std::min(r.chunks, c0 + kSegmentChunks);
              forward_segment_batched<KT, A>(r, xb + r.x_offset, ob + r.out_offset, x_sample, out_sample, samples,
                                             c0, c1);
            }
          }
        });
        return;
      }
      // Other tap counts (weights from memory, not a register window): items are
      // (sample, segment) pairs.
      at::parallel_for(0, g.batch * per_sample, grain_for(g.batch * per_sample, g.batch * out_sample),
                       [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = item / per_sample, s = item % per_sample;
          if (g.full) {
            run_segment(parts.row, n, s);  // the segment's x is in L1 for the column part
            run_segment(parts.col, n, s);
          } else if (s < seg_row) {
            run_segment(parts.row, n, s);
          } else {
            run_segment(parts.col, n, s - seg_row);
          }
        }
      });
    });
  });
}

#else  // no AVX-512 in this build: run_path_applies() is false, the per-plane kernels run

void forward_runs(const float*, const float*, const float*, const float*, float*, const RunGeometry&, Activation) {
  TORCH_CHECK(false, "fuse_conv2d: the run path needs a build with AVX-512");
}

#endif

}  // namespace fuseops::runs
