"""Registration of ``torch.ops.fuseops.fuse_conv2d`` (schema, fake impl, autograd).

The op's implementation asks :mod:`fuseops.backends` which backend runs it and calls
that backend's module, which holds kernel launchers only:

* ``reference`` -> :mod:`fuseops.fuse_conv.reference`
* ``cpu``       -> :mod:`fuseops.fuse_conv.cpu_impl`    (C++ kernels in ``fuseops._C``)
* ``cuda``      -> :mod:`fuseops.fuse_conv.cuda_impl`   (CUDA kernels in ``fuseops._C``)
* ``triton``    -> :mod:`fuseops.fuse_conv.triton_impl` (kernels in ``fuseops.kernels``)

Two entry points share those launchers and the backend selection below, so they cannot
drift apart:

* the registered custom op ``torch.ops.fuseops.fuse_conv2d`` (what torch.compile, fake
  tensors, opcheck, vmap and dispatch modes see);
* :func:`fuse_conv2d_eager`, a plain ``torch.autograd.Function`` used by the public
  function in plain eager mode, where the custom op's Python dispatch layers would cost
  as much as the kernel on small maps (see :mod:`fuseops._eager`).

Each backend module provides ``forward(x, weight_row, weight_col, bias, full, stride,
padding, dilation, activation) -> out`` and ``backward(grad_out, x, weight_row,
weight_col, bias, full, stride, padding, dilation, activation) -> (grad_x,
grad_weight_row, grad_weight_col, grad_bias)``.  Outputs are contiguous NCHW; the
bias gradient always has shape (C_out,).
"""

from __future__ import annotations

import functools
import importlib

import torch

from fuseops import _eager, backends
from fuseops.autotune import TuneRequest, signature
from fuseops.fuse_conv.geometry import fuse_geometry
from fuseops.fuse_conv.reference import fuse_conv2d_reference, fuse_conv2d_reference_backward

OP_NAME = "fuse_conv2d"

backends.register_op(
    OP_NAME,
    probes={
        "reference": backends.reference_probe,
        "cpu": backends.cpu_probe_for("fuse_conv2d_forward"),
        "cuda": backends.cuda_probe_for("fuse_conv2d_forward"),
        "triton": backends.triton_probe,
    },
    # "auto" on CUDA prefers the faster of cuda/triton (measured, see fuse_conv.cuda_impl);
    # the static order here is the fallback when only one is present.
    auto_order={"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
)


class _ReferenceBackend:
    forward = staticmethod(fuse_conv2d_reference)
    backward = staticmethod(fuse_conv2d_reference_backward)


_launchers: dict[str, object] = {"reference": _ReferenceBackend}


def _backend_module(name: str):
    module = _launchers.get(name)
    if module is None:  # imported on first use: triton_impl imports triton
        module = _launchers[name] = importlib.import_module(f"fuseops.fuse_conv.{name}_impl")
    return module


def _tune_request(function: str, args: tuple) -> TuneRequest | None:
    """For "auto" on CUDA tensors: how to time ``function`` of each backend on these args."""
    if args[0].device.type != "cuda":  # x (forward) or grad_out (backward): on x's device
        return None
    return TuneRequest(
        key=(function, signature(args)),
        run=lambda name: functools.partial(getattr(_backend_module(name), function), *args),
    )


def _selected_impl(function: str, args: tuple, selection: str | None = None):
    """The launcher module of the backend selected now (or of ``selection``, a name as
    :func:`fuseops.current_backend` returns), for ``function`` on ``args``."""
    return _backend_module(backends.resolve(OP_NAME, args[1].device if function == "backward" else args[0].device,
                                            tune=_tune_request(function, args), name=selection))


def _geometry(x, weight_row, weight_col, full, stride, padding, dilation):
    kernel = weight_row.shape[-1]
    return fuse_geometry(tuple(x.shape), kernel, weight_row.shape[0], weight_col.shape[0], full,
                         stride, padding, dilation)


@torch.library.custom_op("fuseops::fuse_conv2d", mutates_args=())
def fuse_conv2d_op(
    x: torch.Tensor,
    weight_row: torch.Tensor,
    weight_col: torch.Tensor,
    bias: torch.Tensor | None,
    full: bool,
    stride: int,
    padding: int,
    dilation: int,
    activation: str,
) -> torch.Tensor:
    args = (x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)
    return _selected_impl("forward", args).forward(*args)


@fuse_conv2d_op.register_fake
def _(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    geo = _geometry(x, weight_row, weight_col, full, stride, padding, dilation)
    return x.new_empty((geo.batch, geo.out_channels, geo.out_height, geo.out_width))


@torch.library.custom_op("fuseops::fuse_conv2d_backward", mutates_args=())
def fuse_conv2d_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight_row: torch.Tensor,
    weight_col: torch.Tensor,
    bias: torch.Tensor | None,
    full: bool,
    stride: int,
    padding: int,
    dilation: int,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)
    return _selected_impl("backward", args).backward(*args)


@fuse_conv2d_backward_op.register_fake
def _(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    c_out = weight_row.shape[0] + weight_col.shape[0]
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight_row, memory_format=torch.contiguous_format),
        torch.empty_like(weight_col, memory_format=torch.contiguous_format),
        x.new_empty((c_out,)),
    )


def _setup_context(ctx, inputs, output):
    x, weight_row, weight_col, bias, full, stride, padding, dilation, activation = inputs
    # The backward recomputes the pre-activation from x, so only inputs are saved:
    # no intermediate of output size is kept alive between forward and backward.
    # The backward runs on the backend selected when the forward ran, even if it is called
    # outside that `use_backend` block (eager mode; compiled graphs read the selection at run time).
    ctx.backend = backends.current_backend()
    ctx.save_for_backward(x, weight_row, weight_col, bias)
    ctx.config = (full, stride, padding, dilation, activation)


def _backward(ctx, grad_out):
    x, weight_row, weight_col, bias = ctx.saved_tensors
    with backends.use_backend(ctx.backend):
        grad_x, grad_wr, grad_wc, grad_b = torch.ops.fuseops.fuse_conv2d_backward(
            grad_out.contiguous(), x, weight_row, weight_col, bias, *ctx.config
        )
    return grad_x, grad_wr, grad_wc, (grad_b if bias is not None else None), None, None, None, None, None


fuse_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


#: fuse_conv2d in plain eager mode (the caller checks fuseops._eager.dispatcher_bypass_allowed):
#: fuse_conv2d_eager(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation).
fuse_conv2d_eager = _eager.eager_op(_selected_impl, tensor_count=4)
