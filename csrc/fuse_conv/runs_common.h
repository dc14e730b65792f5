// What the run path's forward (runs_forward.cpp) and backward (runs_backward.cpp) share:
// a part's run layout and its per-call tables, the register window of weights, the
// chunk cursor, the vector activations and the work split.  What a run is and why:
// runs.h.  Everything here is inline or a template, so each kernel TU inlines it into
// its loops.  Empty in builds without AVX-512.
#pragma once

#include "common/conv_size.h"
#include "fuse_conv/runs.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <numeric>
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

#if defined(__AVX512F__)

namespace fuseops::runs {

// Work items are segments of this many chunks (1024 floats) of one run, over every sample
// (the backward) or over a block of up to kSampleBlock samples (the forward).
constexpr int64_t kSegmentChunks = 64;
constexpr int64_t kSampleBlock = 8;
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

template <Activation A>
inline __m512 activate(__m512 v) {
  // max/min return their second operand when either is NaN: written this way round a
  // NaN pre-activation stays NaN, as in torch.
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == Activation::Relu) {
    return _mm512_max_ps(zero, v);
  } else if constexpr (A == Activation::Relu6) {
    return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(zero, v));
  } else if constexpr (A == Activation::Hardswish) {
    const __m512 gate = _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(zero, _mm512_add_ps(v, _mm512_set1_ps(3.0f))));
    return _mm512_div_ps(_mm512_mul_ps(v, gate), _mm512_set1_ps(6.0f));
  } else {
    return v;
  }
}

// d act / d pre * g, with the same choices at the kinks as the scalar activate_grad (common/activation.h).
template <Activation A>
inline __m512 activate_grad(__m512 g, __m512 pre) {
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == Activation::Relu) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(pre, zero, _CMP_GT_OQ), g);
  } else if constexpr (A == Activation::Relu6) {
    const __mmask16 inside =
        _mm512_cmp_ps_mask(pre, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(pre, _mm512_set1_ps(6.0f), _CMP_LT_OQ);
    return _mm512_maskz_mov_ps(inside, g);
  } else if constexpr (A == Activation::Hardswish) {
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


inline int64_t segments_of(const Run& r) { return (r.chunks + kSegmentChunks - 1) / kSegmentChunks; }

// Calls with fewer outputs than this per thread stay on one thread: at::parallel_for's
// fork and join cost about 4 us on the 2-core CPU here (a 98-float call took 4.3 us on
// one thread and 8.7 us on two), about what computing 16K outputs takes.
constexpr int64_t kMinOutputsPerThread = 16384;

// The grain (items per thread at least) for `items` work items that write `outputs` floats.
inline int64_t grain_for(int64_t items, int64_t outputs) {
  return std::max<int64_t>(1, kMinOutputsPerThread * items / std::max<int64_t>(outputs, 1));
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

}  // namespace fuseops::runs

#endif  // __AVX512F__
