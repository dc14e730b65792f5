"""Registration of ``torch.ops.fuseops.block_pad`` (schema, fake impl, autograd).

Backends: ``reference`` (:func:`block_pad_reference`, a view/permute/pad) and ``cpu``
(the C++ gather ``torch.ops.fuseops_ext.block_pad_forward`` and its deterministic
adjoint ``block_pad_backward``).  Every block has the same size (the API checks).
"""

from __future__ import annotations

import torch

from fuseops import backends
from fuseops.block_conv.reference import block_pad_reference, block_pad_reference_backward

OP_NAME = "block_pad"

backends.register_op(
    OP_NAME,
    probes={"reference": backends.reference_probe, "cpu": backends.cpu_probe_for("block_pad_forward")},
    auto_order={"cpu": ("cpu", "reference"), "cuda": ("reference",)},
)


def _bounds(size: int, block: int) -> list[int]:
    return list(range(0, size + 1, block))


@torch.library.custom_op("fuseops::block_pad", mutates_args=())
def block_pad_op(x: torch.Tensor, block_h: int, block_w: int, padding: list[int], padding_mode: str) -> torch.Tensor:
    if backends.resolve(OP_NAME, x.device) == "cpu":
        from fuseops.block_conv import cpu_impl

        return cpu_impl.pad_forward(x, _bounds(x.shape[2], block_h), _bounds(x.shape[3], block_w), padding,
                                    padding_mode)
    return block_pad_reference(x, block_h, block_w, tuple(padding), padding_mode).contiguous()


@block_pad_op.register_fake
def _(x, block_h, block_w, padding, padding_mode):
    n, c, h, w = x.shape
    blocks = n * (h // block_h) * (w // block_w)
    return x.new_empty((blocks, c, block_h + 2 * padding[0], block_w + 2 * padding[1]))


@torch.library.custom_op("fuseops::block_pad_backward", mutates_args=())
def block_pad_backward_op(
    grad: torch.Tensor, x_shape: list[int], block_h: int, block_w: int, padding: list[int], padding_mode: str
) -> torch.Tensor:
    if backends.resolve(OP_NAME, grad.device) == "cpu":
        from fuseops.block_conv import cpu_impl

        return cpu_impl.pad_backward(grad, x_shape, _bounds(x_shape[2], block_h), _bounds(x_shape[3], block_w),
                                     padding, padding_mode)
    return block_pad_reference_backward(grad, x_shape, block_h, block_w, tuple(padding), padding_mode)


@block_pad_backward_op.register_fake
def _(grad, x_shape, block_h, block_w, padding, padding_mode):
    return grad.new_empty(x_shape)


def _setup_context(ctx, inputs, output):
    x, block_h, block_w, padding, padding_mode = inputs
    ctx.x_shape = list(x.shape)
    ctx.config = (block_h, block_w, padding, padding_mode)
    # As block_conv2d: the backward runs on the backend selected when the forward ran,
    # even when it is called outside that `use_backend` block.
    ctx.backend = backends.current_backend()


def _backward(ctx, grad):
    with backends.use_backend(ctx.backend):
        grad_x = torch.ops.fuseops.block_pad_backward(grad.contiguous(), ctx.x_shape, *ctx.config)
    return grad_x, None, None, None, None


block_pad_op.register_autograd(_backward, setup_context=_setup_context)
