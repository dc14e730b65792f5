// Schemas of the block conv kernels and their CPU registration.
//
//   block_conv2d_forward, block_conv2d_backward: the blocked convolution (forward.cpp,
//     backward.cpp; geometry and checks in geometry.h);
//   block_pad_forward, block_pad_backward: the padded-block gather and its adjoint (pad.cpp);
//   block_conv2d_release_workspace: frees the calling thread's cached scratch buffers
//     (buffers.h).
//
// The blocked convolution is also registered at the CPU key of the public ops
// torch.ops.fuseops.block_conv2d and block_conv2d_backward (defined in Python,
// fuseops/block_conv/op.py), where it runs unless the backend is Python's to pick
// (common/selection.h).  The kernels write NCHW; the public ops return the output and
// grad_x in x's memory format (common/layout.h), as every backend does.
#include "block_conv/buffers.h"
#include "block_conv/ops.h"
#include "common/layout.h"
#include "common/selection.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

namespace {

namespace bc = fuseops::block_conv;

at::Tensor block_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                            int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                            c10::string_view padding_mode) {
  if (fuseops::selection::python_chooses()) {
    static const auto op =
        fuseops::selection::python_choice_op<decltype(block_conv2d_cpu)>("fuseops::_block_conv2d_by_selection");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode);
  }
  return bc::block_conv2d_forward(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds,
                                  padding_mode)
      .contiguous(fuseops::memory_format_of(x));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds, c10::string_view padding_mode) {
  if (fuseops::selection::python_chooses()) {
    static const auto op = fuseops::selection::python_choice_op<decltype(block_conv2d_backward_cpu)>(
        "fuseops::_block_conv2d_backward_by_selection");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds,
                   padding_mode);
  }
  auto grads = bc::block_conv2d_backward(grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds,
                                         col_bounds, padding_mode);
  std::get<0>(grads) = std::get<0>(grads).contiguous(fuseops::memory_format_of(x));
  return grads;
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
  m.def("block_conv2d_release_workspace() -> ()", &fuseops::block_conv::release_workspace);
}

TORCH_LIBRARY_IMPL(fuseops_ext, CPU, m) {
  m.impl("block_conv2d_forward", &fuseops::block_conv::block_conv2d_forward);
  m.impl("block_conv2d_backward", &fuseops::block_conv::block_conv2d_backward);
  m.impl("block_pad_forward", &fuseops::block_conv::block_pad_forward);
  m.impl("block_pad_backward", &fuseops::block_conv::block_pad_backward);
}

TORCH_LIBRARY_IMPL(fuseops, CPU, m) {
  m.impl("block_conv2d", &block_conv2d_cpu);
  m.impl("block_conv2d_backward", &block_conv2d_backward_cpu);
}
