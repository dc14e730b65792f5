"""Triton backend of ``fuseops::block_conv2d``: index tables and kernel launches.

The kernels live in :mod:`fuseops.kernels.block_conv` (imported lazily, so that
``import fuseops`` never imports triton).  Arguments were validated at the API.
"""

from __future__ import annotations

import functools

import torch

from fuseops.block_conv.grid import block_out_size, bounds_to_spans


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer comes from here, so tests can poison it and prove that the
    kernels write each element."""
    return torch.empty(shape, dtype=dtype, device=device)


def _pow2(n: int, cap: int) -> int:
    p = 1
    while p < n and p < cap:
        p *= 2
    return p


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _remap(r: int, lo: int, hi: int, mode: str) -> int | None:
    """Host twin of the kernels' ``_remap``: the input row a padded position reads, or None (zero)."""
    if mode == "constant":
        return r if lo <= r < hi else None
    if mode == "replicate":
        return min(max(r, lo), hi - 1)
    if r < lo:
        r = 2 * lo - r
    if r >= hi:
        r = 2 * (hi - 1) - r
    return r


@functools.lru_cache(maxsize=256)
def _out_rows(bounds: tuple[int, ...], kernel: int, stride: int, padding: int, dilation: int) -> list[tuple]:
    """Per output row (or column): (block start, block stop, absolute row of tap 0)."""
    rows = []
    for lo, hi in bounds_to_spans(list(bounds)):
        for j in range(block_out_size(hi - lo, kernel, stride, padding, dilation)):
            rows.append((lo, hi, lo + j * stride - padding))
    return rows


@functools.lru_cache(maxsize=256)
def _forward_table(bounds, kernel, stride, padding, dilation, device) -> torch.Tensor:
    """(3, out size) int32: block start, block stop, tap-0 row, per output row."""
    rows = _out_rows(bounds, kernel, stride, padding, dilation)
    return torch.tensor(rows, dtype=torch.int32).t().contiguous().to(device)


@functools.lru_cache(maxsize=256)
def _adjoint_table(bounds, kernel, stride, padding, dilation, mode, device) -> torch.Tensor:
    """(kernel, in size, T) int32: for tap k and input row r, the output rows whose tap k
    reads row r (ascending; -1 padded).  T is the largest such count (>= 1)."""
    size = bounds[-1]
    lists = [[[] for _ in range(size)] for _ in range(kernel)]
    for out_row, (lo, hi, base) in enumerate(_out_rows(bounds, kernel, stride, padding, dilation)):
        for k in range(kernel):
            r = _remap(base + k * dilation, lo, hi, mode)
            if r is not None:
                lists[k][r].append(out_row)
    width = max(1, max(len(cell) for per_tap in lists for cell in per_tap))
    table = torch.full((kernel, size, width), -1, dtype=torch.int32)
    for k, per_tap in enumerate(lists):
        for r, cell in enumerate(per_tap):
            if cell:
                table[k, r, : len(cell)] = torch.tensor(cell, dtype=torch.int32)
    return table.to(device)


@functools.lru_cache(maxsize=256)
def _rows_with_aliases(bounds, kernel, stride, padding, dilation, mode, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(every input row, the rows that some tap reads more than once), int32.  Only the
    latter need the adjoint's extra passes (block-edge rows under replicate/reflect)."""
    table = _adjoint_table(bounds, kernel, stride, padding, dilation, mode, device)
    every = torch.arange(table.shape[1], dtype=torch.int32, device=device)
    if table.shape[2] == 1:
        return every, every[:0]
    aliased = (table[:, :, 1] >= 0).any(dim=0)
    return every, every[aliased].contiguous()


def _acc_and_precision(dtype: torch.dtype, device: torch.device):
    import triton.language as tl

    acc = tl.float64 if dtype == torch.float64 else tl.float32
    # fp32 follows the conv tf32 switch, as F.conv2d does (cuDNN); fp64 and the
    # interpreter always use full precision.
    tf32 = dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32
    return acc, ("tf32" if tf32 else "ieee")


def _use_dot(c_in_g: int, c_out_g: int) -> bool:
    # tl.dot wants every tile side >= 16; smaller channel groups (depthwise) waste it.
    return c_in_g >= 16 and c_out_g >= 16


def forward(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    from fuseops.kernels import block_conv as K

    n, _, _, _ = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    c_out_g = c_out // groups
    rows = _forward_table(tuple(row_bounds), kh, stride[0], padding[0], dilation[0], x.device)
    cols = _forward_table(tuple(col_bounds), kw, stride[1], padding[1], dilation[1], x.device)
    oh, ow = rows.shape[1], cols.shape[1]
    out = _empty((n, c_out, oh, ow), x.dtype, x.device)
    m = n * oh * ow
    acc, precision = _acc_and_precision(x.dtype, x.device)
    if _use_dot(c_in_g, c_out_g):
        kernel, blocks = K.forward_dot, {}
    else:
        kernel, blocks = K.forward_simple, {"BLOCK_N": _pow2(c_out_g, 8), "BLOCK_K": _pow2(c_in_g, 8)}

    def grid(meta):
        return (_cdiv(m, meta["BLOCK_M"]), _cdiv(c_out_g, meta["BLOCK_N"]), groups)

    kernel[grid](
        x, weight, bias if bias is not None else x, out,
        rows[0], rows[1], rows[2], cols[0], cols[1], cols[2],
        m, oh, ow,
        *x.stride(), *weight.stride(), *out.stride(),
        dilation[0], dilation[1],
        C_IN_G=c_in_g, C_OUT_G=c_out_g, KH=kh, KW=kw, MODE=K.MODES[padding_mode], HAS_BIAS=bias is not None,
        USE_DOT=_use_dot(c_in_g, c_out_g), ACC_DTYPE=acc, INPUT_PRECISION=precision, **blocks,
    )
    return out


def _wgrad_split(tiles: int, pixels: int, device: torch.device) -> int:
    """How many slices the pixel reduction of grad_weight is cut into: enough programs
    to fill the GPU, but each slice long enough to amortise its partial write."""
    if device.type != "cuda":
        # Two slices exercise the partial sum in the interpreter; tiny cases keep one
        # (each extra program costs the interpreter a lot of time).
        return 2 if pixels >= 64 else 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(_cdiv(4 * sms, max(tiles, 1)), _cdiv(pixels, 2048)))


def backward(grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    from fuseops.kernels import block_conv as K

    n, c_in, h, w = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    c_out_g = c_out // groups
    acc, precision = _acc_and_precision(x.dtype, x.device)
    use_dot = _use_dot(c_in_g, c_out_g)
    mode = K.MODES[padding_mode]

    # grad_input: the adjoint of the index remapping, through the per-tap tables, in up
    # to three passes so that aliased entries (replicate/reflect) cost only the block
    # edges: (1) every pixel, first entry per dimension; (2) the aliased rows, the
    # other row entries x every column entry; (3) the aliased columns, the first row
    # entry x the other column entries.  Passes 2 and 3 add to what pass 1 wrote.
    geom_h = (tuple(row_bounds), kh, stride[0], padding[0], dilation[0], padding_mode, x.device)
    geom_w = (tuple(col_bounds), kw, stride[1], padding[1], dilation[1], padding_mode, x.device)
    inv_h, inv_w = _adjoint_table(*geom_h), _adjoint_table(*geom_w)
    rows_all, rows_edge = _rows_with_aliases(*geom_h)
    cols_all, cols_edge = _rows_with_aliases(*geom_w)
    t_h, t_w = inv_h.shape[2], inv_w.shape[2]
    grad_x = _empty((n, c_in, h, w), x.dtype, x.device)
    if use_dot:
        kernel, blocks = K.grad_input_dot, {}
    else:
        kernel, blocks = K.grad_input_simple, {"BLOCK_N": _pow2(c_in_g, 8), "BLOCK_K": _pow2(c_out_g, 8)}
    passes = [(rows_all, cols_all, (0, 1), (0, 1), False)]
    if t_h > 1 and rows_edge.numel():
        passes.append((rows_edge, cols_all, (1, t_h), (0, t_w), True))
    if t_w > 1 and cols_edge.numel():
        passes.append((rows_all, cols_edge, (0, 1), (1, t_w), True))
    for rows_sel, cols_sel, (th0, th1), (tw0, tw1), accumulate in passes:
        m = n * rows_sel.numel() * cols_sel.numel()

        def grid_x(meta, m=m):
            return (_cdiv(m, meta["BLOCK_M"]), _cdiv(c_in_g, meta["BLOCK_N"]), groups)

        kernel[grid_x](
            grad_out, weight, grad_x, inv_h, inv_w, rows_sel, cols_sel,
            m, h, w, rows_sel.numel(), cols_sel.numel(),
            *grad_out.stride(), *weight.stride(), *grad_x.stride(),
            C_IN_G=c_in_g, C_OUT_G=c_out_g, T_H=t_h, T_W=t_w, TH0=th0, TH1=th1, TW0=tw0, TW1=tw1,
            ACCUMULATE=accumulate, KH=kh, KW=kw, USE_DOT=use_dot, ACC_DTYPE=acc, INPUT_PRECISION=precision,
            **blocks,
        )

    # grad_weight: per-slice partials, summed in a fixed order below (no atomics).
    rows = _forward_table(tuple(row_bounds), kh, stride[0], padding[0], dilation[0], x.device)
    cols = _forward_table(tuple(col_bounds), kw, stride[1], padding[1], dilation[1], x.device)
    oh, ow = rows.shape[1], cols.shape[1]
    pixels = n * oh * ow
    acc_torch = torch.float64 if x.dtype == torch.float64 else torch.float32
    if c_in_g == 1:
        # Depthwise (any multiplier): all taps of a channel in one program.
        split = _wgrad_split(c_out, pixels, x.device)
        chunk = _cdiv(pixels, split)
        partial = _empty((split, c_out, 1, kh, kw), acc_torch, x.device)

        def grid_dw(meta):
            return (_cdiv(c_out, meta["BLOCK_C"]), split)

        K.grad_weight_depthwise[grid_dw](
            grad_out, x, partial,
            rows[0], rows[1], rows[2], cols[0], cols[1], cols[2],
            pixels, oh, ow, c_out,
            *grad_out.stride(), *x.stride(), partial.stride(0), partial.stride(1), partial.stride(3),
            partial.stride(4), dilation[0], dilation[1],
            C_OUT_G=c_out_g, SPLIT=split, CHUNK=chunk, KH=kh, KW=kw, TAPS=_pow2(kh * kw, 1 << 30), MODE=mode,
            ACC_DTYPE=acc,
        )
    else:
        tiles = _cdiv(c_out_g, 64) * _cdiv(c_in_g, 64) * kh * kw * groups
        split = _wgrad_split(tiles, pixels, x.device)
        chunk = _cdiv(pixels, split)
        partial = _empty((split, c_out, c_in_g, kh, kw), acc_torch, x.device)
        if use_dot:
            kernel, blocks = K.grad_weight_dot, {}
        else:
            kernel, blocks = K.grad_weight_simple, {"BLOCK_M": _pow2(c_out_g, 8), "BLOCK_N": _pow2(c_in_g, 8)}

        def grid_w(meta):
            return (_cdiv(c_out_g, meta["BLOCK_M"]), _cdiv(c_in_g, meta["BLOCK_N"]) * kh * kw, groups * split)

        kernel[grid_w](
            grad_out, x, partial,
            rows[0], rows[1], rows[2], cols[0], cols[1], cols[2],
            pixels, oh, ow,
            *grad_out.stride(), *x.stride(), *partial.stride(),
            dilation[0], dilation[1],
            C_IN_G=c_in_g, C_OUT_G=c_out_g, SPLIT=split, CHUNK=chunk,
            KW=kw, MODE=mode, USE_DOT=use_dot, ACC_DTYPE=acc, INPUT_PRECISION=precision, **blocks,
        )
    grad_weight = partial.sum(dim=0).to(weight.dtype)
    grad_bias = grad_out.sum(dim=(0, 2, 3), dtype=acc_torch).to(x.dtype)
    return grad_x, grad_weight, grad_bias
