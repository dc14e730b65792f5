"""Registration of ``torch.ops.fuseops.fuse_conv2d`` (schema, fake impl, autograd).

The schemas below are the launcher interface: each backend module provides
``forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)
-> out`` and ``backward(grad_out, <the same>) -> (grad_x, grad_weight_row,
grad_weight_col, grad_bias)``.  Outputs are contiguous NCHW; grad_bias always has shape
(C_out,).  The backends, chosen by :mod:`fuseops.backends`:

* ``reference`` -> :mod:`fuseops.fuse_conv.reference`
* ``cpu``       -> :mod:`fuseops.fuse_conv.cpu_impl`    (C++ kernels in ``fuseops._C``)
* ``cuda``      -> :mod:`fuseops.fuse_conv.cuda_impl`   (CUDA kernels in ``fuseops._C``)
* ``triton``    -> :mod:`fuseops.fuse_conv.triton_impl` (kernels in ``fuseops.kernels``)

The custom op, its autograd and the eager entry point are assembled by
:class:`fuseops._op_definition.OpDefinition`.
"""

from __future__ import annotations

import torch

from fuseops._op_definition import OpDefinition
from fuseops.fuse_conv.geometry import geometry_of
from fuseops.fuse_conv.reference import fuse_conv2d_reference, fuse_conv2d_reference_backward

_ARGS = ("Tensor x, Tensor weight_row, Tensor weight_col, Tensor? bias, "
         "bool full, int stride, int padding, int dilation, str activation")


def _fake(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    geo = geometry_of(x, weight_row, weight_col, full, stride, padding, dilation)
    return x.new_empty((geo.batch, geo.out_channels, geo.out_height, geo.out_width))


def _backward_fake(grad_out, x, weight_row, weight_col, bias, *options):
    contiguous = torch.contiguous_format
    return (torch.empty_like(x, memory_format=contiguous), torch.empty_like(weight_row, memory_format=contiguous),
            torch.empty_like(weight_col, memory_format=contiguous),
            x.new_empty((weight_row.shape[0] + weight_col.shape[0],)))


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
)

fuse_conv2d_op = FUSE_CONV2D.forward_op
fuse_conv2d_eager = FUSE_CONV2D.eager
