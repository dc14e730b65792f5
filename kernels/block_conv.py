"""Triton block convolution: implicit GEMM that reads block-padded values by index remapping.

No padded tensor is ever built.  For an output row ``oy`` of block ``i`` (rows
``[lo, hi)`` of the input, local output index ``j``) and a kernel tap ``ky`` the
input row is ``base + ky*dilation`` with ``base = lo + j*stride - padding``, an
absolute row that may lie outside ``[lo, hi)``.  The padding mode says what that
row reads:

* constant  (MODE 0): zero outside ``[lo, hi)`` (a masked load);
* replicate (MODE 1): clamp into ``[lo, hi - 1]``;
* reflect   (MODE 2): mirror about the block's edge pixel (``2*lo - r`` below,
  ``2*(hi-1) - r`` above); one mirror suffices because padding < block size.

Columns work the same way.  ``lo``, ``hi`` and ``base`` per output row (and per
output column) are small int32 tables built by the launcher
(:mod:`fuseops.block_conv.triton_impl`).

Kernels (all accumulate in fp32, or fp64 for fp64 inputs; all deterministic: each
output element is written by one program that sums in a fixed order, no atomics):

* ``_forward_kernel``: tiles (output pixels) x (output channels of one group),
  reduces over taps x (input channels of the group).
* ``_grad_input_kernel``: the adjoint.  Tiles (input pixels) x (input channels),
  reduces over taps x multiplicity x (output channels).  For each tap and input
  row the launcher lists, in an int32 table, the output rows whose remapped tap
  lands on that row (-1 padded).  With "constant" there is at most one; with
  "replicate"/"reflect" several padded positions alias one input pixel, so the
  table is wider (``T`` entries).  The launcher runs the kernel over every pixel
  with the first entry, then over only the aliased (block-edge) rows / columns with
  the other entries, adding to the first pass.
* ``_grad_weight_kernel``: tiles (output channels) x (input channels) per tap and
  per split of the pixel reduction; writes per-split partials that the launcher
  sums in a fixed order.

``USE_DOT`` selects ``tl.dot`` (tensor cores) when the per-group channel counts
are >= 16; otherwise (e.g. depthwise) a broadcast multiply + sum over small tiles.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

MODES = {"constant": 0, "replicate": 1, "reflect": 2}

# Triton 3.6's interpreter multiplies bf16 dot operands as their raw uint16 bits; it
# gets the upcast operands instead (exact: bf16/fp16 -> fp32 loses nothing).
_UPCAST_DOT = tl.constexpr(INTERPRET)


def _configs(gpu: list[tuple[int, ...]], interp: tuple[int, ...], names: tuple[str, ...]) -> list[triton.Config]:
    # The interpreter benchmarks every config when there are several, which is very
    # slow; one small config keeps the CPU tests quick.  FUSEOPS_TRITON_AUTOTUNE=0 takes
    # the first GPU config unmeasured (a time-boxed GPU check: compile-bound, not tuning-bound).
    forced = os.environ.get("FUSEOPS_TRITON_AUTOTUNE", "1") == "0"
    chosen = [interp] if INTERPRET else (gpu[:1] if forced else gpu)
    configs = []
    for values in chosen:
        *blocks, warps, stages = values
        configs.append(triton.Config(dict(zip(names, blocks)), num_warps=warps, num_stages=stages))
    return configs


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
_DOT_GPU = [
    (128, 64, 32, 4, 3),
    (128, 128, 32, 8, 3),
    (64, 64, 32, 4, 4),
    (128, 64, 64, 4, 3),
    (64, 128, 32, 4, 3),
    (256, 64, 32, 8, 3),
    (64, 32, 32, 2, 4),
]
_DOT_INTERP = (64, 32, 32, 1, 1)
_DOT_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K")

# The non-dot path: BLOCK_N / BLOCK_K come from the launcher (they follow the
# per-group channel counts); only the pixel tile is tuned.
_SIMPLE_GPU = [(64, 2, 2), (128, 4, 2), (256, 4, 2), (512, 8, 2), (1024, 8, 2)]
_SIMPLE_INTERP = (256, 1, 1)
_SIMPLE_NAMES = ("BLOCK_M",)


@triton.jit
def _remap(r, lo, hi, MODE: tl.constexpr):
    """Absolute row (or column) r of a tap -> (row actually read, whether it is read)."""
    if MODE == 0:
        valid = (r >= lo) & (r < hi)
    elif MODE == 1:
        r = tl.minimum(tl.maximum(r, lo), hi - 1)
        valid = r >= lo
    else:
        r = tl.where(r < lo, 2 * lo - r, r)
        r = tl.where(r >= hi, 2 * (hi - 1) - r, r)
        valid = r >= lo
    return r, valid


@triton.jit
def _mma(a, b, acc, USE_DOT: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b: tensor cores (tl.dot) or, for tiles too thin for them, multiply + sum."""
    if USE_DOT:
        if _UPCAST_DOT:
            a = a.to(ACC_DTYPE)
            b = b.to(ACC_DTYPE)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)
    else:
        acc += tl.sum(a.to(ACC_DTYPE)[:, :, None] * b.to(ACC_DTYPE)[None, :, :], axis=1)
    return acc


@triton.jit
def _pixel_coords(offs, OH, OW):
    """Flat output pixel indices -> (image n, output row oy, output column ox)."""
    ohw = OH * OW
    return offs // ohw, (offs % ohw) // OW, offs % OW


@triton.jit
def _slice_pixels(split, it, P, CHUNK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step it of a grad_weight program: BLOCK_K flat output pixels of split's CHUNK-pixel
    slice of the P pixels, and the mask of those that exist."""
    start = split * CHUNK
    offs_p = start + it * BLOCK_K + tl.arange(0, BLOCK_K)
    return offs_p, offs_p < tl.minimum(start + CHUNK, P)


@triton.jit
def _grad_out_tile(g_co, mask_co, n64, oy, ox, mask_p, sg_n, sg_h, sg_w):
    """grad_out at channel pointers g_co and pixels (n64, oy, ox): a (channels, pixels) tile."""
    return tl.load(g_co[:, None] + (n64 * sg_n + oy.to(tl.int64) * sg_h + ox.to(tl.int64) * sg_w)[None, :],
                   mask=mask_co[:, None] & mask_p[None, :], other=0.0)


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    row_lo_ptr, row_hi_ptr, row_base_ptr, col_lo_ptr, col_hi_ptr, col_base_ptr,
    M, OH, OW,
    sx_n, sx_c, sx_h, sx_w,
    sw_o, sw_i, sw_h, sw_w,
    so_n, so_c, so_h, so_w,
    dil_h, dil_w,
    C_IN_G: tl.constexpr, C_OUT_G: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n, oy, ox = _pixel_coords(offs_m, OH, OW)
    lo_h = tl.load(row_lo_ptr + oy, mask=mask_m, other=0)
    hi_h = tl.load(row_hi_ptr + oy, mask=mask_m, other=1)
    base_h = tl.load(row_base_ptr + oy, mask=mask_m, other=0)
    lo_w = tl.load(col_lo_ptr + ox, mask=mask_m, other=0)
    hi_w = tl.load(col_hi_ptr + ox, mask=mask_m, other=1)
    base_w = tl.load(col_base_ptr + ox, mask=mask_m, other=0)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT_G
    co = group * C_OUT_G + offs_n
    offs_k = tl.arange(0, BLOCK_K)

    # 64-bit offsets: N*C*H*W may exceed 2**31.
    x_n = x_ptr + n.to(tl.int64) * sx_n + (group * C_IN_G).to(tl.int64) * sx_c
    w_co = w_ptr + co.to(tl.int64) * sw_o

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for ky in tl.static_range(KH):
        iy, valid_h = _remap(base_h + ky * dil_h, lo_h, hi_h, MODE)
        for kx in tl.static_range(KW):
            ix, valid_w = _remap(base_w + kx * dil_w, lo_w, hi_w, MODE)
            valid = mask_m & valid_h & valid_w
            x_pix = x_n + iy.to(tl.int64) * sx_h + ix.to(tl.int64) * sx_w
            w_tap = w_co + ky * sw_h + kx * sw_w
            for k0 in range(0, C_IN_G, BLOCK_K):
                ci = k0 + offs_k
                mask_k = ci < C_IN_G
                a = tl.load(x_pix[:, None] + ci[None, :].to(tl.int64) * sx_c,
                            mask=valid[:, None] & mask_k[None, :], other=0.0)
                b = tl.load(w_tap[None, :] + ci[:, None].to(tl.int64) * sw_i,
                            mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                acc = _mma(a, b, acc, USE_DOT, ACC_DTYPE, INPUT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(b_ptr + co, mask=mask_n, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    out = (out_ptr + n.to(tl.int64)[:, None] * so_n + co.to(tl.int64)[None, :] * so_c
           + (oy * so_h + ox * so_w).to(tl.int64)[:, None])
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _grad_input_kernel(
    g_ptr, w_ptr, gx_ptr,
    inv_h_ptr, inv_w_ptr, rows_ptr, cols_ptr,
    M, H, W, R, C,
    sg_n, sg_c, sg_h, sg_w,
    sw_o, sw_i, sw_h, sw_w,
    sx_n, sx_c, sx_h, sx_w,
    C_IN_G: tl.constexpr, C_OUT_G: tl.constexpr, T_H: tl.constexpr, T_W: tl.constexpr,
    TH0: tl.constexpr, TH1: tl.constexpr, TW0: tl.constexpr, TW1: tl.constexpr, ACCUMULATE: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr,
    USE_DOT: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_x[n, ci, iy, ix] (+)= sum over taps (ky, kx), over the output rows oy listed in
    inv_h[ky, iy, TH0:TH1] and columns ox in inv_w[kx, ix, TW0:TW1], and over the
    group's output channels co, of grad_out[n, co, oy, ox] * w[co, ci, ky, kx].

    The pixels are the N x R x C grid of input rows rows[:R] and columns cols[:C], so
    a pass over the few block-edge rows (or columns) that have aliased entries costs
    only those rows."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    rc = R * C
    n = offs_m // rc
    iy = tl.load(rows_ptr + (offs_m % rc) // C, mask=mask_m, other=0)
    ix = tl.load(cols_ptr + offs_m % C, mask=mask_m, other=0)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_IN_G
    offs_k = tl.arange(0, BLOCK_K)

    g_n = g_ptr + n.to(tl.int64) * sg_n + (group * C_OUT_G).to(tl.int64) * sg_c
    w_ci = w_ptr + (group * C_OUT_G).to(tl.int64) * sw_o + offs_n.to(tl.int64) * sw_i

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for ky in tl.static_range(KH):
        for th in range(TH0, TH1):
            oy = tl.load(inv_h_ptr + (ky * H + iy) * T_H + th, mask=mask_m, other=-1)
            for kx in tl.static_range(KW):
                w_tap = w_ci + ky * sw_h + kx * sw_w
                for tw in range(TW0, TW1):
                    ox = tl.load(inv_w_ptr + (kx * W + ix) * T_W + tw, mask=mask_m, other=-1)
                    valid = mask_m & (oy >= 0) & (ox >= 0)
                    g_pix = g_n + oy.to(tl.int64) * sg_h + ox.to(tl.int64) * sg_w
                    for k0 in range(0, C_OUT_G, BLOCK_K):
                        co = k0 + offs_k
                        mask_k = co < C_OUT_G
                        a = tl.load(g_pix[:, None] + co[None, :].to(tl.int64) * sg_c,
                                    mask=valid[:, None] & mask_k[None, :], other=0.0)
                        b = tl.load(w_tap[None, :] + co[:, None].to(tl.int64) * sw_o,
                                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                        acc = _mma(a, b, acc, USE_DOT, ACC_DTYPE, INPUT_PRECISION)

    ci = group * C_IN_G + offs_n
    gx = (gx_ptr + n.to(tl.int64)[:, None] * sx_n + ci.to(tl.int64)[None, :] * sx_c
          + (iy.to(tl.int64) * sx_h + ix.to(tl.int64) * sx_w)[:, None])
    mask = mask_m[:, None] & mask_n[None, :]
    if ACCUMULATE:
        # A later pass over the same pixels: add to what the earlier pass wrote (each
        # element still has exactly one writer per pass, so the order is fixed).
        acc += tl.load(gx, mask=mask, other=0.0).to(ACC_DTYPE)
    tl.store(gx, acc.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_weight_kernel(
    g_ptr, x_ptr, part_ptr,
    row_lo_ptr, row_hi_ptr, row_base_ptr, col_lo_ptr, col_hi_ptr, col_base_ptr,
    P, OH, OW,
    sg_n, sg_c, sg_h, sg_w,
    sx_n, sx_c, sx_h, sx_w,
    sp_s, sp_o, sp_i, sp_h, sp_w,
    dil_h, dil_w,
    C_IN_G: tl.constexpr, C_OUT_G: tl.constexpr, SPLIT: tl.constexpr, CHUNK: tl.constexpr,
    KW: tl.constexpr, MODE: tl.constexpr,
    USE_DOT: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """partial[s, co, ci, ky, kx] = sum over the output pixels p in split s of
    grad_out[p, co] * x_padded[p + tap, ci]  (M = output channels, N = input
    channels, K = output pixels)."""
    pid_co = tl.program_id(0)
    pid_x = tl.program_id(1)
    pid_gs = tl.program_id(2)
    n_ci_tiles = (C_IN_G + BLOCK_N - 1) // BLOCK_N
    tap = pid_x // n_ci_tiles
    ci_tile = pid_x % n_ci_tiles
    ky = tap // KW
    kx = tap % KW
    group = pid_gs // SPLIT
    split = pid_gs % SPLIT

    offs_co = pid_co * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_co = offs_co < C_OUT_G
    offs_ci = ci_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_ci = offs_ci < C_IN_G
    g_co = g_ptr + (group * C_OUT_G + offs_co).to(tl.int64) * sg_c
    x_ci = x_ptr + (group * C_IN_G + offs_ci).to(tl.int64) * sx_c

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # Constexpr trip count: the interpreter (with numpy >= 2.4) cannot loop over a
    # range whose bounds are runtime values.
    for it in range((CHUNK + BLOCK_K - 1) // BLOCK_K):
        offs_p, mask_p = _slice_pixels(split, it, P, CHUNK, BLOCK_K)
        n, oy, ox = _pixel_coords(offs_p, OH, OW)
        iy, valid_h = _remap(tl.load(row_base_ptr + oy, mask=mask_p, other=0) + ky * dil_h,
                             tl.load(row_lo_ptr + oy, mask=mask_p, other=0),
                             tl.load(row_hi_ptr + oy, mask=mask_p, other=1), MODE)
        ix, valid_w = _remap(tl.load(col_base_ptr + ox, mask=mask_p, other=0) + kx * dil_w,
                             tl.load(col_lo_ptr + ox, mask=mask_p, other=0),
                             tl.load(col_hi_ptr + ox, mask=mask_p, other=1), MODE)
        valid = mask_p & valid_h & valid_w
        n64 = n.to(tl.int64)
        a = _grad_out_tile(g_co, mask_co, n64, oy, ox, mask_p, sg_n, sg_h, sg_w)
        b = tl.load(x_ci[None, :] + (n64 * sx_n + iy.to(tl.int64) * sx_h + ix.to(tl.int64) * sx_w)[:, None],
                    mask=valid[:, None] & mask_ci[None, :], other=0.0)
        acc = _mma(a, b, acc, USE_DOT, ACC_DTYPE, INPUT_PRECISION)

    part = (part_ptr + split.to(tl.int64) * sp_s + (group * C_OUT_G + offs_co).to(tl.int64)[:, None] * sp_o
            + offs_ci.to(tl.int64)[None, :] * sp_i + ky * sp_h + kx * sp_w)
    tl.store(part, acc, mask=mask_co[:, None] & mask_ci[None, :])


@triton.jit
def _grad_weight_depthwise_kernel(
    g_ptr, x_ptr, part_ptr,
    row_lo_ptr, row_hi_ptr, row_base_ptr, col_lo_ptr, col_hi_ptr, col_base_ptr,
    P, OH, OW, C_OUT,
    sg_n, sg_c, sg_h, sg_w,
    sx_n, sx_c, sx_h, sx_w,
    sp_s, sp_o, sp_h, sp_w,
    dil_h, dil_w,
    C_OUT_G: tl.constexpr, SPLIT: tl.constexpr, CHUNK: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, TAPS: tl.constexpr, MODE: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_weight for one input channel per group (depthwise, any multiplier):
    partial[s, co, 0, ky, kx] = sum over the pixels p of slice s of
    grad_out[p, co] * x_padded[p + (ky, kx), co // C_OUT_G].

    All taps of a channel live in one program (a TAPS-wide accumulator, TAPS = kh*kw
    rounded up to a power of two), so grad_out is read once, not once per tap."""
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = co < C_OUT
    ci = co // C_OUT_G
    taps = tl.arange(0, TAPS)
    mask_t = taps < KH * KW
    ky = taps // KW
    kx = taps % KW
    g_co = g_ptr + co.to(tl.int64) * sg_c
    x_ci = x_ptr + ci.to(tl.int64) * sx_c

    acc = tl.zeros((BLOCK_C, TAPS), dtype=ACC_DTYPE)
    for it in range((CHUNK + BLOCK_K - 1) // BLOCK_K):
        offs_p, mask_p = _slice_pixels(split, it, P, CHUNK, BLOCK_K)
        n, oy, ox = _pixel_coords(offs_p, OH, OW)
        lo_h = tl.load(row_lo_ptr + oy, mask=mask_p, other=0)[:, None]
        hi_h = tl.load(row_hi_ptr + oy, mask=mask_p, other=1)[:, None]
        base_h = tl.load(row_base_ptr + oy, mask=mask_p, other=0)[:, None]
        lo_w = tl.load(col_lo_ptr + ox, mask=mask_p, other=0)[:, None]
        hi_w = tl.load(col_hi_ptr + ox, mask=mask_p, other=1)[:, None]
        base_w = tl.load(col_base_ptr + ox, mask=mask_p, other=0)[:, None]
        iy, valid_h = _remap(base_h + ky[None, :] * dil_h, lo_h, hi_h, MODE)  # (BLOCK_K, TAPS)
        ix, valid_w = _remap(base_w + kx[None, :] * dil_w, lo_w, hi_w, MODE)
        valid = mask_p[:, None] & mask_t[None, :] & valid_h & valid_w
        n64 = n.to(tl.int64)
        a = _grad_out_tile(g_co, mask_c, n64, oy, ox, mask_p, sg_n, sg_h, sg_w)  # (BLOCK_C, BLOCK_K)
        pix = n64[:, None] * sx_n + iy.to(tl.int64) * sx_h + ix.to(tl.int64) * sx_w  # (BLOCK_K, TAPS)
        b = tl.load(x_ci[:, None, None] + pix[None, :, :], mask=mask_c[:, None, None] & valid[None, :, :],
                    other=0.0)  # (BLOCK_C, BLOCK_K, TAPS)
        acc += tl.sum(a.to(ACC_DTYPE)[:, :, None] * b.to(ACC_DTYPE), axis=1)

    part = (part_ptr + split.to(tl.int64) * sp_s + co.to(tl.int64)[:, None] * sp_o
            + (ky * sp_h + kx * sp_w)[None, :])
    tl.store(part, acc, mask=mask_c[:, None] & mask_t[None, :])


_FWD_KEY = ["M", "C_IN_G", "C_OUT_G", "KH", "KW", "MODE"]
_BWD_X_KEY = ["M", "C_IN_G", "C_OUT_G", "KH", "KW", "T_H", "T_W", "TH0", "TW0"]
_BWD_W_KEY = ["P", "C_IN_G", "C_OUT_G", "KW", "MODE", "SPLIT"]


def _fits_registers(configs, named_args, **kwargs):
    """Non-dot path: drop configs whose (BLOCK_M, BLOCK_K, BLOCK_N) product tile would
    not fit in registers (the launcher fixes two of the three sides)."""
    args = {**named_args, **kwargs}
    kept = []
    for config in configs:
        sides = {**args, **config.kwargs}
        if sides["BLOCK_M"] * sides["BLOCK_N"] * sides["BLOCK_K"] <= 8192:
            kept.append(config)
    return kept or configs[:1]


_PRUNE = {"early_config_prune": _fits_registers}

forward_dot = triton.autotune(_configs(_DOT_GPU, _DOT_INTERP, _DOT_NAMES), key=_FWD_KEY)(_forward_kernel)
forward_simple = triton.autotune(_configs(_SIMPLE_GPU, _SIMPLE_INTERP, _SIMPLE_NAMES), key=_FWD_KEY,
                                 prune_configs_by=_PRUNE)(
    _forward_kernel)
# The edge passes of grad_input add into grad_x: the tuner must restore it between trials.
grad_input_dot = triton.autotune(_configs(_DOT_GPU, _DOT_INTERP, _DOT_NAMES), key=_BWD_X_KEY,
                                 restore_value=["gx_ptr"])(_grad_input_kernel)
grad_input_simple = triton.autotune(_configs(_SIMPLE_GPU, _SIMPLE_INTERP, _SIMPLE_NAMES), key=_BWD_X_KEY,
                                    prune_configs_by=_PRUNE, restore_value=["gx_ptr"])(
    _grad_input_kernel)

# grad_weight: M = output channels, N = input channels, K = pixels (long), so a
# deeper K tile.  The partial buffer is fully overwritten, so tuning is safe.
_WGRAD_DOT_GPU = [
    (64, 64, 64, 4, 3),
    (128, 64, 64, 8, 3),
    (64, 128, 64, 8, 3),
    (32, 32, 128, 4, 3),
    (64, 64, 128, 8, 3),
]
_WGRAD_DOT_INTERP = (32, 32, 128, 1, 1)
# Non-dot grad_weight: BLOCK_M / BLOCK_N from the launcher, the pixel tile tuned.
_WGRAD_SIMPLE_GPU = [(256, 4, 2), (512, 4, 2), (1024, 8, 2), (2048, 8, 2)]
_WGRAD_SIMPLE_INTERP = (256, 1, 1)

grad_weight_dot = triton.autotune(_configs(_WGRAD_DOT_GPU, _WGRAD_DOT_INTERP, _DOT_NAMES), key=_BWD_W_KEY)(
    _grad_weight_kernel)
grad_weight_simple = triton.autotune(
    _configs(_WGRAD_SIMPLE_GPU, _WGRAD_SIMPLE_INTERP, ("BLOCK_K",)), key=_BWD_W_KEY, prune_configs_by=_PRUNE)(
    _grad_weight_kernel)


def _fits_registers_depthwise(configs, named_args, **kwargs):
    taps = {**named_args, **kwargs}["TAPS"]
    kept = [c for c in configs if c.kwargs["BLOCK_C"] * c.kwargs["BLOCK_K"] * taps <= 8192]
    return kept or configs[-1:]


# (BLOCK_C, BLOCK_K, num_warps, num_stages): pixels are the coalesced axis in NCHW.
_WGRAD_DW_GPU = [(1, 512, 4, 2), (2, 256, 4, 2), (4, 128, 4, 2), (1, 256, 4, 2), (2, 128, 4, 2), (1, 128, 4, 2)]
_WGRAD_DW_INTERP = (4, 128, 1, 1)
grad_weight_depthwise = triton.autotune(
    _configs(_WGRAD_DW_GPU, _WGRAD_DW_INTERP, ("BLOCK_C", "BLOCK_K")), key=["P", "C_OUT", "C_OUT_G", "TAPS", "MODE",
                                                                           "SPLIT"],
    prune_configs_by={"early_config_prune": _fits_registers_depthwise})(_grad_weight_depthwise_kernel)
