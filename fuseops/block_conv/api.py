"""The public block convolution and block padding: argument checks, then the ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuseops import _checks, _eager
from fuseops._autocast import autocast_inputs
from fuseops.block_conv import compiled
from fuseops.block_conv.grid import BLOCKINGS, block_grid, block_out_size, spans_to_bounds
from fuseops.block_conv.op import block_conv2d_eager, block_conv2d_op
from fuseops.block_conv.pad_op import block_pad_op

PADDING_MODES = ("constant", "replicate", "reflect")
STRIDE_MODES = ("conv", "pool")


def _check_mode(padding_mode: object, blocking: object) -> None:
    for name, value, options in (("padding_mode", padding_mode, PADDING_MODES), ("blocking", blocking, BLOCKINGS)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        _checks.choice(name, value, options)


def _check_reflect(padding_mode: str, padding: tuple[int, int], spans) -> None:
    if padding_mode != "reflect":
        return
    for dim, pad, dim_spans in (("H", padding[0], spans[0]), ("W", padding[1], spans[1])):
        smallest = min(stop - start for start, stop in dim_spans)
        if pad >= smallest:
            raise ValueError(
                f'padding_mode="reflect" needs padding < every block\'s size, but padding along {dim} is {pad} '
                f"and the smallest block along {dim} has {smallest} pixels"
            )


def _validate(x, weight, bias, stride, padding, dilation, groups, block_size, padding_mode, blocking, stride_mode
              ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], int, tuple[int, ...],
                         tuple[int, ...]]:
    """Every argument check of :func:`block_conv2d`; returns (stride, conv stride, padding,
    dilation, groups, row bounds, column bounds), as tuples since they are cached."""
    _checks.tensor("x", x, ndim=4)
    _checks.floating_input("x", x)
    _checks.tensor("weight", weight, ndim=4)
    _checks.same_dtype_device("weight", weight, "x", x)
    stride_hw = _checks.pair("stride", stride, minimum=1)
    padding_hw = _checks.pair("padding", padding, minimum=0)
    dilation_hw = _checks.pair("dilation", dilation, minimum=1)
    groups = _checks.integer("groups", groups, minimum=1)
    _check_mode(padding_mode, blocking)
    if not isinstance(stride_mode, str):
        raise TypeError(f"stride_mode must be a str, got {type(stride_mode).__name__}")
    _checks.choice("stride_mode", stride_mode, STRIDE_MODES)

    c_in = x.shape[1]
    c_out = weight.shape[0]
    if c_in % groups != 0 or c_out % groups != 0:
        raise ValueError(f"groups={groups} must divide both x's channels ({c_in}) and weight's filters ({c_out})")
    if weight.shape[1] != c_in // groups:
        raise ValueError(
            f"weight must have shape (C_out, C_in/groups={c_in // groups}, kh, kw) for x with {c_in} channels "
            f"and groups={groups}, got {tuple(weight.shape)}"
        )
    if bias is not None:
        _checks.tensor("bias", bias, ndim=1)
        _checks.same_dtype_device("bias", bias, "x", x)
        if bias.shape[0] != c_out:
            raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias.shape)}")

    spans = block_grid(x.shape[2], x.shape[3], block_size, blocking)
    _check_reflect(padding_mode, padding_hw, spans)
    conv_stride = stride_hw if stride_mode == "conv" else (1, 1)
    kernel = weight.shape[2:]
    for dim, dim_spans in enumerate(spans):
        for start, stop in dim_spans:
            size = block_out_size(stop - start, kernel[dim], conv_stride[dim], padding_hw[dim], dilation_hw[dim])
            if size < 1:
                raise ValueError(
                    f"a block of {stop - start} pixels along {'HW'[dim]} is too small for kernel {kernel[dim]} "
                    f"with padding {padding_hw[dim]} and dilation {dilation_hw[dim]}"
                )
    return (stride_hw, conv_stride, padding_hw, dilation_hw, groups, tuple(spans_to_bounds(spans[0])),
            tuple(spans_to_bounds(spans[1])))


_checked = _checks.ValidatedCalls(_validate)


def block_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    block_size: int | tuple[int, int],
    padding_mode: str = "constant",
    blocking: str = "fixed",
    stride_mode: str = "conv",
) -> torch.Tensor:
    """Block convolution: each spatial block is padded on its own and convolved alone.

    Args:
        x: (N, C_in, H, W).
        weight: (C_out, C_in/groups, kh, kw); bias: optional (C_out,).
        stride, padding, dilation, groups: as ``F.conv2d``, applied to every block;
            ``padding`` pads each block by (ph, pw) using only that block's values.
        block_size: "fixed": the block size in pixels (bh, bw); "hierarchical": the
            number of blocks (nh, nw).  See :func:`fuseops.block_grid`.
        padding_mode: "constant" (zeros), "replicate" (the block's own edge) or
            "reflect" (mirror inside the block; needs padding < every block's size).
        blocking: "fixed" or "hierarchical".
        stride_mode: "conv" (true strided conv) or "pool" (stride-1 block conv, then
            max-pooling with kernel = stride: the paper code's behaviour).

    Returns:
        (N, C_out, H_out, W_out) where H_out sums floor((b + 2p - d(k-1) - 1)/s) + 1
        over the blocks (for "pool": the stride-1 size, max-pooled by the stride).
        Under ``torch.autocast`` the inputs are cast to the autocast dtype, as
        ``nn.Conv2d``'s are, and so is the output.  Under ``torch.compile``, without
        gradients and with blocks of equal size, the call compiles to standard ops
        (:mod:`fuseops.block_conv.compiled`), which the backend selection does not reach.
    """
    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        x, weight, bias = autocast_inputs(x, weight, bias)
    stride_hw, conv_stride, padding_hw, dilation_hw, groups, row_bounds, col_bounds = _checked(
        (x, weight), bias, (stride, padding, dilation, groups, block_size, padding_mode, blocking, stride_mode))
    args = (x, weight, bias, list(conv_stride), list(padding_hw), list(dilation_hw), groups,
            list(row_bounds), list(col_bounds), padding_mode)
    if compiled.composes(x, weight, bias, row_bounds, col_bounds):
        # Standard ops Inductor lays out and fuses (fuseops/block_conv/compiled.py).
        out = compiled.compose(x, weight, bias, conv_stride, padding_hw, dilation_hw, groups, row_bounds,
                               col_bounds, padding_mode)
    elif _eager.dispatcher_bypass_allowed(x, weight, bias):
        out = block_conv2d_eager(*args)  # the same backends, without the custom op's Python layers
    else:
        out = block_conv2d_op(*args)
    if stride_mode == "pool" and stride_hw != (1, 1):
        out = F.max_pool2d(out, kernel_size=stride_hw, stride=stride_hw)
    return out


def block_pad(
    x: torch.Tensor,
    block_size: int | tuple[int, int],
    padding: int | tuple[int, int],
    *,
    padding_mode: str = "constant",
    blocking: str = "fixed",
) -> torch.Tensor:
    """Split x into blocks and pad each with its own values.

    x: (N, C, H, W) whose H and W the blocks divide evenly.  Returns
    (N*nh*nw, C, bh+2ph, bw+2pw), blocks ordered (n, block row, block column).
    Differentiable; runs on the C++ gather when the cpu backend is available.
    """
    _checks.tensor("x", x, ndim=4)
    _checks.floating_input("x", x)
    padding_hw = _checks.pair("padding", padding, minimum=0)
    _check_mode(padding_mode, blocking)
    rows, cols = block_grid(x.shape[2], x.shape[3], block_size, blocking)
    sizes_h = {stop - start for start, stop in rows}
    sizes_w = {stop - start for start, stop in cols}
    if len(sizes_h) != 1 or len(sizes_w) != 1:
        raise ValueError(
            f"block_pad needs blocks that divide the map evenly; H={x.shape[2]}, W={x.shape[3]} with "
            f"block_size={block_size!r} ({blocking}) gives block sizes {sorted(sizes_h)} x {sorted(sizes_w)}"
        )
    _check_reflect(padding_mode, padding_hw, (rows, cols))
    return block_pad_op(x, sizes_h.pop(), sizes_w.pop(), list(padding_hw), padding_mode)
