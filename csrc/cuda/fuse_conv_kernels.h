// The per-thread work of the FuSe convolution CUDA kernels, written as plain functions
// of (block, thread) so the same code also compiles as ordinary C++.
//
// Why: there is no GPU in CI.  tests/test_cuda_kernel_logic.py compiles this header
// with the host C++ compiler into a small library that replays every kernel launch
// sequentially on the CPU (csrc/cuda/emulate/fuse_conv_emulator.cpp) and compares the
// result with the float64 reference.  That checks the indexing, tiling, halo, sliding
// window, stride/dilation and reduction bookkeeping.  It cannot check what only a GPU
// shows: races, alignment faults of the vector loads, warp-shuffle reductions, speed.
//
// The __global__ wrappers and the launch code are in fuse_conv_cuda.cu.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FUSEOPS_HD __host__ __device__ __forceinline__
#else
#define FUSEOPS_HD inline
#endif

namespace fuseops_kernels {

constexpr int kThreads = 256;
// Output rows each column-part thread produces while it slides down H.
constexpr int kColRows = 8;
// Taps per weight-gradient block (compile-time so the accumulators stay in registers).
constexpr int kTapsPerBlock = 8;
// Shared memory a block may use without opting in to more.
constexpr int64_t kSmemDefault = 48 * 1024;

// Activation fused into an epilogue ("none", "relu", "relu6", "hardswish").
enum class Act : int { None = 0, Relu = 1, Relu6 = 2, Hardswish = 3 };

template <typename acc_t>
FUSEOPS_HD acc_t activate(acc_t v, Act act) {
  switch (act) {
    case Act::Relu:
      return v > acc_t(0) ? v : acc_t(0);
    case Act::Relu6:
      return v < acc_t(0) ? acc_t(0) : (v > acc_t(6) ? acc_t(6) : v);
    case Act::Hardswish: {
      acc_t r = v + acc_t(3);
      r = r < acc_t(0) ? acc_t(0) : (r > acc_t(6) ? acc_t(6) : r);
      return v * r / acc_t(6);
    }
    default:
      return v;
  }
}

// d act(pre) / d pre * g, with PyTorch's conventions at the kinks (relu'(0) = 0,
// relu6' = 0 at 0 and 6, hardswish' as aten::hardswish_backward).
template <typename acc_t>
FUSEOPS_HD acc_t activate_backward(acc_t g, acc_t pre, Act act) {
  switch (act) {
    case Act::Relu:
      return pre > acc_t(0) ? g : acc_t(0);
    case Act::Relu6:
      return (pre > acc_t(0) && pre < acc_t(6)) ? g : acc_t(0);
    case Act::Hardswish:
      if (pre < acc_t(-3)) return acc_t(0);
      if (pre <= acc_t(3)) return g * (pre / acc_t(3) + acc_t(0.5));
      return g;
    default:
      return g;
  }
}

FUSEOPS_HD int imin(int a, int b) { return a < b ? a : b; }
FUSEOPS_HD int imax(int a, int b) { return a > b ? a : b; }
FUSEOPS_HD int floor_to_multiple(int v, int m) { return v >= 0 ? (v / m) * m : -(((-v) + m - 1) / m) * m; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Geometry of one call, in the ints the kernels index with.  Part-specific fields:
// c_part is C_r (row kernels) or C_c (column kernels).
template <typename scalar_t>
struct FwdArgs {
  const scalar_t* x;
  const scalar_t* weight;
  const scalar_t* bias;  // (C_out,) or nullptr
  scalar_t* out;
  int64_t total;  // row tiles (row kernel) or threads (direct / column kernels)
  int c_part, channels, col_start, c_row, out_channels;
  int height, width, ho, wo, k, stride, padding, dilation;
  int tile_w, tiles_per_row, tiles_per_block, seg_stride;  // row kernel
  int h_chunks;                                            // column kernel
  Act act;
};

// ------------------------------------------------------------------------------ row part
// How the row kernel tiles: up to `tile_w` outputs of one row per tile, several tiles
// per block when rows are short, each tile's input segment (halo and zero padding
// included) staged in shared memory, padded to whole VEC-element chunks.
struct RowPlan {
  int64_t tile_w, tiles_per_block, seg_stride, smem_bytes;
  bool direct;  // the halo does not fit in shared memory: use the direct kernel
};

inline RowPlan plan_row(int64_t wo, int64_t stride, int64_t k, int64_t dilation, int64_t vec, int64_t elem_size) {
  RowPlan p{};
  int64_t tile_w = wo < 4 * kThreads ? wo : 4 * kThreads;
  for (;; tile_w = (tile_w + 1) / 2) {
    const int64_t seg_len = (tile_w - 1) * stride + (k - 1) * dilation + 1;
    p.seg_stride = ceil_div(seg_len + vec - 1, vec) * vec;
    p.tiles_per_block = (4 * kThreads) / tile_w > 1 ? (4 * kThreads) / tile_w : 1;
    while (p.tiles_per_block > 1 && p.tiles_per_block * p.seg_stride * elem_size > kSmemDefault) {
      p.tiles_per_block /= 2;
    }
    if (p.tiles_per_block * p.seg_stride * elem_size <= kSmemDefault || tile_w == 1) break;
  }
  p.tile_w = tile_w;
  p.smem_bytes = p.tiles_per_block * p.seg_stride * elem_size;
  p.direct = p.smem_bytes > kSmemDefault;
  return p;
}

// Which output row and tile a block's r-th tile is; false past the end.
template <typename index_t>
FUSEOPS_HD bool row_tile(const int64_t total_tiles, int tiles_per_row, int tiles_per_block, int64_t block, int r,
                         index_t& row, int& tile) {
  const index_t t = static_cast<index_t>(block) * tiles_per_block + r;
  if (t >= static_cast<index_t>(total_tiles)) return false;
  row = t / tiles_per_row;
  tile = static_cast<int>(t % tiles_per_row);
  return true;
}

// Phase 1 of the row kernel: stage the input segments in shared memory.  Chunks that
// lie inside the row are copied as one VEC-wide (16-byte) access.
template <typename scalar_t, typename index_t, int VEC>
FUSEOPS_HD void row_stage(const FwdArgs<scalar_t>& a, int64_t block, int thread, int nthreads, scalar_t* smem) {
  const int chunks = a.seg_stride / VEC;
  for (int i = thread; i < a.tiles_per_block * chunks; i += nthreads) {
    const int r = i / chunks, ch = i % chunks;
    index_t row;
    int tile;
    if (!row_tile<index_t>(a.total, a.tiles_per_row, a.tiles_per_block, block, r, row, tile)) continue;
    const int ho = static_cast<int>(row % a.ho);
    const index_t plane = row / a.ho;  // n * C_r + c
    const index_t n = plane / a.c_part, c = plane % a.c_part;
    const scalar_t* x_row = a.x + ((n * a.channels + c) * a.height + static_cast<index_t>(ho) * a.stride) * a.width;
    const int seg_start = tile * a.tile_w * a.stride - a.padding;
    const int g = floor_to_multiple(seg_start, VEC) + ch * VEC;
    scalar_t* dst = smem + r * a.seg_stride + ch * VEC;
    if (VEC > 1 && g >= 0 && g + VEC <= a.width) {
      struct alignas(sizeof(scalar_t) * VEC) Vec {
        scalar_t v[VEC];
      };
      *reinterpret_cast<Vec*>(dst) = *reinterpret_cast<const Vec*>(x_row + g);
    } else {
      for (int e = 0; e < VEC; ++e) {
        const int gi = g + e;
        dst[e] = (gi >= 0 && gi < a.width) ? x_row[gi] : scalar_t(0);
      }
    }
  }
}

// Phase 2: outputs from shared memory; consecutive threads write consecutive outputs.
template <typename scalar_t, typename acc_t, typename index_t, int VEC>
FUSEOPS_HD void row_compute(const FwdArgs<scalar_t>& a, int64_t block, int thread, int nthreads,
                            const scalar_t* smem) {
  for (int i = thread; i < a.tiles_per_block * a.tile_w; i += nthreads) {
    const int r = i / a.tile_w, o = i % a.tile_w;
    index_t row;
    int tile;
    if (!row_tile<index_t>(a.total, a.tiles_per_row, a.tiles_per_block, block, r, row, tile)) continue;
    const int wo = tile * a.tile_w + o;
    if (wo >= a.wo) continue;
    const int ho = static_cast<int>(row % a.ho);
    const index_t plane = row / a.ho;
    const index_t n = plane / a.c_part, c = plane % a.c_part;
    const int seg_start = tile * a.tile_w * a.stride - a.padding;
    const scalar_t* src = smem + r * a.seg_stride + (seg_start - floor_to_multiple(seg_start, VEC)) + o * a.stride;
    const scalar_t* w = a.weight + c * a.k;
    acc_t acc = a.bias != nullptr ? static_cast<acc_t>(a.bias[c]) : acc_t(0);
    for (int kk = 0; kk < a.k; ++kk) acc += static_cast<acc_t>(src[kk * a.dilation]) * static_cast<acc_t>(w[kk]);
    a.out[((n * a.out_channels + c) * a.ho + ho) * a.wo + wo] = static_cast<scalar_t>(activate(acc, a.act));
  }
}

// --------------------------------------------------------------------------- thread index
// A thread's flat index, in 64 bits: block * block_dim can pass 2^31 (and wrap in 32-bit
// arithmetic, sending threads to negative indices) while every tensor still fits int32.
FUSEOPS_HD int64_t flat_thread_index(int64_t block, int64_t block_dim, int64_t thread) {
  return block * block_dim + thread;
}

// Whether the thread at ``flat`` has work (flat < total, compared in 64 bits); if so, its
// index narrowed to index_t, which is exact because total fits index_t.
template <typename index_t>
FUSEOPS_HD bool thread_element(int64_t flat, int64_t total, index_t& i) {
  if (flat >= total) return false;
  i = static_cast<index_t>(flat);
  return true;
}

// Row part without shared memory, one output per thread, for halos too wide to stage.
template <typename scalar_t, typename acc_t, typename index_t>
FUSEOPS_HD void row_direct(const FwdArgs<scalar_t>& a, index_t i) {
  if (i >= static_cast<index_t>(a.total)) return;
  const int wo = static_cast<int>(i % a.wo);
  const index_t rest = i / a.wo;
  const int ho = static_cast<int>(rest % a.ho);
  const index_t plane = rest / a.ho;
  const index_t n = plane / a.c_part, c = plane % a.c_part;
  const scalar_t* x_row = a.x + ((n * a.channels + c) * a.height + static_cast<index_t>(ho) * a.stride) * a.width;
  acc_t acc = a.bias != nullptr ? static_cast<acc_t>(a.bias[c]) : acc_t(0);
  for (int kk = 0; kk < a.k; ++kk) {
    const int wi = wo * a.stride - a.padding + kk * a.dilation;
    if (wi >= 0 && wi < a.width) acc += static_cast<acc_t>(x_row[wi]) * static_cast<acc_t>(a.weight[c * a.k + kk]);
  }
  a.out[((n * a.out_channels + c) * a.ho + ho) * a.wo + wo] = static_cast<scalar_t>(activate(acc, a.act));
}

// --------------------------------------------------------------------------- column part
// A thread owns COLS consecutive output columns of one (n, j) plane and kColRows
// consecutive output rows.  It walks down H loading each input row segment it needs once
// (the sliding window) and adds it into the accumulators of the output rows whose window
// contains it.  Consecutive threads own consecutive column groups, so each row load is
// coalesced.  COLS > 1 (stride 1, W a multiple of COLS, 16-byte aligned rows: the launcher
// checks) loads and stores COLS elements at once, 16 bytes per thread instead of 2.
template <typename scalar_t, typename acc_t, typename index_t, bool UNIT_DILATION, int COLS = 1>
FUSEOPS_HD void col_forward(const FwdArgs<scalar_t>& a, index_t i) {
  struct alignas(sizeof(scalar_t) * COLS) Chunk {
    scalar_t v[COLS];
  };
  if (i >= static_cast<index_t>(a.total)) return;
  const int groups = a.wo / COLS;
  const int wo = static_cast<int>(i % groups) * COLS;
  const index_t rest = i / groups;
  const int chunk = static_cast<int>(rest % a.h_chunks);
  const index_t plane = rest / a.h_chunks;  // n * C_c + j
  const index_t n = plane / a.c_part, j = plane % a.c_part;
  const int ho0 = chunk * kColRows;
  const int rows = imin(kColRows, a.ho - ho0);
  const scalar_t* x_col =
      a.x + ((n * a.channels + a.col_start + j) * a.height) * a.width + static_cast<index_t>(wo) * a.stride;
  const scalar_t* w = a.weight + j * a.k;

  acc_t acc[kColRows][COLS];
#pragma unroll
  for (int r = 0; r < kColRows; ++r) {
#pragma unroll
    for (int e = 0; e < COLS; ++e) acc[r][e] = acc_t(0);
  }

  const int h_first = ho0 * a.stride - a.padding;
  const int h_last = (ho0 + rows - 1) * a.stride - a.padding + (a.k - 1) * a.dilation;
  for (int h = imax(h_first, 0); h <= imin(h_last, a.height - 1); ++h) {
    acc_t v[COLS];
    if (COLS > 1) {
      const Chunk loaded = *reinterpret_cast<const Chunk*>(x_col + static_cast<index_t>(h) * a.width);
#pragma unroll
      for (int e = 0; e < COLS; ++e) v[e] = static_cast<acc_t>(loaded.v[e]);
    } else {
      v[0] = static_cast<acc_t>(x_col[static_cast<index_t>(h) * a.width]);
    }
    const int rel = h - h_first;
#pragma unroll
    for (int r = 0; r < kColRows; ++r) {
      const int off = rel - r * a.stride;  // tap offset inside output row r's window
      if (r < rows && off >= 0) {
        int tap;
        bool hit;
        if (UNIT_DILATION) {
          tap = off;
          hit = off < a.k;
        } else {
          tap = off / a.dilation;
          hit = tap * a.dilation == off && tap < a.k;
        }
        if (hit) {
          const acc_t wt = static_cast<acc_t>(w[tap]);
#pragma unroll
          for (int e = 0; e < COLS; ++e) acc[r][e] += v[e] * wt;
        }
      }
    }
  }
  const acc_t b = a.bias != nullptr ? static_cast<acc_t>(a.bias[a.c_row + j]) : acc_t(0);
  scalar_t* out_col = a.out + ((n * a.out_channels + a.c_row + j) * a.ho + ho0) * a.wo + wo;
#pragma unroll
  for (int r = 0; r < kColRows; ++r) {
    if (r >= rows) continue;
    Chunk result;
#pragma unroll
    for (int e = 0; e < COLS; ++e) result.v[e] = static_cast<scalar_t>(activate(acc[r][e] + b, a.act));
    if (COLS > 1) {
      *reinterpret_cast<Chunk*>(out_col + static_cast<index_t>(r) * a.wo) = result;
    } else {
      out_col[static_cast<index_t>(r) * a.wo] = result.v[0];
    }
  }
}

// ------------------------------------------------------------------------------ backward
template <typename scalar_t>
struct BwdArgs {
  const scalar_t* x;
  const scalar_t* weight_row;
  const scalar_t* weight_col;
  int channels, height, width, c_row, c_col, col_start, out_channels, ho, wo, k, stride, padding, dilation;
};

// grad_pre = grad_out * act'(pre), in the accumulation type.
template <typename scalar_t, typename acc_t, typename index_t>
FUSEOPS_HD void grad_pre_elem(const scalar_t* grad_out, const scalar_t* pre, acc_t* grad_pre, index_t total,
                              Act act, index_t i) {
  if (i >= total) return;
  const acc_t g = static_cast<acc_t>(grad_out[i]);
  grad_pre[i] = pre != nullptr ? activate_backward(g, static_cast<acc_t>(pre[i]), act) : g;
}

// grad_x by gathering: an input element sums the grad_pre entries whose window holds it.
template <typename scalar_t, typename acc_t, typename index_t>
FUSEOPS_HD void grad_x_elem(const BwdArgs<scalar_t>& a, const acc_t* grad_pre, scalar_t* grad_x, index_t total,
                            index_t i) {
  if (i >= total) return;
  const int w = static_cast<int>(i % a.width);
  index_t rest = i / a.width;
  const int h = static_cast<int>(rest % a.height);
  rest /= a.height;
  const int c = static_cast<int>(rest % a.channels);
  const index_t n = rest / a.channels;
  acc_t acc = acc_t(0);
  if (c < a.c_row && h % a.stride == 0 && h / a.stride < a.ho) {
    const acc_t* gp = grad_pre + ((n * a.out_channels + c) * a.ho + h / a.stride) * a.wo;
    for (int kk = 0; kk < a.k; ++kk) {
      const int t = w + a.padding - kk * a.dilation;
      if (t >= 0 && t % a.stride == 0 && t / a.stride < a.wo) {
        acc += gp[t / a.stride] * static_cast<acc_t>(a.weight_row[c * a.k + kk]);
      }
    }
  }
  const int j = c - a.col_start;
  if (j >= 0 && j < a.c_col && w % a.stride == 0 && w / a.stride < a.wo) {
    const acc_t* gp = grad_pre + ((n * a.out_channels + a.c_row + j) * a.ho) * a.wo + w / a.stride;
    for (int kk = 0; kk < a.k; ++kk) {
      const int t = h + a.padding - kk * a.dilation;
      if (t >= 0 && t % a.stride == 0 && t / a.stride < a.ho) {
        acc += gp[static_cast<index_t>(t / a.stride) * a.wo] * static_cast<acc_t>(a.weight_col[j * a.k + kk]);
      }
    }
  }
  grad_x[i] = static_cast<scalar_t>(acc);
}

// How the weight/bias reduction splits planes: enough blocks to fill the GPU (about 4
// per multiprocessor) but chunks of at least 1024 elements.  Partial rows: one per
// (n, chunk) in deterministic mode, else a single row accumulated with atomics.
struct WeightPlan {
  int64_t chunks, chunk_len, tap_groups, rows;
};

inline WeightPlan plan_weight(int64_t n, int64_t out_channels, int64_t plane, int64_t k, int64_t sms,
                              bool deterministic) {
  WeightPlan p{};
  p.tap_groups = ceil_div(k, kTapsPerBlock);
  const int64_t base_blocks = n * out_channels * p.tap_groups;
  int64_t chunks = ceil_div(4 * sms, base_blocks > 1 ? base_blocks : 1);
  chunks = chunks > 1 ? chunks : 1;
  const int64_t max_chunks = ceil_div(plane, 1024) > 1 ? ceil_div(plane, 1024) : 1;
  chunks = chunks < max_chunks ? chunks : max_chunks;
  p.chunk_len = ceil_div(plane, chunks);
  p.chunks = ceil_div(plane, p.chunk_len);
  p.rows = deterministic ? n * p.chunks : 1;
  return p;
}

// One thread's share of a weight-gradient block: block_x = (n, output channel, chunk),
// block_y = tap group.  vals[0..kTapsPerBlock) are taps tap0.., vals[kTapsPerBlock] the bias.
template <typename scalar_t, typename acc_t, typename index_t>
FUSEOPS_HD void grad_weight_accumulate(const BwdArgs<scalar_t>& a, const acc_t* grad_pre, int chunks, int chunk_len,
                                       int64_t block_x, int block_y, int thread, int nthreads,
                                       acc_t (&vals)[kTapsPerBlock + 1]) {
  const int chunk = static_cast<int>(block_x % chunks);
  const int co = static_cast<int>((block_x / chunks) % a.out_channels);
  const index_t n = static_cast<index_t>(block_x / (int64_t(chunks) * a.out_channels));
  const int tap0 = block_y * kTapsPerBlock;
  const bool is_row = co < a.c_row;
  const int c_in = is_row ? co : a.col_start + (co - a.c_row);
  const index_t plane_size = static_cast<index_t>(a.ho) * a.wo;
  const acc_t* gp = grad_pre + (n * a.out_channels + co) * plane_size;
  const scalar_t* xp = a.x + (n * a.channels + c_in) * static_cast<index_t>(a.height) * a.width;
  for (int v = 0; v <= kTapsPerBlock; ++v) vals[v] = acc_t(0);
  const index_t begin = static_cast<index_t>(chunk) * chunk_len;
  index_t end = begin + static_cast<index_t>(chunk_len);
  end = end < plane_size ? end : plane_size;
  for (index_t e = begin + thread; e < end; e += nthreads) {
    const int ho = static_cast<int>(e / a.wo), wo = static_cast<int>(e % a.wo);
    const acc_t g = gp[e];
    vals[kTapsPerBlock] += g;
#pragma unroll
    for (int t = 0; t < kTapsPerBlock; ++t) {
      const int kk = tap0 + t;
      if (kk < a.k) {
        const int hi = is_row ? ho * a.stride : ho * a.stride - a.padding + kk * a.dilation;
        const int wi = is_row ? wo * a.stride - a.padding + kk * a.dilation : wo * a.stride;
        if (hi >= 0 && hi < a.height && wi >= 0 && wi < a.width) {
          vals[t] += g * static_cast<acc_t>(xp[static_cast<index_t>(hi) * a.width + wi]);
        }
      }
    }
  }
}

// Where value v of a block's reduced total goes in `partials` (rows, C_out, K + 1), or
// -1 when the block does not own it (taps past K; the bias outside tap group 0).
FUSEOPS_HD int64_t grad_weight_slot(int v, int64_t block_x, int block_y, int chunks, int out_channels, int k,
                                    bool atomic) {
  const int chunk = static_cast<int>(block_x % chunks);
  const int co = static_cast<int>((block_x / chunks) % out_channels);
  const int64_t n = block_x / (int64_t(chunks) * out_channels);
  int slot;
  if (v == kTapsPerBlock) {
    if (block_y != 0) return -1;
    slot = k;
  } else {
    slot = block_y * kTapsPerBlock + v;
    if (slot >= k) return -1;
  }
  const int64_t row = atomic ? 0 : n * chunks + chunk;
  return (row * out_channels + co) * (k + 1) + slot;
}

// Sum the partial rows in order; write weight and bias gradients.
template <typename scalar_t, typename acc_t>
FUSEOPS_HD void finish_weight_elem(const acc_t* partials, int rows, int out_channels, int c_row, int k,
                                   scalar_t* grad_wr, scalar_t* grad_wc, scalar_t* grad_bias, int i) {
  if (i >= out_channels * (k + 1)) return;
  acc_t sum = acc_t(0);
  for (int r = 0; r < rows; ++r) sum += partials[static_cast<int64_t>(r) * out_channels * (k + 1) + i];
  const int co = i / (k + 1), slot = i % (k + 1);
  if (slot == k) {
    grad_bias[co] = static_cast<scalar_t>(sum);
  } else if (co < c_row) {
    grad_wr[co * k + slot] = static_cast<scalar_t>(sum);
  } else {
    grad_wc[(co - c_row) * k + slot] = static_cast<scalar_t>(sum);
  }
}

}  // namespace fuseops_kernels
