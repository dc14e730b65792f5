"""The Triton backend of fuse_conv2d, run in Triton's interpreter on the CPU.

tests/conftest.py sets TRITON_INTERPRET=1.  The interpreter runs each program in
numpy, so shapes are small; they still span several interpreter tiles
(``fuseops.kernels.fuse_conv.INTERPRETER_TILE`` = 8x16) in H and W where it matters.

Every test runs with the launcher's buffers (outputs, gradients and workspaces)
filled with NaN beforehand, so an element a kernel forgets to write shows up as NaN.

Expected values come from the float64 reference (``fuse_conv2d_reference``) and its
autograd, never from the code under test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from backend_helpers import TORCH_SEEDS, in_ci, output_layout, poison_triton_outputs, require_backend
from fuse_geometry_oracle import plain_out_hw
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fuseops
from fuseops.fuse_conv import fuse_conv2d_reference, resolve_padding

pytestmark = pytest.mark.triton

# (rtol, atol) per dtype, for the output/grad_x and for the weight/bias gradients, against
# the float64 reference on the same rounded inputs; float64 uses torch.testing.assert_close's
# defaults.  Measured max |got - want| / (1 + |want|) over 12 seeds of
# test_matches_reference_low_precision: float32 3.6e-7 (output, grad_x) and 2.0e-6 (weight
# and bias gradients, sums over every pixel); bfloat16 6.6e-3 and 3.2e-3.  About 3x those:
TOLERANCES = {
    torch.float32: ((1e-6, 1e-6), (6e-6, 6e-6)),
    torch.bfloat16: ((2e-2, 2e-2), (1e-2, 1e-2)),
}


@pytest.fixture(autouse=True)
def _triton_with_poisoned_buffers(monkeypatch):
    require_backend("fuse_conv2d", "triton")  # skips here, fails under CI=true
    from fuseops.fuse_conv import triton_impl

    poison_triton_outputs(monkeypatch, triton_impl)


def make_inputs(shape, variant, kernel, c_row=None, dtype=torch.float64, bias=True):
    n, c, h, w = shape
    if c_row is None:
        c_row = c if variant == "full" else (c + 1) // 2
    c_col = c if variant == "full" else c - c_row
    x = torch.randn(shape, dtype=dtype)
    weight_row = torch.randn(c_row, 1, 1, kernel, dtype=dtype)
    weight_col = torch.randn(c_col, 1, kernel, 1, dtype=dtype)
    b = torch.randn(c_row + c_col, dtype=dtype) if bias else None
    return x, weight_row, weight_col, b


def reference_fwd_bwd(x, weight_row, weight_col, bias, grad_out, variant, stride, padding, dilation, act):
    """Float64 reference output and gradients, by autograd through the reference."""
    leaves = [t.detach().double().requires_grad_(True) if t is not None else None
              for t in (x, weight_row, weight_col, bias)]
    pad = resolve_padding(padding, weight_row.shape[-1], dilation)
    out = fuse_conv2d_reference(*leaves, variant == "full", stride, pad, dilation,
                                "none" if act is None else act)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad_out.double(), allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, present)]
    return out.detach(), grads


def triton_fwd_bwd(x, weight_row, weight_col, bias, grad_out, variant, stride, padding, dilation, act):
    leaves = [t.detach().requires_grad_(True) if t is not None else None
              for t in (x, weight_row, weight_col, bias)]
    # requires_grad_ on a detached view keeps the original (possibly strided) layout.
    with fuseops.use_backend("triton"):
        out = fuseops.fuse_conv2d(*leaves, variant=variant, stride=stride, padding=padding,
                                  dilation=dilation, activation=act)
        present = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(out, present, grad_out)
    return out.detach(), grads


def check(x, weight_row, weight_col, bias, *, variant, stride=1, padding=None, dilation=1, act=None):
    dtype = x.dtype
    (rtol, atol), (rtol_w, atol_w) = TOLERANCES.get(dtype, ((None, None), (None, None)))  # None: the defaults
    # A same-shaped reference call just to learn the output shape for grad_out.
    with torch.no_grad():
        pad = resolve_padding(padding, weight_row.shape[-1], dilation)
        shape = fuse_conv2d_reference(x.double(), weight_row.double(), weight_col.double(), None,
                                      variant == "full", stride, pad, dilation, "none").shape
    grad_out = torch.randn(shape, dtype=dtype)
    out, grads = triton_fwd_bwd(x, weight_row, weight_col, bias, grad_out, variant, stride, padding,
                                dilation, act)
    ref_out, ref_grads = reference_fwd_bwd(x, weight_row, weight_col, bias, grad_out, variant, stride,
                                           padding, dilation, act)
    layout = output_layout(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=layout)
    assert grads[0].is_contiguous(memory_format=layout)
    torch.testing.assert_close(out.double(), ref_out, rtol=rtol, atol=atol, msg="forward")
    names = ["grad_x", "grad_weight_row", "grad_weight_col", "grad_bias"]
    assert len(grads) == len(ref_grads)
    for name, got, want in zip(names, grads, ref_grads):
        assert got.dtype == dtype, name
        tol = (rtol, atol) if name == "grad_x" else (rtol_w, atol_w)
        torch.testing.assert_close(got.double(), want, rtol=tol[0], atol=tol[1], msg=name)


# ----------------------------------------------------------------------------- float64 grid
# A covering set rather than the full product (the interpreter is slow): every variant,
# K in 1..7, stride 1/2/3, dilation 2, every activation, with and without bias, odd
# C/H/W, H or W of 1, H > 8 and W > 16 (several tiles), and parts with no channels.
CASES = [
    # shape, variant, K, stride, dilation, activation, bias, c_row, padding
    ((2, 5, 11, 19), "half", 3, 1, 1, None, True, None, None),
    ((1, 4, 9, 13), "half", 5, 2, 1, "relu", False, None, None),
    ((1, 3, 10, 17), "full", 3, 3, 1, "relu6", True, None, None),
    ((1, 2, 9, 9), "full", 5, 1, 2, "hardswish", True, None, None),
    ((1, 3, 9, 11), "half", 7, 1, 1, "hardswish", True, None, None),
    ((2, 3, 5, 7), "half", 1, 2, 1, "relu", True, None, None),
    ((1, 3, 4, 5), "full", 1, 1, 1, None, False, None, None),
    ((1, 3, 7, 18), "half", 3, 2, 2, "relu6", False, None, None),
    ((1, 3, 1, 7), "half", 3, 1, 1, "relu", True, None, None),
    ((1, 3, 7, 1), "full", 3, 2, 1, None, True, None, None),
    # one part empty: any padding lines up, even K allowed
    ((1, 1, 6, 9), "half", 3, 1, 1, "hardswish", True, 1, 0),
    ((1, 3, 8, 5), "half", 2, 2, 1, "relu", True, 0, 1),
    # W = 32: the forward kernel gets an ALIGN > 1 hint (a no-op in the interpreter, but
    # the hinted code path runs)
    ((1, 2, 9, 32), "full", 3, 1, 1, "relu6", True, None, None),
]


@pytest.mark.parametrize(
    ("shape", "variant", "kernel", "stride", "dilation", "act", "bias", "c_row", "padding"), CASES
)
def test_matches_reference_float64(shape, variant, kernel, stride, dilation, act, bias, c_row, padding):
    x, wr, wc, b = make_inputs(shape, variant, kernel, c_row=c_row, bias=bias)
    check(x, wr, wc, b, variant=variant, stride=stride, padding=padding, dilation=dilation, act=act)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("variant", "kernel", "act"), [("half", 3, "relu6"), ("full", 5, "hardswish")])
def test_matches_reference_low_precision(dtype, variant, kernel, act):
    shape = (1, 3, 9, 17) if variant == "half" else (1, 2, 9, 17)
    x, wr, wc, b = make_inputs(shape, variant, kernel, dtype=dtype)
    check(x, wr, wc, b, variant=variant, stride=1, act=act)


# ----------------------------------------------------------------------------- layouts, sizes
def test_strided_inputs_are_read_in_place():
    # x: every other channel and a W window of a wider tensor; weights: sliced too.
    big = torch.randn(2, 8, 9, 22, dtype=torch.float64)
    x = big[:, ::2, :, 3:20]
    wr = torch.randn(2, 1, 1, 6, dtype=torch.float64)[..., ::2]
    wc = torch.randn(2, 1, 3, 2, dtype=torch.float64)[..., :1]
    assert not x.is_contiguous() and not wr.is_contiguous() and not wc.is_contiguous()
    b = torch.randn(4, 2, dtype=torch.float64)[:, 0]
    check(x, wr, wc, b, variant="half", stride=2, act="relu")


def test_channels_last_input():
    x, wr, wc, b = make_inputs((2, 3, 7, 9), "full", 3)
    x = x.to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    check(x, wr, wc, b, variant="full", stride=1, act="hardswish")


def test_empty_batch():
    x, wr, wc, b = make_inputs((0, 3, 5, 6), "half", 3)
    check(x, wr, wc, b, variant="half", act="relu")


def test_64bit_offset_path(monkeypatch):
    # Tensors of >= 2**31 elements do not fit the CI machine; force the INDEX64 code path
    # on a small case so at least its arithmetic is validated.
    from fuseops.fuse_conv import triton_impl

    monkeypatch.setattr(triton_impl, "_needs_index64", lambda *tensors: True)
    x, wr, wc, b = make_inputs((1, 3, 9, 17), "full", 3)
    check(x, wr, wc, b, variant="full", stride=2, act="relu")


def test_needs_index64_threshold():
    from fuseops.fuse_conv import triton_impl

    small = torch.empty(4, 4)
    assert not triton_impl._needs_index64(small)
    # 2**31 elements without allocating them: an expanded (stride 0) view.
    assert triton_impl._needs_index64(torch.empty(1).expand(2**31))
    assert not triton_impl._needs_index64(torch.empty(1).expand(2**31 - 1))


def test_alignment_hint_is_conservative():
    from fuseops.fuse_conv import triton_impl

    aligned = torch.empty(2, 4, 8, 32, dtype=torch.float16)
    assert triton_impl._alignment(aligned, extents=(32,)) == 16
    assert triton_impl._alignment(aligned, extents=(56,)) == 8
    assert triton_impl._alignment(aligned, extents=(32, 19)) == 1
    # A sliced view: its row stride is 32 but it starts 3 elements into the storage.
    assert triton_impl._alignment(aligned[..., 3:], extents=(16,)) == 1
    # channels_last: consecutive channels are 1 element apart, so planes are not aligned.
    assert triton_impl._alignment(aligned.to(memory_format=torch.channels_last), extents=(32,)) == 1


def test_gpu_autotune_space_is_pruned_to_fitting_tiles(monkeypatch):
    from fuseops.kernels import fuse_conv as kernels

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU space, only built here
    forward_space, grad_x_space = kernels.tile_configs(), kernels.tile_configs(max_per_thread=4)
    assert all(c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] <= 4 * 32 * c.num_warps for c in grad_x_space)
    for height, width in ((56, 56), (28, 28), (14, 14), (7, 7), (112, 112), (1, 300), (300, 1)):
        kept = kernels.prune_output_tiles(forward_space, {"OH": height, "OW": width})
        kept_x = kernels.prune_input_tiles(grad_x_space, {"H": height, "W": width, "OH": 1, "OW": 1})
        for configs in (kept, kept_x):
            assert configs
            assert all(c.kwargs["BLOCK_W"] <= max(16, 2 * width) for c in configs)


def test_weight_gradients_are_bitwise_reproducible():
    # Several tiles per plane and two images, so each weight gradient sums several partials.
    x, wr, wc, b = make_inputs((2, 3, 11, 18), "half", 3)
    grad_out = torch.randn(2, 3, 11, 18, dtype=torch.float32)
    x, wr, wc, b = (t.float() for t in (x, wr, wc, b))
    first = triton_fwd_bwd(x, wr, wc, b, grad_out, "half", 1, None, 1, None)[1]
    second = triton_fwd_bwd(x, wr, wc, b, grad_out, "half", 1, None, 1, None)[1]
    for a, c in zip(first, second):
        assert torch.equal(a, c)


# ----------------------------------------------------------------------------- autograd plumbing
def test_gradcheck_fast_mode():
    x, wr, wc, b = make_inputs((1, 2, 4, 5), "full", 3)
    inputs = [t.requires_grad_(True) for t in (x, wr, wc, b)]

    def fn(x, wr, wc, b):
        with fuseops.use_backend("triton"):
            return fuseops.fuse_conv2d(x, wr, wc, b, variant="full", activation="hardswish")

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_opcheck_and_compile_fullgraph():
    x, wr, wc, b = (t.requires_grad_(True) for t in make_inputs((1, 2, 4, 5), "full", 3))
    args = (x, wr, wc, b, True, 1, 1, 1, "relu")
    with fuseops.use_backend("triton"):
        torch.library.opcheck(torch.ops.fuseops.fuse_conv2d.default, args)
        compiled = torch.compile(
            lambda *t: fuseops.fuse_conv2d(*t, variant="full", activation="relu"), fullgraph=True
        )
        out = compiled(x, wr, wc, b)
    torch.testing.assert_close(out, fuse_conv2d_reference(*args))


def test_import_fuseops_does_not_import_triton():
    code = "import sys, fuseops; sys.exit(1 if 'triton' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr or "import fuseops imported triton"


# ----------------------------------------------------------------------------- hypothesis
# Small shapes keep each example cheap in the interpreter (its cost grows with the planes,
# N x output channels, and the tiles), so the test runs the profile's full example count:
# at most 4 planes, H up to 9 (a second 8-row interpreter tile); wider maps, several tiles
# per row, are the fixed cases' job above.
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 11),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    padding=st.one_of(st.none(), st.integers(0, 3)),
    variant=st.sampled_from(["half", "full"]),
    split=st.integers(0, 3),
    act=st.sampled_from([None, "relu", "relu6", "hardswish"]),
    bias=st.booleans(),
    seed=TORCH_SEEDS,
)
def test_hypothesis_matches_reference(n, c, h, w, kernel, stride, dilation, padding, variant, split, act, bias, seed):
    torch.manual_seed(seed)
    assume(variant == "full" or split <= c)
    c_row = c if variant == "full" else split
    c_col = c if variant == "full" else c - split
    assume(n * (c_row + c_col) <= 4)
    assume(plain_out_hw(h, w, kernel, c_row, c_col, stride, padding, dilation) is not None)
    x, wr, wc, b = make_inputs((n, c, h, w), variant, kernel, c_row=c_row, bias=bias)
    check(x, wr, wc, b, variant=variant, stride=stride, padding=padding, dilation=dilation, act=act)


# ----------------------------------------------------------------------------- GPU lowering
def test_kernels_compile_for_nvidia_gpus():
    """The interpreter checks semantics only; this compiles every kernel ahead of time for
    sm_90 with Triton's bundled ptxas (no GPU needed), so a kernel that would not lower on
    a GPU fails here.  It does not show the compiled kernels run correctly."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        message = f"triton's bundled ptxas is missing ({ptxas})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "triton_compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, script, "--quick", "--arch", "90"], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
