"""Triton backend of ``fuseops.fuse_conv2d``: launchers for the kernels in
``fuseops.kernels.fuse_conv``.

Arguments arrive validated by :func:`fuseops.fuse_conv.fuse_conv2d` (the API edge);
this module only allocates outputs and launches.  Tensors are passed with their
strides, so sliced and channels_last inputs are read in place (no hidden copies), and
the output and grad_x are written in x's memory format.

The kernels are launched directly rather than through ``torch.library.triton_op``:
``torch.ops.fuseops.fuse_conv2d`` is already a custom op whose implementation picks
the backend at run time, so ``torch.compile`` treats the whole call as one opaque op
(no graph break) and never traces into the launch.

Triton is imported lazily, on the first call, so ``import fuseops`` never imports it.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from fuseops._layout import memory_format_of
from fuseops.fuse_conv.geometry import FuseGeometry, geometry_of

#: One tensor above this many elements switches the kernels to 64-bit in-plane offsets.
_INT32_LIMIT = 2**31 - 1


@functools.cache
def _kernels():
    from fuseops.kernels import fuse_conv

    return fuse_conv


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device; make it the tensor's (multi-GPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
           memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Every output and workspace buffer comes from here, so the tests can replace it with a
    NaN-filled allocation and thereby check that the kernels write every element."""
    return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)


def _acc_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _needs_index64(*tensors: torch.Tensor) -> bool:
    # Offsets inside one tensor stay below its storage extent, which is at most numel
    # for the dense layouts that reach here; be generous and also count the extent.
    for t in tensors:
        if t.numel() == 0:
            continue
        extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
        if max(extent, t.numel()) > _INT32_LIMIT:
            return True
    return False


def _alignment(*tensors: torch.Tensor, extents: tuple[int, ...] = (), cap: int = 16) -> int:
    """Largest power of two <= cap dividing ``extents``, and the address (in elements) and
    the N, C and H strides of every one of ``tensors`` (and the W stride unless it is 1):
    the ``ALIGN`` hint of the forward kernel.  The GPU compiler trusts the hint, so it
    must be true; sizes are ignored, which only ever makes it smaller."""
    values = list(extents)
    for t in tensors:
        address = t.data_ptr()
        if address % t.element_size():
            return 1
        values.append(address // t.element_size())
        values += list(t.stride()[:-1])
        if t.stride()[-1] != 1:
            values.append(t.stride()[-1])
    align = cap
    while align > 1 and any(v % align for v in values):
        align //= 2
    return align


def _parts(geo: FuseGeometry, weight_row: torch.Tensor, weight_col: torch.Tensor):
    """(is_row, weight, weight's tap stride, channels, first x channel, first out channel)."""
    return (
        (True, weight_row, weight_row.stride(3), geo.c_row, 0, 0),
        (False, weight_col, weight_col.stride(2), geo.c_col, geo.col_start, geo.c_row),
    )


def forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    """(N, C, H, W) -> (N, C_r + C_c, H_out, W_out), contiguous NCHW (the op's schema:
    :mod:`fuseops.fuse_conv.op`)."""
    with _on_device(x):
        return _forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)


def _forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    geo = geometry_of(x, weight_row, weight_col, full, stride, padding, dilation)
    # The kernels take strides, so the output is written in x's memory format directly.
    out = _empty((geo.batch, geo.out_channels, geo.out_height, geo.out_width), x.dtype, x.device,
                 memory_format_of(x))
    if out.numel() == 0:
        return out
    k = _kernels()
    index64 = _needs_index64(x, out)
    align = _alignment(x, out, extents=(geo.width, geo.out_width))
    for is_row, weight, tap_stride, count, x_start, out_start in _parts(geo, weight_row, weight_col):
        if count == 0:
            continue
        planes = geo.batch * count

        def grid(meta, planes=planes):
            return (planes * _cdiv(geo.out_height, meta["BLOCK_H"]) * _cdiv(geo.out_width, meta["BLOCK_W"]),)

        k.fuse_fwd_kernel[grid](
            x, weight, bias if bias is not None else out, out,
            count, x_start, out_start,
            geo.height, geo.width, geo.out_height, geo.out_width,
            *x.stride(), weight.stride(0), tap_stride, bias.stride(0) if bias is not None else 0,
            *out.stride(),
            IS_ROW=is_row, K=geo.kernel, STRIDE=geo.stride, DIL=geo.dilation, PAD=geo.padding,
            HAS_BIAS=bias is not None, ACT=k.ACTIVATION_CODES[activation], ACC=_acc_dtype(x.dtype),
            INDEX64=index64, ALIGN=align,
        )
    return out


def backward(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    """Gradients (x, weight_row, weight_col, bias); grad_bias has shape (C_out,) always.

    The pre-activation is recomputed from x inside the kernels where the activation's
    derivative needs it.  Weight and bias gradients are reduced without atomics, in a
    fixed order (bitwise reproducible).
    """
    with _on_device(x):
        return _backward(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation,
                         activation)


def _backward(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    geo = geometry_of(x, weight_row, weight_col, full, stride, padding, dilation)
    grad_x = _empty(tuple(x.shape), x.dtype, x.device, memory_format_of(x))
    grad_weights = [_empty(tuple(w.shape), w.dtype, w.device) for w in (weight_row, weight_col)]
    grad_bias = _empty((geo.out_channels,), x.dtype, x.device)
    if grad_out.numel() == 0 or x.numel() == 0:
        # No outputs (N == 0): every gradient is an empty or zero sum.
        grad_x.zero_()
        grad_bias.zero_()
        for g in grad_weights:
            g.zero_()
        return grad_x, grad_weights[0], grad_weights[1], grad_bias

    k = _kernels()
    acc_torch = torch.float64 if x.dtype == torch.float64 else torch.float32
    act = k.ACTIVATION_CODES[activation]
    has_bias = bias is not None
    bias_arg = bias if has_bias else grad_x  # never read when HAS_BIAS is False
    bias_stride = bias.stride(0) if has_bias else 0
    index64 = _needs_index64(x, grad_out, grad_x)

    def grid_x(meta):
        tiles = _cdiv(geo.height, meta["BLOCK_H"]) * _cdiv(geo.width, meta["BLOCK_W"])
        return (geo.batch * geo.channels * tiles,)

    k.fuse_bwd_input_kernel[grid_x](
        x, grad_out, weight_row, weight_col, bias_arg, grad_x,
        geo.channels, geo.c_row, geo.c_col, geo.col_start,
        geo.height, geo.width, geo.out_height, geo.out_width, geo.padding,
        *x.stride(), *grad_out.stride(),
        weight_row.stride(0), weight_row.stride(3), weight_col.stride(0), weight_col.stride(2), bias_stride,
        *grad_x.stride(),
        K=geo.kernel, STRIDE=geo.stride, DIL=geo.dilation, HAS_BIAS=has_bias, ACT=act,
        ACC=_acc_dtype(x.dtype), INDEX64=index64,
    )

    block_h, block_w, warps = k.weight_tile(geo.out_height, geo.out_width)
    tiles = _cdiv(geo.out_height, block_h) * _cdiv(geo.out_width, block_w)
    tiles_total = geo.batch * tiles
    chunks = triton_next_power_of_2(_cdiv(tiles_total, k.REDUCE_BLOCK))
    bias_parts = []
    for (is_row, weight, tap_stride, count, x_start, out_start), grad_w in zip(
        _parts(geo, weight_row, weight_col), grad_weights
    ):
        if count == 0:
            grad_w.zero_()
            continue
        workspace = _empty((count, geo.kernel + 1, tiles_total), acc_torch, x.device)
        k.fuse_bwd_weight_kernel[(geo.batch * count * tiles,)](
            x, grad_out, weight, bias_arg, workspace,
            count, x_start, out_start,
            geo.height, geo.width, geo.out_height, geo.out_width, geo.padding,
            *x.stride(), *grad_out.stride(), weight.stride(0), tap_stride, bias_stride,
            tiles_total,
            IS_ROW=is_row, K=geo.kernel, STRIDE=geo.stride, DIL=geo.dilation, HAS_BIAS=has_bias,
            ACT=act, ACC=_acc_dtype(x.dtype), INDEX64=index64,
            BLOCK_H=block_h, BLOCK_W=block_w, num_warps=warps,
        )
        sums = _empty((count, geo.kernel + 1), acc_torch, x.device)
        k.reduce_partials_kernel[(count * (geo.kernel + 1),)](
            workspace, sums, tiles_total, BLOCK=k.REDUCE_BLOCK, CHUNKS=chunks,
        )
        grad_w.copy_(sums[:, : geo.kernel].reshape(grad_w.shape))
        bias_parts.append(sums[:, geo.kernel])
    grad_bias.copy_(torch.cat(bias_parts))
    return grad_x, grad_weights[0], grad_weights[1], grad_bias


def triton_next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
