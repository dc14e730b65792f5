// Moving blocks between a feature map and a gathered batch of blocks, for the gather /
// conv / stitch path of the block conv ops: the padded-block gather and its adjoint, the
// output-block stitch, and the strided tile copies (with AVX2 transposes) under them.
// Templates, so each kernel TU inlines them into its loops.
#pragma once

#include "block_conv/geometry.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fuseops::block_conv {

#if defined(__AVX2__)
// dst[r * dst_ld + c] = src[c * src_ld + r] for an (nr x nc) float tile, nr, nc <= 8, in
// registers: eight 32-byte loads, 24 shuffles, eight 32-byte stores instead of 64 strided
// scalar moves.  Partial tiles (ragged block widths: 14 = 8 + 6, 7, 3) use masked loads
// and stores, so nothing outside the tile is read or written.
inline __m256i lane_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline void transpose8x8(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t nr = 8,
                         int64_t nc = 8) {
  __m256 r[8];
  if (nr == 8 && nc == 8) {
    for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + k * src_ld);
  } else {
    const __m256i m = lane_mask(nc);
    for (int k = 0; k < 8; ++k) r[k] = k < nr ? _mm256_maskload_ps(src + k * src_ld, m) : _mm256_setzero_ps();
  }
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  __m256 o[8] = {_mm256_permute2f128_ps(s0, s4, 0x20), _mm256_permute2f128_ps(s1, s5, 0x20),
                 _mm256_permute2f128_ps(s2, s6, 0x20), _mm256_permute2f128_ps(s3, s7, 0x20),
                 _mm256_permute2f128_ps(s0, s4, 0x31), _mm256_permute2f128_ps(s1, s5, 0x31),
                 _mm256_permute2f128_ps(s2, s6, 0x31), _mm256_permute2f128_ps(s3, s7, 0x31)};
  if (nr == 8 && nc == 8) {
    for (int k = 0; k < 8; ++k) _mm256_storeu_ps(dst + k * dst_ld, o[k]);
  } else {
    const __m256i m = lane_mask(nr);
    for (int k = 0; k < nc; ++k) _mm256_maskstore_ps(dst + k * dst_ld, m, o[k]);
  }
}
#endif

// dst[w * dst_ld + c] = src[c * src_ld + w] for a (chans x width) float tile: the NCHW
// <-> channels_last transposes of the gather and the stitch.  Returns false (nothing
// done) where the vector path does not apply, so the caller keeps its scalar loop.
inline bool transpose_tile(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t chans,
                           int64_t width) {
#if defined(__AVX2__)
  for (int64_t c0 = 0; c0 < chans; c0 += 8) {
    const int64_t nr = std::min<int64_t>(8, chans - c0);
    for (int64_t w0 = 0; w0 < width; w0 += 8)
      transpose8x8(src + c0 * src_ld + w0, src_ld, dst + w0 * dst_ld + c0, dst_ld, nr,
                   std::min<int64_t>(8, width - w0));
  }
  return true;
#else
  (void)src, (void)src_ld, (void)dst, (void)dst_ld, (void)chans, (void)width;
  return false;
#endif
}

// A (C x W) tile with arbitrary strides: dst = src, or dst += src when Add.  The fast
// paths are the layouts that occur: both W-contiguous (NCHW to NCHW: row copies), both
// C-contiguous (channels_last to channels_last: pixel copies) and the two transposes,
// done 16 channels at a time so the strided side stays in cache.
template <typename scalar_t, bool Add>
inline void copy_tile(scalar_t* dst, int64_t dcs, int64_t dws, const scalar_t* src, int64_t scs, int64_t sws, int64_t chans,
               int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  auto put = [](scalar_t& to, scalar_t from) {
    if constexpr (Add) {
      to = static_cast<acc_t>(to) + static_cast<acc_t>(from);
    } else {
      to = from;
    }
  };
  if (!Add && dws == 1 && sws == 1) {
    for (int64_t c = 0; c < chans; ++c) std::memcpy(dst + c * dcs, src + c * scs, sizeof(scalar_t) * width);
  } else if (!Add && dcs == 1 && scs == 1) {
    for (int64_t w = 0; w < width; ++w) std::memcpy(dst + w * dws, src + w * sws, sizeof(scalar_t) * chans);
  } else if (dws == 1 && sws == 1) {
    for (int64_t c = 0; c < chans; ++c)
      for (int64_t w = 0; w < width; ++w) put(dst[c * dcs + w], src[c * scs + w]);
  } else if (dcs == 1 && scs == 1) {
    for (int64_t w = 0; w < width; ++w)
      for (int64_t c = 0; c < chans; ++c) put(dst[w * dws + c], src[w * sws + c]);
  } else if (dcs == 1) {
    if constexpr (!Add && std::is_same_v<scalar_t, float>) {  // NCHW -> channels_last
      if (sws == 1 && transpose_tile(src, scs, dst, dws, chans, width)) return;
    }
    for (int64_t c0 = 0; c0 < chans; c0 += 16) {
      const int64_t c1 = std::min(chans, c0 + 16);
      for (int64_t w = 0; w < width; ++w)
        for (int64_t c = c0; c < c1; ++c) put(dst[w * dws + c], src[c * scs + w * sws]);
    }
  } else {
    if constexpr (!Add && std::is_same_v<scalar_t, float>) {  // channels_last -> NCHW
      if (dws == 1 && scs == 1 && transpose_tile(src, sws, dst, dcs, width, chans)) return;
    }
    for (int64_t c0 = 0; c0 < chans; c0 += 16) {
      const int64_t c1 = std::min(chans, c0 + 16);
      for (int64_t w = 0; w < width; ++w)
        for (int64_t c = c0; c < c1; ++c) put(dst[c * dcs + w * dws], src[c * scs + w * sws]);
    }
  }
}

// The kernels read and write through strides, so x, grad_out and the buffers may be NCHW,
// channels_last or sliced.
struct Strides4 {
  int64_t n, c, h, w;
  explicit Strides4(const at::Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
};

// Block b of a gathered batch of (row class, col class) blocks is (sample n, block row i,
// block column j), ordered (n, i, j).
struct BlockIndex {
  int64_t n, i, j;
  BlockIndex(int64_t b, int64_t block_rows, int64_t block_cols)
      : n(b / (block_cols * block_rows)), i((b / block_cols) % block_rows), j(b % block_cols) {}
};

// Calls f(u, source) for each pad column u of a padded block row (the columns outside the
// block's own [pad, pad + size)); source is the block column it reads, or -1 for a zero.
template <typename F>
inline void for_each_pad_column(const SizeClass& cols, int64_t pad, F&& f) {
  const int64_t total = static_cast<int64_t>(cols.table.size());
  for (int64_t u = 0; u < pad; ++u) f(u, cols.table[u]);
  for (int64_t u = pad + cols.size; u < total; ++u) f(u, cols.table[u]);
}

// Padded blocks of one (row class, col class) pair: x (N, C, H, W), any strides ->
// buf (N*nr*nc, C, bh+2ph, bw+2pw), block b = (n, i, j) in that order.
// Work item: one padded row of one block, all channels.
template <typename scalar_t>
inline void gather_padded(const at::Tensor& x, at::Tensor& buf, const SizeClass& rows, const SizeClass& cols,
                   int64_t pad_w) {
  const int64_t channels = x.size(1);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const int64_t ph_total = rows.table.size(), pw_total = cols.table.size(), bw = cols.size;
  const Strides4 xs(x), bs(buf);
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = buf.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, buf.size(0) * ph_total, 8, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % ph_total, b = item / ph_total;
      const BlockIndex at(b, nr, nc);
      scalar_t* out = dst + b * bs.n + t * bs.h;
      const int64_t sr = rows.table[t];
      if (sr < 0) {  // a padding row of zeros
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t u = 0; u < pw_total; ++u) out[c * bs.c + u * bs.w] = scalar_t(0);
        continue;
      }
      const scalar_t* line = src + at.n * xs.n + (rows.in_starts[at.i] + sr) * xs.h + cols.in_starts[at.j] * xs.w;
      copy_tile<scalar_t, false>(out + pad_w * bs.w, bs.c, bs.w, line, xs.c, xs.w, channels, bw);
      for_each_pad_column(cols, pad_w, [&](int64_t u, int64_t sc) {
        for (int64_t c = 0; c < channels; ++c)
          out[c * bs.c + u * bs.w] = sc < 0 ? scalar_t(0) : line[c * xs.c + sc * xs.w];
      });
    }
  });
}

// The adjoint of gather_padded: grad_x[block] += every padded-block gradient that read
// it.  grad_x must hold zeros.  A block's padding reads only that block's own pixels and
// blocks are disjoint, so work items (whole blocks) never touch the same element of
// grad_x: race-free, and the order of the sums within a block is fixed (deterministic).
template <typename scalar_t>
inline void scatter_padded(const at::Tensor& grad_buf, at::Tensor& grad_x, const SizeClass& rows, const SizeClass& cols,
                    int64_t pad_w) {
  const int64_t channels = grad_x.size(1);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const int64_t ph_total = rows.table.size(), bw = cols.size;
  const Strides4 xs(grad_x), bs(grad_buf);
  const scalar_t* src = grad_buf.const_data_ptr<scalar_t>();
  scalar_t* dst = grad_x.mutable_data_ptr<scalar_t>();
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, grad_buf.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const BlockIndex at(b, nr, nc);
      for (int64_t t = 0; t < ph_total; ++t) {
        const int64_t sr = rows.table[t];
        if (sr < 0) continue;
        scalar_t* line = dst + at.n * xs.n + (rows.in_starts[at.i] + sr) * xs.h + cols.in_starts[at.j] * xs.w;
        const scalar_t* g = src + b * bs.n + t * bs.h;
        copy_tile<scalar_t, true>(line, xs.c, xs.w, g + pad_w * bs.w, bs.c, bs.w, channels, bw);
        for_each_pad_column(cols, pad_w, [&](int64_t u, int64_t sc) {
          if (sc < 0) return;
          for (int64_t c = 0; c < channels; ++c) {
            scalar_t& to = line[c * xs.c + sc * xs.w];
            to = static_cast<acc_t>(to) + static_cast<acc_t>(g[c * bs.c + u * bs.w]);
          }
        });
      }
    }
  });
}

// Output blocks <-> stitched map.  blocks: (N*nr*nc, C, oh, ow); full: (N, C, OH, OW).
// to_full=true writes the blocks into the map (forward); false reads them out (backward).
template <typename scalar_t>
inline void move_blocks(at::Tensor& blocks, const at::Tensor& full, const SizeClass& rows, const SizeClass& cols,
                 int64_t oh, int64_t ow, bool to_full) {
  const int64_t channels = full.size(1);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const Strides4 bs(blocks), fs(full);
  scalar_t* blk = blocks.mutable_data_ptr<scalar_t>();
  scalar_t* map = const_cast<scalar_t*>(full.const_data_ptr<scalar_t>());  // written only when to_full
  at::parallel_for(0, blocks.size(0) * oh, 8, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item % oh, b = item / oh;
      const BlockIndex at(b, nr, nc);
      scalar_t* block = blk + b * bs.n + r * bs.h;
      scalar_t* line = map + at.n * fs.n + (rows.out_starts[at.i] + r) * fs.h + cols.out_starts[at.j] * fs.w;
      if (to_full) {
        copy_tile<scalar_t, false>(line, fs.c, fs.w, block, bs.c, bs.w, channels, ow);
      } else {
        copy_tile<scalar_t, false>(block, bs.c, bs.w, line, fs.c, fs.w, channels, ow);
      }
    }
  });
}

}  // namespace fuseops::block_conv
