// Schemas of the FuSe (fully separable) convolution kernels and their CPU registration.
//
//   torch.ops.fuseops_ext.fuse_conv2d_forward(x, weight_row, weight_col, bias?, full,
//                                             stride, padding, dilation, activation)
//   torch.ops.fuseops_ext.fuse_conv2d_backward(grad_out, x, weight_row, weight_col, bias?,
//                                              full, stride, padding, dilation, activation)
//       -> (grad_x, grad_weight_row, grad_weight_col, grad_bias)
//   torch.ops.fuseops_ext.fuse_conv2d_cpu_features() -> str  (what `python -m fuseops info`
//       reports about this build's FuSe CPU kernels)
//
// The same kernels are registered at the CPU key of the public ops torch.ops.fuseops.
// fuse_conv2d and fuse_conv2d_backward (defined in Python, fuseops/fuse_conv/op.py), where
// they run unless the backend is Python's to pick (common/selection.h).
//
// The geometry and the checks every backend shares: geometry.h.  CPU kernels, chosen by
// x's layout: channels_last x takes channels_last.cpp, which writes the output and grad_x
// in channels_last; contiguous NCHW x takes forward.cpp, backward.cpp and the AVX-512 run
// path (runs.h).  The public op copies x of any other layout to NCHW first.  CUDA kernels:
// csrc/cuda/fuse_conv_cuda.cu, registered there.
#include "common/layout.h"
#include "common/selection.h"
#include "fuse_conv/cpu_shared.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <string>

namespace {

namespace fc = fuseops::fuse_conv;

std::string fuse_conv2d_cpu_features() {
#if defined(__AVX512F__)
  return "AVX-512 run path for float32 stride-1 'same' planes";
#else
  return "no AVX-512 run path (built without AVX-512; per-plane kernels only)";
#endif
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// The fuseops_ext ops: channels_last x takes the NHWC kernels, anything else the NCHW ones,
// which check that x is contiguous (direct callers get an error, not a copy).
at::Tensor forward_by_layout(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                             const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding,
                             int64_t dilation, c10::string_view activation) {
  const auto kernel =
      fuseops::stored_channels_last(x) ? &fc::fuse_conv2d_forward_nhwc : &fc::fuse_conv2d_forward_cpu;
  return kernel(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_by_layout(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
    const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding, int64_t dilation,
    c10::string_view activation) {
  const auto kernel =
      fuseops::stored_channels_last(x) ? &fc::fuse_conv2d_backward_nhwc : &fc::fuse_conv2d_backward_cpu;
  return kernel(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation);
}

// The CPU kernels of torch.ops.fuseops.fuse_conv2d and fuse_conv2d_backward.
at::Tensor fuse_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
                           const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding,
                           int64_t dilation, c10::string_view activation) {
  if (fuseops::selection::python_chooses()) {
    static const auto op =
        fuseops::selection::python_choice_op<decltype(fuse_conv2d_cpu)>("fuseops::_fuse_conv2d_by_selection");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation);
  }
  if (fuseops::stored_channels_last(x)) {
    return forward_by_layout(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation);
  }
  // Any other layout (a sliced view, say) is copied to NCHW first, as the cpu launcher does.
  return forward_by_layout(x.contiguous(), weight_row.contiguous(), weight_col.contiguous(), contiguous(bias), full,
                           stride, padding, dilation, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fuse_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight_row, const at::Tensor& weight_col,
    const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding, int64_t dilation,
    c10::string_view activation) {
  if (fuseops::selection::python_chooses()) {
    static const auto op = fuseops::selection::python_choice_op<decltype(fuse_conv2d_backward_cpu)>(
        "fuseops::_fuse_conv2d_backward_by_selection");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation);
  }
  if (fuseops::stored_channels_last(x)) {
    return backward_by_layout(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation,
                              activation);
  }
  return backward_by_layout(grad_out.contiguous(), x.contiguous(), weight_row.contiguous(), weight_col.contiguous(),
                            contiguous(bias), full, stride, padding, dilation, activation);
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

TORCH_LIBRARY_IMPL(fuseops, CPU, m) {
  m.impl("fuse_conv2d", &fuse_conv2d_cpu);
  m.impl("fuse_conv2d_backward", &fuse_conv2d_backward_cpu);
}
