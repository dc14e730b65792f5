"""Registration of ``torch.ops.fuseops.block_conv2d`` (schema, fake impl, autograd).

Backend modules (kernel launchers only), chosen by :mod:`fuseops.backends`:

* ``reference`` -> :mod:`fuseops.block_conv.reference`
* ``cpu``       -> :mod:`fuseops.block_conv.cpu_impl`
* ``cuda``      -> :mod:`fuseops.block_conv.cuda_impl`
* ``triton``    -> :mod:`fuseops.block_conv.triton_impl`

Each provides ``forward(x, weight, bias, stride, padding, dilation, groups,
row_bounds, col_bounds, padding_mode) -> out`` and ``backward(grad_out, x, weight,
bias, <same>) -> (grad_x, grad_weight, grad_bias)``.  ``stride``, ``padding`` and
``dilation`` are [h, w] lists; the bounds are block edges (``spans_to_bounds``).
Plain eager calls reach the same launchers through :data:`block_conv2d_eager` (see
:mod:`fuseops._eager`).  The op always runs a true strided conv: the "pool" stride mode is composed outside
it (fuseops.block_conv.api).  Outputs are contiguous NCHW; grad_bias is (C_out,).
"""

from __future__ import annotations

import importlib

import torch

from fuseops import _eager, backends
from fuseops.block_conv.grid import block_out_size, bounds_to_spans
from fuseops.block_conv.reference import block_conv2d_reference, block_conv2d_reference_backward

OP_NAME = "block_conv2d"

backends.register_op(
    OP_NAME,
    probes={
        "reference": backends.reference_probe,
        "cpu": backends.cpu_probe_for("block_conv2d_forward"),
        # The block-pad gather onto a canvas, one cuDNN conv, a crop (cuda_impl).
        "cuda": backends.cuda_probe_for("block_pad_gather"),
        "triton": backends.triton_probe,
    },
    auto_order={"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
)


class _ReferenceBackend:
    forward = staticmethod(block_conv2d_reference)
    backward = staticmethod(block_conv2d_reference_backward)


_launchers: dict[str, object] = {"reference": _ReferenceBackend}


def _backend_module(name: str):
    module = _launchers.get(name)
    if module is None:  # imported on first use: triton_impl imports triton
        module = _launchers[name] = importlib.import_module(f"fuseops.block_conv.{name}_impl")
    return module


def _selected_impl(function: str, args: tuple, selection: str | None = None):
    """The launcher module of the backend selected now (or of ``selection``, a name as
    :func:`fuseops.current_backend` returns); x is args[0] forward, args[1] backward."""
    return _backend_module(backends.resolve(OP_NAME, args[1 if function == "backward" else 0].device,
                                            name=selection))


def output_size(bounds: list[int], kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Sum of the per-block output sizes along one dimension."""
    return sum(block_out_size(b - a, kernel, stride, padding, dilation) for a, b in bounds_to_spans(bounds))


@torch.library.custom_op("fuseops::block_conv2d", mutates_args=())
def block_conv2d_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    row_bounds: list[int],
    col_bounds: list[int],
    padding_mode: str,
) -> torch.Tensor:
    args = (x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode)
    return _selected_impl("forward", args).forward(*args)


@block_conv2d_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    kh, kw = weight.shape[2], weight.shape[3]
    out_h = output_size(row_bounds, kh, stride[0], padding[0], dilation[0])
    out_w = output_size(col_bounds, kw, stride[1], padding[1], dilation[1])
    return x.new_empty((x.shape[0], weight.shape[0], out_h, out_w))


@torch.library.custom_op("fuseops::block_conv2d_backward", mutates_args=())
def block_conv2d_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    row_bounds: list[int],
    col_bounds: list[int],
    padding_mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode)
    return _selected_impl("backward", args).backward(*args)


@block_conv2d_backward_op.register_fake
def _(grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        x.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    # The backward runs on the backend selected when the forward ran, even if it is called
    # outside that `use_backend` block (eager mode; compiled graphs read the selection at run time).
    ctx.backend = backends.current_backend()
    ctx.save_for_backward(x, weight, bias)
    ctx.config = inputs[3:]


def _backward(ctx, grad_out):
    x, weight, bias = ctx.saved_tensors
    with backends.use_backend(ctx.backend):
        grad_x, grad_weight, grad_bias = torch.ops.fuseops.block_conv2d_backward(
            grad_out.contiguous(), x, weight, bias, *ctx.config
        )
    return (grad_x, grad_weight, grad_bias if bias is not None else None) + (None,) * len(ctx.config)


block_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


#: block_conv2d in plain eager mode (the caller checks fuseops._eager.dispatcher_bypass_allowed),
#: with the op's arguments: the registered op's Python dispatch layers skipped.
block_conv2d_eager = _eager.eager_op(_selected_impl, tensor_count=3)
