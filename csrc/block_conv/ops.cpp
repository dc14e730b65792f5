// Schemas of the block conv ops and their CPU registration.
//
//   block_conv2d_forward, block_conv2d_backward: the blocked convolution (forward.cpp,
//     backward.cpp; geometry and checks in geometry.h);
//   block_pad_forward, block_pad_backward: the padded-block gather and its adjoint (pad.cpp);
//   block_conv2d_release_workspace: frees the calling thread's cached scratch buffers
//     (buffers.h).
#include "block_conv/buffers.h"
#include "block_conv/ops.h"

#include <torch/library.h>

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
