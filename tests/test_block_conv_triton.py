"""Triton backend of block_conv2d against the per-block reference (the definition).

Runs under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it), so shapes
are small: the interpreter executes every program in Python.  Every output buffer
the backend allocates is poisoned with NaN first, so an element a kernel forgets to
write fails the comparison.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backend_helpers import TORCH_SEEDS, output_layout, poison_triton_outputs, require_backend
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fuseops
from fuseops.block_conv.grid import block_grid, spans_to_bounds
from fuseops.block_conv.reference import block_conv2d_reference, block_conv2d_reference_backward

pytestmark = pytest.mark.triton


@pytest.fixture(autouse=True)
def _triton_and_poison(monkeypatch):
    require_backend("block_conv2d", "triton")  # skips here, fails under CI=true
    from fuseops.block_conv import triton_impl

    poison_triton_outputs(monkeypatch, triton_impl)


# Tolerance per dtype (float64: torch.testing.assert_close's defaults), as
# |got - want| <= tol * (max(max |want|, 1) + |want|) elementwise, against float64 on the
# same rounded inputs.  Measured max |got - want| / (max(max |want|, 1) + |want|) over 8 seeds
# of test_low_precision (both paths): float32 2.2e-7 (grad_weight), bfloat16 5.4e-3 (grad_x).
# About 3-5x those:
TOL = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2}


def _bounds(h, w, block_size, blocking):
    rows, cols = block_grid(h, w, block_size, blocking)
    return spans_to_bounds(rows), spans_to_bounds(cols)


def _check(x64, w64, b64, stride, padding, dilation, groups, block_size, blocking, mode, dtype=torch.float64,
           x_layout=None):
    """Forward and backward of the public op on the triton backend (autograd through the
    custom op) against the reference functions in float64."""
    rb, cb = _bounds(x64.shape[2], x64.shape[3], block_size, blocking)
    ref_args = (list(stride), list(padding), list(dilation), groups, rb, cb, mode)
    ref = block_conv2d_reference(x64, w64, b64, *ref_args)
    grad_out64 = torch.randn_like(ref)
    ref_gx, ref_gw, ref_gb = block_conv2d_reference_backward(grad_out64, x64, w64, b64, *ref_args)

    x = x64.to(dtype)
    if x_layout is not None:
        x = x_layout(x)
    x = x.detach().requires_grad_()
    w = w64.to(dtype).detach().requires_grad_()
    b = None if b64 is None else b64.to(dtype).detach().requires_grad_()
    with fuseops.use_backend("triton"):
        out = fuseops.block_conv2d(x, w, b, stride, padding, dilation, groups, block_size=block_size,
                                   padding_mode=mode, blocking=blocking)
        out.backward(grad_out64.to(dtype))
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous(memory_format=output_layout(x))
    grads = (("grad_x", x.grad, ref_gx), ("grad_weight", w.grad, ref_gw))
    if b is not None:
        grads += (("grad_bias", b.grad, ref_gb),)
    for name, got, want in (("forward", out, ref), *grads):
        assert got is not None and got.shape == want.shape, name
        if dtype == torch.float64:
            torch.testing.assert_close(got.double(), want, msg=lambda m, name=name: f"{name}: {m}")
            continue
        # |got - want| <= tol * (max |want| + |want|), elementwise: see TOL.
        tol = TOL[dtype]
        scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
        torch.testing.assert_close(got.double(), want, atol=tol * scale, rtol=tol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _data(n, c_in, c_out, h, w, k, groups, bias=True, kw=None):
    kw = k if kw is None else kw
    x = torch.randn(n, c_in, h, w, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, kw, dtype=torch.float64)
    b = torch.randn(c_out, dtype=torch.float64) if bias else None
    return x, weight, b


MODES = ("constant", "replicate", "reflect")


# Ragged fixed blocks (rows 4,4,3; cols 5,5,4), asymmetric padding, 3x3, groups=1 (non-dot path).
@pytest.mark.parametrize("mode", MODES)
def test_fixed_ragged_asymmetric_padding(mode):
    x, w, b = _data(2, 3, 5, 11, 14, 3, 1)
    _check(x, w, b, (1, 1), (2, 1), (1, 1), 1, (4, 5), "fixed", mode)


# Hierarchical 2x2 on odd sizes, stride 2, 16 -> 16 channels: the tl.dot path.
@pytest.mark.parametrize("mode", MODES)
def test_hierarchical_stride2_dot_path(mode):
    x, w, b = _data(2, 16, 16, 9, 7, 3, 1)
    _check(x, w, b, (2, 2), (1, 1), (1, 1), 1, (2, 2), "hierarchical", mode)


# Dilation 2 with groups=2; 5x5 kernel with stride 3 and no bias.
@pytest.mark.parametrize("mode", MODES)
def test_dilation_groups(mode):
    x, w, b = _data(1, 4, 6, 10, 10, 3, 2)
    _check(x, w, b, (1, 1), (2, 2), (2, 2), 2, 5, "fixed", mode)


@pytest.mark.parametrize("mode", MODES)
def test_kernel5_stride3_no_bias(mode):
    x, w, _ = _data(1, 3, 4, 13, 12, 5, 1, bias=False)
    _check(x, w, None, (3, 3), (2, 2), (1, 1), 1, (3, 2), "hierarchical", mode)


# Depthwise (multiplier 1 and 2), reflect/replicate at the block's edge pixel.
@pytest.mark.parametrize(("mode", "multiplier"), [("reflect", 1), ("replicate", 2), ("constant", 1)])
def test_depthwise(mode, multiplier):
    x, w, b = _data(1, 3, 3 * multiplier, 8, 11, 3, 3)
    _check(x, w, b, (1, 2), (1, 1), (1, 1), 3, 4, "fixed", mode)


@pytest.mark.parametrize("stride", [1, 2])
def test_kernel1(stride):
    x, w, b = _data(2, 5, 3, 7, 6, 1, 1)
    _check(x, w, b, (stride, stride), (1, 0), (1, 1), 1, 3, "fixed", "replicate")


def test_single_block_equals_padded_conv():
    x, w, b = _data(1, 3, 4, 7, 8, 3, 1)
    with fuseops.use_backend("triton"):
        out = fuseops.block_conv2d(x, w, b, 1, 1, block_size=64, padding_mode="reflect")
    want = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", ["dot", "simple"])
def test_low_precision(dtype, path):
    c = 16 if path == "dot" else 4
    x, w, b = _data(2, c, c, 8, 8, 3, 1)
    _check(x, w, b, (1, 1), (1, 1), (1, 1), 1, 3, "fixed", "reflect", dtype=dtype)


LAYOUTS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    # A slice of a wider tensor: non-contiguous along C and W.
    "sliced": lambda t: _sliced(t),
}


def _sliced(t):
    big = torch.zeros(t.shape[0], 2 * t.shape[1], t.shape[2], 2 * t.shape[3], dtype=t.dtype)
    big[:, ::2, :, ::2] = t
    view = big[:, ::2, :, ::2]
    assert not view.is_contiguous()
    return view


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("path", ["dot", "simple"])
def test_input_layouts(layout, path):
    c = 16 if path == "dot" else 3
    x, w, b = _data(2, c, c, 6, 7, 3, 1)
    _check(x, w, b, (1, 1), (1, 1), (1, 1), 1, (3, 4), "fixed", "replicate", x_layout=LAYOUTS[layout])


def test_non_contiguous_weight_and_grad():
    # A weight sliced from a larger one and a grad_out with odd strides.
    x, _, b = _data(1, 3, 4, 6, 6, 3, 1)
    big = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    w = big[::2]
    assert not w.is_contiguous()
    rb, cb = _bounds(6, 6, 4, "fixed")
    args = ([1, 1], [1, 1], [1, 1], 1, rb, cb, "reflect")
    from fuseops.block_conv import triton_impl

    ref = block_conv2d_reference(x, w, b, *args)
    torch.testing.assert_close(triton_impl.forward(x, w, b, *args), ref)
    grad_out = torch.randn(ref.shape[0], ref.shape[1], ref.shape[3], ref.shape[2], dtype=torch.float64).transpose(2, 3)
    got = triton_impl.backward(grad_out, x, w, b, *args)
    want = block_conv2d_reference_backward(grad_out.contiguous(), x, w, b, *args)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def test_gradcheck():
    # fast_mode: a few random directions instead of one forward per element (the
    # interpreter is slow); the element-wise comparisons above cover the rest.
    x, w, b = _data(1, 2, 2, 5, 6, 3, 1)
    x, w, b = (t.requires_grad_() for t in (x, w, b))

    def fn(x, w, b):
        return fuseops.block_conv2d(x, w, b, 1, 1, block_size=3, padding_mode="reflect")

    with fuseops.use_backend("triton"):
        assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6, fast_mode=True)


def test_backward_is_deterministic():
    x, w, b = _data(2, 16, 16, 6, 6, 3, 1)
    rb, cb = _bounds(6, 6, 4, "fixed")
    args = ([1, 1], [1, 1], [1, 1], 1, rb, cb, "replicate")
    from fuseops.block_conv import triton_impl

    x32, w32, b32 = x.float(), w.float(), b.float()
    grad_out = torch.randn(2, 16, 6, 6)
    first = triton_impl.backward(grad_out, x32, w32, b32, *args)
    second = triton_impl.backward(grad_out, x32, w32, b32, *args)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@st.composite
def block_cases(draw):
    """Any block conv the API accepts and more: N from 0, groups from 1 to C (depthwise,
    with a channel multiplier too), non-square kernels, and separate H and W stride,
    padding, dilation and block size, both blockings, every padding mode.  Channels stay
    below the tl.dot path's 16 per group (the fixed cases above cover that path): each
    example then costs the interpreter about a second at most."""
    groups = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    blocking = draw(st.sampled_from(["fixed", "hierarchical"]))
    top = 8 if blocking == "fixed" else 3  # pixels per block, or blocks per map
    return dict(
        n=draw(st.integers(0, 2)), c_in=groups * draw(st.integers(1, 2)), c_out=groups * draw(st.integers(1, 2)),
        groups=groups, h=h, w=w, kernel=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        block_size=(draw(st.integers(1, top)), draw(st.integers(1, top))), blocking=blocking,
        mode=draw(st.sampled_from(MODES)), bias=draw(st.booleans()),
    )


def _valid(case) -> bool:
    """Whether block_conv2d accepts the case: hierarchical counts within the map, reflect
    padding below every block's size, and at least one output from every block."""
    if case["blocking"] == "hierarchical" and (case["block_size"][0] > case["h"] or case["block_size"][1] > case["w"]):
        return False
    for dim, spans in enumerate(block_grid(case["h"], case["w"], case["block_size"], case["blocking"])):
        smallest = min(stop - start for start, stop in spans)
        pad, dil, k = case["padding"][dim], case["dilation"][dim], case["kernel"][dim]
        if case["mode"] == "reflect" and pad >= smallest:
            return False
        if smallest + 2 * pad - dil * (k - 1) - 1 < 0:
            return False
    return True


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=block_cases(), seed=TORCH_SEEDS)
def test_hypothesis(case, seed):
    torch.manual_seed(seed)
    assume(_valid(case))
    x, weight, b = _data(case["n"], case["c_in"], case["c_out"], case["h"], case["w"], case["kernel"][0],
                         case["groups"], bias=case["bias"], kw=case["kernel"][1])
    _check(x, weight, b, case["stride"], case["padding"], case["dilation"], case["groups"], case["block_size"],
           case["blocking"], case["mode"])


def test_import_fuseops_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, fuseops; sys.exit(1 if 'triton' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_opcheck_and_compile():
    x, w, b = _data(1, 2, 3, 5, 6, 3, 1)
    rb, cb = _bounds(5, 6, 3, "fixed")
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [1, 1], [1, 1], [1, 1], 1, rb, cb,
            "replicate")
    with fuseops.use_backend("triton"):
        torch.library.opcheck(torch.ops.fuseops.block_conv2d.default, args)

        def fn(x, w, b):
            return fuseops.block_conv2d(x, w, b, 1, 1, block_size=3, padding_mode="replicate")

        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x, w, b), block_conv2d_reference(*args[:3], *args[3:]))
