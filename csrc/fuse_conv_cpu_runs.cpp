// The run path of the FuSe CPU kernels: float32, AVX-512, small stride-1 "same" planes.
// What a run is and why: see fuse_conv_cpu_runs.h.
#include "fuse_conv_cpu_runs.h"

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
// GCC 12 warns that the intrinsics' internal _mm512_undefined_ps() "may be used
// uninitialized" (a false positive inside avx512fintrin.h, not in this file's code).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace fuseops::runs {

#if defined(__AVX512F__)
namespace {

constexpr int64_t kLanes = 16;
// Planes up to these sizes take the run path (measured: docs/fuse_conv_cpu.md, "Why the
// run path looks as it does"): both directions gain or tie up to 56x56.  (The backward
// was held to 16x16 while it kept its per-position sums in memory, one load and store per
// tap, chunk and sample; since it keeps them in registers over a block of samples it wins
// at 28x28 and 56x56 too.)
constexpr int64_t kMaxPlaneForward = 4096;
constexpr int64_t kMaxPlaneBackward = 4096;
// The per-call tables have one entry per chunk phase: `period` = plane / gcd(plane, 16)
// phases (49 for 7x7, 14x14 and 28x28; 196 for 56x56).  Odd planes such as 17x17 have one
// phase per position, and for them the per-plane kernels are cheaper than the tables.
constexpr int64_t kMaxPeriod = 256;
// Work items are segments of this many chunks (1024 floats) of one run, over every sample
// (the backward) or over a block of up to kSampleBlock samples (the forward).
constexpr int64_t kSegmentChunks = 64;
constexpr int64_t kSampleBlock = 8;
// Filters longer than this take the per-plane kernels.
constexpr int64_t kMaxTaps = 16;
// Per-channel tables are padded so that a 32-channel window may start at any channel.
constexpr int64_t kPad = 32;

// One part (row or column) of the op, laid out as a run: everything that is the same for
// every sample of the batch.  A chunk's lanes span at most 16 consecutive channels, so a
// lane's weight is a permute of 16 consecutive channels' weights of one tap.  Which
// channel each lane has, and which taps read inside its plane, depend only on where the
// chunk starts inside a plane, so they repeat every `period` chunks (period * 16 is the
// least common multiple of 16 and the plane size) and are tabulated once per period.
struct Run {
  int64_t kernel = 0, plane = 0, channels = 0, length = 0, chunks = 0, reach = 0;
  int64_t period = 0, period_channels = 0;  // chunks per period; channels per period
  int64_t x_offset = 0, out_offset = 0;     // where the run starts inside one sample of x / of out
  int64_t out_channel = 0;                  // first output channel of the part
  std::vector<int64_t> off;                 // [k] tap offset inside the run
  std::vector<float> weight;                // [k * (channels + kPad) + ch], zero-padded
  std::vector<float> bias;                  // [ch], zero-padded by kPad; empty without bias
  std::vector<int32_t> lane_channel;        // [q * 16 + l] channel of lane l of chunk q, minus first[q]
  std::vector<int64_t> first;               // [q] first channel of chunk q of a period
  std::vector<uint16_t> fwd_mask;           // [k * period + q] lanes whose tap k reads inside their plane
  std::vector<uint16_t> bwd_mask;           // [k * period + q] lanes j read by tap k of an output

  // The tables cost O(K * (plane + period)) once per call; `backward` also builds bwd_mask.
  Run(const RunGeometry& g, bool row_part, int64_t part_channels, const float* w, const float* b, bool backward) {
    const int64_t H = g.height, W = g.width, K = g.kernel;
    kernel = K;
    plane = H * W;
    channels = part_channels;
    length = channels * plane;
    chunks = (length + kLanes - 1) / kLanes;
    period = plane / std::gcd(plane, kLanes);
    period_channels = period * kLanes / plane;
    off.resize(K);
    // fwd[k][pos] (0x80 or 0): output pos's tap k reads inside the plane; bwd[k][pos]: input
    // pos is read by tap k of an output of its plane.  Both repeat with the plane and are
    // extended by 16 positions, so the 16 lanes of a chunk starting at any pos0 < plane are
    // one 16-byte load, turned into a lane mask by movemask.
    const int64_t ext = plane + kLanes;
    std::vector<uint8_t> fwd(K * ext), bwd(backward ? K * ext : 0);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t t = k * g.dilation - g.padding, extent = row_part ? W : H;
      off[k] = row_part ? t : t * W;
      // A tap that reaches a whole plane side or more is masked everywhere: it bounds no halo.
      if (std::abs(t) < extent) reach = std::max(reach, std::abs(off[k]));
      for (int64_t h = 0, pos = 0; h < H; ++h) {
        for (int64_t col = 0; col < W; ++col, ++pos) {
          const int64_t coord = row_part ? col : h;
          fwd[k * ext + pos] = coord + t >= 0 && coord + t < extent ? 0x80 : 0;
          if (backward) bwd[k * ext + pos] = coord - t >= 0 && coord - t < extent ? 0x80 : 0;
        }
      }
      for (int64_t pos = plane; pos < ext; ++pos) {
        fwd[k * ext + pos] = fwd[k * ext + pos % plane];
        if (backward) bwd[k * ext + pos] = bwd[k * ext + pos % plane];
      }
    }
    weight.assign(K * (channels + kPad), 0.0f);
    for (int64_t ch = 0; ch < channels; ++ch) {
      for (int64_t k = 0; k < K; ++k) weight[k * (channels + kPad) + ch] = w[ch * K + k];
    }
    if (b != nullptr) {
      bias.assign(channels + kPad, 0.0f);
      std::copy(b, b + channels, bias.begin());
    }
    lane_channel.assign(period * kLanes, 0);
    first.assign(period, 0);
    fwd_mask.assign(K * period, 0);
    bwd_mask.assign(backward ? K * period : 0, 0);
    int64_t pos0 = 0, channel0 = 0;  // chunk q starts at position pos0 of channel channel0
    for (int64_t q = 0; q < period; ++q) {
      first[q] = channel0;
      // (pos0 + l) / plane, without a division per lane: this table is rebuilt every call,
      // and 64-bit divisions made it a third of a small call's time.
      for (int64_t l = 0, pos = pos0, lane_ch = 0; l < kLanes; ++l) {
        lane_channel[q * kLanes + l] = static_cast<int32_t>(lane_ch);
        if (++pos == plane) {
          pos = 0;
          ++lane_ch;
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const auto lanes_of = [&](const std::vector<uint8_t>& table) {
          return static_cast<uint16_t>(_mm_movemask_epi8(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(table.data() + k * ext + pos0))));
        };
        fwd_mask[k * period + q] = lanes_of(fwd);
        if (backward) bwd_mask[k * period + q] = lanes_of(bwd);
      }
      pos0 += kLanes;
      while (pos0 >= plane) {
        pos0 -= plane;
        ++channel0;
      }
    }
  }
};

// A Run's tables as raw pointers and small arrays in a local object.  The intrinsics'
// stores may alias anything, so loops that read a Run's std::vectors through a reference
// reload every pointer after each store; a local copy whose address never escapes stays
// in registers.
struct RunView {
  int64_t kernel, length, period, period_channels, weight_stride;
  const float* weight;
  const float* bias;  // nullptr without bias
  const int32_t* lane_channel;
  const int64_t* first;
  int64_t off[kMaxTaps];
  const uint16_t* fwd[kMaxTaps];
  const uint16_t* bwd[kMaxTaps];

  explicit RunView(const Run& r)
      : kernel(r.kernel), length(r.length), period(r.period), period_channels(r.period_channels),
        weight_stride(r.channels + kPad), weight(r.weight.data()),
        bias(r.bias.empty() ? nullptr : r.bias.data()), lane_channel(r.lane_channel.data()), first(r.first.data()) {
    for (int64_t k = 0; k < r.kernel; ++k) {
      off[k] = r.off[k];
      fwd[k] = r.fwd_mask.data() + k * r.period;
      bwd[k] = r.bwd_mask.data() + k * r.period;
    }
  }
  __mmask16 tail(int64_t c) const {
    const int64_t left = length - c * kLanes;
    return left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
  }
};

// Walks chunks c0, c0 + 1, ... of a run, keeping the chunk's place in its period and its
// first channel without a division per chunk.
struct ChunkCursor {
  int64_t q, base;  // q = c % period; base = (c / period) * period_channels
  ChunkCursor(const RunView& v, int64_t c) : q(c % v.period), base((c / v.period) * v.period_channels) {}
  int64_t channel(const RunView& v) const { return base + v.first[q]; }
  __m512i lanes(const RunView& v) const { return _mm512_loadu_si512(v.lane_channel + q * kLanes); }
  void next(const RunView& v) {
    if (++q == v.period) {
      q = 0;
      base += v.period_channels;
    }
  }
};

// 16 lanes' values of a per-channel table (weights of one tap, or bias).
inline __m512 per_lane(const float* table, int64_t channel, __m512i lanes) {
  return _mm512_permutexvar_ps(lanes, _mm512_loadu_ps(table + channel));
}

template <RunAct A>
inline __m512 activate(__m512 v) {
  // max/min return their second operand when either is NaN: written this way round a
  // NaN pre-activation stays NaN, as in torch.
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == RunAct::Relu) {
    return _mm512_max_ps(zero, v);
  } else if constexpr (A == RunAct::Relu6) {
    return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(zero, v));
  } else if constexpr (A == RunAct::Hardswish) {
    const __m512 gate = _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(zero, _mm512_add_ps(v, _mm512_set1_ps(3.0f))));
    return _mm512_div_ps(_mm512_mul_ps(v, gate), _mm512_set1_ps(6.0f));
  } else {
    return v;
  }
}

// d act / d pre * g, with the same choices at the kinks as fuse_conv_cpu.cpp's scalar code.
template <RunAct A>
inline __m512 activate_grad(__m512 g, __m512 pre) {
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == RunAct::Relu) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(pre, zero, _CMP_GT_OQ), g);
  } else if constexpr (A == RunAct::Relu6) {
    const __mmask16 inside =
        _mm512_cmp_ps_mask(pre, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(pre, _mm512_set1_ps(6.0f), _CMP_LT_OQ);
    return _mm512_maskz_mov_ps(inside, g);
  } else if constexpr (A == RunAct::Hardswish) {
    const __mmask16 below = _mm512_cmp_ps_mask(pre, _mm512_set1_ps(-3.0f), _CMP_LT_OQ);
    const __mmask16 middle = _mm512_cmp_ps_mask(pre, _mm512_set1_ps(3.0f), _CMP_LE_OQ) & ~below;
    const __m512 slope = _mm512_add_ps(_mm512_div_ps(pre, _mm512_set1_ps(3.0f)), _mm512_set1_ps(0.5f));
    const __m512 r = _mm512_mask_mul_ps(g, middle, g, slope);
    return _mm512_maskz_mov_ps(~below, r);
  } else {
    return g;
  }
}

// The tap weights (and bias) of channels [base, base + 32) held in registers.  A chunk's
// lanes span at most 16 channels from its first channel ch, so while ch < base + 16 a
// two-source permute of the window gives every lane its weight with no memory access;
// consecutive chunks mostly share their channels, so the window is reloaded only every
// 16 channels.  (Loading 16 weights at ch for every chunk and tap, as per_lane does, is
// an unaligned load that splits a cache line, and the loads were the loop's bottleneck.)
template <int KT>
struct WeightWindow {
  static_assert(KT > 0, "the window needs a compile-time tap count");
  __m512 lo[KT], hi[KT], bias_lo, bias_hi;
  int64_t base = std::numeric_limits<int64_t>::min() / 2;

  // Makes the window cover channel ch's chunk; returns the lanes' indices into it.
  inline __m512i cover(const RunView& v, int64_t ch, __m512i lanes) {
    if (ch >= base + kLanes || ch < base) {
      base = ch & ~(kLanes - 1);
      for (int k = 0; k < KT; ++k) {
        lo[k] = _mm512_loadu_ps(v.weight + k * v.weight_stride + base);
        hi[k] = _mm512_loadu_ps(v.weight + k * v.weight_stride + base + kLanes);
      }
      if (v.bias != nullptr) {
        bias_lo = _mm512_loadu_ps(v.bias + base);
        bias_hi = _mm512_loadu_ps(v.bias + base + kLanes);
      }
    }
    return _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(ch - base)));
  }
  inline __m512 weight(int k, __m512i index) const { return _mm512_permutex2var_ps(lo[k], index, hi[k]); }
  inline __m512 bias(__m512i index) const { return _mm512_permutex2var_ps(bias_lo, index, bias_hi); }
};

// One chunk's lane weights, bias and tap masks (`masks`: a RunView's fwd or bwd tables),
// permuted out of the register window once and held in registers while a block of
// samples runs through the chunk (the *_batched kernels below).
template <int KT>
struct ChunkTaps {
  __m512 weight[KT];
  __mmask16 mask[KT];
  __m512 bias;
  ChunkTaps(WeightWindow<KT>& window, const RunView& v, int64_t ch, __m512i lanes, int64_t q,
            const uint16_t* const* masks, __mmask16 live) {
    const __m512i index = window.cover(v, ch, lanes);
    for (int k = 0; k < KT; ++k) {
      weight[k] = window.weight(k, index);
      mask[k] = masks[k][q] & live;
    }
    bias = v.bias == nullptr ? _mm512_setzero_ps() : window.bias(index);
  }
};

// bias + sum_k w_k * x[i + off_k] over the live lanes of chunk c (x: the run's start).
// KT > 0: weights from the register window; KT == 0 (other tap counts): from memory.
template <int KT>
struct PreActivation {
  WeightWindow<KT> window;
  inline __m512 operator()(const RunView& v, const float* x, int64_t c, const ChunkCursor& at, __mmask16 live) {
    const int64_t i = c * kLanes;
    const __m512i index = window.cover(v, at.channel(v), at.lanes(v));
    __m512 acc = v.bias == nullptr ? _mm512_setzero_ps() : window.bias(index);
    for (int k = 0; k < KT; ++k) {
      const __m512 xv = _mm512_maskz_loadu_ps(v.fwd[k][at.q] & live, x + i + v.off[k]);
      acc = _mm512_fmadd_ps(window.weight(k, index), xv, acc);
    }
    return acc;
  }
};

template <>
struct PreActivation<0> {
  inline __m512 operator()(const RunView& v, const float* x, int64_t c, const ChunkCursor& at, __mmask16 live) {
    const int64_t i = c * kLanes, ch = at.channel(v);
    const __m512i lanes = at.lanes(v);
    __m512 acc = v.bias == nullptr ? _mm512_setzero_ps() : per_lane(v.bias, ch, lanes);
    for (int64_t k = 0; k < v.kernel; ++k) {
      const __m512 xv = _mm512_maskz_loadu_ps(v.fwd[k][at.q] & live, x + i + v.off[k]);
      acc = _mm512_fmadd_ps(per_lane(v.weight + k * v.weight_stride, ch, lanes), xv, acc);
    }
    return acc;
  }
};

template <int KT, RunAct A>
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
template <int KT, RunAct A>
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
template <int KT, RunAct A, bool kSame>
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

int64_t segments_of(const Run& r) { return (r.chunks + kSegmentChunks - 1) / kSegmentChunks; }

// Calls with fewer outputs than this per thread stay on one thread: at::parallel_for's
// fork and join cost about 4 us on the 2-core CPU here (a 98-float call took 4.3 us on
// one thread and 8.7 us on two), about what computing 16K outputs takes.
constexpr int64_t kMinOutputsPerThread = 16384;

// The grain (items per thread at least) for `items` work items that write `outputs` floats.
int64_t grain_for(int64_t items, int64_t outputs) {
  return std::max<int64_t>(1, kMinOutputsPerThread * items / std::max<int64_t>(outputs, 1));
}

template <typename F>
void dispatch_kernel(int64_t kernel, F&& f) {
  switch (kernel) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}


struct Parts {
  Run row, col;
  Parts(const RunGeometry& g, const float* w_row, const float* w_col, const float* bias, bool backward)
      : row(g, true, g.c_row, w_row, bias, backward),
        col(g, false, g.c_col, w_col, bias ? bias + g.c_row : nullptr, backward) {
    const int64_t plane = g.height * g.width;
    row.x_offset = 0;
    row.out_offset = 0;
    row.out_channel = 0;
    col.x_offset = g.full ? 0 : g.c_row * plane;
    col.out_offset = g.c_row * plane;
    col.out_channel = g.c_row;
  }
};

}  // namespace

bool run_path_applies(const RunGeometry& g, bool backward) {
  // Stride 1 and the "same" output shape are checked by the caller.
  const int64_t plane = g.height * g.width;
  return plane <= (backward ? kMaxPlaneBackward : kMaxPlaneForward) && g.kernel <= kMaxTaps &&
         plane / std::gcd(plane, kLanes) <= kMaxPeriod;
}

void forward_runs(const float* x, const float* w_row, const float* w_col, const float* bias, float* out,
                  const RunGeometry& g, RunAct act) {
  const Parts parts(g, w_row, w_col, bias, /*backward=*/false);
  const int64_t plane = g.height * g.width;
  const int64_t x_sample = g.channels * plane, out_sample = (g.c_row + g.c_col) * plane;
  const int64_t seg_row = segments_of(parts.row), seg_col = segments_of(parts.col);
  const int64_t per_sample = g.full ? seg_row : seg_row + seg_col;
  dispatch_kernel(g.kernel, [&](auto kt) {
    dispatch_activation(act, [&](auto a) {
      constexpr int KT = decltype(kt)::value;
      constexpr RunAct A = decltype(a)::value;
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

namespace {

// The backward of one segment [c0, c1) of one run, for every sample:
//   grad_pre = act'(pre) * grad_out (pre recomputed), kept in gp for chunks
//   [e0, e1) = [c0 - halo, c1 + halo) so that the transposed conv below can read its
//   neighbours; the tap and bias sums of every position, accumulated over the batch into
//   sums (row k at sums + k * sums_stride, starting at chunk c0); and this part's share of grad_x for [c0, c1), written
//   (first part) or added (second part) into gx.
template <int KT, RunAct A>
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
    if constexpr (A == RunAct::None) {
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
template <int KT, RunAct A>
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
      if (A != RunAct::None || owned) {
        for (int k = 0; k < KT; ++k) xv[k] = _mm512_maskz_loadu_ps(mask[k], xn + off[k]);
      }
      __m512 gpv = g;
      if constexpr (A != RunAct::None) {
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
                   const RunGeometry& g, RunAct act) {
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

  dispatch_kernel(g.kernel, [&](auto kt) {
    dispatch_activation(act, [&](auto a) {
      constexpr int KT = decltype(kt)::value;
      constexpr RunAct A = decltype(a)::value;
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

#else  // no AVX-512 in this build: the per-plane kernels of fuse_conv_cpu.cpp run instead

bool run_path_applies(const RunGeometry&, bool) { return false; }

void forward_runs(const float*, const float*, const float*, const float*, float*, const RunGeometry&, RunAct) {
  TORCH_CHECK(false, "fuse_conv2d: the run path needs a build with AVX-512");
}

void backward_runs(const float*, const float*, const float*, const float*, const float*, float*, float*, float*,
                   float*, const RunGeometry&, RunAct) {
  TORCH_CHECK(false, "fuse_conv2d: the run path needs a build with AVX-512");
}

#endif

}  // namespace fuseops::runs

// What `python -m fuseops info` reports about this build's FuSe CPU kernels.
namespace {
std::string fuse_conv2d_cpu_features() {
#if defined(__AVX512F__)
  return "AVX-512 run path for float32 stride-1 'same' planes";
#else
  return "no AVX-512 run path (built without AVX-512; per-plane kernels only)";
#endif
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) { m.def("fuse_conv2d_cpu_features() -> str", &fuse_conv2d_cpu_features); }
