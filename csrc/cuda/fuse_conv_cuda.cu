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
// The schemas are defined (TORCH_LIBRARY_FRAGMENT) in csrc/fuse_conv/ops.cpp and the
// geometry and its checks, shared with the CPU kernels, in csrc/fuse_conv/geometry.h;
// this file only adds the CUDA implementations.  The per-thread
// work of every kernel is in fuse_conv_kernels.h, shared with the CPU emulation test.

#include "common.cuh"
#include "common/activation.h"
#include "fuse_conv/geometry.h"
#include "fuse_conv_kernels.h"

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

using fuseops_kernels::Act;
using fuseops_kernels::kThreads;
using fuseops_kernels::kTapsPerBlock;
using fuseops::fuse_conv::Geometry;

// fuse_conv_kernels.h keeps its own enum (it compiles without torch for the emulator
// test); the two must number the activations alike.
static_assert(static_cast<int>(Act::None) == static_cast<int>(fuseops::Activation::None) &&
              static_cast<int>(Act::Relu) == static_cast<int>(fuseops::Activation::Relu) &&
              static_cast<int>(Act::Relu6) == static_cast<int>(fuseops::Activation::Relu6) &&
              static_cast<int>(Act::Hardswish) == static_cast<int>(fuseops::Activation::Hardswish));

Act parse_activation(c10::string_view name) {
  return static_cast<Act>(fuseops::parse_activation(std::string(name)));
}

// check_geometry's checks (shared with the CPU kernels), plus what the CUDA kernels
// need: CUDA tensors of a dtype they are built for, and axes that fit their int indices.
Geometry check_and_measure(const char* fn, const at::Tensor& x, const at::Tensor& weight_row,
                           const at::Tensor& weight_col, const std::optional<at::Tensor>& bias, bool full,
                           int64_t stride, int64_t padding, int64_t dilation) {
  check_cuda_tensor(x, "x");
  check_cuda_tensor(weight_row, "weight_row");
  check_cuda_tensor(weight_col, "weight_col");
  if (bias.has_value()) check_cuda_tensor(*bias, "bias");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, fn,
              ": x must be float16, bfloat16, float32 or float64, got ", dt);
  const Geometry g = fuseops::fuse_conv::check_geometry(fn, x, weight_row, weight_col, bias, full, stride, padding,
                                                        dilation);
  // Per-axis quantities are kept in int inside the kernels (only flat offsets may need
  // 64 bits); refuse sizes where that would overflow.
  constexpr int64_t kMaxAxis = std::numeric_limits<int32_t>::max() / 4;
  TORCH_CHECK(g.channels <= kMaxAxis && g.height + 2 * padding <= kMaxAxis && g.width + 2 * padding <= kMaxAxis &&
                  g.kernel * dilation <= kMaxAxis && std::max(g.c_row, g.c_col) * g.kernel <= kMaxAxis &&
                  stride <= kMaxAxis,
              fn, ": a dimension, padding, stride or dilation is too large for the CUDA kernels");
  return g;
}

// The fields FwdArgs and BwdArgs share, narrowed to the kernels' int.
template <typename Args>
void set_geometry(Args& a, const Geometry& g) {
  a.channels = static_cast<int>(g.channels);
  a.col_start = static_cast<int>(g.col_start);
  a.c_row = static_cast<int>(g.c_row);
  a.out_channels = static_cast<int>(g.out_channels());
  a.height = static_cast<int>(g.height);
  a.width = static_cast<int>(g.width);
  a.ho = static_cast<int>(g.out_height);
  a.wo = static_cast<int>(g.out_width);
  a.k = static_cast<int>(g.kernel);
  a.stride = static_cast<int>(g.stride);
  a.padding = static_cast<int>(g.padding);
  a.dilation = static_cast<int>(g.dilation);
}

// This thread's element in a launch of one thread per element over `total` elements;
// false for the threads past the end.
template <typename index_t>
__device__ bool launch_element(int64_t total, index_t& i) {
  return fuseops_kernels::thread_element(fuseops_kernels::flat_thread_index(blockIdx.x, blockDim.x, threadIdx.x),
                                         total, i);
}

// ---------------------------------------------------------------------------------------
// Forward kernels: thin wrappers over fuse_conv_kernels.h.

template <typename scalar_t, typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads) row_forward_kernel(const fuseops_kernels::FwdArgs<scalar_t> a) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* smem = reinterpret_cast<scalar_t*>(smem_raw);
  fuseops_kernels::row_stage<scalar_t, index_t, VEC>(a, blockIdx.x, threadIdx.x, blockDim.x, smem);
  __syncthreads();
  fuseops_kernels::row_compute<scalar_t, acc_t, index_t, VEC>(a, blockIdx.x, threadIdx.x, blockDim.x, smem);
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) row_forward_direct_kernel(const fuseops_kernels::FwdArgs<scalar_t> a) {
  using acc_t = at::acc_type<scalar_t, true>;
  index_t i;
  if (!launch_element(a.total, i)) return;
  fuseops_kernels::row_direct<scalar_t, acc_t, index_t>(a, i);
}

template <typename scalar_t, typename index_t, bool UNIT_DILATION, int COLS>
__global__ void __launch_bounds__(kThreads) col_forward_kernel(const fuseops_kernels::FwdArgs<scalar_t> a) {
  using acc_t = at::acc_type<scalar_t, true>;
  index_t i;
  if (!launch_element(a.total, i)) return;
  fuseops_kernels::col_forward<scalar_t, acc_t, index_t, UNIT_DILATION, COLS>(a, i);
}

template <typename scalar_t>
int vector_width(const at::Tensor& x, int64_t width) {
  constexpr int vec = static_cast<int>(16 / sizeof(scalar_t));
  const bool aligned = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && width % vec == 0;
  return aligned ? vec : 1;
}

template <typename scalar_t>
fuseops_kernels::FwdArgs<scalar_t> forward_args(const at::Tensor& x, const scalar_t* bias, at::Tensor& out,
                                                const Geometry& g, Act act) {
  fuseops_kernels::FwdArgs<scalar_t> a{};
  a.x = x.data_ptr<scalar_t>();
  a.bias = bias;
  a.out = out.data_ptr<scalar_t>();
  set_geometry(a, g);
  a.act = act;
  return a;
}

template <typename scalar_t, typename index_t>
void launch_forward(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                    const scalar_t* bias, at::Tensor& out, const Geometry& g, Act act, cudaStream_t stream) {
  constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));
  if (g.c_row > 0) {
    auto a = forward_args<scalar_t>(x, bias, out, g, act);
    a.weight = weight_row.data_ptr<scalar_t>();
    a.c_part = static_cast<int>(g.c_row);
    const int vec = vector_width<scalar_t>(x, g.width);
    const auto plan = fuseops_kernels::plan_row(g.out_width, g.stride, g.kernel, g.dilation, vec, sizeof(scalar_t));
    if (!plan.direct) {
      const int64_t tiles_per_row = ceil_div(g.out_width, plan.tile_w);
      a.total = g.batch * g.c_row * g.out_height * tiles_per_row;
      a.tile_w = static_cast<int>(plan.tile_w);
      a.tiles_per_row = static_cast<int>(tiles_per_row);
      a.tiles_per_block = static_cast<int>(plan.tiles_per_block);
      a.seg_stride = static_cast<int>(plan.seg_stride);
      const int64_t blocks = ceil_div(a.total, plan.tiles_per_block);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fuse_conv2d: too many row tiles for one grid");
      const auto grid = static_cast<unsigned>(blocks);
      if (vec == kVec) {
        row_forward_kernel<scalar_t, index_t, kVec><<<grid, kThreads, plan.smem_bytes, stream>>>(a);
      } else {
        row_forward_kernel<scalar_t, index_t, 1><<<grid, kThreads, plan.smem_bytes, stream>>>(a);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      a.total = g.batch * g.c_row * g.out_height * g.out_width;
      const int64_t blocks = ceil_div(a.total, kThreads);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fuse_conv2d: output too large for one grid");
      row_forward_direct_kernel<scalar_t, index_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  if (g.c_col > 0) {
    auto a = forward_args<scalar_t>(x, bias, out, g, act);
    a.weight = weight_col.data_ptr<scalar_t>();
    a.c_part = static_cast<int>(g.c_col);
    a.h_chunks = static_cast<int>(ceil_div(g.out_height, fuseops_kernels::kColRows));
    // 16-byte column groups when stride 1 (the output row is the input row) and rows are
    // whole 16-byte chunks: x's are (vector_width checks the base and W), out's are then too.
    constexpr int kCols = static_cast<int>(16 / sizeof(scalar_t));
    const bool wide = g.stride == 1 && vector_width<scalar_t>(x, g.width) == kCols &&
                      reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
    a.total = g.batch * g.c_col * a.h_chunks * (wide ? g.out_width / kCols : g.out_width);
    const int64_t blocks = ceil_div(a.total, kThreads);
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fuse_conv2d: output too large for one grid");
    const auto grid = static_cast<unsigned>(blocks);
    if (wide) {
      if (g.dilation == 1) {
        col_forward_kernel<scalar_t, index_t, true, kCols><<<grid, kThreads, 0, stream>>>(a);
      } else {
        col_forward_kernel<scalar_t, index_t, false, kCols><<<grid, kThreads, 0, stream>>>(a);
      }
    } else if (g.dilation == 1) {
      col_forward_kernel<scalar_t, index_t, true, 1><<<grid, kThreads, 0, stream>>>(a);
    } else {
      col_forward_kernel<scalar_t, index_t, false, 1><<<grid, kThreads, 0, stream>>>(a);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Whether every tensor of the call can be indexed with int32.
bool small_enough_for_int32(const Geometry& g) {
  const int64_t in = g.batch * g.channels * g.height * g.width;
  const int64_t out = g.batch * g.out_channels() * g.out_height * g.out_width;
  return fits_int32(in) && fits_int32(out);
}

at::Tensor forward_impl(const at::Tensor& x_in, const at::Tensor& weight_row_in, const at::Tensor& weight_col_in,
                        const std::optional<at::Tensor>& bias_in, bool full, int64_t stride, int64_t padding,
                        int64_t dilation, Act act) {
  const Geometry g =
      check_and_measure("fuse_conv2d_forward", x_in, weight_row_in, weight_col_in, bias_in, full, stride, padding,
                        dilation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // The kernels read NCHW; a channels_last or sliced x is copied once here.
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight_row = weight_row_in.contiguous();
  const at::Tensor weight_col = weight_col_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.out_channels(), g.out_height, g.out_width}, x.options());
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
                      parse_activation(activation));
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
  index_t i;
  if (!launch_element(static_cast<int64_t>(total), i)) return;
  fuseops_kernels::grad_pre_elem<scalar_t, acc_t, index_t>(grad_out, pre, grad_pre, total, act, i);
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) grad_x_kernel(const fuseops_kernels::BwdArgs<scalar_t> a,
                                                          const acc_t* __restrict__ grad_pre,
                                                          scalar_t* __restrict__ grad_x, index_t total) {
  index_t i;
  if (!launch_element(static_cast<int64_t>(total), i)) return;
  fuseops_kernels::grad_x_elem<scalar_t, acc_t, index_t>(a, grad_pre, grad_x, total, i);
}

// Block reduction of kTapsPerBlock + 1 values in a fixed order (deterministic): warp
// shuffles, then thread v sums warp totals of value v in warp order into vals[0].
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
    vals[0] = sum;
  }
}

// Grid: x = (n, output channel, plane chunk), y = tap group.  Each block writes its
// totals to its own row of `partials` (deterministic) or atomically adds them to row 0.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) grad_weight_kernel(const fuseops_kernels::BwdArgs<scalar_t> a,
                                                               const acc_t* __restrict__ grad_pre,
                                                               acc_t* __restrict__ partials, bool atomic, int chunks,
                                                               int chunk_len) {
  __shared__ acc_t shared[(kThreads / 32) * (kTapsPerBlock + 1)];
  acc_t vals[kTapsPerBlock + 1];
  fuseops_kernels::grad_weight_accumulate<scalar_t, acc_t, index_t>(a, grad_pre, chunks, chunk_len, blockIdx.x,
                                                                    blockIdx.y, threadIdx.x, blockDim.x, vals);
  block_reduce(vals, shared);
  if (threadIdx.x > kTapsPerBlock) return;
  const int64_t dst = fuseops_kernels::grad_weight_slot(threadIdx.x, blockIdx.x, blockIdx.y, chunks, a.out_channels,
                                                        a.k, atomic);
  if (dst < 0) return;
  if (atomic) {
    atomicAdd(partials + dst, vals[0]);
  } else {
    partials[dst] = vals[0];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) finish_weight_kernel(const acc_t* __restrict__ partials, int rows,
                                                                 int out_channels, int c_row, int k,
                                                                 scalar_t* __restrict__ grad_wr,
                                                                 scalar_t* __restrict__ grad_wc,
                                                                 scalar_t* __restrict__ grad_bias) {
  fuseops_kernels::finish_weight_elem<scalar_t, acc_t>(partials, rows, out_channels, c_row, k, grad_wr, grad_wc,
                                                       grad_bias, blockIdx.x * blockDim.x + threadIdx.x);
}

template <typename scalar_t, typename index_t>
void launch_backward(const at::Tensor& grad_out, const at::Tensor& pre, const at::Tensor& x,
                     const at::Tensor& weight_row, const at::Tensor& weight_col, at::Tensor& grad_x,
                     at::Tensor& grad_wr, at::Tensor& grad_wc, at::Tensor& grad_bias, const Geometry& g, Act act,
                     cudaStream_t stream) {
  using acc_t = at::acc_type<scalar_t, true>;
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  fuseops_kernels::BwdArgs<scalar_t> a{};
  a.x = x.data_ptr<scalar_t>();
  a.weight_row = weight_row.data_ptr<scalar_t>();
  a.weight_col = weight_col.data_ptr<scalar_t>();
  a.c_col = static_cast<int>(g.c_col);
  set_geometry(a, g);

  // 1) grad_pre
  at::Tensor grad_pre = at::empty(grad_out.sizes(), grad_out.options().dtype(acc_dtype));
  const index_t out_total = static_cast<index_t>(grad_out.numel());
  grad_pre_kernel<scalar_t, acc_t, index_t>
      <<<static_cast<unsigned>(ceil_div(out_total, kThreads)), kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), pre.defined() ? pre.data_ptr<scalar_t>() : nullptr,
          grad_pre.data_ptr<acc_t>(), out_total, act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 2) grad_x
  const index_t in_total = static_cast<index_t>(x.numel());
  if (in_total > 0) {
    grad_x_kernel<scalar_t, acc_t, index_t><<<static_cast<unsigned>(ceil_div(in_total, kThreads)), kThreads, 0,
                                              stream>>>(a, grad_pre.data_ptr<acc_t>(), grad_x.data_ptr<scalar_t>(),
                                                        in_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // 3) weight and bias gradients
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto plan = fuseops_kernels::plan_weight(g.batch, g.out_channels(), g.out_height * g.out_width, g.kernel,
                                                 multiprocessor_count(x.get_device()), deterministic);
  at::Tensor partials = deterministic
                            ? at::empty({plan.rows, g.out_channels(), g.kernel + 1}, x.options().dtype(acc_dtype))
                            : at::zeros({1, g.out_channels(), g.kernel + 1}, x.options().dtype(acc_dtype));
  const int64_t blocks_x = g.batch * g.out_channels() * plan.chunks;
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max(), "fuse_conv2d backward: too many planes");
  TORCH_CHECK(plan.rows <= std::numeric_limits<int32_t>::max(), "fuse_conv2d backward: too many partial rows");
  TORCH_CHECK(plan.tap_groups <= 65535, "fuse_conv2d backward: K=", g.kernel, " needs more tap groups than a grid has");
  if (blocks_x > 0) {
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(plan.tap_groups));
    grad_weight_kernel<scalar_t, acc_t, index_t><<<grid, kThreads, 0, stream>>>(
        a, grad_pre.data_ptr<acc_t>(), partials.data_ptr<acc_t>(), !deterministic, static_cast<int>(plan.chunks),
        static_cast<int>(plan.chunk_len));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t slots = g.out_channels() * (g.kernel + 1);
  if (slots > 0) {
    finish_weight_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(slots, kThreads)), kThreads, 0,
                                            stream>>>(partials.data_ptr<acc_t>(), static_cast<int>(plan.rows),
                                                      a.out_channels, a.c_row, a.k, grad_wr.data_ptr<scalar_t>(),
                                                      grad_wc.data_ptr<scalar_t>(), grad_bias.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fuse_conv2d_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_row_in,
    const at::Tensor& weight_col_in, const std::optional<at::Tensor>& bias, bool full, int64_t stride,
    int64_t padding, int64_t dilation, c10::string_view activation) {
  const Act act = parse_activation(activation);
  const Geometry g =
      check_and_measure("fuse_conv2d_backward", x_in, weight_row_in, weight_col_in, bias, full, stride, padding,
                        dilation);
  check_cuda_tensor(grad_out_in, "grad_out");
  fuseops::fuse_conv::check_grad_out("fuse_conv2d_backward", grad_out_in, x_in, g);
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
