// Schemas of the block-pad gather and its backward (the planned CUDA block conv path:
// gather the padded blocks, then one cuDNN conv).  The implementations are in
// csrc/block_pad/cpu.cpp (CPU) and csrc/cuda/block_pad_cuda.cu (CUDA); the index maps
// they share are described in csrc/block_pad/maps.h.
//
// block_pad_gather(x, row_bounds, col_bounds, padding, mode, align) -> canvas
//   x: (N, C, H, W).  row_bounds / col_bounds: block boundaries along H / W,
//   [b0, b1, ..., bn] strictly increasing (fuseops.block_conv.grid.spans_to_bounds).
//   padding: [top, bottom, left, right].  mode: constant | replicate | reflect.
//   align: each padded block's canvas length is rounded up to a multiple of it (pass
//   the conv stride).  Returns (N, C, H_canvas, W_canvas) in x's memory format.
// block_pad_scatter(grad, row_bounds, col_bounds, padding, mode, align, height, width)
//   -> grad_x (N, C, height, width): each source pixel sums the canvas entries that read it.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) {
  m.def("block_pad_gather(Tensor x, int[] row_bounds, int[] col_bounds, int[] padding, str mode, int align) -> Tensor");
  m.def(
      "block_pad_scatter(Tensor grad, int[] row_bounds, int[] col_bounds, int[] padding, str mode, int align, "
      "int height, int width) -> Tensor");
}
