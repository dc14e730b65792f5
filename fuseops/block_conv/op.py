"""Registration of ``torch.ops.fuseops.block_conv2d`` (schema, fake impl, autograd).

The schemas below are the launcher interface: each backend module provides
``forward(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds,
padding_mode) -> out`` and ``backward(grad_out, <the same>) -> (grad_x, grad_weight,
grad_bias)``.  ``stride``, ``padding`` and ``dilation`` are [h, w] lists; the bounds are
block edges (``spans_to_bounds``).  The op always runs a true strided conv: the "pool"
stride mode is composed outside it (fuseops.block_conv.api).  The output and grad_x
have x's memory format; grad_bias is (C_out,).  The backends, chosen by :mod:`fuseops.backends`:

* ``reference`` -> :mod:`fuseops.block_conv.reference`
* ``cpu``       -> :mod:`fuseops.block_conv.cpu_impl`
* ``cuda``      -> :mod:`fuseops.block_conv.cuda_impl`
* ``triton``    -> :mod:`fuseops.block_conv.triton_impl`

The custom op, its autograd and the eager entry point are assembled by
:class:`fuseops._op_definition.OpDefinition`.
"""

from __future__ import annotations

import torch

from fuseops._layout import memory_format_of
from fuseops._op_definition import OpDefinition
from fuseops.block_conv.grid import block_out_size, bounds_to_spans
from fuseops.block_conv.reference import block_conv2d_reference, block_conv2d_reference_backward

_ARGS = ("Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups, "
         "int[] row_bounds, int[] col_bounds, str padding_mode")


def output_size(bounds: list[int], kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Sum of the per-block output sizes along one dimension."""
    return sum(block_out_size(b - a, kernel, stride, padding, dilation) for a, b in bounds_to_spans(bounds))


def _fake(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    kh, kw = weight.shape[2], weight.shape[3]
    out_h = output_size(row_bounds, kh, stride[0], padding[0], dilation[0])
    out_w = output_size(col_bounds, kw, stride[1], padding[1], dilation[1])
    return torch.empty((x.shape[0], weight.shape[0], out_h, out_w), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


def _backward_fake(grad_out, x, weight, bias, *options):
    return (torch.empty_like(x, memory_format=memory_format_of(x)),
            torch.empty_like(weight, memory_format=torch.contiguous_format), x.new_empty((weight.shape[0],)))


BLOCK_CONV2D = OpDefinition(
    "block_conv2d",
    package="fuseops.block_conv",
    schema=f"({_ARGS}) -> Tensor",
    backward_schema=f"(Tensor grad_out, {_ARGS}) -> (Tensor, Tensor, Tensor)",
    tensor_count=3,
    reference=(block_conv2d_reference, block_conv2d_reference_backward),
    fake=_fake,
    backward_fake=_backward_fake,
    cpu_kernel="block_conv2d_forward",
    cuda_kernel="block_pad_gather",  # the gather onto a block-padded canvas (cuda_impl)
)

block_conv2d_op = BLOCK_CONV2D.forward_op
block_conv2d_eager = BLOCK_CONV2D.eager
