// CUDA kernels for the FuSe convolution (torch.ops.fuseops_ext.fuse_conv2d_forward /
// fuse_conv2d_backward on the CUDA dispatch key).  Design notes: docs/cuda.md.
//
// STATUS: compiled with nvcc (CI compile check); never run on a GPU yet.
//
// Layout: x (N, C, H, W) and the output (N, C_r + C_c, Ho, Wo) are contiguous NCHW.
// Row part: output channel c < C_r convolves input channel c along W with the 1xK
// filter weight_row[c] (padding only along W).  Column part: output channel C_r + j
// convolves input channel col_start + j along H with weight_col[j] (padding only
// along H); col_start = C_r (half) or 0 (full).  Both parts share stride and dilation.
//
// The schemas are defined (TORCH_LIBRARY_FRAGMENT) next to the CPU kernels in
// csrc/fuse_conv_cpu.cpp; this file only adds the CUDA implementations.

#include "common.cuh"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

namespace fuseops_cuda {
namespace {

constexpr int kThreads = 256;
// Output rows each column-part thread produces while it slides down H.
constexpr int kColRows = 8;
// Taps per weight-gradient block (compile-time so the accumulators stay in registers).
constexpr int kTapsPerBlock = 8;
// Shared memory a block may use without opting in to more.
constexpr int64_t kSmemDefault = 48 * 1024;

struct Geometry {
  int64_t n, c, h, w, k, c_row, c_col, col_start, stride, padding, dilation, ho, wo;
  int64_t out_channels() const { return c_row + c_col; }
};

int64_t out_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  return (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

// The same checks as fuseops.fuse_conv.api, repeated because the op can be called directly.
Geometry check_and_measure(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                           const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding,
                           int64_t dilation) {
  check_cuda_tensor(x, "x");
  check_cuda_tensor(weight_row, "weight_row");
  check_cuda_tensor(weight_col, "weight_col");
  TORCH_CHECK(x.dim() == 4, "x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "x must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(weight_row.scalar_type() == dt && weight_col.scalar_type() == dt,
              "weight_row and weight_col must have x's dtype ", dt);
  TORCH_CHECK(weight_row.device() == x.device() && weight_col.device() == x.device(),
              "weight_row and weight_col must be on x's device ", x.device());
  TORCH_CHECK(weight_row.dim() == 4 && weight_row.size(1) == 1 && weight_row.size(2) == 1,
              "weight_row must have shape (C_r, 1, 1, K), got ", weight_row.sizes());
  const int64_t k = weight_row.size(3);
  TORCH_CHECK(k >= 1, "weight_row must have K >= 1 taps");
  TORCH_CHECK(weight_col.dim() == 4 && weight_col.size(1) == 1 && weight_col.size(2) == k && weight_col.size(3) == 1,
              "weight_col must have shape (C_c, 1, ", k, ", 1), got ", weight_col.sizes());
  TORCH_CHECK(stride >= 1, "stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation >= 1, "dilation must be >= 1, got ", dilation);
  TORCH_CHECK(padding >= 0, "padding must be >= 0, got ", padding);
  Geometry g{};
  g.n = x.size(0);
  g.c = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.k = k;
  g.c_row = weight_row.size(0);
  g.c_col = weight_col.size(0);
  g.col_start = full ? 0 : g.c_row;
  g.stride = stride;
  g.padding = padding;
  g.dilation = dilation;
  if (full) {
    TORCH_CHECK(g.c_row == g.c && g.c_col == g.c, "full variant needs C=", g.c, " filters in each part, got ",
                g.c_row, " and ", g.c_col);
  } else {
    TORCH_CHECK(g.c_row + g.c_col == g.c, "half variant needs C_r + C_c == C=", g.c, ", got ", g.c_row, " + ",
                g.c_col);
  }
  const int64_t row_h = out_size(g.h, 1, stride, 0, 1), row_w = out_size(g.w, k, stride, padding, dilation);
  const int64_t col_h = out_size(g.h, k, stride, padding, dilation), col_w = out_size(g.w, 1, stride, 0, 1);
  if (g.c_row > 0 && g.c_col > 0) {
    TORCH_CHECK(row_h == col_h && row_w == col_w, "row part output ", row_h, "x", row_w,
                " and column part output ", col_h, "x", col_w, " differ; choose 2*padding == dilation*(K-1)");
  }
  g.ho = g.c_row > 0 ? row_h : col_h;
  g.wo = g.c_row > 0 ? row_w : col_w;
  TORCH_CHECK(g.ho > 0 && g.wo > 0, "input ", g.h, "x", g.w, " is too small: output would be ", g.ho, "x", g.wo);
  if (bias.has_value()) {
    const auto& b = *bias;
    check_cuda_tensor(b, "bias");
    TORCH_CHECK(b.scalar_type() == dt, "bias must have x's dtype ", dt);
    TORCH_CHECK(b.device() == x.device(), "bias must be on x's device");
    TORCH_CHECK(b.dim() == 1 && b.size(0) == g.out_channels(), "bias must have shape (", g.out_channels(),
                ",), got ", b.sizes());
  }
  return g;
}

// ---------------------------------------------------------------------------------------
// Forward, row part (1xK along W).
//
// A block handles `tiles_per_block` row tiles; a tile is up to `tile_w` consecutive
// outputs of one output row.  The block first copies each tile's input segment
// (including the left/right halo and the zero padding) into shared memory with
// 16-byte vector loads where the row is aligned, then every thread computes outputs
// from shared memory.  Small widths (late MobileNet stages, W = 7..28) pack many rows
// into one block so threads are not idle.
template <typename scalar_t, typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads) row_forward_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
    scalar_t* __restrict__ out, index_t total_tiles, int c_row, int channels, int height, int width, int ho_count,
    int wo_count, int out_channels, int k, int stride, int padding, int dilation, int tile_w, int tiles_per_row,
    int tiles_per_block, int seg_stride, Act act) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* smem = reinterpret_cast<scalar_t*>(smem_raw);
  const int chunks = seg_stride / VEC;

  // 1) Stage the input segments.
  for (int i = threadIdx.x; i < tiles_per_block * chunks; i += blockDim.x) {
    const int r = i / chunks, ch = i % chunks;
    const index_t t = static_cast<index_t>(blockIdx.x) * tiles_per_block + r;
    if (t >= total_tiles) continue;
    const index_t row = t / tiles_per_row;
    const int tile = static_cast<int>(t % tiles_per_row);
    const int ho = static_cast<int>(row % ho_count);
    const index_t plane = row / ho_count;  // n * c_row + c
    const index_t n = plane / c_row, c = plane % c_row;
    const scalar_t* x_row = x + ((n * channels + c) * height + static_cast<index_t>(ho) * stride) * width;
    const int seg_start = tile * tile_w * stride - padding;
    // Floor to a multiple of VEC so that in-bounds chunks are 16-byte aligned.
    const int aligned = seg_start >= 0 ? (seg_start / VEC) * VEC : -(((-seg_start) + VEC - 1) / VEC) * VEC;
    const int g = aligned + ch * VEC;
    scalar_t* dst = smem + r * seg_stride + ch * VEC;
    if (VEC > 1 && g >= 0 && g + VEC <= width) {
      struct alignas(sizeof(scalar_t) * VEC) Vec { scalar_t v[VEC]; };
      *reinterpret_cast<Vec*>(dst) = *reinterpret_cast<const Vec*>(x_row + g);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const int gi = g + e;
        dst[e] = (gi >= 0 && gi < width) ? x_row[gi] : scalar_t(0);
      }
    }
  }
  __syncthreads();

  // 2) Compute from shared memory; consecutive threads write consecutive outputs.
  for (int i = threadIdx.x; i < tiles_per_block * tile_w; i += blockDim.x) {
    const int r = i / tile_w, o = i % tile_w;
    const index_t t = static_cast<index_t>(blockIdx.x) * tiles_per_block + r;
    if (t >= total_tiles) continue;
    const index_t row = t / tiles_per_row;
    const int tile = static_cast<int>(t % tiles_per_row);
    const int wo = tile * tile_w + o;
    if (wo >= wo_count) continue;
    const int ho = static_cast<int>(row % ho_count);
    const index_t plane = row / ho_count;
    const index_t n = plane / c_row, c = plane % c_row;
    const int seg_start = tile * tile_w * stride - padding;
    const int aligned = seg_start >= 0 ? (seg_start / VEC) * VEC : -(((-seg_start) + VEC - 1) / VEC) * VEC;
    const scalar_t* src = smem + r * seg_stride + (seg_start - aligned) + o * stride;
    const scalar_t* w = weight + c * k;
    acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    for (int kk = 0; kk < k; ++kk) {
      acc += static_cast<acc_t>(src[kk * dilation]) * static_cast<acc_t>(w[kk]);
    }
    out[((n * out_channels + c) * ho_count + ho) * wo_count + wo] = static_cast<scalar_t>(activate(acc, act));
  }
}

// Row part without shared memory, for halos too wide to stage (huge K * dilation).
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) row_forward_direct_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
    scalar_t* __restrict__ out, index_t total, int c_row, int channels, int height, int width, int ho_count,
    int wo_count, int out_channels, int k, int stride, int padding, int dilation, Act act) {
  using acc_t = at::acc_type<scalar_t, true>;
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int wo = static_cast<int>(i % wo_count);
  const index_t rest = i / wo_count;
  const int ho = static_cast<int>(rest % ho_count);
  const index_t plane = rest / ho_count;
  const index_t n = plane / c_row, c = plane % c_row;
  const scalar_t* x_row = x + ((n * channels + c) * height + static_cast<index_t>(ho) * stride) * width;
  acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
  for (int kk = 0; kk < k; ++kk) {
    const int wi = wo * stride - padding + kk * dilation;
    if (wi >= 0 && wi < width) acc += static_cast<acc_t>(x_row[wi]) * static_cast<acc_t>(weight[c * k + kk]);
  }
  out[((n * out_channels + c) * ho_count + ho) * wo_count + wo] = static_cast<scalar_t>(activate(acc, act));
}

// ---------------------------------------------------------------------------------------
// Forward, column part (Kx1 along H).
//
// A thread owns one output column `wo` of one (n, j) plane and kColRows consecutive
// output rows.  It walks down H, loading every input row it needs exactly once (the
// sliding window), and adds each loaded value into the accumulators of the output
// rows whose window contains it.  Consecutive threads own consecutive columns, so
// every row load is coalesced across the warp.
template <typename scalar_t, typename index_t, bool UNIT_DILATION>
__global__ void __launch_bounds__(kThreads) col_forward_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
    scalar_t* __restrict__ out, index_t total, int c_col, int channels, int col_start, int c_row, int out_channels,
    int height, int width, int ho_count, int wo_count, int h_chunks, int k, int stride, int padding, int dilation,
    Act act) {
  using acc_t = at::acc_type<scalar_t, true>;
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int wo = static_cast<int>(i % wo_count);
  const index_t rest = i / wo_count;
  const int chunk = static_cast<int>(rest % h_chunks);
  const index_t plane = rest / h_chunks;  // n * c_col + j
  const index_t n = plane / c_col, j = plane % c_col;
  const int ho0 = chunk * kColRows;
  const int rows = min(kColRows, ho_count - ho0);
  const scalar_t* x_col = x + ((n * channels + col_start + j) * height) * width + static_cast<index_t>(wo) * stride;
  const scalar_t* w = weight + j * k;

  acc_t acc[kColRows];
#pragma unroll
  for (int r = 0; r < kColRows; ++r) acc[r] = acc_t(0);

  const int h_first = ho0 * stride - padding;
  const int h_last = (ho0 + rows - 1) * stride - padding + (k - 1) * dilation;
  for (int h = max(h_first, 0); h <= min(h_last, height - 1); ++h) {
    const acc_t v = static_cast<acc_t>(x_col[static_cast<index_t>(h) * width]);
    const int rel = h - h_first;
#pragma unroll
    for (int r = 0; r < kColRows; ++r) {
      const int off = rel - r * stride;  // tap offset within output row r's window
      if (r < rows && off >= 0) {
        int tap;
        bool hit;
        if (UNIT_DILATION) {
          tap = off;
          hit = off < k;
        } else {
          tap = off / dilation;
          hit = tap * dilation == off && tap < k;
        }
        if (hit) acc[r] += v * static_cast<acc_t>(w[tap]);
      }
    }
  }
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c_row + j]) : acc_t(0);
  scalar_t* out_col = out + ((n * out_channels + c_row + j) * ho_count + ho0) * wo_count + wo;
#pragma unroll
  for (int r = 0; r < kColRows; ++r) {
    if (r < rows) out_col[static_cast<index_t>(r) * wo_count] = static_cast<scalar_t>(activate(acc[r] + b, act));
  }
}

template <typename scalar_t>
int vector_width(const at::Tensor& x, int64_t width) {
  constexpr int vec = static_cast<int>(16 / sizeof(scalar_t));
  const bool aligned = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && width % vec == 0;
  return aligned ? vec : 1;
}

template <typename scalar_t, typename index_t>
void launch_forward(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                    const scalar_t* bias, at::Tensor& out, const Geometry& g, Act act, cudaStream_t stream) {
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int c = static_cast<int>(g.c), h = static_cast<int>(g.h), w = static_cast<int>(g.w);
  const int ho = static_cast<int>(g.ho), wo = static_cast<int>(g.wo), co = static_cast<int>(g.out_channels());
  const int k = static_cast<int>(g.k), s = static_cast<int>(g.stride), p = static_cast<int>(g.padding);
  const int d = static_cast<int>(g.dilation);

  if (g.c_row > 0) {
    const int vec = vector_width<scalar_t>(x, g.w);
    // Pick the widest tile whose staged segments fit in the default shared memory.
    int64_t tile_w = std::min<int64_t>(g.wo, 4 * kThreads);
    int64_t tiles_per_block = 0, seg_stride = 0;
    for (;; tile_w = (tile_w + 1) / 2) {
      const int64_t seg_len = (tile_w - 1) * g.stride + (g.k - 1) * g.dilation + 1;
      seg_stride = ceil_div(seg_len + vec - 1, vec) * vec;
      tiles_per_block = std::max<int64_t>(1, (4 * kThreads) / tile_w);
      while (tiles_per_block > 1 && tiles_per_block * seg_stride * int64_t(sizeof(scalar_t)) > kSmemDefault) {
        tiles_per_block /= 2;
      }
      if (seg_stride * int64_t(sizeof(scalar_t)) * tiles_per_block <= kSmemDefault || tile_w == 1) break;
    }
    const int64_t smem = tiles_per_block * seg_stride * int64_t(sizeof(scalar_t));
    const scalar_t* wr = weight_row.data_ptr<scalar_t>();
    if (smem <= kSmemDefault) {
      const int64_t tiles_per_row = ceil_div(g.wo, tile_w);
      const index_t total_tiles = static_cast<index_t>(g.n * g.c_row * g.ho * tiles_per_row);
      const int64_t blocks = ceil_div(total_tiles, tiles_per_block);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fuse_conv2d: too many row tiles for one grid");
      auto launch = [&](auto vec_tag) {
        constexpr int V = decltype(vec_tag)::value;
        row_forward_kernel<scalar_t, index_t, V><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
            xp, wr, bias, op, total_tiles, static_cast<int>(g.c_row), c, h, w, ho, wo, co, k, s, p, d,
            static_cast<int>(tile_w), static_cast<int>(tiles_per_row), static_cast<int>(tiles_per_block),
            static_cast<int>(seg_stride), act);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));
      if (vec == kVec) {
        launch(std::integral_constant<int, kVec>{});
      } else {
        launch(std::integral_constant<int, 1>{});
      }
    } else {
      const index_t total = static_cast<index_t>(g.n * g.c_row * g.ho * g.wo);
      const int64_t blocks = ceil_div(total, kThreads);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fuse_conv2d: output too large for one grid");
      row_forward_direct_kernel<scalar_t, index_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          xp, wr, bias, op, total, static_cast<int>(g.c_row), c, h, w, ho, wo, co, k, s, p, d, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }

  if (g.c_col > 0) {
    const int64_t h_chunks = ceil_div(g.ho, kColRows);
    const index_t total = static_cast<index_t>(g.n * g.c_col * h_chunks * g.wo);
    const int64_t blocks = ceil_div(total, kThreads);
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fuse_conv2d: output too large for one grid");
    const scalar_t* wc = weight_col.data_ptr<scalar_t>();
    auto launch = [&](auto unit_tag) {
      col_forward_kernel<scalar_t, index_t, decltype(unit_tag)::value>
          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
              xp, wc, bias, op, total, static_cast<int>(g.c_col), c, static_cast<int>(g.col_start),
              static_cast<int>(g.c_row), co, h, w, ho, wo, static_cast<int>(h_chunks), k, s, p, d, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (g.dilation == 1) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
  }
}

// Whether every tensor of the call can be indexed with int32.
bool small_enough_for_int32(const Geometry& g) {
  const int64_t in = g.n * g.c * g.h * g.w;
  const int64_t out = g.n * g.out_channels() * g.ho * g.wo;
  return fits_int32(in) && fits_int32(out);
}

at::Tensor forward_impl(const at::Tensor& x_in, const at::Tensor& weight_row_in, const at::Tensor& weight_col_in,
                        const std::optional<at::Tensor>& bias_in, bool full, int64_t stride, int64_t padding,
                        int64_t dilation, Act act) {
  const Geometry g = check_and_measure(x_in, weight_row_in, weight_col_in, bias_in, full, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // The kernels read NCHW; a channels_last or sliced x is copied once here.
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight_row = weight_row_in.contiguous();
  const at::Tensor weight_col = weight_col_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.n, g.out_channels(), g.ho, g.wo}, x.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fuse_conv2d_forward_cuda", [&] {
    const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    if (small_enough_for_int32(g)) {
      launch_forward<scalar_t, int32_t>(x, weight_row, weight_col, bp, out, g, act, stream);
    } else {
      launch_forward<scalar_t, int64_t>(x, weight_row, weight_col, bp, out, g, act, stream);
    }
  });
  return out;
}

at::Tensor fuse_conv2d_forward_cuda(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                                    const std::optional<at::Tensor>& bias, bool full, int64_t stride,
                                    int64_t padding, int64_t dilation, c10::string_view activation) {
  return forward_impl(x, weight_row, weight_col, bias, full, stride, padding, dilation,
                      parse_activation(std::string(activation)));
}

// ---------------------------------------------------------------------------------------
// Backward.
//
// 1) grad_pre = grad_out * act'(pre) in the accumulation type, where pre is recomputed
//    by the forward kernels without activation (nothing is saved from the forward).
// 2) grad_x by gathering: each input element sums the grad_pre entries whose window
//    contains it.  No atomics, so it is deterministic.
// 3) weight and bias gradients: each block reduces K taps + bias over a chunk of one
//    (n, output channel) plane; the per-block partials go either to a workspace that a
//    second kernel sums in a fixed order (deterministic mode), or straight into a float
//    accumulator with atomicAdd (default; order varies run to run).

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) grad_pre_kernel(const scalar_t* __restrict__ grad_out,
                                                            const scalar_t* __restrict__ pre,
                                                            acc_t* __restrict__ grad_pre, index_t total, Act act) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const acc_t g = static_cast<acc_t>(grad_out[i]);
  grad_pre[i] = pre != nullptr ? activate_backward(g, static_cast<acc_t>(pre[i]), act) : g;
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) grad_x_kernel(
    const acc_t* __restrict__ grad_pre, const scalar_t* __restrict__ weight_row,
    const scalar_t* __restrict__ weight_col, scalar_t* __restrict__ grad_x, index_t total, int channels, int height,
    int width, int c_row, int c_col, int col_start, int out_channels, int ho_count, int wo_count, int k, int stride,
    int padding, int dilation) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int w = static_cast<int>(i % width);
  index_t rest = i / width;
  const int h = static_cast<int>(rest % height);
  rest /= height;
  const int c = static_cast<int>(rest % channels);
  const index_t n = rest / channels;
  acc_t acc = acc_t(0);
  if (c < c_row && h % stride == 0 && h / stride < ho_count) {
    const acc_t* gp = grad_pre + ((n * out_channels + c) * ho_count + h / stride) * wo_count;
    for (int kk = 0; kk < k; ++kk) {
      const int t = w + padding - kk * dilation;
      if (t >= 0 && t % stride == 0 && t / stride < wo_count) {
        acc += gp[t / stride] * static_cast<acc_t>(weight_row[c * k + kk]);
      }
    }
  }
  const int j = c - col_start;
  if (j >= 0 && j < c_col && w % stride == 0 && w / stride < wo_count) {
    const acc_t* gp = grad_pre + ((n * out_channels + c_row + j) * ho_count) * wo_count + w / stride;
    for (int kk = 0; kk < k; ++kk) {
      const int t = h + padding - kk * dilation;
      if (t >= 0 && t % stride == 0 && t / stride < ho_count) {
        acc += gp[static_cast<index_t>(t / stride) * wo_count] * static_cast<acc_t>(weight_col[j * k + kk]);
      }
    }
  }
  grad_x[i] = static_cast<scalar_t>(acc);
}

// Block reduction of kTapsPerBlock + 1 values in a fixed order (deterministic).
template <typename acc_t>
__device__ void block_reduce(acc_t (&vals)[kTapsPerBlock + 1], acc_t* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
#pragma unroll
  for (int v = 0; v <= kTapsPerBlock; ++v) {
    acc_t x = vals[v];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
    if (lane == 0) shared[warp * (kTapsPerBlock + 1) + v] = x;
  }
  __syncthreads();
  if (threadIdx.x <= kTapsPerBlock) {
    acc_t sum = acc_t(0);
    for (int wi = 0; wi < warps; ++wi) sum += shared[wi * (kTapsPerBlock + 1) + threadIdx.x];
    vals[0] = sum;  // thread v holds the block total of value v
  }
}

// Grid: x = (n, output channel, plane chunk), y = tap group.  Slots per output channel:
// [0, K) taps, K = bias.  `partials` is (rows, out_channels, K + 1); in deterministic
// mode row = n * chunks + chunk, otherwise a single row updated with atomicAdd.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) grad_weight_kernel(
    const acc_t* __restrict__ grad_pre, const scalar_t* __restrict__ x, acc_t* __restrict__ partials,
    bool atomic, int channels, int height, int width, int c_row, int col_start, int out_channels, int ho_count,
    int wo_count, int k, int stride, int padding, int dilation, int chunks, int chunk_len) {
  __shared__ acc_t shared[(kThreads / 32) * (kTapsPerBlock + 1)];
  const int64_t b = blockIdx.x;
  const int chunk = static_cast<int>(b % chunks);
  const int co = static_cast<int>((b / chunks) % out_channels);
  const index_t n = static_cast<index_t>(b / (int64_t(chunks) * out_channels));
  const int tap0 = blockIdx.y * kTapsPerBlock;
  const bool is_row = co < c_row;
  const int c_in = is_row ? co : col_start + (co - c_row);
  const index_t plane_size = static_cast<index_t>(ho_count) * wo_count;
  const acc_t* gp = grad_pre + (n * out_channels + co) * plane_size;
  const scalar_t* xp = x + (n * channels + c_in) * static_cast<index_t>(height) * width;

  acc_t vals[kTapsPerBlock + 1];
#pragma unroll
  for (int v = 0; v <= kTapsPerBlock; ++v) vals[v] = acc_t(0);
  const index_t begin = static_cast<index_t>(chunk) * chunk_len;
  const index_t end = min(begin + static_cast<index_t>(chunk_len), plane_size);
  for (index_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
    const int ho = static_cast<int>(e / wo_count), wo = static_cast<int>(e % wo_count);
    const acc_t g = gp[e];
    vals[kTapsPerBlock] += g;
#pragma unroll
    for (int t = 0; t < kTapsPerBlock; ++t) {
      const int kk = tap0 + t;
      if (kk < k) {
        int hi, wi;
        if (is_row) {
          hi = ho * stride;
          wi = wo * stride - padding + kk * dilation;
        } else {
          hi = ho * stride - padding + kk * dilation;
          wi = wo * stride;
        }
        if (hi >= 0 && hi < height && wi >= 0 && wi < width) {
          vals[t] += g * static_cast<acc_t>(xp[static_cast<index_t>(hi) * width + wi]);
        }
      }
    }
  }
  block_reduce(vals, shared);
  const int v = threadIdx.x;
  if (v > kTapsPerBlock) return;
  int slot;
  if (v == kTapsPerBlock) {
    if (blockIdx.y != 0) return;  // the bias is reduced once, by tap group 0
    slot = k;
  } else {
    slot = tap0 + v;
    if (slot >= k) return;
  }
  const int64_t row = atomic ? 0 : int64_t(n) * chunks + chunk;
  acc_t* dst = partials + (row * out_channels + co) * (k + 1) + slot;
  if (atomic) {
    atomicAdd(dst, vals[0]);
  } else {
    *dst = vals[0];
  }
}

// Sums the partial rows in order and writes the weight and bias gradients.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) finish_weight_kernel(const acc_t* __restrict__ partials, int rows,
                                                                 int out_channels, int c_row, int k,
                                                                 scalar_t* __restrict__ grad_wr,
                                                                 scalar_t* __restrict__ grad_wc,
                                                                 scalar_t* __restrict__ grad_bias) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
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

template <typename scalar_t, typename index_t>
void launch_backward(const at::Tensor& grad_out, const at::Tensor& pre, const at::Tensor& x,
                     const at::Tensor& weight_row, const at::Tensor& weight_col, at::Tensor& grad_x,
                     at::Tensor& grad_wr, at::Tensor& grad_wc, at::Tensor& grad_bias, const Geometry& g, Act act,
                     cudaStream_t stream) {
  using acc_t = at::acc_type<scalar_t, true>;
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const int c = static_cast<int>(g.c), h = static_cast<int>(g.h), w = static_cast<int>(g.w);
  const int ho = static_cast<int>(g.ho), wo = static_cast<int>(g.wo), co = static_cast<int>(g.out_channels());
  const int k = static_cast<int>(g.k), s = static_cast<int>(g.stride), p = static_cast<int>(g.padding);
  const int d = static_cast<int>(g.dilation);
  const int c_row = static_cast<int>(g.c_row), c_col = static_cast<int>(g.c_col);
  const int col_start = static_cast<int>(g.col_start);

  // 1) grad_pre
  at::Tensor grad_pre = at::empty(grad_out.sizes(), grad_out.options().dtype(acc_dtype));
  const index_t out_total = static_cast<index_t>(grad_out.numel());
  grad_pre_kernel<scalar_t, acc_t, index_t><<<static_cast<unsigned>(ceil_div(out_total, kThreads)), kThreads, 0,
                                              stream>>>(grad_out.data_ptr<scalar_t>(),
                                                        pre.defined() ? pre.data_ptr<scalar_t>() : nullptr,
                                                        grad_pre.data_ptr<acc_t>(), out_total, act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 2) grad_x
  const index_t in_total = static_cast<index_t>(x.numel());
  if (in_total > 0) {
    grad_x_kernel<scalar_t, acc_t, index_t><<<static_cast<unsigned>(ceil_div(in_total, kThreads)), kThreads, 0,
                                              stream>>>(grad_pre.data_ptr<acc_t>(), weight_row.data_ptr<scalar_t>(),
                                                        weight_col.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
                                                        in_total, c, h, w, c_row, c_col, col_start, co, ho, wo, k,
                                                        s, p, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // 3) weight and bias gradients
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int64_t plane = g.ho * g.wo;
  const int64_t tap_groups = ceil_div(g.k, kTapsPerBlock);
  // Split planes so that small batches still fill the GPU (about 4 blocks per SM),
  // but keep each chunk at least 1024 elements long.
  const int64_t sms = multiprocessor_count(x.get_device());
  const int64_t base_blocks = g.n * g.out_channels() * tap_groups;
  int64_t chunks = std::max<int64_t>(1, ceil_div(4 * sms, std::max<int64_t>(base_blocks, 1)));
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, ceil_div(plane, 1024)));
  const int64_t chunk_len = ceil_div(plane, chunks);
  chunks = ceil_div(plane, chunk_len);
  const int64_t rows = deterministic ? g.n * chunks : 1;
  at::Tensor partials = deterministic ? at::empty({rows, g.out_channels(), g.k + 1}, x.options().dtype(acc_dtype))
                                      : at::zeros({1, g.out_channels(), g.k + 1}, x.options().dtype(acc_dtype));
  const int64_t blocks_x = g.n * g.out_channels() * chunks;
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max(), "fuse_conv2d backward: too many planes");
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "fuse_conv2d backward: too many partial rows");
  if (blocks_x > 0) {
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(tap_groups));
    grad_weight_kernel<scalar_t, acc_t, index_t><<<grid, kThreads, 0, stream>>>(
        grad_pre.data_ptr<acc_t>(), x.data_ptr<scalar_t>(), partials.data_ptr<acc_t>(), !deterministic, c, h, w,
        c_row, col_start, co, ho, wo, k, s, p, d, static_cast<int>(chunks), static_cast<int>(chunk_len));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t slots = g.out_channels() * (g.k + 1);
  if (slots > 0) {
    finish_weight_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(slots, kThreads)), kThreads, 0,
                                            stream>>>(partials.data_ptr<acc_t>(), static_cast<int>(rows), co, c_row,
                                                      k, grad_wr.data_ptr<scalar_t>(),
                                                      grad_wc.data_ptr<scalar_t>(), grad_bias.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fuse_conv2d_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_row_in,
    const at::Tensor& weight_col_in, const std::optional<at::Tensor>& bias, bool full, int64_t stride,
    int64_t padding, int64_t dilation, c10::string_view activation) {
  const Act act = parse_activation(std::string(activation));
  const Geometry g = check_and_measure(x_in, weight_row_in, weight_col_in, bias, full, stride, padding, dilation);
  check_cuda_tensor(grad_out_in, "grad_out");
  TORCH_CHECK(grad_out_in.scalar_type() == x_in.scalar_type(), "grad_out must have x's dtype");
  TORCH_CHECK(grad_out_in.device() == x_in.device(), "grad_out must be on x's device");
  TORCH_CHECK(grad_out_in.dim() == 4 && grad_out_in.size(0) == g.n && grad_out_in.size(1) == g.out_channels() &&
                  grad_out_in.size(2) == g.ho && grad_out_in.size(3) == g.wo,
              "grad_out must have shape (", g.n, ", ", g.out_channels(), ", ", g.ho, ", ", g.wo, "), got ",
              grad_out_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor weight_row = weight_row_in.contiguous();
  const at::Tensor weight_col = weight_col_in.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_wr = at::empty(weight_row.sizes(), weight_row.options());
  at::Tensor grad_wc = at::empty(weight_col.sizes(), weight_col.options());
  at::Tensor grad_bias = at::empty({g.out_channels()}, x.options());
  if (grad_out.numel() == 0) {
    grad_x.zero_();
    grad_wr.zero_();
    grad_wc.zero_();
    grad_bias.zero_();
    return {grad_x, grad_wr, grad_wc, grad_bias};
  }
  // The activation's derivative needs the pre-activation; recompute it.
  const at::Tensor pre = act == Act::None ? at::Tensor()
                                          : forward_impl(x, weight_row, weight_col, bias, full, stride, padding,
                                                         dilation, Act::None);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fuse_conv2d_backward_cuda", [&] {
    if (small_enough_for_int32(g)) {
      launch_backward<scalar_t, int32_t>(grad_out, pre, x, weight_row, weight_col, grad_x, grad_wr, grad_wc,
                                         grad_bias, g, act, stream);
    } else {
      launch_backward<scalar_t, int64_t>(grad_out, pre, x, weight_row, weight_col, grad_x, grad_wr, grad_wc,
                                         grad_bias, g, act, stream);
    }
  });
  return {grad_x, grad_wr, grad_wc, grad_bias};
}

}  // namespace
}  // namespace fuseops_cuda

TORCH_LIBRARY_IMPL(fuseops_ext, CUDA, m) {
  m.impl("fuse_conv2d_forward", &fuseops_cuda::fuse_conv2d_forward_cuda);
  m.impl("fuse_conv2d_backward", &fuseops_cuda::fuse_conv2d_backward_cuda);
}
