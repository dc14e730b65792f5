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
