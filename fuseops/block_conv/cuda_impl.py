"""The ``cuda`` launchers of block_conv2d: one gather onto a block-padded canvas, one cuDNN
convolution over it, and a crop.

1. ``block_pad_gather`` (:mod:`fuseops.block_pad_canvas`; a CUDA kernel, with a C++ twin
   on the CPU) lays every block, padded on its own, side by side on a canvas; each padded
   block starts at a multiple of the stride (``align``), so strided outputs line up.
2. ``F.conv2d`` with padding 0 over the canvas computes every block's outputs in one call.
3. The outputs that straddle two padded blocks are dropped: ``index_select`` along H and W
   with index vectors built once per geometry and device, and cached there (no host work
   or host-device copy on later calls).

Backward: the crop's adjoint (a zero-filled canvas-output gradient with the kept entries
written), ``convolution_backward`` for the canvas and the weight, and ``block_pad_scatter``
(each input pixel sums the canvas entries that read it).  The canvas is gathered again
rather than kept, as the launcher interface (:mod:`fuseops.block_conv.op`) passes x.

The same code runs on CPU tensors through the C++ gather, which is how CI checks it
against the reference; on a GPU it has not run yet.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fuseops import _C  # noqa: F401  (importing registers torch.ops.fuseops_ext.*)
from fuseops.block_conv.grid import block_out_size, bounds_to_spans

_crop_cache: dict[tuple, torch.Tensor] = {}


def _align(stride: list[int]) -> int:
    # Every padded block must start at a multiple of the stride along its own axis.
    return math.lcm(stride[0], stride[1])


def _padding(padding: list[int]) -> list[int]:
    return [padding[0], padding[0], padding[1], padding[1]]  # top, bottom, left, right


def _crop_index(bounds: list[int], kernel: int, stride: int, pad: int, dilation: int, align: int,
                device: torch.device) -> torch.Tensor:
    """Indices along one axis of the canvas conv's output that belong to a block."""
    key = (tuple(bounds), kernel, stride, pad, dilation, align, device)
    index = _crop_cache.get(key)
    if index is None:
        kept, offset = [], 0
        for start, stop in bounds_to_spans(bounds):
            first = offset // stride
            kept.extend(range(first, first + block_out_size(stop - start, kernel, stride, pad, dilation)))
            offset += -(-(stop - start + 2 * pad) // align) * align
        # Outside inference mode: an inference tensor could not be saved for a later backward.
        with torch.inference_mode(False):
            index = _crop_cache[key] = torch.tensor(kept, dtype=torch.long, device=device)
    return index


def _geometry(x, weight, stride, padding, dilation, row_bounds, col_bounds):
    align = _align(stride)
    rows = _crop_index(row_bounds, weight.shape[2], stride[0], padding[0], dilation[0], align, x.device)
    cols = _crop_index(col_bounds, weight.shape[3], stride[1], padding[1], dilation[1], align, x.device)
    return align, rows, cols


def _canvas(x, row_bounds, col_bounds, padding, padding_mode, align):
    return torch.ops.fuseops_ext.block_pad_gather(x, list(row_bounds), list(col_bounds), _padding(padding),
                                                  padding_mode, align)


def forward(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    align, rows, cols = _geometry(x, weight, stride, padding, dilation, row_bounds, col_bounds)
    canvas = _canvas(x, row_bounds, col_bounds, padding, padding_mode, align)
    out = F.conv2d(canvas, weight, bias, tuple(stride), 0, tuple(dilation), groups)
    return out.index_select(2, rows).index_select(3, cols).contiguous()


def backward(grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    align, rows, cols = _geometry(x, weight, stride, padding, dilation, row_bounds, col_bounds)
    canvas = _canvas(x, row_bounds, col_bounds, padding, padding_mode, align)
    kernel = weight.shape[2:]
    out_h = (canvas.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (canvas.shape[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    grad_canvas_out = grad_out.new_zeros((grad_out.shape[0], grad_out.shape[1], out_h, out_w))
    grad_canvas_out[:, :, rows[:, None], cols[None, :]] = grad_out
    grad_canvas, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_canvas_out, canvas, weight, None, list(stride), [0, 0], list(dilation), False, [0, 0], groups,
        [True, True, False])
    grad_x = torch.ops.fuseops_ext.block_pad_scatter(grad_canvas, list(row_bounds), list(col_bounds),
                                                     _padding(padding), padding_mode, align, x.shape[2], x.shape[3])
    # As every launcher: contiguous gradients, and grad_bias (C_out,) even without a bias.
    return grad_x.contiguous(), grad_weight.contiguous(), grad_out.sum((0, 2, 3))
