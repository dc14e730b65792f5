"""fuse_conv2d: the reference, every CPU backend against it, the registration, the layers.

The reference backend is checked against ``plain_fuse_conv``, the op written out here with
plain ``torch.nn.functional`` calls (no fuseops code), and its autograd; every other backend
is checked against ``fuse_conv2d_reference`` and autograd through it.  Ground truth for
gradients is never the op's own backward.  Backends that CI must have fail instead of
skipping under CI=true (tests/backend_helpers.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backend_helpers import (
    TORCH_SEEDS,
    DispatchRecorder,
    available_backends,
    output_layout,
    require_backend,
    spy_launchers,
)
from fuse_geometry_oracle import plain_out_hw
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import fuseops
from fuseops import BackendUnavailableError, backends
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference
from fuseops.nn import FuSeConv2d, FuSeConvBNAct

OP = "fuse_conv2d"
CPU_BACKENDS = ("reference", "cpu")
ACTIVATIONS = (None, "relu", "relu6", "hardswish")

# Tolerances of the 16- and 32-bit checks, as max |got - want| <= atol + rtol * max |want|
# over a tensor, against float64 on the same (rounded) inputs; float64 uses
# torch.testing.assert_close's defaults.  Measured max |got - want| / (1 + max |want|) over
# 15 seeds of every low-precision test here plus 4 runs of the float32 hypothesis test, both
# backends (this machine has no AVX-512, so the C++ run path was not among them):
# float32 1.4e-6 (the reference's weight gradients; cpu 8.9e-7), bfloat16 7.6e-3 (the
# reference's gradients, its convs rounding in bfloat16; cpu 3.6e-3).  About 3.5x those:
TOLERANCES = {
    torch.float32: (5e-6, 5e-6),
    torch.bfloat16: (2.5e-2, 2.5e-2),
}


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str,
                 reduction_scale: float = 0.0) -> None:
    """``reduction_scale``: for a gradient that sums many terms (weights, bias), the size of
    those terms.  Rounding grows with the terms, not with the sum, which can cancel to far
    less (a 1-element weight gradient of 1705 terms of ~1 summing to 0.56 was off by 2.5e-5)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if dtype == torch.float64:
        torch.testing.assert_close(got.double(), want.double(), msg=lambda m: f"{what}: {m}")  # default tolerances
        return
    atol, rtol = TOLERANCES[dtype]
    if want.numel() == 0:
        return
    err = (got.double() - want.double()).abs().max().item()
    scale = max(want.double().abs().max().item(), reduction_scale)
    assert err <= atol + rtol * scale, f"{what}: max error {err:.3e} (scale {scale:.3e}, dtype {dtype})"


def make_inputs(n, c, h, w, k, variant, split=None, bias=False, dtype=torch.float64, requires_grad=True):
    c_row = c if variant == "full" else (split if split is not None else (c + 1) // 2)
    c_col = c if variant == "full" else c - c_row
    tensors = [
        torch.randn(n, c, h, w, dtype=dtype),
        torch.randn(c_row, 1, 1, k, dtype=dtype),
        torch.randn(c_col, 1, k, 1, dtype=dtype),
        torch.randn(c_row + c_col, dtype=dtype) if bias else None,
    ]
    if requires_grad:
        tensors = [t.requires_grad_() if t is not None else None for t in tensors]
    return tensors


PLAIN_ACTIVATIONS = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}


def plain_fuse_conv(x, weight_row, weight_col, bias=None, *, variant="half", stride=1, padding=None, dilation=1,
                    activation=None):
    """The FuSe conv as README's "Using the ops" defines it, from plain torch.nn.functional
    calls and no fuseops code: a 1xK depthwise conv along W on the row channels and a Kx1
    one along H on the column channels (half: the first C_r channels and the remaining C_c;
    full: every channel, in both), each zero-padded with F.pad along its own conv axis only
    ("same" = dilation*(K-1)//2 when padding is None), each part's slice of the bias passed
    to its conv, the row part's channels first, then the activation."""
    k = weight_row.shape[3]
    pad = dilation * (k - 1) // 2 if padding is None else padding
    c_row, c_col = weight_row.shape[0], weight_col.shape[0]
    x_row = x if variant == "full" else x[:, :c_row]
    x_col = x if variant == "full" else x[:, x.shape[1] - c_col:]
    b_row = None if bias is None else bias[:c_row]
    b_col = None if bias is None else bias[c_row:]
    parts = []
    if c_row:
        parts.append(F.conv2d(F.pad(x_row, (pad, pad, 0, 0)), weight_row, b_row, stride=(stride, stride),
                              dilation=(1, dilation), groups=c_row))
    if c_col:
        parts.append(F.conv2d(F.pad(x_col, (0, 0, pad, pad)), weight_col, b_col, stride=(stride, stride),
                              dilation=(dilation, 1), groups=c_col))
    return PLAIN_ACTIVATIONS[activation](torch.cat(parts, dim=1))


def oracle_with_grads(oracle, x, weight_row, weight_col, bias, grad_out, **kw):
    """Forward and autograd gradients of ``oracle`` (a function with fuse_conv2d's
    signature), computed in float64."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None
              for t in (x, weight_row, weight_col, bias)]
    out = oracle(*leaves, **kw)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out.double(),
                                allow_unused=True, materialize_grads=True)  # an empty part is unused
    return out.detach(), grads


def reference_call(x, weight_row, weight_col, bias, *, variant="half", stride=1, padding=None, dilation=1,
                   activation=None):
    k = weight_row.shape[-1]
    pad = dilation * (k - 1) // 2 if padding is None else padding
    act = "none" if activation is None else activation
    full = variant == "full"
    return fuse_conv2d_reference(x, weight_row, weight_col, bias, full, stride, pad, dilation, act)


def oracle_for(backend):
    """What a backend is checked against: the reference against the plain composition (so
    it is never compared with itself), every other backend against the reference."""
    return plain_fuse_conv if backend == "reference" else reference_call


def backend_with_grads(backend, x, weight_row, weight_col, bias, grad_out, **kw):
    with fuseops.use_backend(backend):
        out = fuse_conv2d(x, weight_row, weight_col, bias, **kw)
    leaves = [t for t in (x, weight_row, weight_col, bias) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grads


def check_backend(backend, x, weight_row, weight_col, bias, dtype, **kw):
    """The backend's forward and its gradients (the op's backward) against its oracle's
    forward and autograd (``oracle_for``)."""
    oracle = oracle_for(backend)
    with torch.no_grad():
        want_shape = plain_fuse_conv(x.detach(), weight_row.detach(), weight_col.detach(),
                                     None if bias is None else bias.detach(), **kw).shape
    grad_out = torch.randn(want_shape, dtype=x.dtype)
    got, got_grads = backend_with_grads(backend, x, weight_row, weight_col, bias, grad_out, **kw)
    want, want_grads = oracle_with_grads(oracle, x, weight_row, weight_col, bias, grad_out, **kw)
    layout = output_layout(x)
    assert got.dtype == x.dtype and got.is_contiguous(memory_format=layout)
    assert got_grads[0].is_contiguous(memory_format=layout)
    assert_close(got, want, dtype, f"{backend} forward")
    names = ("grad_x", "grad_weight_row", "grad_weight_col", "grad_bias")
    assert len(got_grads) == len(want_grads)
    # Weight and bias gradients sum N*H_out*W_out terms of about |x| * |grad_out| each; rounding
    # grows as the square root of their count (a random walk), whatever the sum cancels to.
    terms = grad_out.numel() / max(1, grad_out.shape[1])
    reduction = 0.0 if grad_out.numel() == 0 else \
        terms ** 0.5 * x.detach().abs().max().item() * grad_out.abs().max().item()
    for name, g, r in zip(names, got_grads, want_grads):
        assert g.dtype == x.dtype
        assert_close(g, r, dtype, f"{backend} {name}", reduction_scale=0.0 if name == "grad_x" else reduction)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    require_backend(OP, request.param)
    return request.param


# ----------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("variant", ["half", "full"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_equals_hand_built_block(variant, activation):
    """The paper's block from nn.Conv2d pieces: 1xK and Kx1 depthwise convs, cat, act."""
    c, k, stride = 7, 5, 2
    row = nn.Conv2d(c if variant == "full" else 4, c if variant == "full" else 4, (1, k), stride, (0, k // 2),
                    groups=c if variant == "full" else 4, bias=True).double()
    col = nn.Conv2d(c if variant == "full" else 3, c if variant == "full" else 3, (k, 1), stride, (k // 2, 0),
                    groups=c if variant == "full" else 3, bias=True).double()
    x = torch.randn(2, c, 11, 9, dtype=torch.float64)
    x_row, x_col = (x, x) if variant == "full" else (x[:, :4], x[:, 4:])
    want = activations_module(activation)(torch.cat([row(x_row), col(x_col)], dim=1))
    with fuseops.use_backend("reference"):
        got = fuse_conv2d(x, row.weight, col.weight, torch.cat([row.bias, col.bias]), variant=variant,
                          stride=stride, activation=activation)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def activations_module(name):
    return {None: nn.Identity(), "relu": nn.ReLU(), "relu6": nn.ReLU6(), "hardswish": nn.Hardswish()}[name]


# (K, stride, dilation, padding, H, W), each valid with both parts present.
REFERENCE_GEOMETRIES = [
    (3, 1, 1, None, 9, 7),
    (5, 2, 1, None, 11, 8),  # stride 2, odd H, even W
    (3, 1, 2, None, 7, 10),  # dilation 2
    (4, 2, 2, None, 9, 6),  # even K: "same" padding 3 lines up with dilation 2
    (7, 3, 1, None, 13, 5),  # stride 3, K > W
    (1, 2, 1, None, 5, 4),
    (3, 3, 1, 0, 9, 9),  # explicit padding below "same", absorbed by stride 3
    (5, 3, 1, 3, 7, 7),  # explicit padding above "same"
    (5, 1, 3, None, 2, 3),  # dilated kernel (span 13) far larger than the plane
    (3, 1, 1, 1, 1, 1),  # a 1x1 plane
]
# (variant, C, C_r): the default half split of an odd C, a row part only, a column part
# only, an uneven split, and full.
REFERENCE_SPLITS = [("half", 5, None), ("half", 3, 0), ("half", 3, 3), ("half", 7, 2), ("full", 3, None)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("variant,c,split", REFERENCE_SPLITS)
@pytest.mark.parametrize("k,stride,dilation,padding,h,w", REFERENCE_GEOMETRIES)
def test_reference_matches_plain_composition(k, stride, dilation, padding, h, w, variant, c, split, activation):
    """The reference backend (its forward and its hand-written backward) against the plain
    F.conv2d composition and autograd through it, in float64."""
    x, wr, wc, b = make_inputs(2, c, h, w, k, variant, split=split, bias=True)
    check_backend("reference", x, wr, wc, b, torch.float64, variant=variant, stride=stride, padding=padding,
                  dilation=dilation, activation=activation)


def test_reference_without_bias_matches_plain_composition():
    x, wr, wc, _ = make_inputs(3, 5, 8, 6, 3, "half", split=2)
    check_backend("reference", x, wr, wc, None, torch.float64, variant="half", stride=2, activation="hardswish")


# ----------------------------------------------------------------------------- backends vs their oracle (oracle_for)
@pytest.mark.parametrize("variant", ["half", "full"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 1, 2), (7, 3, 1), (1, 1, 1)])
def test_backend_matches_oracle_float64(backend, variant, activation, k, stride, dilation):
    x, wr, wc, b = make_inputs(2, 5, 13, 10, k, variant, bias=True)
    check_backend(backend, x, wr, wc, b, torch.float64, variant=variant, stride=stride,
                            dilation=dilation, activation=activation)


@pytest.mark.parametrize("shape", [(1, 3, 56, 56), (2, 4, 7, 7), (1, 2, 1, 17), (1, 2, 17, 1), (1, 2, 2, 3)])
@pytest.mark.parametrize("k", [3, 5, 9, 11])
def test_backend_matches_oracle_plane_shapes(backend, shape, k):
    """Wide, tiny and degenerate planes; K larger than the plane; K=11 (no unrolled kernel)."""
    n, c, h, w = shape
    x, wr, wc, b = make_inputs(n, c, h, w, k, "full", bias=True)
    check_backend(backend, x, wr, wc, b, torch.float64, variant="full", activation="hardswish")


def test_explicit_padding_one_part(backend):
    """With only one part present any padding is valid: the output need not be "same" size."""
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    wr = torch.randn(3, 1, 1, 4, dtype=torch.float64, requires_grad=True)
    wc = torch.randn(0, 1, 4, 1, dtype=torch.float64, requires_grad=True)
    check_backend(backend, x, wr, wc, None, torch.float64, variant="half", padding=3, stride=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["half", "full"])
def test_backend_low_precision(backend, dtype, variant):
    """float32 and bfloat16 against the float64 reference of the same (rounded) inputs.

    bfloat16 runs without an activation: relu6's and hardswish's derivatives jump at 0, 3
    and 6, and a pre-activation rounded to bfloat16 (step 1/32 near 6) lands on the other
    side of a kink for a few elements, which changes that gradient by a whole grad_out*w.
    That is bfloat16's precision, not a kernel error; float32 covers the fused activation.
    """
    x, wr, wc, b = make_inputs(2, 6, 14, 15, 3, variant, bias=True, dtype=dtype)
    activation = "relu6" if dtype == torch.float32 else None
    check_backend(backend, x, wr, wc, b, dtype, variant=variant, activation=activation)


@pytest.mark.parametrize("activation", ["relu6", "hardswish"])
def test_bfloat16_forward_with_activation(backend, activation):
    """The fused activations in bfloat16 (forward only: the function is continuous)."""
    x, wr, wc, b = make_inputs(2, 6, 14, 15, 5, "full", bias=True, dtype=torch.bfloat16, requires_grad=False)
    with fuseops.use_backend(backend):
        got = fuse_conv2d(x, wr, wc, b, variant="full", activation=activation)
    want = oracle_for(backend)(x.double(), wr.double(), wc.double(), b.double(), variant="full",
                               activation=activation)
    assert got.dtype == torch.bfloat16
    assert_close(got, want, torch.bfloat16, f"{backend} bfloat16 {activation}")


@pytest.mark.parametrize("layout", ["sliced", "channels_last", "transposed"])
@pytest.mark.parametrize("variant", ["half", "full"])
def test_non_contiguous_inputs(backend, layout, variant):
    base = torch.randn(2, 10, 12, 16, dtype=torch.float64)
    if layout == "sliced":
        x = base[:, 1:8:2, :, 3:14]  # channel step 2 and a cropped W
    elif layout == "channels_last":
        x = base[:, :5].contiguous(memory_format=torch.channels_last)
    else:
        x = base[:, :5].transpose(2, 3)
    assert not x.is_contiguous()
    x = x.requires_grad_()
    c = x.shape[1]
    wr_base = torch.randn(c, 1, 1, 6, dtype=torch.float64)[..., ::2]  # non-contiguous weights too
    wr = wr_base.requires_grad_() if variant == "full" else wr_base[: (c + 1) // 2].detach().requires_grad_()
    wc = torch.randn(c if variant == "full" else c // 2, 1, 3, 1, dtype=torch.float64, requires_grad=True)
    check_backend(backend, x, wr, wc, None, torch.float64, variant=variant, activation="relu")


# ----------------------------------------------------------------------------- hypothesis
@st.composite
def fuse_cases(draw):
    """Any geometry, valid or not: K of every parity, "same" or explicit padding (one int,
    the API's only form), stride, dilation, N from 0, planes down to 1x1, odd C and any
    half split (empty parts included)."""
    variant = draw(st.sampled_from(["half", "full"]))
    c = draw(st.integers(1, 7))
    k = draw(st.integers(1, 7))
    return dict(
        n=draw(st.integers(0, 3)), c=c, h=draw(st.integers(1, 12)), w=draw(st.integers(1, 12)), k=k,
        variant=variant, split=draw(st.integers(0, c)) if variant == "half" else None,
        stride=draw(st.integers(1, 3)), dilation=draw(st.integers(1, 3)),
        padding=draw(st.one_of(st.none(), st.integers(0, 5))),
        activation=draw(st.sampled_from(ACTIVATIONS)), bias=draw(st.booleans()),
    )


def case_inputs(case, dtype=torch.float64):
    x, wr, wc, b = make_inputs(case["n"], case["c"], case["h"], case["w"], case["k"], case["variant"],
                               split=case["split"], bias=case["bias"], dtype=dtype)
    kw = dict(variant=case["variant"], stride=case["stride"], padding=case["padding"],
              dilation=case["dilation"], activation=case["activation"])
    return (x, wr, wc, b), kw


@given(case=fuse_cases(), seed=TORCH_SEEDS)
def test_hypothesis_backends_match_reference(case, seed):
    """The reference against the plain composition, the other backends against the
    reference; a geometry whose parts do not line up (or leave no output) must raise."""
    torch.manual_seed(seed)
    names = available_backends(OP, CPU_BACKENDS)
    assert "reference" in names
    (x, wr, wc, b), kw = case_inputs(case)
    if plain_out_hw(case["h"], case["w"], case["k"], wr.shape[0], wc.shape[0], case["stride"], case["padding"],
                    case["dilation"]) is None:
        for name in names:
            with fuseops.use_backend(name), pytest.raises(ValueError, match="cannot be concatenated|too small"):
                fuse_conv2d(x, wr, wc, b, **kw)
        assume(False)
    for name in names:
        check_backend(name, x, wr, wc, b, torch.float64, **kw)


@pytest.mark.parametrize("h,w,padding", [(6, 8, None), (5, 7, 1)])
def test_cpu_stride2_lines_up_only_at_stride2(h, w, padding):
    """K=2, stride 2: "same" padding 0 lines the parts up on even H and W, padding 1 on odd
    ones (the stride absorbs one pixel of difference); at stride 1 they differ by one.  The
    C++ forward runs small stride-2 planes at stride 1 and subsamples, but only where the
    stride-1 geometry exists ("same" padding); it used to raise RuntimeError here."""
    require_backend(OP, "cpu")
    assert plain_out_hw(h, w, 2, 2, 3, 2, padding) is not None and plain_out_hw(h, w, 2, 2, 3, 1, padding) is None
    x, wr, wc, b = make_inputs(2, 5, h, w, 2, "half", split=2, bias=True)
    check_backend("cpu", x, wr, wc, b, torch.float64, variant="half", stride=2, padding=padding)


def test_parts_that_cannot_line_up_raise():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="cannot be concatenated"):
        fuse_conv2d(x, torch.randn(2, 1, 1, 2), torch.randn(2, 1, 2, 1))  # even K, "same" padding
    with pytest.raises(ValueError, match="cannot be concatenated"):
        fuse_conv2d(x, torch.randn(2, 1, 1, 3), torch.randn(2, 1, 3, 1), padding=2)


# ----------------------------------------------------------------------------- registration
def small_args(bias=True, requires_grad=False):
    x, wr, wc, b = make_inputs(2, 3, 6, 5, 3, "half", bias=bias, requires_grad=requires_grad)
    return (x, wr, wc, b, False, 1, 1, 1, "relu6")


def test_gradcheck(backend):
    x, wr, wc, b = make_inputs(1, 3, 5, 6, 3, "full", bias=True)
    with fuseops.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda *t: fuse_conv2d(*t, variant="full", stride=2, activation="hardswish"), (x, wr, wc, b)
        )


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(backend, requires_grad):
    with fuseops.use_backend(backend):
        torch.library.opcheck(torch.ops.fuseops.fuse_conv2d.default, small_args(requires_grad=requires_grad))
        torch.library.opcheck(torch.ops.fuseops.fuse_conv2d.default,
                              small_args(bias=False, requires_grad=requires_grad))


def test_torch_compile_fullgraph():
    """One compiled graph (no graph break) serves every backend: the op is opaque to dynamo."""
    names = available_backends(OP, CPU_BACKENDS)
    torch._dynamo.reset()

    def block(x, wr, wc, b):
        return fuse_conv2d(x, wr, wc, b, variant="half", activation="relu6").sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    for name in names:
        x, wr, wc, b = make_inputs(2, 5, 7, 9, 3, "half", bias=True)
        with fuseops.use_backend(name):
            got = compiled(x, wr, wc, b)
            got_grads = torch.autograd.grad(got, (x, wr, wc, b))
        want = oracle_for(name)(x, wr, wc, b, activation="relu6").sum()
        want_grads = torch.autograd.grad(want, (x, wr, wc, b))
        torch.testing.assert_close(got, want)
        for g, r in zip(got_grads, want_grads):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("plane", [(7, 7), (20, 13), (56, 56)])
@pytest.mark.parametrize("variant", ["half", "full"])
def test_cpu_small_planes_do_not_leak_between_planes(variant, plane):
    # Small planes read their neighbours' memory and discard it (a masked load or a
    # select); an inf in one plane must not reach any other plane's output or gradients.
    require_backend(OP, "cpu")
    x, wr, wc, b = make_inputs(2, 6, *plane, 3, variant, bias=True, dtype=torch.float32, requires_grad=False)
    x[0, 2] = float("inf")
    x[1, 3, 0, 0] = float("nan")
    full = variant == "full"
    out = torch.ops.fuseops_ext.fuse_conv2d_forward(x, wr, wc, b, full, 1, 1, 1, "none")
    want = fuse_conv2d_reference(x.double(), wr.double(), wc.double(), b.double(), full, 1, 1, 1, "none")
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(out), finite)
    assert_close(out[finite], want[finite].float(), torch.float32, "forward")
    clean = x.clone()
    clean[0, 2] = 1.0
    clean[1, 3, 0, 0] = 1.0
    grad_out = torch.randn_like(out)
    grads = torch.ops.fuseops_ext.fuse_conv2d_backward(grad_out, clean, wr, wc, b, full, 1, 1, 1, "relu6")
    assert all(torch.isfinite(g).all() for g in grads)


@st.composite
def run_path_cases(draw):
    """float32, stride 1, "same" padding: the cases the C++ backend hands to its AVX-512 run
    path (csrc/fuse_conv_cpu_runs.cpp) when built with it: planes of up to 4096 elements,
    forward and backward; with stride 2 on planes of up to 1024, the forward runs at stride 1
    on that path and is subsampled.  Padding stays "same" (the run path's condition); even K
    gives a "same" output only with even dilation, and the test assumes the rest away."""
    variant = draw(st.sampled_from(["half", "full"]))
    small = draw(st.booleans())
    c = draw(st.integers(1, 40 if small else 6))
    h = draw(st.integers(1, 16 if small else 64))
    w = draw(st.integers(1, (256 if small else 4096) // h))
    return dict(
        n=draw(st.integers(0, 4)), c=c, h=h, w=w, k=draw(st.integers(1, 9)), variant=variant,
        split=draw(st.integers(0, c)) if variant == "half" else None, dilation=draw(st.integers(1, 3)),
        activation=draw(st.sampled_from(ACTIVATIONS)), bias=draw(st.booleans()), stride=draw(st.sampled_from([1, 2])),
        padding=None,
    )


@settings(max_examples=60, deadline=None)
@given(case=run_path_cases(), seed=TORCH_SEEDS)
def test_cpu_float32_small_planes_match_reference(case, seed):
    """Runs of many small planes, whose 16-lane chunks straddle planes and channels."""
    torch.manual_seed(seed)
    require_backend(OP, "cpu")
    (x, wr, wc, b), kw = case_inputs(case, dtype=torch.float32)
    assume(plain_out_hw(case["h"], case["w"], case["k"], wr.shape[0], wc.shape[0], case["stride"], None,
                        case["dilation"]) is not None)
    check_backend("cpu", x, wr, wc, b, torch.float32, **kw)


@pytest.mark.parametrize("variant", ["half", "full"])
@pytest.mark.parametrize(("h", "w", "k"), [(7, 7, 3), (14, 14, 5), (13, 9, 3), (28, 28, 3), (1, 5, 5), (32, 32, 7)])
def test_cpu_stride2_small_planes_match_reference(variant, h, w, k):
    """Stride 2 on planes of up to 1024 elements: the C++ forward runs at stride 1 on the run
    path and keeps every other row and column (csrc/fuse_conv_cpu.cpp); odd sizes keep the
    last row and column."""
    require_backend(OP, "cpu")
    x, wr, wc, b = make_inputs(3, 11, h, w, k, variant, bias=True, dtype=torch.float32)
    check_backend("cpu", x, wr, wc, b, torch.float32, variant=variant, stride=2, activation="hardswish")


@pytest.mark.parametrize("variant", ["half", "full"])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_cpu_forward_over_several_sample_blocks_matches_reference(variant, k):
    """The run path's forward takes the batch in blocks of 8 samples per segment of chunks:
    19 samples make two full blocks and a partial one; 7 channels of 5x5 leave a partial
    last chunk in each part's run."""
    require_backend(OP, "cpu")
    x, wr, wc, b = make_inputs(19, 7, 5, 5, k, variant, bias=True, dtype=torch.float32)
    check_backend("cpu", x, wr, wc, b, torch.float32, variant=variant, activation="relu6")


@pytest.mark.parametrize(
    ("n", "c", "size", "k", "activation"),
    [(4, 8, 17, 5, "relu"), (3, 10, 7, 5, "hardswish")],  # 17x17: per-plane path (period 289); 7x7: run path
)
def test_cpu_backward_is_deterministic(n, c, size, k, activation):
    require_backend(OP, "cpu")
    x, wr, wc, b = make_inputs(n, c, size, size, k, "full", bias=True, dtype=torch.float32, requires_grad=False)
    grad_out = torch.randn(n, 2 * c, size, size)
    args = (x, wr, wc, b, True, 1, k // 2, 1, activation)
    first = torch.ops.fuseops_ext.fuse_conv2d_backward(grad_out, *args)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = torch.ops.fuseops_ext.fuse_conv2d_backward(grad_out, *args)
    finally:
        torch.set_num_threads(threads)
    for a, s in zip(first, single):
        assert torch.equal(a, s)  # bit-identical whatever the thread count


def test_cpu_kernel_checks_its_inputs():
    """The C++ entry points TORCH_CHECK what the Python API validated (direct callers)."""
    require_backend(OP, "cpu")
    ext = torch.ops.fuseops_ext
    x = torch.randn(1, 4, 6, 6)
    wr, wc = torch.randn(2, 1, 1, 3), torch.randn(2, 1, 3, 1)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.fuse_conv2d_forward(x.transpose(2, 3), wr, wc, None, False, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="activation"):
        ext.fuse_conv2d_forward(x, wr, wc, None, False, 1, 1, 1, "gelu")
    with pytest.raises(RuntimeError, match="stride"):
        ext.fuse_conv2d_forward(x, wr, wc, None, False, 0, 1, 1, "none")
    with pytest.raises(RuntimeError, match="half variant"):
        ext.fuse_conv2d_forward(x, wr[:1], wc, None, False, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="float32, float64 or bfloat16"):
        ext.fuse_conv2d_forward(x.half(), wr.half(), wc.half(), None, False, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="grad_out"):
        ext.fuse_conv2d_backward(torch.randn(1, 4, 5, 6), x, wr, wc, None, False, 1, 1, 1, "none")


# ----------------------------------------------------------------------------- bad input
GOOD = dict(x=(1, 4, 6, 6), weight_row=(2, 1, 1, 3), weight_col=(2, 1, 3, 1))


def call(**overrides):
    args = {name: torch.randn(shape) for name, shape in GOOD.items()}
    kwargs = {}
    for key, value in overrides.items():
        (args if key in args or key == "bias" else kwargs)[key] = value
    return fuse_conv2d(args["x"], args["weight_row"], args["weight_col"], args.get("bias"), **kwargs)


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (dict(x=torch.randn(4, 6, 6)), ValueError, "x must be 4-D"),
        (dict(x=torch.randn(1, 1, 4, 6, 6)), ValueError, "x must be 4-D"),
        (dict(x="tensor"), TypeError, "x must be a torch.Tensor"),
        (dict(weight_row=torch.randn(2, 1, 3)), ValueError, "weight_row must be 4-D"),
        (dict(weight_row=torch.randn(2, 1, 3, 1)), ValueError, "weight_row must have shape"),
        (dict(weight_col=torch.randn(2, 1, 5, 1)), ValueError, "weight_col must have shape"),
        (dict(weight_col=torch.randn(2, 1, 1, 3)), ValueError, "weight_col must have shape"),
        (dict(weight_col=torch.randn(3, 1, 3, 1)), ValueError, "half"),
        (dict(variant="full"), ValueError, "full"),
        (dict(weight_row=torch.randn(4, 1, 1, 3), weight_col=torch.randn(3, 1, 3, 1), variant="full"),
         ValueError, "full"),
        (dict(x=torch.randn(1, 4, 6, 6, dtype=torch.float64)), TypeError, "weight_row has dtype"),
        (dict(weight_col=torch.randn(2, 1, 3, 1, dtype=torch.float64)), TypeError, "weight_col has dtype"),
        (dict(x=torch.randint(0, 5, (1, 4, 6, 6))), TypeError, "x has dtype"),
        (dict(x=torch.randn(1, 4, 6, 6).half(), weight_row=torch.randn(2, 1, 1, 3).half(),
              weight_col=torch.randn(2, 1, 3, 1).half()), TypeError, "x has dtype"),
        (dict(weight_row=torch.randn(2, 1, 1, 3, device="meta")), ValueError, "weight_row is on meta"),
        (dict(bias=torch.randn(4, device="meta")), ValueError, "bias is on meta"),
        (dict(bias=torch.randn(3)), ValueError, "bias must have shape"),
        (dict(bias=torch.randn(4, 1)), ValueError, "bias must be 1-D"),
        (dict(bias=torch.randn(4, dtype=torch.float64)), TypeError, "bias has dtype"),
        (dict(stride=0), ValueError, "stride must be >= 1"),
        (dict(stride=-2), ValueError, "stride must be >= 1"),
        (dict(stride=1.5), TypeError, "stride must be an int"),
        (dict(dilation=0), ValueError, "dilation must be >= 1"),
        (dict(padding=-1), ValueError, "padding must be >= 0"),
        (dict(variant="quarter"), ValueError, "variant must be one of"),
        (dict(variant=None), TypeError, "variant must be a str"),
        (dict(activation="gelu"), ValueError, "activation must be one of"),
        (dict(activation=3), TypeError, "activation must be None or a str"),
    ],
)
def test_bad_input_names_the_argument(overrides, error, match):
    with pytest.raises(error, match=match):
        call(**overrides)


def test_validated_calls_still_reject_lookalike_arguments():
    """Checks are skipped for metadata seen before (fuse_conv.api._validated); values that
    compare equal to a valid one (True == 1, 1.0 == 1) or another dtype must still fail."""
    x, wr, wc, b = make_inputs(1, 4, 6, 6, 3, "half", bias=True, requires_grad=False)
    fuse_conv2d(x, wr, wc, b, stride=1, dilation=1)  # now cached as valid
    with pytest.raises(TypeError, match="stride must be an int"):
        fuse_conv2d(x, wr, wc, b, stride=True)
    with pytest.raises(TypeError, match="dilation must be an int"):
        fuse_conv2d(x, wr, wc, b, dilation=1.0)
    with pytest.raises(TypeError, match="weight_row has dtype"):
        fuse_conv2d(x, wr.float(), wc, b)
    with pytest.raises(ValueError, match="bias must have shape"):
        fuse_conv2d(x, wr, wc, b[:3])


def test_too_small_input_raises():
    with pytest.raises(ValueError, match="too small"):
        fuse_conv2d(torch.randn(1, 2, 2, 2), torch.randn(2, 1, 1, 5), torch.randn(0, 1, 5, 1), padding=0)


# ----------------------------------------------------------------------------- backend selection
def test_unknown_backend_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"), fuseops.use_backend("fastest"):
        pass
    monkeypatch.setenv(backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="FUSEOPS_BACKEND"):
        call()


def test_unavailable_backend_gives_the_reason():
    with fuseops.use_backend("cuda"), pytest.raises(BackendUnavailableError, match="CUDA tensors only"):
        call()


def test_unavailable_cpu_backend_gives_the_reason(monkeypatch):
    """Simulate a build without the extension: the error carries the loader's reason."""
    from fuseops import _extension

    monkeypatch.setattr(_extension, "has_kernel", lambda name: (False, "fuseops._C is not importable (test)"))
    # Without the extension no C++ kernel sits at the op's CPU key: every call goes to Python.
    with backends.python_chooses(), fuseops.use_backend("cpu"), pytest.raises(BackendUnavailableError,
                                                                              match=r"not importable \(test\)"):
        call()


def test_remembered_resolutions_follow_what_the_probes_read(monkeypatch):
    """backends.resolve remembers successful resolutions; a change of what the probes
    depend on (TRITON_INTERPRET, the extension) must still be seen."""
    require_backend(OP, "triton")
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with fuseops.use_backend("triton"):
        assert backends.resolve(OP, cpu) == "triton"
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
            backends.resolve(OP, cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if "cpu" in available_backends(OP, CPU_BACKENDS):
        with fuseops.use_backend("auto"):
            assert backends.resolve(OP, cpu) == "cpu"
            from fuseops import _extension

            monkeypatch.setattr(_extension, "has_kernel", lambda name: (False, "gone (test)"))
            assert backends.resolve(OP, cpu) == "reference"


@pytest.fixture
def spy_backends(monkeypatch):
    """Record which backend module each forward call reached.  Every call goes through the
    Python selection meanwhile: under "auto" the C++ kernels would otherwise run directly,
    past the launchers (backends.python_chooses)."""
    from fuseops.fuse_conv import op

    with backends.python_chooses():
        yield spy_launchers(monkeypatch, op.FUSE_CONV2D)


def test_use_backend_and_environment_variable(monkeypatch, spy_backends):
    names = available_backends(OP, CPU_BACKENDS)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert fuseops.current_backend() == "auto"
    for name in names:
        with fuseops.use_backend(name):
            assert fuseops.current_backend() == name
            call()
        assert spy_backends[-1] == name
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert fuseops.current_backend() == "reference"
    call()
    assert spy_backends[-1] == "reference"
    if "cpu" in names:
        with fuseops.use_backend("cpu"):  # the context manager wins over the environment
            call()
        assert spy_backends[-1] == "cpu"
        monkeypatch.setenv(backends.ENV_VAR, "auto")
        call()
        assert spy_backends[-1] == "cpu"  # auto prefers the C++ kernels on CPU tensors


def test_eager_path_and_registered_op_agree():
    """Plain eager calls skip the custom op (fuseops._eager); both give the same results."""
    x, wr, wc, b = make_inputs(2, 5, 6, 7, 3, "full", bias=True)
    grad_out = torch.randn(2, 10, 6, 7, dtype=torch.float64)
    eager = fuse_conv2d(x, wr, wc, b, variant="full", activation="hardswish")
    eager_grads = torch.autograd.grad(eager, (x, wr, wc, b), grad_out)
    op = torch.ops.fuseops.fuse_conv2d(x, wr, wc, b, True, 1, 1, 1, "hardswish")
    op_grads = torch.autograd.grad(op, (x, wr, wc, b), grad_out)
    assert torch.equal(eager, op)
    for e, o in zip(eager_grads, op_grads):
        assert torch.equal(e, o)


def test_dispatch_modes_see_the_registered_op():
    """Under a TorchDispatchMode (FlopCounterMode, fake tensors...) the custom op is called."""
    x, wr, wc, b = make_inputs(1, 4, 5, 5, 3, "half", bias=True, requires_grad=False)
    with DispatchRecorder() as recorder:
        fuse_conv2d(x, wr, wc, b)
    assert "fuseops.fuse_conv2d.default" in recorder.seen
    recorder.seen.clear()
    fuse_conv2d(x, wr, wc, b)
    assert recorder.seen == []


# ----------------------------------------------------------------------------- layers
def test_fuseconv2d_repr_and_state_dict_round_trip():
    layer = FuSeConv2d(7, 5, 2, variant="half", split=3, bias=True, activation="relu6").double()
    text = repr(layer)
    for part in ("7", "kernel_size=5", "stride=2", "'half'", "split=3/4", "'relu6'"):
        assert part in text
    assert layer.weight_row.shape == (3, 1, 1, 5) and layer.weight_col.shape == (4, 1, 5, 1)
    assert layer.bias.shape == (7,)
    copy = FuSeConv2d(7, 5, 2, variant="half", split=3, bias=True, activation="relu6").double()
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(2, 7, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(copy(x), layer(x), rtol=0, atol=0)
    assert set(layer.state_dict()) == {"weight_row", "weight_col", "bias"}
    full = FuSeConv2d(6, variant="full")
    assert full(torch.randn(1, 6, 8, 8)).shape == (1, 12, 8, 8) and "bias=False" in repr(full)


@pytest.mark.parametrize("variant", ["half", "full"])
def test_from_depthwise_uses_centre_row_and_column(variant):
    conv = nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5, bias=True).double()
    layer = FuSeConv2d.from_depthwise(conv, variant=variant)
    w = conv.weight.detach()
    c_row = 5 if variant == "full" else 3
    rows = w[:, :, 1:2, :] if variant == "full" else w[:c_row, :, 1:2, :]
    cols = w[:, :, :, 1:2] if variant == "full" else w[c_row:, :, :, 1:2]
    torch.testing.assert_close(layer.weight_row.detach(), rows, rtol=0, atol=0)
    torch.testing.assert_close(layer.weight_col.detach(), cols, rtol=0, atol=0)
    # And the layer computes the 1xK / Kx1 convs of those centre lines.
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    x_row, x_col = (x, x) if variant == "full" else (x[:, :c_row], x[:, c_row:])
    bias = conv.bias.detach()
    b_row, b_col = (bias, bias) if variant == "full" else (bias[:c_row], bias[c_row:])
    want = torch.cat([F.conv2d(x_row, rows, b_row, 2, (0, 1), groups=rows.shape[0]),
                      F.conv2d(x_col, cols, b_col, 2, (1, 0), groups=cols.shape[0])], dim=1)
    torch.testing.assert_close(layer(x), want)


def test_layer_errors():
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d"):
        FuSeConv2d.from_depthwise(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="depthwise"):
        FuSeConv2d.from_depthwise(nn.Conv2d(4, 8, 3, padding=1, groups=4))
    with pytest.raises(ValueError, match="square"):
        FuSeConv2d.from_depthwise(nn.Conv2d(4, 4, (3, 5), padding=(1, 2), groups=4))
    with pytest.raises(ValueError, match="same"):
        FuSeConv2d.from_depthwise(nn.Conv2d(4, 4, 3, padding=0, groups=4))
    with pytest.raises(ValueError, match="split applies"):
        FuSeConv2d(4, variant="full", split=2)
    with pytest.raises(ValueError, match="split must be <="):
        FuSeConv2d(4, split=5)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        FuSeConv2d(0)
    with pytest.raises(ValueError, match="variant must be one of"):
        FuSeConv2d(4, variant="quarter")
    with pytest.raises(ValueError, match="activation must be one of"):
        FuSeConv2d(4, activation="gelu")


@pytest.mark.parametrize("variant,split", [("half", None), ("full", None), ("half", 0)])
def test_fuseconvbnact_eval_folding_equals_train_math(variant, split):
    block = FuSeConvBNAct(6, 3, 1, variant=variant, split=split, activation="relu6").double()
    for bn in (block.bn_row, block.bn_col):
        if bn is None:
            continue
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c))
        bn.running_var.copy_(torch.rand(c) + 0.5)
        bn.weight.data.copy_(torch.randn(c))
        bn.bias.data.copy_(torch.randn(c))
    x = torch.randn(2, 6, 8, 7, dtype=torch.float64)
    # The unfused math with running statistics: conv, BN per part, activation.
    conv_out = block.conv(x)
    c_row = block.conv.c_row
    parts = []
    for bn, part in ((block.bn_row, conv_out[:, :c_row]), (block.bn_col, conv_out[:, c_row:])):
        if bn is not None:
            parts.append(F.batch_norm(part, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                                      0.0, bn.eps))
    want = F.relu6(torch.cat(parts, dim=1))
    block.eval()
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got, want)
    # Train mode uses batch statistics instead, and still runs.
    block.train()
    assert block(x).shape == want.shape


def _per_part_batch_norm(out, c_row, stats, bns, training):
    """The paper's block math, written out: BatchNorm of each part on its own statistics."""
    parts = []
    for (mean, var), bn, part in zip(stats, bns, (out[:, :c_row], out[:, c_row:])):
        if bn is not None:
            parts.append(F.batch_norm(part, mean, var, bn.weight, bn.bias, training, bn.momentum, bn.eps))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("variant,split", [("half", None), ("full", None), ("half", 0), ("half", 5)])
@pytest.mark.parametrize("frozen", [False, True])
def test_fuseconvbnact_training_normalises_each_part_on_its_own(variant, split, frozen):
    """Training mode runs both parts' BatchNorms as one F.batch_norm; outputs, gradients and
    the running statistics must be those of one BatchNorm per part (and with frozen
    BatchNorms, the running statistics are used and left alone)."""
    torch.manual_seed(3)
    block = FuSeConvBNAct(6, 3, 1, variant=variant, split=split, activation="relu6").double().train()
    bns = (block.bn_row, block.bn_col)
    for bn in bns:
        if bn is not None:
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c))
            bn.running_var.copy_(torch.rand(c) + 0.5)
            bn.weight.data.copy_(torch.randn(c))
            bn.bias.data.copy_(torch.randn(c))
            bn.train(not frozen)
    stats = [(bn.running_mean.clone(), bn.running_var.clone()) if bn is not None else (None, None) for bn in bns]
    params = [p for p in block.parameters()]
    for step in range(2):
        x = torch.randn(3, 6, 7, 9, dtype=torch.float64, requires_grad=True)
        got = block(x)
        want = F.relu6(_per_part_batch_norm(block.conv(x), block.conv.c_row, stats, bns, not frozen))
        torch.testing.assert_close(got, want)
        grad = torch.randn_like(got)
        for g, w in zip(torch.autograd.grad(got, [x, *params], grad), torch.autograd.grad(want, [x, *params], grad)):
            torch.testing.assert_close(g, w)
        for bn, (mean, var) in zip(bns, stats):
            if bn is not None:
                torch.testing.assert_close(bn.running_mean, mean)
                torch.testing.assert_close(bn.running_var, var)
                assert int(bn.num_batches_tracked) == (0 if frozen else step + 1)


def test_fuseconvbnact_runs_batchnorm_modules_it_cannot_stand_in_for():
    """A BatchNorm subclass (as SyncBatchNorm), a hook or momentum=None: the part modules run."""
    calls = []

    class CountingBatchNorm(nn.BatchNorm2d):
        def forward(self, x):
            calls.append(self.num_features)
            return super().forward(x)

    block = FuSeConvBNAct(6, 3, 1, variant="half").train()
    block.bn_row = CountingBatchNorm(3)
    block(torch.randn(2, 6, 5, 5))
    assert calls == [3]
    hooked = FuSeConvBNAct(6, 3, 1, variant="half").train()
    hooked.bn_col.register_forward_hook(lambda module, args, out: calls.append("hook"))
    hooked(torch.randn(2, 6, 5, 5))
    assert calls == [3, "hook"]
    cumulative = FuSeConvBNAct(6, 3, 1, variant="half").train()
    for bn in (cumulative.bn_row, cumulative.bn_col):
        bn.momentum = None
    x = torch.randn(2, 6, 5, 5)
    cumulative(x)
    out = cumulative.conv(x)
    torch.testing.assert_close(cumulative.bn_row.running_mean, out[:, :3].mean(dim=(0, 2, 3)))
