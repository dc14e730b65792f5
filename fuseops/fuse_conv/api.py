"""The public FuSe convolution: argument checks, then the registered op."""

from __future__ import annotations

import torch

from fuseops import _checks, _eager, activations
from fuseops._autocast import autocast_inputs
from fuseops.fuse_conv.geometry import FuseGeometry, fuse_geometry
from fuseops.fuse_conv.op import fuse_conv2d_eager, fuse_conv2d_op

VARIANTS = ("half", "full")

__all__ = ["VARIANTS", "FuseGeometry", "fuse_conv2d", "fuse_geometry", "resolve_padding"]


def resolve_padding(padding: int | None, kernel: int, dilation: int) -> int:
    """None means "same" along the conv axis: dilation*(kernel-1)//2."""
    if padding is None:
        return dilation * (kernel - 1) // 2
    return _checks.integer("padding", padding, minimum=0)


def _validate(x, weight_row, weight_col, bias, variant, stride, padding, dilation, activation
              ) -> tuple[bool, int, int, int, str]:
    """Every argument check of :func:`fuse_conv2d`; returns (full, stride, padding, dilation, act)."""
    _checks.tensor("x", x, ndim=4)
    _checks.floating_input("x", x)
    _checks.tensor("weight_row", weight_row, ndim=4)
    _checks.tensor("weight_col", weight_col, ndim=4)
    _checks.same_dtype_device("weight_row", weight_row, "x", x)
    _checks.same_dtype_device("weight_col", weight_col, "x", x)
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str, got {type(variant).__name__}")
    _checks.choice("variant", variant, VARIANTS)
    full = variant == "full"
    stride = _checks.integer("stride", stride, minimum=1)
    dilation = _checks.integer("dilation", dilation, minimum=1)
    act = activations.canonical(activation)

    channels = x.shape[1]
    if weight_row.shape[1:3] != (1, 1):
        raise ValueError(f"weight_row must have shape (C_r, 1, 1, K), got {tuple(weight_row.shape)}")
    kernel = weight_row.shape[3]
    if kernel < 1:
        raise ValueError(f"weight_row must have K >= 1 taps, got shape {tuple(weight_row.shape)}")
    if tuple(weight_col.shape[1:]) != (1, kernel, 1):
        raise ValueError(
            f"weight_col must have shape (C_c, 1, {kernel}, 1) to match weight_row's K={kernel}, "
            f"got {tuple(weight_col.shape)}"
        )
    c_row, c_col = weight_row.shape[0], weight_col.shape[0]
    if full and (c_row != channels or c_col != channels):
        raise ValueError(
            f'variant="full" needs weight_row and weight_col with C={channels} filters each, '
            f"got {c_row} and {c_col}"
        )
    if not full and c_row + c_col != channels:
        raise ValueError(
            f'variant="half" needs weight_row.shape[0] + weight_col.shape[0] == C={channels}, '
            f"got {c_row} + {c_col}"
        )
    padding = resolve_padding(padding, kernel, dilation)
    geo = fuse_geometry(tuple(x.shape), kernel, c_row, c_col, full, stride, padding, dilation)
    if bias is not None:
        _checks.tensor("bias", bias, ndim=1)
        _checks.same_dtype_device("bias", bias, "x", x)
        if bias.shape[0] != geo.out_channels:
            raise ValueError(f"bias must have shape ({geo.out_channels},), got {tuple(bias.shape)}")
    return full, stride, padding, dilation, act


_checked = _checks.ValidatedCalls(_validate)


def fuse_conv2d(
    x: torch.Tensor,
    weight_row: torch.Tensor,
    weight_col: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    variant: str = "half",
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    activation: str | None = None,
) -> torch.Tensor:
    """FuSe convolution: 1xK and Kx1 depthwise convs whose outputs are concatenated.

    Args:
        x: (N, C, H, W) input.
        weight_row: the 1xK filters, (C_r, 1, 1, K).  Half: the first C_r channels of x;
            full: C_r == C.
        weight_col: the Kx1 filters, (C_c, 1, K, 1).  Half: the remaining C_c = C - C_r
            channels; full: C_c == C.
        bias: optional (C_out,), added before the activation.
        variant: "half" (C_out = C) or "full" (C_out = 2C).
        stride: stride in both directions (>= 1).
        padding: zero padding along each part's conv axis (none across it); None means
            "same", dilation*(K-1)//2.
        dilation: dilation along the conv axis (>= 1).
        activation: None, "relu", "relu6" or "hardswish", fused into the epilogue.

    Returns:
        (N, C_out, H_out, W_out): the row part's channels, then the column part's.
        Contiguous, same dtype and device as x; under ``torch.autocast``, the autocast
        dtype (the inputs are cast to it, as ``nn.Conv2d``'s are).
    """
    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        x, weight_row, weight_col, bias = autocast_inputs(x, weight_row, weight_col, bias)
    full, stride, padding, dilation, act = _checked((x, weight_row, weight_col), bias,
                                                    (variant, stride, padding, dilation, activation))
    args = (x, weight_row, weight_col, bias, full, stride, padding, dilation, act)
    if _eager.dispatcher_bypass_allowed(x, weight_row, weight_col, bias):
        return fuse_conv2d_eager(*args)  # the same backends, without the custom op's Python layers
    return fuse_conv2d_op(*args)
