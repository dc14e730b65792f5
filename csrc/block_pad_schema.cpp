// Schemas of the block-pad gather and its backward (issue 5, option A).  The
// implementations are in csrc/block_pad_cpu.cpp (CPU) and csrc/cuda/block_pad_cuda.cu
// (CUDA); the index maps they share are described in csrc/block_pad_maps.h.
//
// block_pad_gather(x, row_spans, col_spans, padding, mode, align) -> canvas
//   x: (N, C, H, W).  row_spans / col_spans: flat (start, size) pairs of the blocks
//   along H / W.  padding: [top, bottom, left, right].  mode: constant | replicate |
//   reflect.  align: each padded block's canvas length is rounded up to a multiple of
//   it (pass the conv stride).  Returns (N, C, H_canvas, W_canvas) in x's memory format.
// block_pad_scatter(grad, row_spans, col_spans, padding, mode, align, height, width)
//   -> grad_x (N, C, height, width): each source pixel sums the canvas entries that read it.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) {
  m.def("block_pad_gather(Tensor x, int[] row_spans, int[] col_spans, int[] padding, str mode, int align) -> Tensor");
  m.def(
      "block_pad_scatter(Tensor grad, int[] row_spans, int[] col_spans, int[] padding, str mode, int align, "
      "int height, int width) -> Tensor");
}
