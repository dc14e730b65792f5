// Block convolution on the CPU: gather the padded blocks, one ATen conv per block size,
// scatter the output blocks into place.
//
// Every block is padded with its own values only, so a blocked conv is an ordinary conv
// (padding 0) over a batch of padded blocks.  Blocks of equal size (all of them when the
// map divides; up to four size classes with ragged last blocks or hierarchical spans that
// differ by one pixel) are gathered in one pass into an (N*blocks, C, bh+2ph, bw+2pw)
// buffer and handed to at::convolution as one batch, so the conv itself runs at the speed
// of the plain conv and the cost over it is the gather and the output scatter.
//
// The backward re-gathers x, gathers grad_out per block, runs at::convolution_backward
// per size class and scatters the padded-block gradient back onto grad_x: each block's
// padding maps only onto that block's own pixels, so blocks never write to the same
// element of grad_x and the scatter is race-free and deterministic (fixed order within
// a block, no atomics).
//
// Ops (schemas in TORCH_LIBRARY_FRAGMENT(fuseops_ext)):
//   block_conv2d_forward, block_conv2d_backward, block_pad_forward, block_pad_backward,
//   block_conv2d_release_workspace.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// The gathered padded blocks (and so ATen's conv on them) are channels_last whatever x's
// layout: oneDNN's CPU conv is fastest there (depthwise ~10x faster than NCHW), and the
// gather transposes NCHW input for free while it pads (docs/block-conv.md, "channels_last
// buffers").
constexpr auto kBufferFormat = at::MemoryFormat::ChannelsLast;

enum class PadMode { kConstant, kReplicate, kReflect };

PadMode parse_mode(const std::string& mode) {
  if (mode == "constant") return PadMode::kConstant;
  if (mode == "replicate") return PadMode::kReplicate;
  if (mode == "reflect") return PadMode::kReflect;
  TORCH_CHECK(false, "padding_mode must be constant, replicate or reflect, got ", mode);
}

// Where padded coordinate t (0 <= t < size + 2*pad) of a block of `size` pixels reads
// from, relative to the block's start; -1 means a zero (constant padding).
int64_t source_index(int64_t t, int64_t size, int64_t pad, PadMode mode) {
  int64_t u = t - pad;
  if (u >= 0 && u < size) return u;
  switch (mode) {
    case PadMode::kConstant:
      return -1;
    case PadMode::kReplicate:
      return u < 0 ? 0 : size - 1;
    case PadMode::kReflect:
      return u < 0 ? -u : 2 * (size - 1) - u;
  }
  return -1;
}

// One dimension's blocks of one size: their starts in the input and in the output.
struct SizeClass {
  int64_t size = 0;                 // block pixels
  std::vector<int64_t> in_starts;   // block starts in x
  std::vector<int64_t> out_starts;  // block starts in the output
  std::vector<int64_t> table;       // padded coordinate -> source offset in the block (-1: zero)
};

int64_t out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return (size + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

// Splits one dimension's block bounds into size classes, in order of first appearance.
std::vector<SizeClass> size_classes(const std::vector<int64_t>& bounds, int64_t extent, int64_t kernel,
                                    int64_t stride, int64_t pad, int64_t dilation, PadMode mode,
                                    const char* dim) {
  TORCH_CHECK(bounds.size() >= 2, "block bounds along ", dim, " need at least two entries");
  TORCH_CHECK(bounds.front() == 0 && bounds.back() == extent, "block bounds along ", dim,
              " must run from 0 to the map size ", extent);
  std::vector<SizeClass> classes;
  int64_t out_start = 0;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    const int64_t size = bounds[i + 1] - bounds[i];
    TORCH_CHECK(size > 0, "block bounds along ", dim, " must increase strictly");
    TORCH_CHECK(mode != PadMode::kReflect || pad < size, "reflect padding needs padding < every block's size; "
                "padding along ", dim, " is ", pad, " and a block has ", size, " pixels");
    const int64_t outs = out_size(size, kernel, stride, pad, dilation);
    TORCH_CHECK(outs >= 1, "a block of ", size, " pixels along ", dim, " is too small for the kernel");
    auto it = std::find_if(classes.begin(), classes.end(), [&](const SizeClass& c) { return c.size == size; });
    if (it == classes.end()) {
      SizeClass cls;
      cls.size = size;
      for (int64_t t = 0; t < size + 2 * pad; ++t) cls.table.push_back(source_index(t, size, pad, mode));
      classes.push_back(std::move(cls));
      it = classes.end() - 1;
    }
    it->in_starts.push_back(bounds[i]);
    it->out_starts.push_back(out_start);
    out_start += outs;
  }
  return classes;
}

int64_t total_out(const std::vector<int64_t>& bounds, int64_t kernel, int64_t stride, int64_t pad,
                  int64_t dilation) {
  int64_t total = 0;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) total += out_size(bounds[i + 1] - bounds[i], kernel, stride, pad, dilation);
  return total;
}

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
void copy_tile(scalar_t* dst, int64_t dcs, int64_t dws, const scalar_t* src, int64_t scs, int64_t sws, int64_t chans,
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

// Padded blocks of one (row class, col class) pair: x (N, C, H, W), any strides ->
// buf (N*nr*nc, C, bh+2ph, bw+2pw), block b = (n, i, j) in that order.
// Work item: one padded row of one block, all channels.
template <typename scalar_t>
void gather_padded(const at::Tensor& x, at::Tensor& buf, const SizeClass& rows, const SizeClass& cols,
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
      const int64_t j = b % nc, i = (b / nc) % nr, n = b / (nc * nr);
      scalar_t* out = dst + b * bs.n + t * bs.h;
      const int64_t sr = rows.table[t];
      if (sr < 0) {  // a padding row of zeros
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t u = 0; u < pw_total; ++u) out[c * bs.c + u * bs.w] = scalar_t(0);
        continue;
      }
      const scalar_t* line = src + n * xs.n + (rows.in_starts[i] + sr) * xs.h + cols.in_starts[j] * xs.w;
      copy_tile<scalar_t, false>(out + pad_w * bs.w, bs.c, bs.w, line, xs.c, xs.w, channels, bw);
      for (int64_t u = 0; u < pw_total; ++u) {
        if (u == pad_w) u += bw;  // skip the interior
        if (u >= pw_total) break;
        const int64_t sc = cols.table[u];
        for (int64_t c = 0; c < channels; ++c)
          out[c * bs.c + u * bs.w] = sc < 0 ? scalar_t(0) : line[c * xs.c + sc * xs.w];
      }
    }
  });
}

// The adjoint of gather_padded: grad_x[block] += every padded-block gradient that read
// it.  grad_x must hold zeros.  A block's padding reads only that block's own pixels and
// blocks are disjoint, so work items (whole blocks) never touch the same element of
// grad_x: race-free, and the order of the sums within a block is fixed (deterministic).
template <typename scalar_t>
void scatter_padded(const at::Tensor& grad_buf, at::Tensor& grad_x, const SizeClass& rows, const SizeClass& cols,
                    int64_t pad_w) {
  const int64_t channels = grad_x.size(1);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const int64_t ph_total = rows.table.size(), pw_total = cols.table.size(), bw = cols.size;
  const Strides4 xs(grad_x), bs(grad_buf);
  const scalar_t* src = grad_buf.const_data_ptr<scalar_t>();
  scalar_t* dst = grad_x.mutable_data_ptr<scalar_t>();
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, grad_buf.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t j = b % nc, i = (b / nc) % nr, n = b / (nc * nr);
      for (int64_t t = 0; t < ph_total; ++t) {
        const int64_t sr = rows.table[t];
        if (sr < 0) continue;
        scalar_t* line = dst + n * xs.n + (rows.in_starts[i] + sr) * xs.h + cols.in_starts[j] * xs.w;
        const scalar_t* g = src + b * bs.n + t * bs.h;
        copy_tile<scalar_t, true>(line, xs.c, xs.w, g + pad_w * bs.w, bs.c, bs.w, channels, bw);
        for (int64_t u = 0; u < pw_total; ++u) {
          if (u == pad_w) u += bw;
          if (u >= pw_total) break;
          const int64_t sc = cols.table[u];
          if (sc < 0) continue;
          for (int64_t c = 0; c < channels; ++c) {
            scalar_t& to = line[c * xs.c + sc * xs.w];
            to = static_cast<acc_t>(to) + static_cast<acc_t>(g[c * bs.c + u * bs.w]);
          }
        }
      }
    }
  });
}

// Output blocks <-> stitched map.  blocks: (N*nr*nc, C, oh, ow); full: (N, C, OH, OW).
// to_full=true writes the blocks into the map (forward); false reads them out (backward).
template <typename scalar_t>
void move_blocks(at::Tensor& blocks, const at::Tensor& full, const SizeClass& rows, const SizeClass& cols,
                 int64_t oh, int64_t ow, bool to_full) {
  const int64_t channels = full.size(1);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const Strides4 bs(blocks), fs(full);
  scalar_t* blk = blocks.mutable_data_ptr<scalar_t>();
  scalar_t* map = const_cast<scalar_t*>(full.const_data_ptr<scalar_t>());  // written only when to_full
  at::parallel_for(0, blocks.size(0) * oh, 8, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item % oh, b = item / oh;
      const int64_t j = b % nc, i = (b / nc) % nr, n = b / (nc * nr);
      scalar_t* block = blk + b * bs.n + r * bs.h;
      scalar_t* line = map + n * fs.n + (rows.out_starts[i] + r) * fs.h + cols.out_starts[j] * fs.w;
      if (to_full) {
        copy_tile<scalar_t, false>(line, fs.c, fs.w, block, bs.c, bs.w, channels, ow);
      } else {
        copy_tile<scalar_t, false>(block, bs.c, bs.w, line, fs.c, fs.w, channels, ow);
      }
    }
  });
}

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

// The bias as a contiguous tensor (undefined without one): the direct depthwise kernels
// index it themselves, and it may be a strided view such as b[::2].
inline at::Tensor contiguous_bias(const c10::optional<at::Tensor>& bias) {
  return bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
}

// Calls f(FixedTaps<KH, KW>{}) for the specialised filter sizes, else returns false.
template <typename F>
bool dispatch_fixed_taps(int64_t kh, int64_t kw, F&& f) {
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

// Stride-1 depthwise forward with a compile-time tap count, one block *row* at a time:
// the padded blocks of a block row are laid side by side in one strip (each keeps its own
// padding), so one long register-accumulating loop convolves the whole strip, and the
// per-block costs (loop set-up, the partial vector at the end of a block) are paid once
// per strip.  A block's outputs only read its own padded columns: output column u of a
// block of padded width pw reads columns u .. u + (kw-1)*dw < pw.
template <int KH, int KW, typename scalar_t>
void depthwise_direct_strips(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                             at::Tensor& out, const std::vector<SizeClass>& row_classes,
                             const std::vector<SizeClass>& col_classes, int64_t dh, int64_t dw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_h = out.size(2), out_w = out.size(3);
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
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  const scalar_t* wts = weight.const_data_ptr<scalar_t>();
  const at::Tensor bias_c = contiguous_bias(bias);
  const scalar_t* bias_ptr = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, n_batch * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> strip(max_ph * strip_w + kSpanStep), acc(max_ph * strip_w + kSpanStep), w(KH * KW);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % channels;
      const scalar_t* in = src + plane * height * width;
      scalar_t* o = dst + plane * out_h * out_w;
      for (int64_t q = 0; q < KH * KW; ++q) w[q] = static_cast<acc_t>(wts[c * KH * KW + q]);
      const acc_t b0 = bias_ptr ? static_cast<acc_t>(bias_ptr[c]) : acc_t(0);
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
void depthwise_direct(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      at::Tensor& out, const std::vector<SizeClass>& row_classes,
                      const std::vector<SizeClass>& col_classes, c10::IntArrayRef stride, c10::IntArrayRef dilation) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  const int64_t out_h = out.size(2), out_w = out.size(3);
  const int64_t sh = stride[0], sw = stride[1], dh = dilation[0], dw = dilation[1];
  int64_t max_ph = 0, max_pw = 0, max_ow = 0;
  for (const auto& r : row_classes) max_ph = std::max<int64_t>(max_ph, r.table.size());
  for (const auto& c : col_classes) {
    max_pw = std::max<int64_t>(max_pw, c.table.size());
    max_ow = std::max<int64_t>(max_ow, (static_cast<int64_t>(c.table.size()) - dw * (kw - 1) - 1) / sw + 1);
  }
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  const scalar_t* wts = weight.const_data_ptr<scalar_t>();
  const at::Tensor bias_c = contiguous_bias(bias);
  const scalar_t* bias_ptr = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, n_batch * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> padded(max_ph * max_pw + kSpanStep), full_acc(max_ph * max_pw + kSpanStep), row(max_ow),
        w(kh * kw);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % channels;
      const scalar_t* in = src + plane * height * width;
      scalar_t* o = dst + plane * out_h * out_w;
      for (int64_t q = 0; q < kh * kw; ++q) w[q] = static_cast<acc_t>(wts[c * kh * kw + q]);
      const acc_t b0 = bias_ptr ? static_cast<acc_t>(bias_ptr[c]) : acc_t(0);
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
                for (int64_t u = 0; u < pw_total; ++u) {
                  if (u == pad) u += cols.size;
                  if (u >= pw_total) break;
                  const int64_t sc = cols.table[u];
                  if (sc >= 0) line[sc] = static_cast<acc_t>(line[sc]) + grow[u];
                }
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

struct Geometry {
  std::vector<SizeClass> rows, cols;
  int64_t out_h = 0, out_w = 0;
  PadMode mode = PadMode::kConstant;
};

void check_list(c10::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " must have two entries (h, w), got ", values.size());
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, name, " entries must be >= ", minimum);
}

Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds, const std::string& padding_mode) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "block_conv2d (cpu): x and weight must be CPU tensors");
  TORCH_CHECK(x.dim() == 4, "block_conv2d: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "block_conv2d: weight must be 4-D, got ", weight.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "block_conv2d: x and weight dtypes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kBFloat16,
              "block_conv2d (cpu): dtype must be float32, float64 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0 && weight.size(0) % groups == 0 &&
                  weight.size(1) * groups == x.size(1),
              "block_conv2d: channels do not match groups");
  check_list(stride, "stride", 1);
  check_list(padding, "padding", 0);
  check_list(dilation, "dilation", 1);
  Geometry g;
  g.mode = parse_mode(padding_mode);
  g.rows = size_classes(row_bounds.vec(), x.size(2), weight.size(2), stride[0], padding[0], dilation[0], g.mode, "H");
  g.cols = size_classes(col_bounds.vec(), x.size(3), weight.size(3), stride[1], padding[1], dilation[1], g.mode, "W");
  g.out_h = total_out(row_bounds.vec(), weight.size(2), stride[0], padding[0], dilation[0]);
  g.out_w = total_out(col_bounds.vec(), weight.size(3), stride[1], padding[1], dilation[1]);
  return g;
}

// Scratch for the buffers that never leave one op call: the gathered padded blocks and the
// gathered output-gradient blocks.  A fresh multi-megabyte allocation is fresh pages from
// the kernel, and on the development VM first-touch page faults cost ~1 us per 4 KiB page:
// for a 64x56x56 F14 forward the 8.4 MB gather buffer alone was ~2000 faults, about 15% of
// the call (perf: exc_page_fault, memcg charging, clear_page).  So each calling thread keeps
// its largest buffer per slot (up to kWorkspaceMaxBytes) and hands out views of it.  A
// buffer still referenced when the next call comes (its storage's use count above one) is
// never reused: that call allocates its own.  block_conv2d_release_workspace() frees the
// calling thread's buffers.
enum WorkspaceSlot { kGatherX = 0, kGatherGrad = 1, kWorkspaceSlots = 2 };
constexpr int64_t kWorkspaceMaxBytes = int64_t{256} << 20;

thread_local at::Tensor workspace_cache[kWorkspaceSlots];

at::Tensor workspace(WorkspaceSlot slot, at::IntArrayRef sizes, const at::TensorOptions& options,
                     at::MemoryFormat format) {
  const int64_t numel = c10::multiply_integers(sizes);
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  if (bytes > kWorkspaceMaxBytes || !options.device().is_cpu()) return at::empty(sizes, options.memory_format(format));
  at::Tensor& cached = workspace_cache[slot];
  const bool reusable = cached.defined() && cached.dtype() == options.dtype() && cached.numel() >= numel &&
                        cached.storage().use_count() == 1;
  if (!reusable) cached = at::empty({numel}, options);
  std::vector<int64_t> strides(sizes.size());
  if (format == at::MemoryFormat::ChannelsLast) {  // (N, C, H, W) stored as N, H, W, C
    strides = {sizes[1] * sizes[2] * sizes[3], 1, sizes[3] * sizes[1], sizes[1]};
  } else {
    int64_t stride = 1;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      strides[d] = stride;
      stride *= sizes[d];
    }
  }
  return cached.as_strided(sizes, strides, 0);
}

void release_workspace() {
  for (auto& cached : workspace_cache) cached.reset();
}

at::Tensor gather_class(const at::Tensor& x, const SizeClass& rows, const SizeClass& cols, int64_t pad_w,
                        at::MemoryFormat format = kBufferFormat, bool scratch = true) {
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const std::vector<int64_t> sizes = {x.size(0) * nr * nc, x.size(1), static_cast<int64_t>(rows.table.size()),
                                      static_cast<int64_t>(cols.table.size())};
  at::Tensor buf = scratch ? workspace(kGatherX, sizes, x.options(), format)
                           : at::empty(sizes, x.options().memory_format(format));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_gather_padded",
                                 [&] { gather_padded<scalar_t>(x, buf, rows, cols, pad_w); });
  return buf;
}

at::Tensor block_conv2d_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                                c10::string_view padding_mode) {
  const Geometry g = make_geometry(x, weight, stride, padding, dilation, groups, row_bounds, col_bounds,
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
    c10::string_view padding_mode) {
  (void)bias;  // grad_bias does not depend on it
  const Geometry g = make_geometry(x, weight, stride, padding, dilation, groups, row_bounds, col_bounds,
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
      const int64_t oh = out_size(rows.size, weight.size(2), stride[0], padding[0], dilation[0]);
      const int64_t ow = out_size(cols.size, weight.size(3), stride[1], padding[1], dilation[1]);
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

// block_pad: every block the same size (the caller checks); x (N, C, H, W) ->
// (N*nh*nw, C, bh+2ph, bw+2pw) ordered (n, block row, block column).
at::Tensor block_pad_forward(const at::Tensor& x_in, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                            c10::IntArrayRef padding, c10::string_view padding_mode) {
  TORCH_CHECK(x_in.device().is_cpu(), "block_pad_forward (cpu): x must be a CPU tensor");
  TORCH_CHECK(x_in.dim() == 4, "block_pad_forward: x must be 4-D, got ", x_in.dim(), "-D");
  check_list(padding, "padding", 0);
  const PadMode mode = parse_mode(std::string(padding_mode));
  // Kernel 1, stride 1, dilation 1: every block yields its own padded size.
  auto rows = size_classes(row_bounds.vec(), x_in.size(2), 1, 1, padding[0], 1, mode, "H");
  auto cols = size_classes(col_bounds.vec(), x_in.size(3), 1, 1, padding[1], 1, mode, "W");
  TORCH_CHECK(rows.size() == 1 && cols.size() == 1, "block_pad_forward needs blocks of one size");
  // NCHW and not from the scratch workspace: the result is returned to the caller.
  return gather_class(x_in, rows[0], cols[0], padding[1], at::MemoryFormat::Contiguous, /*scratch=*/false);
}

at::Tensor block_pad_backward(const at::Tensor& grad_in, c10::IntArrayRef x_sizes, c10::IntArrayRef row_bounds,
                             c10::IntArrayRef col_bounds, c10::IntArrayRef padding, c10::string_view padding_mode) {
  TORCH_CHECK(grad_in.device().is_cpu(), "block_pad_backward (cpu): grad must be a CPU tensor");
  TORCH_CHECK(x_sizes.size() == 4, "block_pad_backward: x_sizes must have 4 entries");
  check_list(padding, "padding", 0);
  const PadMode mode = parse_mode(std::string(padding_mode));
  auto rows = size_classes(row_bounds.vec(), x_sizes[2], 1, 1, padding[0], 1, mode, "H");
  auto cols = size_classes(col_bounds.vec(), x_sizes[3], 1, 1, padding[1], 1, mode, "W");
  TORCH_CHECK(rows.size() == 1 && cols.size() == 1, "block_pad_backward needs blocks of one size");
  const int64_t nb = static_cast<int64_t>(rows[0].in_starts.size() * cols[0].in_starts.size());
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == x_sizes[0] * nb && grad_in.size(1) == x_sizes[1] &&
                  grad_in.size(2) == static_cast<int64_t>(rows[0].table.size()) &&
                  grad_in.size(3) == static_cast<int64_t>(cols[0].table.size()),
              "block_pad_backward: grad has shape ", grad_in.sizes(), " which does not match the padded blocks");
  const at::Tensor& grad = grad_in;
  at::Tensor grad_x = at::zeros(x_sizes, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "block_pad_backward",
                                 [&] { scatter_padded<scalar_t>(grad, grad_x, rows[0], cols[0], padding[1]); });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) {
  m.def(
      "block_conv2d_forward(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
      "int groups, int[] row_bounds, int[] col_bounds, str padding_mode) -> Tensor");
  m.def(
      "block_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, int[] row_bounds, int[] col_bounds, str padding_mode) -> (Tensor, Tensor, Tensor)");
  m.def("block_pad_forward(Tensor x, int[] row_bounds, int[] col_bounds, int[] padding, str padding_mode) -> Tensor");
  m.def(
      "block_pad_backward(Tensor grad, int[] x_sizes, int[] row_bounds, int[] col_bounds, int[] padding, "
      "str padding_mode) -> Tensor");
  // Frees the calling thread's cached scratch buffers (see `workspace`).
  m.def("block_conv2d_release_workspace() -> ()", &release_workspace);
}

TORCH_LIBRARY_IMPL(fuseops_ext, CPU, m) {
  m.impl("block_conv2d_forward", &block_conv2d_forward);
  m.impl("block_conv2d_backward", &block_conv2d_backward);
  m.impl("block_pad_forward", &block_pad_forward);
  m.impl("block_pad_backward", &block_pad_backward);
}
