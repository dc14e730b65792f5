// Helpers shared by the fuseops CUDA kernels.
//
// Headers are deliberately light: ATen/cuda/CUDAContext.h pulls in cuSPARSE and cuBLAS
// headers, which a toolkit without those libraries (the CI compile check) does not
// have.  c10::cuda::getCurrentCUDAStream is the same stream at::cuda::getCurrentCUDAStream
// returns (ATen re-exports it).
#pragma once

#include <ATen/AccumulateType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <string>

namespace fuseops_cuda {

// Activation fused into an epilogue.  The names are the schema strings of
// fuseops.activations ("none", "relu", "relu6", "hardswish").
enum class Act : int { None = 0, Relu = 1, Relu6 = 2, Hardswish = 3 };

inline Act parse_activation(const std::string& name) {
  if (name == "none") return Act::None;
  if (name == "relu") return Act::Relu;
  if (name == "relu6") return Act::Relu6;
  if (name == "hardswish") return Act::Hardswish;
  TORCH_CHECK(false, "activation must be one of none, relu, relu6, hardswish; got '", name, "'");
  return Act::None;
}

template <typename acc_t>
__device__ __forceinline__ acc_t activate(acc_t v, Act act) {
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
__device__ __forceinline__ acc_t activate_backward(acc_t g, acc_t pre, Act act) {
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

// 32-bit indexing is faster (fewer registers, cheaper address arithmetic); 64-bit is
// needed once any tensor the kernel touches has more elements than int32 can index.
inline bool fits_int32(int64_t numel) { return numel <= std::numeric_limits<int32_t>::max(); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

inline int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

}  // namespace fuseops_cuda
