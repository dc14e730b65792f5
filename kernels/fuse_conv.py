"""Triton kernels for the FuSe convolution (``fuseops.fuse_conv2d``), forward and backward.

One FuSe call is two depthwise 1-D convolutions whose outputs sit side by side in the
channel dimension.  Each kernel below handles one *part* (``IS_ROW`` constexpr):

* row part (1xK along W): output ``(oh, ow)`` reads input row ``oh*s`` at columns
  ``ow*s - p + k*d``; padding only along W.
* column part (Kx1 along H): output ``(oh, ow)`` reads input column ``ow*s`` at rows
  ``oh*s - p + k*d``; padding only along H.

Tiling (all kernels): one program owns a ``[BLOCK_H, BLOCK_W]`` tile of one (n, c)
plane; W is the fast (contiguous) axis, so for NCHW tensors each tap is a coalesced
row load.  For the row part the K taps are K shifted loads of the same input rows
(the K-tap window along W); for the column part they are K input rows above/below the
tile, so consecutive tiles down H re-read the halo from cache rather than DRAM.  The
programs are numbered along one grid axis (planes x tiles) because CUDA limits the
other two axes to 65535.

Every tensor is addressed through its strides, so sliced and channels_last inputs
need no copy.  Plane offsets are 64-bit; in-plane offsets are 64-bit when
``INDEX64`` (set by the launcher when a tensor has >= 2**31 elements).

Accumulation is in ``ACC`` (float32, or float64 for float64 tensors), and the result
is rounded once to the output dtype.

Backward:

* :func:`fuse_bwd_input_kernel` gathers grad_x for a tile of x from both parts (a
  channel of the full variant feeds both).  When the activation's derivative needs
  the pre-activation, it is recomputed from x at each contributing output (K*K taps
  per input; all of them hit cache) instead of reading a saved output-sized buffer.
* :func:`fuse_bwd_weight_kernel` writes, per (channel, tile) program, the partial
  sums of ``grad_pre * x_tap`` for every tap and of ``grad_pre`` (bias) into a
  workspace; :func:`reduce_partials_kernel` adds the partials of each (channel, tap)
  in a fixed order.  No atomics, and the tile sizes of these two kernels are fixed
  (not autotuned), so the weight and bias gradients are bitwise reproducible.

Autotuning: the forward and grad_x kernels are autotuned on a GPU.  Under
``TRITON_INTERPRET=1`` a single small config is used, because the interpreter would
otherwise "benchmark" every config on the CPU.  Both kernels write each output
element exactly once (no accumulation into outputs), so autotuning's repeated runs
cannot corrupt results and the result does not depend on the config chosen.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

#: activation codes shared with the launcher (``fuseops.fuse_conv.triton_impl``).
ACTIVATION_CODES = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3}

#: (BLOCK_H, BLOCK_W) under TRITON_INTERPRET=1.  The interpreter's cost is per program
#: and per op, nearly independent of the tile size, so the tile is as large as lets
#: the tests still cover several tiles per plane with shapes of ~20x40.
INTERPRETER_TILE = (8, 16)

#: block of partial sums added per step of the fixed-order reduction.
REDUCE_BLOCK = 128


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotuning() -> bool:
    """False with ``FUSEOPS_TRITON_AUTOTUNE=0``: each kernel then takes its first fitting
    config without measuring, so a time-boxed GPU check is bound by compiling, not tuning."""
    return os.environ.get("FUSEOPS_TRITON_AUTOTUNE", "1") != "0"


def tile_configs(max_per_thread: int = 16) -> list[triton.Config]:
    """Autotune space for the element-wise-tiled kernels (forward, grad_x).

    Tiles of 128 to 2048 elements (4 to 8 per thread, 16 for the largest), so a thread
    can own up to 16 contiguous bytes along W when the alignment allows (see ``ALIGN``),
    with BLOCK_W from 16 to 256 to fit W = 7 ... 112 rows and small tiles for 7x7 and
    14x14 planes; :func:`prune_output_tiles` / :func:`prune_input_tiles` drop the tiles
    far wider or taller than the plane.

    ``max_per_thread`` caps the elements each thread owns: the grad_x kernel recomputes
    K*K taps per element when an activation is fused, and the AOT compile check showed
    it spilling registers at 8+ elements per thread with K=5.

    Under the interpreter: one config (``INTERPRETER_TILE``), so no time goes to tuning.
    """
    if interpreting():
        return [triton.Config(dict(zip(("BLOCK_H", "BLOCK_W"), INTERPRETER_TILE)), num_warps=1)]
    configs = []
    for block_w in (16, 32, 64, 128, 256):
        for elements, warps in ((128, 1), (256, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8)):
            if elements >= block_w and elements // (32 * warps) <= max_per_thread:
                configs.append(
                    triton.Config({"BLOCK_H": elements // block_w, "BLOCK_W": block_w}, num_warps=warps)
                )
    return configs


def _prune_tiles(configs, height: int, width: int):
    """Keep tiles whose width is within 2x of the row (W-side waste under ~50%) and whose
    height does not exceed the rows there are; never return an empty list."""
    target_w = min(256, max(16, triton.next_power_of_2(width)))
    kept = [c for c in configs
            if target_w // 2 <= c.kwargs["BLOCK_W"] <= target_w
            and c.kwargs["BLOCK_H"] <= max(1, triton.next_power_of_2(height))]
    if not kept:
        kept = [c for c in configs if c.kwargs["BLOCK_W"] == target_w] or configs
    return kept if autotuning() else kept[:1]


def prune_output_tiles(configs, named_args, **kwargs):
    """For kernels tiled over the output (forward)."""
    return _prune_tiles(configs, named_args["OH"], named_args["OW"])


def prune_input_tiles(configs, named_args, **kwargs):
    """For kernels tiled over the input (grad_x)."""
    return _prune_tiles(configs, named_args["H"], named_args["W"])


def weight_tile(out_height: int, out_width: int) -> tuple[int, int, int]:
    """Fixed (BLOCK_H, BLOCK_W, num_warps) of the weight-gradient kernel.

    Not autotuned: the tile decides how the partial sums are grouped, and a choice that
    varied with timing noise would make the weight gradients vary between runs.
    """
    if interpreting():
        return (*INTERPRETER_TILE, 1)
    block_w = min(128, max(16, triton.next_power_of_2(out_width)))
    # <= 8 elements per thread at 4 warps: the range the AOT compile check covers spill-free.
    block_h = max(1, min(32, 1024 // block_w, triton.next_power_of_2(out_height)))
    return block_h, block_w, 4


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _activation(pre, ACT: tl.constexpr):
    if ACT == 1:
        pre = tl.maximum(pre, 0.0)
    elif ACT == 2:
        pre = tl.minimum(tl.maximum(pre, 0.0), 6.0)
    elif ACT == 3:
        pre = pre * tl.minimum(tl.maximum(pre + 3.0, 0.0), 6.0) / 6.0
    return pre


@triton.jit
def _activation_grad(grad, pre, ACT: tl.constexpr):
    """d act(pre)/d pre * grad, with PyTorch's values at the kinks."""
    if ACT == 1:
        grad = tl.where(pre > 0.0, grad, 0.0)
    elif ACT == 2:
        grad = tl.where((pre > 0.0) & (pre < 6.0), grad, 0.0)
    elif ACT == 3:
        # aten::hardswish_backward: 0 below -3, grad*(x/3 + 1/2) on [-3, 3], grad above.
        grad = tl.where(pre < -3.0, 0.0, tl.where(pre <= 3.0, grad * (pre / 3.0 + 0.5), grad))
    return grad


@triton.jit
def _tile_coords(tile, tiles_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INDEX64: tl.constexpr):
    """Row indices [BLOCK_H, 1] and column indices [1, BLOCK_W] of a tile."""
    rows = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    if INDEX64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    return rows, cols


@triton.jit
def _plane_tile(pid, GRID_H, GRID_W, PLANES, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INDEX64: tl.constexpr):
    """Program pid of a launch with one program per tile of every (n, c) plane, PLANES
    channels per image, tiles over a GRID_H x GRID_W grid: n, c and the tile's row and
    column indices."""
    tiles_w = tl.cdiv(GRID_W, BLOCK_W)
    tiles = tl.cdiv(GRID_H, BLOCK_H) * tiles_w
    plane = pid // tiles
    rows, cols = _tile_coords(pid % tiles, tiles_w, BLOCK_H, BLOCK_W, INDEX64)
    return (plane // PLANES).to(tl.int64), (plane % PLANES).to(tl.int64), rows, cols


@triton.jit
def _tap_coords(oh, ow, k, pad, IS_ROW: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr):
    """Input (row, col) read by output (oh, ow) at tap k."""
    if IS_ROW:
        ih = oh * STRIDE
        iw = ow * STRIDE - pad + k * DIL
    else:
        ih = oh * STRIDE - pad + k * DIL
        iw = ow * STRIDE
    return ih, iw


@triton.jit
def _pre_activation(
    x_ptr, x_base, sxh, sxw, H, W, w_chan, swk, bias, oh, ow, valid, pad,
    IS_ROW: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr,
    ACC: tl.constexpr, ALIGN: tl.constexpr,
):
    """sum_k w[k] * x[x_base + tap k of (oh, ow)] + bias, zero padding; `valid` masks the
    outputs.  ALIGN > 1 promises that x_base and sxh are multiples of ALIGN."""
    acc = tl.zeros(oh.shape, dtype=ACC) + tl.zeros(ow.shape, dtype=ACC) + bias
    # The tap coordinates are written out here rather than via _tap_coords: each call of a
    # jit helper is costly under the interpreter, and this loop runs K*K times in grad_x.
    if IS_ROW:
        inside_cross = valid & (oh * STRIDE < H)
        row_off = x_base + oh * STRIDE * sxh
        if ALIGN > 1:
            row_off = tl.multiple_of(row_off, [ALIGN, ALIGN])
    else:
        inside_cross = valid & (ow * STRIDE < W)
        ih0 = oh * STRIDE - pad
        col_off = ow * STRIDE * sxw
    for k in tl.static_range(K):
        if IS_ROW:
            # ow*STRIDE + (k*DIL - pad): with a constexpr pad the shift is a constant, so
            # the centre tap (shift 0) keeps the alignment of ow and can load vectors.
            iw = ow * STRIDE + (k * DIL - pad)
            inside = inside_cross & (iw >= 0) & (iw < W)
            tap_off = row_off + iw * sxw
        else:
            inside = inside_cross & (ih0 + k * DIL >= 0) & (ih0 + k * DIL < H)
            row_off = x_base + (ih0 + k * DIL) * sxh
            if ALIGN > 1:
                row_off = tl.multiple_of(row_off, [ALIGN, ALIGN])
            tap_off = row_off + col_off
        xv = tl.load(x_ptr + tap_off, mask=inside, other=0.0).to(ACC)
        acc += tl.load(w_chan + k * swk).to(ACC) * xv
    return acc


# ----------------------------------------------------------------------------- forward
@triton.autotune(configs=tile_configs(), key=["OH", "OW", "K", "STRIDE", "DIL", "IS_ROW", "ALIGN"],
                 prune_configs_by={"early_config_prune": prune_output_tiles})
@triton.jit
def fuse_fwd_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    C_PART, X_START, OUT_START,
    H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    swc, swk, sb,
    son, soc, soh, sow,
    IS_ROW: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, INDEX64: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """out[n, OUT_START + c] = act(conv_part(x[n, X_START + c]) + b[OUT_START + c]) for one tile.

    ALIGN (a power of two, from the launcher) divides W, OW, the non-unit strides of x
    and out, and their addresses in elements.  Triton's launcher only proves divisibility by 16,
    which MobileNet rows (W = 56, 28, 14) miss; with the hint, W-contiguous accesses whose
    offset is a multiple of ALIGN (column-part taps, the centre row tap, the stores) can
    become vector accesses.  PAD is a constexpr so the tap offsets k*DIL - PAD are known.
    """
    n, c, oh, ow = _plane_tile(tl.program_id(0), OH, OW, C_PART, BLOCK_H, BLOCK_W, INDEX64)
    if ALIGN > 1:
        # Splat the W extents into tensors that carry the hint, so the W masks are known
        # to be constant over ALIGN lanes (a hint on a scalar argument is not kept).
        W = tl.multiple_of(tl.full([1, BLOCK_W], W, W.dtype), [ALIGN, ALIGN])
        OW = tl.multiple_of(tl.full([1, BLOCK_W], OW, OW.dtype), [ALIGN, ALIGN])
    valid = (oh < OH) & (ow < OW)

    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(b_ptr + (OUT_START + c) * sb).to(ACC)
    pre = _pre_activation(x_ptr, n * sxn + (X_START + c) * sxc, sxh, sxw, H, W, w_ptr + c * swc, swk, bias,
                          oh, ow, valid, PAD, IS_ROW, K, STRIDE, DIL, ACC, ALIGN)
    result = _activation(pre, ACT)
    out_row = n * son + (OUT_START + c) * soc + oh * soh
    if ALIGN > 1:
        out_row = tl.multiple_of(out_row, [ALIGN, ALIGN])
    tl.store(out_ptr + out_row + ow * sow, result.to(out_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------- backward: grad_x
@triton.jit
def _grad_x_from_part(
    x_ptr, x_base, g_plane, w_chan, swk, bias, sxh, sxw, sgh, sgw,
    ih, iw, in_mask, H, W, OH, OW, pad,
    IS_ROW: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr,
    ACT: tl.constexpr, ACC: tl.constexpr,
):
    """sum over taps k of w[k] * grad_pre[output that reads (ih, iw) at tap k]."""
    # Across the conv axis the kernel is 1 tap, no padding: only inputs on the stride grid
    # are read, by output index input/stride.
    if IS_ROW:
        cross_ok = (ih % STRIDE == 0) & (ih // STRIDE < OH)
        conv_i = iw
        conv_out = OW
    else:
        cross_ok = (iw % STRIDE == 0) & (iw // STRIDE < OW)
        conv_i = ih
        conv_out = OH
    acc = tl.zeros(ih.shape, dtype=ACC) + tl.zeros(iw.shape, dtype=ACC)
    for k in tl.static_range(K):
        t = conv_i + pad - k * DIL
        ok = in_mask & cross_ok & (t >= 0)
        t = tl.where(t >= 0, t, 0)
        ok = ok & (t % STRIDE == 0) & (t // STRIDE < conv_out)
        if IS_ROW:
            oh = ih // STRIDE
            ow = t // STRIDE
        else:
            oh = t // STRIDE
            ow = iw // STRIDE
        grad = tl.load(g_plane + oh * sgh + ow * sgw, mask=ok, other=0.0).to(ACC)
        if ACT != 0:
            pre = _pre_activation(x_ptr, x_base, sxh, sxw, H, W, w_chan, swk, bias, oh, ow, ok, pad,
                                  IS_ROW, K, STRIDE, DIL, ACC, 1)
            grad = _activation_grad(grad, pre, ACT)
        acc += tl.load(w_chan + k * swk).to(ACC) * grad
    return acc


@triton.autotune(configs=tile_configs(max_per_thread=4), key=["H", "W", "K", "STRIDE", "DIL", "ACT"],
                 prune_configs_by={"early_config_prune": prune_input_tiles})
@triton.jit
def fuse_bwd_input_kernel(
    x_ptr, g_ptr, wr_ptr, wc_ptr, b_ptr, gx_ptr,
    C, C_ROW, C_COL, COL_START,
    H, W, OH, OW, pad,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    swr_c, swr_k, swc_c, swc_k, sb,
    sgxn, sgxc, sgxh, sgxw,
    K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, INDEX64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """grad_x[n, c] for one tile: row-part term if c < C_ROW, column-part term if
    COL_START <= c < COL_START + C_COL (both for the full variant), zero otherwise."""
    n, c, ih, iw = _plane_tile(tl.program_id(0), H, W, C, BLOCK_H, BLOCK_W, INDEX64)
    in_mask = (ih < H) & (iw < W)
    x_base = n * sxn + c * sxc
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)

    if c < C_ROW:
        bias_row = 0.0
        if HAS_BIAS:
            bias_row = tl.load(b_ptr + c * sb).to(ACC)
        acc += _grad_x_from_part(
            x_ptr, x_base, g_ptr + n * sgn + c * sgc, wr_ptr + c * swr_c, swr_k, bias_row, sxh, sxw, sgh, sgw,
            ih, iw, in_mask, H, W, OH, OW, pad, True, K, STRIDE, DIL, ACT, ACC,
        )
    if (c >= COL_START) & (c < COL_START + C_COL):
        cc = c - COL_START
        out_c = C_ROW + cc
        bias_col = 0.0
        if HAS_BIAS:
            bias_col = tl.load(b_ptr + out_c * sb).to(ACC)
        acc += _grad_x_from_part(
            x_ptr, x_base, g_ptr + n * sgn + out_c * sgc, wc_ptr + cc * swc_c, swc_k, bias_col,
            sxh, sxw, sgh, sgw, ih, iw, in_mask, H, W, OH, OW, pad, False, K, STRIDE, DIL, ACT, ACC,
        )
    gx_plane = gx_ptr + n * sgxn + c * sgxc
    tl.store(gx_plane + ih * sgxh + iw * sgxw, acc.to(gx_ptr.dtype.element_ty), mask=in_mask)


# ----------------------------------------------------------------------------- backward: weights, bias
@triton.jit
def fuse_bwd_weight_kernel(
    x_ptr, g_ptr, w_ptr, b_ptr, ws_ptr,
    C_PART, X_START, OUT_START,
    H, W, OH, OW, pad,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    swc, swk, sb,
    TILES_TOTAL,
    IS_ROW: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, INDEX64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Partial sums of one output tile of one part's channel c.

    Workspace ``ws`` is (C_PART, K + 1, TILES_TOTAL) contiguous, TILES_TOTAL = N * tiles
    per plane: ``ws[c, k, n*tiles + t] = sum_tile grad_pre * x_tap_k`` and
    ``ws[c, K, n*tiles + t] = sum_tile grad_pre``.
    """
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(OW, BLOCK_W)
    tiles = tl.cdiv(OH, BLOCK_H) * tiles_w
    plane = pid // tiles
    tile = pid % tiles
    n = (plane // C_PART).to(tl.int64)
    c = (plane % C_PART).to(tl.int64)
    oh, ow = _tile_coords(tile, tiles_w, BLOCK_H, BLOCK_W, INDEX64)
    valid = (oh < OH) & (ow < OW)

    x_base = n * sxn + (X_START + c) * sxc
    x_plane = x_ptr + x_base
    w_chan = w_ptr + c * swc
    grad = tl.load(g_ptr + n * sgn + (OUT_START + c) * sgc + oh * sgh + ow * sgw, mask=valid, other=0.0)
    grad = grad.to(ACC)
    if ACT != 0:
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(b_ptr + (OUT_START + c) * sb).to(ACC)
        pre = _pre_activation(x_ptr, x_base, sxh, sxw, H, W, w_chan, swk, bias, oh, ow, valid, pad,
                              IS_ROW, K, STRIDE, DIL, ACC, 1)
        grad = _activation_grad(grad, pre, ACT)
    grad = tl.where(valid, grad, 0.0)

    slot = ws_ptr + c * ((K + 1) * TILES_TOTAL) + n * tiles + tile
    for k in tl.static_range(K):
        ih, iw = _tap_coords(oh, ow, k, pad, IS_ROW, STRIDE, DIL)
        inside = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_plane + ih * sxh + iw * sxw, mask=inside, other=0.0).to(ACC)
        tl.store(slot + k * TILES_TOTAL, tl.sum(tl.sum(grad * xv, axis=1), axis=0))
    tl.store(slot + K * TILES_TOTAL, tl.sum(tl.sum(grad, axis=1), axis=0))


@triton.jit
def reduce_partials_kernel(ws_ptr, out_ptr, LENGTH, BLOCK: tl.constexpr, CHUNKS: tl.constexpr):
    """out[r] = sum_j ws[r, j] for a contiguous (rows, LENGTH) workspace, in a fixed order:
    BLOCK-wide vector sums over consecutive chunks, then one tree sum of that vector.

    CHUNKS >= cdiv(LENGTH, BLOCK) is a constexpr (the launcher rounds it up to a power of
    two, so few variants compile): Triton's interpreter cannot take a run-time loop bound
    with the installed numpy (int() of a 1-element array), and one code path for the GPU
    and the interpreter is what the interpreter tests validate.
    """
    row = tl.program_id(0).to(tl.int64)
    base = ws_ptr + row * LENGTH
    acc = tl.zeros([BLOCK], dtype=ws_ptr.dtype.element_ty)
    for chunk in range(CHUNKS):
        idx = chunk * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(base + idx, mask=idx < LENGTH, other=0.0)
    tl.store(out_ptr + row, tl.sum(acc, axis=0))
