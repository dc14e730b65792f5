"""block_conv2d, block_grid, block_pad and BlockConv2d on the CPU backends (reference, cpu).

Every backend is checked against the per-block reference loop in float64, forward and
backward; the reference itself is checked against F.conv2d(F.pad(...)) on single
blocks and against hand-built blocks.  The Triton backend has its own file.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from backend_helpers import TORCH_SEEDS, DispatchRecorder, output_layout, require_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fuseops
from fuseops import use_backend
from fuseops.block_conv.grid import block_grid, spans_to_bounds
from fuseops.block_conv.reference import block_conv2d_reference, block_conv2d_reference_backward
from fuseops.nn import BlockConv2d

BACKENDS = ("reference", "cpu")
MODES = ("constant", "replicate", "reflect")
F_PAD_MODE = {"constant": "constant", "replicate": "replicate", "reflect": "reflect"}


def reference(x, weight, bias, stride, padding, dilation, groups, block_size, mode, blocking):
    """The per-block reference on the public arguments."""
    rows, cols = block_grid(x.shape[2], x.shape[3], block_size, blocking)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return block_conv2d_reference(x, weight, bias, pair(stride), pair(padding), pair(dilation), groups,
                                  spans_to_bounds(rows), spans_to_bounds(cols), mode)


def reference_grads(x, weight, bias, stride, padding, dilation, groups, block_size, mode, blocking, grad_out):
    rows, cols = block_grid(x.shape[2], x.shape[3], block_size, blocking)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return block_conv2d_reference_backward(grad_out, x, weight, bias, pair(stride), pair(padding), pair(dilation),
                                           groups, spans_to_bounds(rows), spans_to_bounds(cols), mode)


def run_backend(backend, x, weight, bias, grad_out=None, **kwargs):
    """Forward (and backward through autograd when grad_out is given) on ``backend``."""
    leaves = [t.detach().clone().requires_grad_(grad_out is not None) if t is not None else None
              for t in (x, weight, bias)]
    with use_backend(backend):
        out = fuseops.block_conv2d(*leaves, **kwargs)
        if grad_out is None:
            return out, None
        out.backward(grad_out)
    return out, tuple(t.grad if t is not None else None for t in leaves)


def _padded_positions(size: int, pad: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For a block of ``size`` pixels padded by ``pad`` on each side: the block pixel each
    padded position reads, and whether it reads one (constant padding reads zeros outside).
    Written from the padding modes' definitions, independently of F.pad."""
    i = torch.arange(-pad, size + pad)
    if mode == "constant":
        return i.clamp(0, size - 1), (i >= 0) & (i < size)
    if mode == "replicate":
        return i.clamp(0, size - 1), torch.ones_like(i, dtype=torch.bool)
    mirrored = i.abs()  # reflect: -1 -> 1, size -> size - 2 (the edge pixel is not repeated)
    mirrored = torch.where(mirrored >= size, 2 * (size - 1) - mirrored, mirrored)
    return mirrored, torch.ones_like(i, dtype=torch.bool)


def independent_block_conv(x, weight, bias, stride, padding, dilation, groups, rows, cols, mode):
    """Block convolution built from index gathers and F.conv2d, differentiable by autograd:
    an independent check of the reference forward (which pads with F.pad) and of its
    hand-written backward.  stride, padding, dilation are (h, w) pairs; rows, cols spans."""
    out_rows = []
    for r0, r1 in rows:
        src_r, keep_r = _padded_positions(r1 - r0, padding[0], mode)
        out_cols = []
        for c0, c1 in cols:
            src_c, keep_c = _padded_positions(c1 - c0, padding[1], mode)
            block = x[:, :, r0:r1, c0:c1].index_select(2, src_r).index_select(3, src_c)
            block = block * (keep_r[:, None] & keep_c[None, :]).to(x.dtype)
            out_cols.append(F.conv2d(block, weight, bias, stride, 0, dilation, groups))
        out_rows.append(torch.cat(out_cols, dim=3))
    return torch.cat(out_rows, dim=2)


# ------------------------------------------------------------------------ block_grid
def test_grid_fixed_ragged_hand_computed():
    rows, cols = block_grid(10, 7, (4, 3), "fixed")
    assert rows == ((0, 4), (4, 8), (8, 10))
    assert cols == ((0, 3), (3, 6), (6, 7))


def test_grid_hierarchical_non_dividing_hand_computed():
    # floor(i*10/3) = 0, 3, 6, 10 -> sizes 3, 3, 4; floor(i*7/2) = 0, 3, 7.
    rows, cols = block_grid(10, 7, (3, 2), "hierarchical")
    assert rows == ((0, 3), (3, 6), (6, 10))
    assert cols == ((0, 3), (3, 7))


def test_grid_hierarchical_more_blocks_than_pixels_is_an_error():
    with pytest.raises(ValueError, match="only 5 pixels"):
        block_grid(5, 8, (6, 2), "hierarchical")


def test_grid_block_larger_than_map_is_one_block():
    assert block_grid(9, 6, 28, "fixed") == (((0, 9),), ((0, 6),))


@pytest.mark.parametrize("bad", [0, -3, (2, 0)])
def test_grid_block_size_must_be_positive(bad):
    with pytest.raises(ValueError, match="block_size"):
        block_grid(8, 8, bad, "fixed")


def test_grid_unknown_blocking():
    with pytest.raises(ValueError, match="blocking"):
        block_grid(8, 8, 2, "tiled")


# ------------------------------------------------------------------------ reference vs independent constructions
@pytest.mark.parametrize("mode", MODES)
def test_single_block_equals_padded_conv(mode):
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 5, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (2, 2, 1, 1), mode=F_PAD_MODE[mode]), weight, bias, (2, 1), 0, (1, 1), 2)
    for backend in BACKENDS:
        require_backend("block_conv2d", backend)
        out, _ = run_backend(backend, x, weight, bias, stride=(2, 1), padding=(1, 2), groups=2, block_size=64,
                             padding_mode=mode)
        torch.testing.assert_close(out, expected, msg=backend)


@pytest.mark.parametrize("mode", MODES)
def test_reference_equals_hand_built_blocks(mode):
    # Ragged fixed blocks (4 + 3 rows, 5 + 5 + 2 columns), built by hand with F.pad per block.
    x = torch.randn(1, 2, 7, 12, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    expected_rows = []
    for r0, r1 in ((0, 4), (4, 7)):
        row = [F.conv2d(F.pad(x[:, :, r0:r1, c0:c1], (1, 1, 1, 1), mode=F_PAD_MODE[mode]), weight)
               for c0, c1 in ((0, 5), (5, 10), (10, 12))]
        expected_rows.append(torch.cat(row, dim=3))
    expected = torch.cat(expected_rows, dim=2)
    out = reference(x, weight, None, 1, 1, 1, 1, (4, 5), mode, "fixed")
    torch.testing.assert_close(out, expected)


def test_one_by_one_conv_is_unchanged_by_blocking():
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    weight = torch.randn(5, 4, 1, 1, dtype=torch.float64)
    for backend in BACKENDS:
        require_backend("block_conv2d", backend)
        out, _ = run_backend(backend, x, weight, None, block_size=(3, 4))
        torch.testing.assert_close(out, F.conv2d(x, weight))


# ------------------------------------------------------------------------ the grid of cases
def _grid_cases(count: int, seed: int = 1234):
    """A fixed sample of the full grid: modes x blockings x stride x dilation x groups x kernel x padding.

    Every value of each axis appears; the sample is fixed so failures reproduce.
    """
    axes = dict(
        mode=MODES,
        blocking=("fixed", "hierarchical"),
        stride=(1, 2, 3),
        dilation=(1, 2),
        groups=("1", "2", "depthwise"),
        kernel=(1, 3, 5, 7),
        padding=((0, 0), (1, 1), (1, 2), (3, 1)),
    )
    full = list(itertools.product(*axes.values()))
    rng = random.Random(seed)
    picked = rng.sample(full, count)
    # Make sure every value of every axis appears at least once.
    for axis, values in enumerate(axes.values()):
        for value in values:
            if not any(case[axis] == value for case in picked):
                picked.append(next(c for c in full if c[axis] == value))
    return picked


def _make_case(mode, blocking, stride, dilation, groups, kernel, padding):
    c_in = {"1": 3, "2": 4, "depthwise": 6}[groups]
    g = {"1": 1, "2": 2, "depthwise": c_in}[groups]
    c_out = {"1": 5, "2": 6, "depthwise": c_in}[groups]
    span = dilation * (kernel - 1) + 1
    least = max(span, 4)  # every block fits the kernel and exceeds the largest reflect padding (3)
    if blocking == "fixed":
        # Two full blocks and a smaller ragged last one in each dimension.
        bh, bw = least + 2, least + 1
        height, width, block = 2 * bh + least, 2 * bw + least, (bh, bw)
    else:
        # Spans that differ by one pixel: 3 x 2 blocks over a map that neither count divides.
        height, width, block = 3 * least + 2, 2 * least + 1, (3, 2)
    # Every block, the ragged ones included, must fit the kernel and (reflect) exceed the padding.
    spans = block_grid(height, width, block, blocking)
    smallest = [min(b - a for a, b in dim) for dim in spans]
    ph, pw = padding
    for dim, pad in ((0, ph), (1, pw)):
        if smallest[dim] + 2 * pad < span:
            return None
        if mode == "reflect" and pad >= smallest[dim]:
            return None
    x = torch.randn(2, c_in, height, width, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // g, kernel, kernel, dtype=torch.float64)
    bias = torch.randn(c_out, dtype=torch.float64)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=g, block_size=block,
                  padding_mode=mode, blocking=blocking)
    return x, weight, bias, kwargs


GRID_SAMPLE = _grid_cases(40)
# The sampled cases whose kernel fits every block (the rest are invalid configurations,
# whose errors test_bad_input covers).
GRID = [case for case in GRID_SAMPLE if _make_case(*case) is not None]


def _case_id(case):
    return "-".join(str(v) for v in case)


@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_grid_reference_matches_independent_construction(case):
    """The reference forward against index-gathered blocks, and its hand-written backward
    against autograd through those blocks: every mode, dilation, both blockings, ragged
    blocks, unequal padding, groups."""
    x, weight, bias, kwargs = _make_case(*case)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    rows, cols = block_grid(x.shape[2], x.shape[3], kwargs["block_size"], kwargs["blocking"])
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    want = independent_block_conv(*leaves, pair(kwargs["stride"]), pair(kwargs["padding"]),
                                  pair(kwargs["dilation"]), kwargs["groups"], rows, cols, kwargs["padding_mode"])
    grad_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, grad_out)
    args = (kwargs["stride"], kwargs["padding"], kwargs["dilation"], kwargs["groups"], kwargs["block_size"],
            kwargs["padding_mode"], kwargs["blocking"])
    torch.testing.assert_close(reference(x, weight, bias, *args), want.detach())
    got_grads = reference_grads(x, weight, bias, *args, grad_out)
    for name, got, expected in zip(("x", "weight", "bias"), got_grads, want_grads):
        torch.testing.assert_close(got, expected, msg=f"grad {name}")


@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_grid_forward_backward_matches_reference(case):
    require_backend("block_conv2d", "cpu")
    x, weight, bias, kwargs = _make_case(*case)
    expected = reference(x, weight, bias, kwargs["stride"], kwargs["padding"], kwargs["dilation"], kwargs["groups"],
                         kwargs["block_size"], kwargs["padding_mode"], kwargs["blocking"])
    grad_out = torch.randn_like(expected)
    expected_grads = reference_grads(x, weight, bias, kwargs["stride"], kwargs["padding"], kwargs["dilation"],
                                     kwargs["groups"], kwargs["block_size"], kwargs["padding_mode"],
                                     kwargs["blocking"], grad_out)
    out, grads = run_backend("cpu", x, weight, bias, grad_out, **kwargs)
    torch.testing.assert_close(out, expected)
    for name, got, want in zip(("x", "weight", "bias"), grads, expected_grads):
        torch.testing.assert_close(got, want, msg=f"grad {name}")


def test_grid_sample_is_mostly_runnable():
    # Guards against the sampled grid silently shrinking to a few runnable cases.
    assert len(GRID) >= 0.75 * len(GRID_SAMPLE)


def test_reference_backward_matches_autograd():
    # The reference backward is hand-written (no autograd); check it against autograd
    # through the reference forward, which is plain torch ops.
    for mode in MODES:
        x = torch.randn(2, 4, 11, 9, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
        out = reference(x, weight, bias, 2, (1, 2), 1, 2, (4, 3), mode, "fixed")
        grad_out = torch.randn_like(out)
        want = torch.autograd.grad(out, (x, weight, bias), grad_out)
        got = reference_grads(x.detach(), weight.detach(), bias.detach(), 2, (1, 2), 1, 2, (4, 3), mode, "fixed",
                              grad_out)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


# ------------------------------------------------------------------------ hypothesis
@st.composite
def block_conv_cases(draw):
    """Every option of block_conv2d, drawn so that each draw is a valid configuration:
    the padding and kernel are drawn after the grid, within what its smallest block allows."""
    n = draw(st.integers(0, 2))
    groups = draw(st.integers(1, 4))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 17)), draw(st.integers(1, 17))
    blocking = draw(st.sampled_from(["fixed", "hierarchical"]))
    mode = draw(st.sampled_from(MODES))
    if blocking == "fixed":
        block = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    else:
        block = (draw(st.integers(1, min(h, 4))), draw(st.integers(1, min(w, 4))))
    spans = block_grid(h, w, block, blocking)
    per_dim = []
    for dim_spans in spans:
        smallest = min(b - a for a, b in dim_spans)
        pad = draw(st.integers(0, min(2, smallest - 1) if mode == "reflect" else 2))
        dilation = draw(st.integers(1, 2))
        kernels = [k for k in (1, 2, 3, 5) if dilation * (k - 1) + 1 <= smallest + 2 * pad]
        per_dim.append((pad, dilation, draw(st.sampled_from(kernels)), draw(st.integers(1, 3))))
    (ph, dh, kh, sh), (pw, dw, kw, sw) = per_dim
    return dict(n=n, c_in=c_in, c_out=c_out, h=h, w=w, kernel=(kh, kw), bias=draw(st.booleans()),
                kwargs=dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups, block_size=block,
                            padding_mode=mode, blocking=blocking))


@settings(max_examples=200)
@given(case=block_conv_cases(), seed=TORCH_SEEDS)
def test_hypothesis_cpu_matches_reference(case, seed):
    require_backend("block_conv2d", "cpu")
    torch.manual_seed(seed)
    kw = case["kwargs"]
    x = torch.randn(case["n"], case["c_in"], case["h"], case["w"], dtype=torch.float64)
    weight = torch.randn(case["c_out"], case["c_in"] // kw["groups"], *case["kernel"], dtype=torch.float64)
    bias = torch.randn(case["c_out"], dtype=torch.float64) if case["bias"] else None
    args = (kw["stride"], kw["padding"], kw["dilation"], kw["groups"], kw["block_size"], kw["padding_mode"],
            kw["blocking"])
    expected = reference(x, weight, bias, *args)
    grad_out = torch.randn_like(expected)
    expected_grads = reference_grads(x, weight, bias, *args, grad_out)
    out, grads = run_backend("cpu", x, weight, bias, grad_out, **kw)
    torch.testing.assert_close(out, expected)
    for name, got, want in zip(("x", "weight", "bias"), grads, expected_grads):
        if got is not None:
            torch.testing.assert_close(got, want, msg=f"grad {name}")


# ------------------------------------------------------------------------ layouts and dtypes
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_non_contiguous_inputs(backend, layout):
    require_backend("block_conv2d", backend)
    if layout == "channels_last":
        x = torch.randn(2, 6, 13, 22, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, 8, 13, 40, dtype=torch.float64)[:, 1:7, :, 3:39:2]  # sliced channels, W stride 2
    weight = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    kwargs = dict(stride=1, padding=1, groups=2, block_size=(5, 4), padding_mode="reflect")
    expected = reference(x.contiguous(), weight, None, 1, 1, 1, 2, (5, 4), "reflect", "fixed")
    grad_out = torch.randn_like(expected)
    expected_grads = reference_grads(x.contiguous(), weight, None, 1, 1, 1, 2, (5, 4), "reflect", "fixed", grad_out)
    out, grads = run_backend(backend, x, weight, None, grad_out, **kwargs)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grads[0], expected_grads[0])
    torch.testing.assert_close(grads[1], expected_grads[1])


# float32 and bfloat16 against the float64 reference on the same (rounded) inputs, so only
# the op's own arithmetic is measured.  float32: tolerance grows with the reduction length.
DTYPE_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4)}
# bfloat16: the error relative to each result's largest magnitude, about 3x the largest seen
# over 40 random trials x both backends x dense/depthwise (2^-8 = 0.0039 is one rounding):
# output 0.0034, grad x 0.0074, grad weight 0.0127 (dense: 420-term sums), grad bias 0.0037.
BF16_TOL_OF_MAX = {"out": 0.01, "x": 0.025, "weight": 0.04, "bias": 0.012}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 8], ids=["dense", "depthwise"])
def test_low_precision_dtypes(backend, dtype, groups):
    require_backend("block_conv2d", backend)
    rounded = lambda t: t.to(dtype).double()  # noqa: E731
    x = rounded(torch.randn(2, 8, 15, 14, dtype=torch.float64))
    weight = rounded(torch.randn(8, 8 // groups, 3, 3, dtype=torch.float64) / 8)
    bias = rounded(torch.randn(8, dtype=torch.float64))
    expected = reference(x, weight, bias, 1, 1, 1, groups, 4, "replicate", "fixed")
    grad_out = rounded(torch.randn_like(expected))
    expected_grads = reference_grads(x, weight, bias, 1, 1, 1, groups, 4, "replicate", "fixed", grad_out)
    out, grads = run_backend(backend, x.to(dtype), weight.to(dtype), bias.to(dtype), grad_out.to(dtype),
                             padding=1, groups=groups, block_size=4, padding_mode="replicate")
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for name, got, want in zip(("out", "x", "weight", "bias"), (out, *grads), (expected, *expected_grads)):
        if dtype == torch.bfloat16:
            atol, rtol = BF16_TOL_OF_MAX[name] * want.abs().max().item(), 0.0
        else:  # grad_weight and grad_bias sum over N*H*W products: scale with their magnitude
            scale = want.abs().max().item() if name in ("weight", "bias") else 1.0
            atol, rtol = DTYPE_TOL[dtype]["atol"] * scale, DTYPE_TOL[dtype]["rtol"]
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol, msg=f"{dtype} {name}")


# The cpu backend's direct depthwise kernels move float32 block rows in 16-lane vectors
# with a masked tail (copy_row / add_row in csrc/block_conv_cpu.cpp); float64 takes the
# scalar loop, so these widths are checked in float32: under one vector (3, 7, 14), exactly
# one (16), a vector plus a tail (17, 28 and a ragged 13), stride 1 (the strip kernel) and
# stride 2 (the per-block kernel), each padding mode, forward and backward.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("width", "block", "stride"),
                         [(42, 14, 1), (21, 7, 1), (9, 3, 1), (32, 16, 1), (34, 17, 1), (56, 28, 1), (41, 13, 1),
                          (42, 14, 2), (34, 17, 2)])
def test_depthwise_float32_row_widths(mode, width, block, stride):
    require_backend("block_conv2d", "cpu")
    channels = 5
    x = torch.randn(2, channels, 11, width, dtype=torch.float64)
    weight = torch.randn(channels, 1, 3, 3, dtype=torch.float64)
    bias = torch.randn(channels, dtype=torch.float64)
    block_size = (4, block)
    expected = reference(x, weight, bias, stride, 1, 1, channels, block_size, mode, "fixed")
    grad_out = torch.randn_like(expected)
    expected_grads = reference_grads(x, weight, bias, stride, 1, 1, channels, block_size, mode, "fixed", grad_out)
    out, grads = run_backend("cpu", x.float(), weight.float(), bias.float(), grad_out.float(), stride=stride,
                             padding=1, groups=channels, block_size=block_size, padding_mode=mode)
    torch.testing.assert_close(out.double(), expected, **DTYPE_TOL[torch.float32])
    for grad, want in zip(grads, expected_grads):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(grad.double(), want, atol=1e-4 * scale, rtol=1e-4)


# ------------------------------------------------------------------------ autograd, opcheck, compile
# The reference is slow under gradcheck's many calls: one mode for it, every mode for cpu.
@pytest.mark.parametrize(("backend", "mode"), [("reference", "reflect")] + [("cpu", m) for m in MODES])
def test_gradcheck(backend, mode):
    require_backend("block_conv2d", backend)
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias):
        return fuseops.block_conv2d(x, weight, bias, stride=(1, 2), padding=(2, 1), groups=2, block_size=(4, 3),
                                    padding_mode=mode)

    with use_backend(backend):
        assert torch.autograd.gradcheck(fn, (x, weight, bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    require_backend("block_conv2d", backend)
    rows, cols = block_grid(10, 8, (4, 3), "fixed")
    for requires_grad in (False, True):
        x = torch.randn(2, 4, 10, 8, dtype=torch.float64, requires_grad=requires_grad)
        weight = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=requires_grad)
        bias = torch.randn(6, dtype=torch.float64, requires_grad=requires_grad)
        args = (x, weight, bias, [1, 1], [1, 1], [1, 1], 2, spans_to_bounds(rows), spans_to_bounds(cols), "reflect")
        with use_backend(backend):
            torch.library.opcheck(torch.ops.fuseops.block_conv2d, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    require_backend("block_conv2d", backend)
    layer = BlockConv2d(3, 4, 3, padding=1, block_size=(5, 4), padding_mode="replicate").double()
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    with use_backend(backend):
        eager = layer(x)
        eager.sum().backward()
        eager_grad = x.grad.clone()
        x.grad = None
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        out.sum().backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(x.grad, eager_grad)


def test_eager_path_and_registered_op_agree():
    """Plain eager calls skip the custom op (fuseops._eager); both give the same results,
    and a dispatch mode sees the registered op."""

    rows, cols = block_grid(10, 8, (4, 3), "fixed")
    x = torch.randn(2, 4, 10, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 6, 10, 8, dtype=torch.float64)
    eager = fuseops.block_conv2d(x, weight, bias, padding=1, groups=2, block_size=(4, 3), padding_mode="reflect")
    eager_grads = torch.autograd.grad(eager, (x, weight, bias), grad_out)
    args = (x, weight, bias, [1, 1], [1, 1], [1, 1], 2, spans_to_bounds(rows), spans_to_bounds(cols), "reflect")
    op = torch.ops.fuseops.block_conv2d(*args)
    op_grads = torch.autograd.grad(op, (x, weight, bias), grad_out)
    assert torch.equal(eager, op)
    for e, o in zip(eager_grads, op_grads):
        assert torch.equal(e, o)

    with DispatchRecorder() as recorder, torch.no_grad():
        fuseops.block_conv2d(x, weight, bias, padding=1, groups=2, block_size=(4, 3))
    assert "fuseops.block_conv2d.default" in recorder.seen


@pytest.mark.parametrize("stride", [1, 2])
def test_cpu_depthwise_reads_a_strided_bias(stride):
    """The direct depthwise kernels read the bias themselves: a strided view must work."""
    require_backend("block_conv2d", "cpu")
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)[::2]
    kw = dict(stride=stride, padding=1, groups=3, block_size=(4, 5), padding_mode="replicate")
    with use_backend("reference"):
        want = fuseops.block_conv2d(x, weight, bias, **kw)
    with use_backend("cpu"):
        got = fuseops.block_conv2d(x, weight, bias, **kw)
    torch.testing.assert_close(got, want)


def test_cpu_depthwise_backward_keeps_an_inf_in_its_channel():
    """An inf in one channel's x must not reach another channel's weight gradient (the
    fixed-tap backward reads past each padded block, where an earlier block's values sat)."""
    require_backend("block_conv2d", "cpu")
    rows, cols = [0, 4, 11], [0, 4, 9]  # a 7x5 block class followed by smaller ones
    x = torch.randn(1, 2, 11, 9, dtype=torch.float64)
    x[0, 0, 9, 6] = float("inf")
    weight = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    grad_out = torch.randn(1, 2, 11, 9, dtype=torch.float64)
    args = ([1, 1], [1, 1], [1, 1], 2, rows, cols, "constant")
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _, grad_weight, _ = torch.ops.fuseops_ext.block_conv2d_backward(grad_out, x, weight, None, *args)
        finally:
            torch.set_num_threads(previous)
        assert torch.isfinite(grad_weight[1]).all()


@pytest.mark.parametrize("mode", ["constant", "replicate", "reflect"])
@pytest.mark.parametrize("kernel", [3, 5, 4])
def test_cpu_depthwise_weight_grad_with_inf_matches_the_reference(mode, kernel):
    """An inf in x makes exactly the weight-gradient taps that multiply it inf or NaN, as in
    the reference.  The direct backward walks a block's rows at the padded pitch; the
    columns past each row's outputs have zero gradient and must not be multiplied in
    (0 * inf would turn a finite tap of the same channel into NaN)."""
    require_backend("block_conv2d", "cpu")
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64)
    for n, c, r, col in [(0, 0, 4, 0), (1, 1, 7, 5), (0, 2, 12, 10), (1, 0, 0, 6)]:
        x[n, c, r, col] = float("inf")
    weight = torch.randn(3, 1, kernel, kernel, dtype=torch.float64)
    grad_out = None
    grads = {}
    for backend in ("reference", "cpu"):
        w = weight.clone().requires_grad_(True)
        with use_backend(backend):
            y = fuseops.block_conv2d(x, w, padding=1, groups=3, block_size=(5, 6), padding_mode=mode)
        if grad_out is None:
            grad_out = torch.randn_like(y)
        y.backward(grad_out)
        grads[backend] = w.grad
    assert not torch.isfinite(grads["reference"]).all()  # the case must reach an inf
    torch.testing.assert_close(grads["cpu"], grads["reference"], equal_nan=True)


def test_cpu_scratch_buffers_are_per_thread_and_releasable():
    """The C++ backend reuses per-thread scratch buffers between calls (csrc/block_conv_cpu.cpp,
    `workspace`): calls from concurrent threads, of changing sizes, stay exact."""
    import threading

    require_backend("block_conv2d", "cpu")
    cases = []
    for size in (12, 9, 13):
        x = torch.randn(2, 4, size, size, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(4, 4, 3, 3, dtype=torch.float64, requires_grad=True)
        grad_out = torch.randn(2, 4, size, size, dtype=torch.float64)
        kw = dict(padding=1, block_size=5, padding_mode="reflect")
        with use_backend("reference"):
            want = fuseops.block_conv2d(x, weight, **kw)
            want_grads = torch.autograd.grad(want, (x, weight), grad_out)
        cases.append((x, weight, grad_out, kw, want, want_grads))
    errors = []

    def work():
        try:
            with use_backend("cpu"):
                for _ in range(5):
                    for x, weight, grad_out, kw, want, want_grads in cases:
                        got = fuseops.block_conv2d(x, weight, **kw)
                        grads = torch.autograd.grad(got, (x, weight), grad_out)
                        torch.testing.assert_close(got, want)
                        for g, w in zip(grads, want_grads):
                            torch.testing.assert_close(g, w)
        except Exception as exc:  # noqa: BLE001 - reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    torch.ops.fuseops_ext.block_conv2d_release_workspace()
    x, weight, _, kw, want, _ = cases[0]
    with use_backend("cpu"):
        torch.testing.assert_close(fuseops.block_conv2d(x, weight, **kw), want)


@pytest.mark.parametrize("groups", [1, 5], ids=["dense", "depthwise"])
def test_cpu_backward_is_deterministic(groups):
    """Bit-identical gradients on every run at a thread count.  Across thread counts, the
    direct depthwise backward and the scatter of grad x stay bit-identical too (their
    reductions run in a fixed order); the dense weight gradient comes from ATen's conv
    backward on the gathered blocks, whose sums (oneDNN's) change with the thread count,
    exactly as F.conv2d's own weight gradient does."""
    require_backend("block_conv2d", "cpu")
    x = torch.randn(4, 5, 14, 14)
    weight = torch.randn(5, 5 // groups, 3, 3)
    bias = torch.randn(5)
    grad_out = torch.randn(4, 5, 14, 14)
    previous = torch.get_num_threads()
    runs = {}
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs[threads] = [run_backend("cpu", x, weight, bias, grad_out, padding=1, groups=groups, block_size=4,
                                         padding_mode="reflect")[1] for _ in range(2)]
    finally:
        torch.set_num_threads(previous)
    for threads, (first, second) in runs.items():
        for name, a, b in zip(("x", "weight", "bias"), first, second):
            assert torch.equal(a, b), f"grad {name} differs between two runs at {threads} threads"
    same_across = ("x", "weight", "bias") if groups == 5 else ("x", "bias")
    for threads in (2, 3):
        for name, a, b in zip(("x", "weight", "bias"), runs[threads][0], runs[1][0]):
            if name in same_across:
                assert torch.equal(a, b), f"grad {name} at {threads} threads differs from 1 thread"


DEGENERATE = [  # (shape, kernel, padding, block)
    ((0, 3, 8, 8), 3, 1, 4),        # an empty batch
    ((2, 3, 1, 1), 3, 1, 1),        # a 1x1 map: one one-pixel block
    ((2, 3, 1, 7), (1, 3), 1, 3),   # one row, ragged blocks along W
    ((2, 3, 5, 1), (3, 1), 1, 2),   # one column, ragged blocks along H
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "kernel", "padding", "block", "mode"), [
    case + (mode,) for case in DEGENERATE for mode in MODES
    # reflect needs blocks larger than the padding: with one-pixel blocks that is an error (test_bad_input)
    if not (mode == "reflect" and case[2] > 0 and (min(case[0][2:]) == 1 or case[0][2] % case[3] == 1))
])
def test_degenerate_sizes(backend, shape, kernel, padding, block, mode):
    require_backend("block_conv2d", backend)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (padding if kh > 1 else 0, padding if kw > 1 else 0)
    x = torch.randn(*shape, dtype=torch.float64)
    weight = torch.randn(4, 3, kh, kw, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    rows, cols = block_grid(shape[2], shape[3], block, "fixed")
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    want = independent_block_conv(*leaves, (1, 1), pad, (1, 1), 1, rows, cols, mode)
    grad_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, grad_out)
    out, grads = run_backend(backend, x, weight, bias, grad_out, padding=pad, block_size=block, padding_mode=mode)
    assert out.shape == want.shape
    torch.testing.assert_close(out, want.detach())
    for name, got, expected in zip(("x", "weight", "bias"), grads, want_grads):
        torch.testing.assert_close(got, expected, msg=f"grad {name}")


# ------------------------------------------------------------------------ stride_mode="pool"
@pytest.mark.parametrize("backend", BACKENDS)
def test_stride_mode_pool_is_stride_one_then_max_pool(backend):
    require_backend("block_conv2d", backend)
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    stride_one = reference(x, weight, None, 1, 1, 1, 1, 4, "constant", "fixed")
    expected = F.max_pool2d(stride_one, kernel_size=2, stride=2)
    out, _ = run_backend(backend, x, weight, None, stride=2, padding=1, block_size=4, stride_mode="pool")
    torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------------ block_pad
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_block_pad_values_and_backward(backend, mode):
    require_backend("block_pad", backend)
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64, requires_grad=True)
    # Manual: block (n, i, j) of x, padded alone by F.pad.
    expected = torch.stack([
        F.pad(x[n, :, 4 * i:4 * i + 4, 3 * j:3 * j + 3], (1, 1, 2, 2), mode=F_PAD_MODE[mode])
        for n in range(2) for i in range(2) for j in range(3)
    ])
    grad = torch.randn_like(expected)
    (want,) = torch.autograd.grad(expected, x, grad)
    with use_backend(backend):
        out = fuseops.block_pad(x, (4, 3), (2, 1), padding_mode=mode)
        assert out.shape == (2 * 2 * 3, 3, 8, 5)
        torch.testing.assert_close(out, expected)
        (inside,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(inside, want)
    # Outside the `with` block the backward still runs on the forward's backend.
    with use_backend(backend):
        out = fuseops.block_pad(x, (4, 3), (2, 1), padding_mode=mode)
    (outside,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(outside, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_pad_backward_runs_on_the_forward_backend(backend, monkeypatch):
    """block_pad records the backend of its forward, as the other ops do: the backward
    must not switch to another backend's code when called outside ``use_backend``."""
    require_backend("block_pad", backend)
    from fuseops.block_conv import cpu_impl, pad_op

    ran = []
    reference_backward, cpu_backward = pad_op.block_pad_reference_backward, cpu_impl.pad_backward
    monkeypatch.setattr(pad_op, "block_pad_reference_backward",
                        lambda *a: ran.append("reference") or reference_backward(*a))
    monkeypatch.setattr(cpu_impl, "pad_backward", lambda *a: ran.append("cpu") or cpu_backward(*a))
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    with use_backend(backend):
        out = fuseops.block_pad(x, 2, 1, padding_mode="reflect")
    with use_backend("cpu" if backend == "reference" else "reference"):
        out.sum().backward()
    assert ran == [backend]


def test_block_pad_hierarchical_and_opcheck():
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    out = fuseops.block_pad(x, (2, 4), 1, blocking="hierarchical")
    assert out.shape == (8, 2, 5, 4)
    torch.library.opcheck(torch.ops.fuseops.block_pad, (x, 3, 2, [1, 1], "replicate"))


def test_block_pad_uneven_map_is_an_error():
    with pytest.raises(ValueError, match="divide the map evenly"):
        fuseops.block_pad(torch.randn(1, 2, 10, 8), 4, 1)


def test_block_pad_reflect_limit():
    with pytest.raises(ValueError, match="reflect"):
        fuseops.block_pad(torch.randn(1, 2, 8, 8), 2, 2, padding_mode="reflect")


# ------------------------------------------------------------------------ BlockConv2d
def test_layer_state_dict_matches_conv2d():
    layer = BlockConv2d(4, 6, 3, padding=1, block_size=7)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    assert list(layer.state_dict()) == list(conv.state_dict())
    conv.load_state_dict(layer.state_dict())  # loads both ways
    layer.load_state_dict(conv.state_dict())


def test_layer_from_conv_keeps_weights_and_single_block_equals_conv():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), groups=2, padding_mode="reflect").double()
    layer = BlockConv2d.from_conv(conv, block_size=100)
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    assert layer.padding_mode == "reflect" and layer.stride == (2, 2) and layer.groups == 2
    x = torch.randn(2, 4, 12, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_layer_blocked_equals_functional():
    layer = BlockConv2d(3, 5, 3, padding=1, bias=False, block_size=(2, 3), blocking="hierarchical",
                        padding_mode="replicate").double()
    x = torch.randn(1, 3, 9, 10, dtype=torch.float64)
    expected = reference(x, layer.weight.detach(), None, 1, 1, 1, 1, (2, 3), "replicate", "hierarchical")
    torch.testing.assert_close(layer(x), expected)


def test_layer_extra_repr_shows_blocking():
    text = repr(BlockConv2d(4, 6, 3, padding=1, block_size=(2, 2), blocking="hierarchical", stride_mode="pool"))
    assert "block_size=2x2 (hierarchical)" in text
    assert "block_padding='constant'" in text and "stride_mode='pool'" in text


# ------------------------------------------------------------------------ bad input
def _call(**overrides):
    args = dict(x=torch.randn(1, 4, 8, 8), weight=torch.randn(4, 4, 3, 3), padding=1, block_size=4)
    args.update(overrides)
    x, weight = args.pop("x"), args.pop("weight")
    return fuseops.block_conv2d(x, weight, **args)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (dict(block_size=0), ValueError, "block_size"),
        (dict(block_size=(4, -1)), ValueError, "block_size"),
        (dict(padding_mode="reflect", padding=4), ValueError, "reflect"),
        (dict(padding_mode="reflect", padding=2, block_size=3), ValueError, "smallest block"),  # ragged block of 2
        (dict(padding_mode="circular"), ValueError, "padding_mode"),
        (dict(blocking="tiles"), ValueError, "blocking"),
        (dict(stride_mode="avg"), ValueError, "stride_mode"),
        (dict(x=torch.randn(4, 8, 8)), ValueError, "x must be 4-D"),
        (dict(weight=torch.randn(4, 4, 3)), ValueError, "weight must be 4-D"),
        (dict(groups=3), ValueError, "groups"),
        (dict(weight=torch.randn(4, 2, 3, 3)), ValueError, "C_in/groups"),
        (dict(padding_mode=3), TypeError, "padding_mode"),
        (dict(block_size=2, padding=0, weight=torch.randn(4, 4, 3, 3)), ValueError, "too small"),
    ],
)
def test_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)


def test_cpu_kernel_checks_its_inputs():
    require_backend("block_conv2d", "cpu")
    x = torch.randn(1, 4, 8, 8)
    weight = torch.randn(4, 4, 3, 3)
    with pytest.raises(RuntimeError, match="bounds"):
        torch.ops.fuseops_ext.block_conv2d_forward(x, weight, None, [1, 1], [1, 1], [1, 1], 1, [0, 4, 7], [0, 8],
                                                    "constant")
    with pytest.raises(RuntimeError, match="reflect"):
        torch.ops.fuseops_ext.block_conv2d_forward(x, weight, None, [1, 1], [2, 2], [1, 1], 1, [0, 2, 8], [0, 8],
                                                    "reflect")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", MODES)
def test_cpu_single_block_backward(layout, mode):
    # The cpu backend runs one constant-padded block as the plain conv (no gather).
    require_backend("block_conv2d", "cpu")
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    expected = reference(x, weight, bias, 2, (1, 2), 1, 2, 16, mode, "fixed")
    grad_out = torch.randn_like(expected)
    expected_grads = reference_grads(x, weight, bias, 2, (1, 2), 1, 2, 16, mode, "fixed", grad_out)
    out, grads = run_backend("cpu", x, weight, bias, grad_out, stride=2, padding=(1, 2), groups=2, block_size=16,
                             padding_mode=mode)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=output_layout(x))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
