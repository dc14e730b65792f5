"""Registration of ``torch.ops.fuseops.fuse_conv2d`` (schema, fake impl, autograd).

The schemas below are the launcher interface: each backend module provides
``forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)
-> out`` and ``backward(grad_out, <the same>) -> (grad_x, grad_weight_row,
grad_weight_col, grad_bias)``.  The output and grad_x have x's memory format; grad_bias
always has shape (C_out,).  The backends, chosen by :mod:`fuseops.backends`:

* ``reference`` -> :mod:`fuseops.fuse_conv.reference`
* ``cpu``       -> :mod:`fuseops.fuse_conv.cpu_impl`    (C++ kernels in ``fuseops._C``)
* ``cuda``      -> :mod:`fuseops.fuse_conv.cuda_impl`   (CUDA kernels in ``fuseops._C``)
* ``triton``    -> :mod:`fuseops.fuse_conv.triton_impl` (kernels in ``fuseops.kernels``)

The custom op, its autograd and the eager entry point are assembled by
:class:`fuseops._op_definition.OpDefinition`.
"""

from __future__ import annotations

import torch

from fuseops._layout import memory_format_of
from fuseops._op_definition import OpDefinition
from fuseops.fuse_conv.geometry import geometry_of
from fuseops.fuse_conv.reference import fuse_conv2d_reference, fuse_conv2d_reference_backward

_ARGS = ("Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, "
         "bool full, int stride, int padding, int dilation, str activation")


def _fake(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    geo = geometry_of(x, weight_row, weight_col, full, stride, padding, dilation)
    return torch.empty((geo.batch, geo.out_channels, geo.out_height, geo.out_width), dtype=x.dtype,
                       device=x.device, memory_format=memory_format_of(x))


def _backward_fake(grad_out, x, weight_row, weight_col, bias, *options):
    dense = torch.contiguous_format
    grad_x = torch.empty_like(x, memory_format=memory_format_of(x))
    grad_row, grad_col = (torch.empty_like(w, memory_format=dense) for w in (weight_row, weight_col))
    return grad_x, grad_row, grad_col, x.new_empty((weight_row.shape[0] + weight_col.shape[0],))


FUSE_CONV2D = OpDefinition(
    "fuse_conv2d",
    package="fuseops.fuse_conv",
    schema=f"({_ARGS}) -> Tensor",
    backward_schema=f"(Tensor grad_out, {_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)",
    tensor_count=4,
    reference=(fuse_conv2d_reference, fuse_conv2d_reference_backward),
    fake=_fake,
    backward_fake=_backward_fake,
    cpu_kernel="fuse_conv2d_forward",
    cuda_kernel="fuse_conv2d_forward",
    autotune=True,
    channels_last_kernels=True,
)

fuse_conv2d_op = FUSE_CONV2D.forward_op
fuse_conv2d_eager = FUSE_CONV2D.eager
