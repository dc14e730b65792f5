// What the direct depthwise kernels of the forward (forward.cpp) and the backward
// (backward.cpp) share: padding one block into a cache-resident buffer, the vectorised
// row copies in and out of it, and the compile-time tap tables of the 3x3 and 5x5 paths.
#pragma once

#include "block_conv/geometry.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fuseops::block_conv {

// dst[u] = src[u] for u < n, for the short rows (one block's width, 7-28 pixels) that the
// direct depthwise kernels copy in and out of their cache-resident buffers.  For float32
// the rows move in 16-lane vectors with a masked tail: the compiler's loop for a run-time
// count of 14 is scalar (one vector is 16 wide), and those per-pixel moves made 14-pixel
// blocks ~1.4x the plain depthwise conv on the AMD EPYC (Zen 5) CI machine (F28: 1.0x).
// The masked load never touches memory past src[n - 1] and the masked store never writes
// past dst[n - 1], so rows at the end of a tensor or next to another thread's plane are safe.
template <typename dst_t, typename src_t>
inline void copy_row(dst_t* __restrict dst, const src_t* __restrict src, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<dst_t, float> && std::is_same_v<src_t, float>) {
    int64_t u = 0;
    for (; u + 16 <= n; u += 16) _mm512_storeu_ps(dst + u, _mm512_loadu_ps(src + u));
    if (u < n) {
      const __mmask16 tail = static_cast<__mmask16>((1u << (n - u)) - 1u);
      _mm512_mask_storeu_ps(dst + u, tail, _mm512_maskz_loadu_ps(tail, src + u));
    }
    return;
  }
#endif
  for (int64_t u = 0; u < n; ++u) dst[u] = static_cast<dst_t>(src[u]);
}

// dst[u] += src[u] for u < n: the backward's fold of a padded block's interior gradient
// onto its own pixels, vectorised like copy_row.
template <typename dst_t, typename src_t>
inline void add_row(dst_t* __restrict dst, const src_t* __restrict src, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<dst_t, float> && std::is_same_v<src_t, float>) {
    int64_t u = 0;
    for (; u + 16 <= n; u += 16) _mm512_storeu_ps(dst + u, _mm512_add_ps(_mm512_loadu_ps(dst + u), _mm512_loadu_ps(src + u)));
    if (u < n) {
      const __mmask16 tail = static_cast<__mmask16>((1u << (n - u)) - 1u);
      const __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(tail, dst + u), _mm512_maskz_loadu_ps(tail, src + u));
      _mm512_mask_storeu_ps(dst + u, tail, sum);
    }
    return;
  }
#endif
  for (int64_t u = 0; u < n; ++u) dst[u] = static_cast<dst_t>(static_cast<src_t>(dst[u]) + src[u]);
}

// One padded row of a block in opmath: the block's `size` pixels of `src` at dst[pad ..],
// and the pad columns either side from the block's own pixels (table: padded column ->
// source offset in the block, -1 for a zero).
template <typename scalar_t, typename acc_t>
inline void pad_block_row(acc_t* dst, const scalar_t* src, int64_t size, int64_t pad, const int64_t* table) {
  copy_row(dst + pad, src, size);
  for (int64_t u = 0; u < pad; ++u) {
    const int64_t left = table[u], right = table[pad + size + u];
    dst[u] = left < 0 ? acc_t(0) : static_cast<acc_t>(src[left]);
    dst[pad + size + u] = right < 0 ? acc_t(0) : static_cast<acc_t>(src[right]);
  }
}

// The padded block (ph x pw, row pitch pw) of the block starting at (r0, c0) of one plane.
template <typename scalar_t, typename acc_t>
inline void pad_block(acc_t* padded, const scalar_t* plane, int64_t width, const SizeClass& rows,
                      const SizeClass& cols, int64_t r0, int64_t c0) {
  const int64_t ph = rows.table.size(), pw = cols.table.size();
  for (int64_t t = 0; t < ph; ++t) {
    acc_t* prow = padded + t * pw;
    const int64_t sr = rows.table[t];
    if (sr < 0) {
      std::fill(prow, prow + pw, acc_t(0));
      continue;
    }
    pad_block_row(prow, plane + (r0 + sr) * width + c0, cols.size, (pw - cols.size) / 2, cols.table.data());
  }
}

// Stride-1 depthwise blocks with a compile-time tap count (3x3 and 5x5, any dilation):
// every tap of an output accumulates in a register, instead of one pass over the block's
// accumulator per tap (9 loads and stores of the accumulator per output for 3x3).  The
// loops run to a multiple of kSpanStep so they have no scalar remainder (a 14x14 block's
// span of 222 would leave 14 scalar iterations of all taps); the buffers carry kSpanStep
// elements of zero slack for the extra reads, whose results are dropped.
constexpr int64_t kSpanStep = 16;

inline int64_t round_up_span(int64_t span) { return (span + kSpanStep - 1) / kSpanStep * kSpanStep; }

template <int KH, int KW>
struct FixedTaps {
  static constexpr int kH = KH, kW = KW;
};

// The taps of a kh x kw filter over a padded block of row pitch `pitch`: each tap's offset
// in the block and its weight, in locals the compiler keeps in registers.
template <int KH, int KW, typename acc_t>
struct TapTable {
  static constexpr int T = KH * KW;
  int64_t off[T];
  acc_t w[T];
  TapTable(const acc_t* weights, int64_t pitch, int64_t dh, int64_t dw) {
    for (int a = 0; a < KH; ++a) {
      for (int b = 0; b < KW; ++b) {
        off[a * KW + b] = a * dh * pitch + b * dw;
        w[a * KW + b] = weights[a * KW + b];
      }
    }
  }
};

// Calls f(FixedTaps<KH, KW>{}) for the specialised filter sizes, else returns false.
template <typename F>
inline bool dispatch_fixed_taps(int64_t kh, int64_t kw, F&& f) {
  if (kh == 3 && kw == 3) {
    f(FixedTaps<3, 3>{});
    return true;
  }
  if (kh == 5 && kw == 5) {
    f(FixedTaps<5, 5>{});
    return true;
  }
  return false;
}

}  // namespace fuseops::block_conv
