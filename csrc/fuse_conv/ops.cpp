// Schemas of the FuSe (fully separable) convolution ops and their CPU registration.
//
//   torch.ops.fuseops_ext.fuse_conv2d_forward(x, weight_row, weight_col, bias?, full,
//                                             stride, padding, dilation, activation)
//   torch.ops.fuseops_ext.fuse_conv2d_backward(grad_out, x, weight_row, weight_col, bias?,
//                                              full, stride, padding, dilation, activation)
//       -> (grad_x, grad_weight_row, grad_weight_col, grad_bias)
//   torch.ops.fuseops_ext.fuse_conv2d_cpu_features() -> str  (what `python -m fuseops info`
//       reports about this build's FuSe CPU kernels)
//
// The geometry and the checks every backend shares: geometry.h.  CPU kernels, chosen by
// x's layout: contiguous NCHW x takes forward.cpp, backward.cpp and the AVX-512 run path
// (runs.h); channels_last x takes channels_last.cpp.  CUDA kernels:
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

// x stored channels_last (and not also NCHW-contiguous): the NHWC kernels, which write the
// output and grad_x in channels_last; anything else: the NCHW kernels.  The same rule as
// fuseops/_layout.py.
bool stored_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor forward_by_layout(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                             const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding,
                             int64_t dilation, c10::string_view activation) {
  namespace fc = fuseops::fuse_conv;
  const auto kernel = stored_channels_last(x) ? &fc::fuse_conv2d_forward_nhwc : &fc::fuse_conv2d_forward_cpu;
  return kernel(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_by_layout(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
    const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding, int64_t dilation,
    c10::string_view activation) {
  namespace fc = fuseops::fuse_conv;
  const auto kernel = stored_channels_last(x) ? &fc::fuse_conv2d_backward_nhwc : &fc::fuse_conv2d_backward_cpu;
  return kernel(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) {
  m.def(
      "fuse_conv2d_forward(Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, bool full, "
      "int stride, int padding, int dilation, str activation) -> Tensor");
  m.def(
      "fuse_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, "
      "bool full, int stride, int padding, int dilation, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fuse_conv2d_cpu_features() -> str", &fuse_conv2d_cpu_features);
}

TORCH_LIBRARY_IMPL(fuseops_ext, CPU, m) {
  m.impl("fuse_conv2d_forward", &forward_by_layout);
  m.impl("fuse_conv2d_backward", &backward_by_layout);
}
