// CUDA block-pad gather and its backward (the planned CUDA block conv path: gather, then
// one cuDNN conv): one pass each.
// Schemas: csrc/block_pad/schema.cpp.  Index maps: csrc/block_pad/maps.h.
//
// STATUS: compiled with nvcc (CI compile check); never run on a GPU yet.
//
// Gather: every canvas element reads at most one source element, chosen by the two
// separable axis maps, so the forward is a single coalesced pass whatever the mode,
// ragged blocks included.  Backward: a gather over the inverse maps: each source
// pixel sums the canvas entries that read it, in a fixed order (no atomics, so it is
// deterministic).  Both kernels read their input through strides and write in the
// input's memory format, so channels_last tensors are not copied.
#include "block_pad/maps.h"
#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <mutex>
#include <sstream>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace fuseops_blockpad {
namespace {

constexpr int kThreads = 256;

struct Strides {
  int64_t n, c, h, w;
};

Strides strides_of(const at::Tensor& t) { return Strides{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Decompose a linear index of a (N, C, A, B) tensor laid out NCHW or NHWC.
template <typename index_t, bool CHANNELS_LAST>
__device__ __forceinline__ void unravel(index_t i, int channels, int rows, int cols, index_t& n, int& c, int& a,
                                        int& b) {
  if (CHANNELS_LAST) {
    c = static_cast<int>(i % channels);
    i /= channels;
    b = static_cast<int>(i % cols);
    i /= cols;
    a = static_cast<int>(i % rows);
    n = i / rows;
  } else {
    b = static_cast<int>(i % cols);
    i /= cols;
    a = static_cast<int>(i % rows);
    i /= rows;
    c = static_cast<int>(i % channels);
    n = i / channels;
  }
}

template <typename scalar_t, typename index_t, bool CHANNELS_LAST>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const scalar_t* __restrict__ x, Strides xs, scalar_t* __restrict__ out,
                  const int32_t* __restrict__ row_map, const int32_t* __restrict__ col_map, index_t total,
                  int channels, int canvas_h, int canvas_w) {
  // The flat index in 64 bits, compared before narrowing: blockIdx.x * blockDim.x can pass
  // 2^31 (and wrap negative in 32 bits) while total still fits int32.
  const int64_t flat = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (flat >= static_cast<int64_t>(total)) return;
  const index_t i = static_cast<index_t>(flat);
  index_t n;
  int c, q, r;
  unravel<index_t, CHANNELS_LAST>(i, channels, canvas_h, canvas_w, n, c, q, r);
  const int src_h = row_map[q], src_w = col_map[r];
  scalar_t v = scalar_t(0);
  if (src_h >= 0 && src_w >= 0) {
    v = x[n * xs.n + c * xs.c + static_cast<index_t>(src_h) * xs.h + static_cast<index_t>(src_w) * xs.w];
  }
  out[i] = v;  // `out` is dense in the memory order `i` walks
}

template <typename scalar_t, typename index_t, bool CHANNELS_LAST>
__global__ void __launch_bounds__(kThreads)
    scatter_kernel(const scalar_t* __restrict__ grad, Strides gs, scalar_t* __restrict__ grad_x,
                   const int32_t* __restrict__ row_off, const int32_t* __restrict__ row_idx,
                   const int32_t* __restrict__ col_off, const int32_t* __restrict__ col_idx, index_t total,
                   int channels, int height, int width) {
  using acc_t = at::acc_type<scalar_t, true>;
  // The flat index in 64 bits, compared before narrowing: blockIdx.x * blockDim.x can pass
  // 2^31 (and wrap negative in 32 bits) while total still fits int32.
  const int64_t flat = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (flat >= static_cast<int64_t>(total)) return;
  const index_t i = static_cast<index_t>(flat);
  index_t n;
  int c, y, x;
  unravel<index_t, CHANNELS_LAST>(i, channels, height, width, n, c, y, x);
  const scalar_t* g = grad + n * gs.n + c * gs.c;
  acc_t sum = acc_t(0);
  for (int a = row_off[y]; a < row_off[y + 1]; ++a) {
    const scalar_t* g_row = g + static_cast<index_t>(row_idx[a]) * gs.h;
    for (int b = col_off[x]; b < col_off[x + 1]; ++b) sum += static_cast<acc_t>(g_row[static_cast<index_t>(col_idx[b]) * gs.w]);
  }
  grad_x[i] = static_cast<scalar_t>(sum);
}

// Host vector -> int32 device tensor (a small synchronous copy, once per geometry: see device_axis_maps).
at::Tensor to_device(const std::vector<int64_t>& values, const at::Device& device) {
  TORCH_CHECK(values.size() < static_cast<size_t>(std::numeric_limits<int32_t>::max()), "block map too long");
  at::Tensor host = at::empty({static_cast<int64_t>(values.size())}, at::TensorOptions().dtype(at::kInt));
  int32_t* p = host.data_ptr<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) {
    TORCH_CHECK(values[i] <= std::numeric_limits<int32_t>::max(), "block map entry exceeds int32");
    p[i] = static_cast<int32_t>(values[i]);
  }
  return host.to(device);
}

// One axis's maps on the device: the gather map and its inverse (offsets, indices).
struct AxisMaps {
  at::Tensor map, offsets, indices;
};

// Maps per (axis geometry, device), built and copied once: later calls do no host work, no
// host-to-device copy and no sync, so the ops can be captured in CUDA graphs after a first
// (warm-up) call.  References stay valid: unordered_map never moves its nodes.
const AxisMaps& device_axis_maps(at::IntArrayRef bounds, int64_t extent, int64_t pad_lo, int64_t pad_hi,
                                 PadMode mode, int64_t align, const char* axis, const at::Device& device) {
  static std::mutex mutex;
  static std::unordered_map<std::string, AxisMaps> cache;
  std::ostringstream key;
  key << device.index() << '|' << extent << '|' << pad_lo << '|' << pad_hi << '|' << static_cast<int>(mode) << '|'
      << align << '|';
  for (const int64_t b : bounds) key << b << ',';
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find(key.str());
  if (found != cache.end()) return found->second;
  const std::vector<int64_t> map = axis_map(bounds.vec(), extent, pad_lo, pad_hi, mode, align, axis);
  std::vector<int64_t> offsets, indices;
  invert_map(map, extent, offsets, indices);
  AxisMaps maps{to_device(map, device), to_device(offsets, device), to_device(indices, device)};
  return cache.emplace(key.str(), std::move(maps)).first->second;
}

at::MemoryFormat output_format(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous;
}

// 1 + the offset of t's last element through its strides: how far its reads reach.
int64_t strided_extent(const at::Tensor& t) {
  return (t.size(0) - 1) * t.stride(0) + (t.size(1) - 1) * t.stride(1) + (t.size(2) - 1) * t.stride(2) +
         (t.size(3) - 1) * t.stride(3) + 1;
}

// Calls launch(index_t{}, std::integral_constant<bool, channels_last>{}): 32-bit offsets
// when `small` (the output and the input's extent fit int32), else 64-bit.
template <typename F>
void launch_for(bool small, bool channels_last, F&& launch) {
  if (small) {
    channels_last ? launch(int32_t{}, std::true_type{}) : launch(int32_t{}, std::false_type{});
  } else {
    channels_last ? launch(int64_t{}, std::true_type{}) : launch(int64_t{}, std::false_type{});
  }
}

at::Tensor block_pad_gather_cuda(const at::Tensor& x, at::IntArrayRef row_bounds, at::IntArrayRef col_bounds,
                                 at::IntArrayRef padding, c10::string_view mode_name, int64_t align) {
  fuseops_cuda::check_cuda_tensor(x, "x");
  TORCH_CHECK(x.dim() == 4, "x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  const PadMode mode = parse_mode(std::string(mode_name));
  const Padding pad = parse_padding(padding.vec());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor& rows = device_axis_maps(row_bounds, x.size(2), pad.top, pad.bottom, mode, align, "row", x.device()).map;
  const at::Tensor& cols = device_axis_maps(col_bounds, x.size(3), pad.left, pad.right, mode, align, "col", x.device()).map;
  const int64_t hc = rows.numel(), wc = cols.numel();
  const at::MemoryFormat fmt = output_format(x);
  at::Tensor out = at::empty({x.size(0), x.size(1), hc, wc}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const int64_t total = out.numel();
  const int64_t blocks = fuseops_cuda::ceil_div(total, kThreads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "block_pad_gather: output too large for one grid");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  // 64-bit offsets when the input's extent (through its strides) or the output exceeds int32.
  const bool small = fuseops_cuda::fits_int32(total) && fuseops_cuda::fits_int32(strided_extent(x));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_pad_gather_cuda", [&] {
    auto launch = [&](auto index_tag, auto layout_tag) {
      using index_t = decltype(index_tag);
      gather_kernel<scalar_t, index_t, decltype(layout_tag)::value>
          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
              x.data_ptr<scalar_t>(), strides_of(x), out.data_ptr<scalar_t>(), rows.data_ptr<int32_t>(),
              cols.data_ptr<int32_t>(), static_cast<index_t>(total), static_cast<int>(x.size(1)),
              static_cast<int>(hc), static_cast<int>(wc));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    launch_for(small, channels_last, launch);
  });
  return out;
}

at::Tensor block_pad_scatter_cuda(const at::Tensor& grad, at::IntArrayRef row_bounds, at::IntArrayRef col_bounds,
                                  at::IntArrayRef padding, c10::string_view mode_name, int64_t align,
                                  int64_t height, int64_t width) {
  fuseops_cuda::check_cuda_tensor(grad, "grad");
  TORCH_CHECK(grad.dim() == 4, "grad must be 4-D, got ", grad.dim(), "-D");
  const PadMode mode = parse_mode(std::string(mode_name));
  const Padding pad = parse_padding(padding.vec());
  const c10::cuda::CUDAGuard guard(grad.device());
  const AxisMaps& row_maps = device_axis_maps(row_bounds, height, pad.top, pad.bottom, mode, align, "row", grad.device());
  const AxisMaps& col_maps = device_axis_maps(col_bounds, width, pad.left, pad.right, mode, align, "col", grad.device());
  const int64_t hc = row_maps.map.numel(), wc = col_maps.map.numel();
  TORCH_CHECK(grad.size(2) == hc && grad.size(3) == wc, "grad must have the canvas size ", hc, "x", wc, ", got ",
              grad.sizes());
  const at::MemoryFormat fmt = output_format(grad);
  at::Tensor grad_x = at::empty({grad.size(0), grad.size(1), height, width}, grad.options().memory_format(fmt));
  if (grad_x.numel() == 0) return grad_x;
  const at::Tensor &ro = row_maps.offsets, &ri = row_maps.indices, &co = col_maps.offsets, &ci = col_maps.indices;
  const int64_t total = grad_x.numel();
  const int64_t blocks = fuseops_cuda::ceil_div(total, kThreads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "block_pad_scatter: output too large for one grid");
  const bool small = fuseops_cuda::fits_int32(total) && fuseops_cuda::fits_int32(strided_extent(grad));
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "block_pad_scatter_cuda", [&] {
    auto launch = [&](auto index_tag, auto layout_tag) {
      using index_t = decltype(index_tag);
      scatter_kernel<scalar_t, index_t, decltype(layout_tag)::value>
          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), strides_of(grad), grad_x.data_ptr<scalar_t>(), ro.data_ptr<int32_t>(),
              ri.data_ptr<int32_t>(), co.data_ptr<int32_t>(), ci.data_ptr<int32_t>(), static_cast<index_t>(total),
              static_cast<int>(grad.size(1)), static_cast<int>(height), static_cast<int>(width));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    launch_for(small, channels_last, launch);
  });
  return grad_x;
}

}  // namespace
}  // namespace fuseops_blockpad

TORCH_LIBRARY_IMPL(fuseops_ext, CUDA, m) {
  m.impl("block_pad_gather", &fuseops_blockpad::block_pad_gather_cuda);
  m.impl("block_pad_scatter", &fuseops_blockpad::block_pad_scatter_cuda);
}
