// Schemas of the FuSe (fully separable) convolution ops and their CPU registration.
//
//   torch.ops.fuseops_ext.fuse_conv2d_forward(x, weight_row, weight_col, bias?, full,
//                                             stride, padding, dilation, activation)
//   torch.ops.fuseops_ext.fuse_conv2d_backward(grad_out, x, weight_row, weight_col, bias?,
//                                              full, stride, padding, dilation, activation)
//       -> (grad_x, grad_weight_row, grad_weight_col, grad_bias)
//   torch.ops.fuseops_ext.fuse_conv2d_forward_nhwc / fuse_conv2d_backward_nhwc (the same
//       arguments): channels_last x, output and grad_x (CPU only; channels_last.cpp)
//   torch.ops.fuseops_ext.fuse_conv2d_cpu_features() -> str  (what `python -m fuseops info`
//       reports about this build's FuSe CPU kernels)
//
// The geometry and the checks every backend shares: geometry.h.  CPU kernels:
// forward.cpp, backward.cpp and the AVX-512 run path (runs.h).  CUDA kernels:
// csrc/cuda/fuse_conv_cuda.cu, registered there.
#include "fuse_conv/cpu_shared.h"

#include <torch/library.h>

#include <string>

namespace {

std::string fuse_conv2d_cpu_features() {
#if defined(__AVX512F__)
  return "AVX-512 run path for float32 stride-1 'same' planes";
#else
  return "no AVX-512 run path (built without AVX-512; per-plane kernels only)";
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) {
  m.def(
      "fuse_conv2d_forward(Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, bool full, "
      "int stride, int padding, int dilation, str activation) -> Tensor");
  m.def(
      "fuse_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, "
      "bool full, int stride, int padding, int dilation, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fuse_conv2d_forward_nhwc(Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, bool full, "
      "int stride, int padding, int dilation, str activation) -> Tensor");
  m.def(
      "fuse_conv2d_backward_nhwc(Tensor grad_out, Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, "
      "bool full, int stride, int padding, int dilation, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fuse_conv2d_cpu_features() -> str", &fuse_conv2d_cpu_features);
}

TORCH_LIBRARY_IMPL(fuseops_ext, CPU, m) {
  m.impl("fuse_conv2d_forward", &fuseops::fuse_conv::fuse_conv2d_forward_cpu);
  m.impl("fuse_conv2d_backward", &fuseops::fuse_conv::fuse_conv2d_backward_cpu);
  m.impl("fuse_conv2d_forward_nhwc", &fuseops::fuse_conv::fuse_conv2d_forward_nhwc);
  m.impl("fuse_conv2d_backward_nhwc", &fuseops::fuse_conv::fuse_conv2d_backward_nhwc);
}
