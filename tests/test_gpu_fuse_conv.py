"""fuse_conv2d on CUDA tensors: the CUDA and Triton backends against the float64 reference.

Needs a GPU: every test here is skipped without one (marker ``gpu``).  Run on a lent
device with ``pytest -m gpu tests/test_gpu_fuse_conv.py``.  With CI=true and a GPU
present, a missing CUDA kernel fails instead of skipping.

STATUS: written without a GPU and never run yet.
"""

from __future__ import annotations

import pytest
import torch
from backend_helpers import TORCH_SEEDS, fuse_configs, in_ci, poison_cuda_allocator
from hypothesis import given, settings

from fuseops import backends
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference
from fuseops.fuse_conv.reference import fuse_conv2d_reference_backward

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU_BACKENDS = ("cuda", "triton")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# (rtol, atol) per dtype, for values of order 1.  fp32 accumulation everywhere, so the
# error is the final rounding to the output dtype plus accumulation over K + bias.
TOLERANCES = {
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
}
# Gradient reductions sum over N*H*W terms: looser in low precision, scaled by the sum's size.
GRAD_TOLERANCES = {
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (4e-2, 4e-2),
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-10),
}
KINKS = {"none": (), "relu": (0.0,), "relu6": (0.0, 6.0), "hardswish": (-3.0, 3.0)}


def _require(backend: str) -> None:
    avail = backends.availability("fuse_conv2d", backend, torch.device("cuda"))
    if not avail.ok:
        if in_ci() and backend == "cuda":
            pytest.fail(f"the cuda backend must be available on a GPU machine in CI: {avail.reason}")
        pytest.skip(f"{backend} unavailable: {avail.reason}")


def _make(n, c_row, c_col, h, w, k, full, dtype, with_bias, layout="contiguous"):
    c = c_row if full else c_row + c_col
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.float64)
    wr = torch.randn(c_row, 1, 1, k, device="cuda", dtype=torch.float64) / k**0.5
    wc = torch.randn(c_col, 1, k, 1, device="cuda", dtype=torch.float64) / k**0.5
    bias = torch.randn(c_row + c_col, device="cuda", dtype=torch.float64) if with_bias else None
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(n, c, h, 2 * w + 1, device="cuda", dtype=torch.float64)[..., 1::2]
    cast = lambda t: None if t is None else t.to(dtype)
    return (cast(x), cast(wr), cast(wc), cast(bias)), (x, wr, wc, bias)


def configs():
    return fuse_configs((None, "relu", "relu6", "hardswish"), max_channels=5)


def _forward(backend, args, cfg):
    x, wr, wc, bias = args
    with backends.use_backend(backend):
        return fuse_conv2d(x, wr, wc, bias, variant="full" if cfg["full"] else "half", stride=cfg["stride"],
                           padding=cfg["padding"], dilation=cfg["dilation"], activation=cfg["activation"])


def _reference(args64, cfg):
    from fuseops.activations import canonical

    x, wr, wc, bias = args64
    return fuse_conv2d_reference(x, wr, wc, bias, cfg["full"], cfg["stride"], cfg["padding"], cfg["dilation"],
                                 canonical(cfg["activation"]))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, deadline=None)
@given(cfg=configs(), seed=TORCH_SEEDS)
def test_forward_matches_float64_reference(backend, dtype, cfg, seed):
    torch.manual_seed(seed)
    _require(backend)
    args, _ = _make(cfg["n"], cfg["c_row"], cfg["c_col"], cfg["h"], cfg["w"], cfg["k"], cfg["full"], dtype,
                         cfg["bias"])
    expected = _reference(tuple(None if a is None else a.double() for a in args), cfg)
    poison_cuda_allocator(expected.numel() * 8)
    got = _forward(backend, args, cfg)
    assert got.dtype == dtype and got.is_contiguous() and got.shape == expected.shape
    assert not got.isnan().any(), "output elements left unwritten (poisoned with NaN)"
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol)


def _masked_grad(pre64, activation, dtype, shape):
    """Random grad_out, zero where pre sits within rounding distance of an activation kink
    (there the low-precision pre may fall on the other side of the kink)."""
    grad = torch.randn(shape, device="cuda", dtype=torch.float64)
    eps = {torch.float16: 2e-2, torch.bfloat16: 1e-1}.get(dtype, 1e-6)
    for kink in KINKS[activation]:
        grad[(pre64 - kink).abs() < eps * (1 + abs(kink))] = 0
    return grad


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=20, deadline=None)
@given(cfg=configs(), seed=TORCH_SEEDS)
def test_backward_matches_float64_reference(backend, dtype, cfg, seed):
    torch.manual_seed(seed)
    from fuseops.activations import canonical

    _require(backend)
    args, _ = _make(cfg["n"], cfg["c_row"], cfg["c_col"], cfg["h"], cfg["w"], cfg["k"], cfg["full"], dtype,
                    cfg["bias"])
    args64 = tuple(None if a is None else a.double() for a in args)
    act = canonical(cfg["activation"])
    pre64 = _reference(args64, {**cfg, "activation": None})
    grad64 = _masked_grad(pre64, act, dtype, pre64.shape)
    geometry = (cfg["full"], cfg["stride"], cfg["padding"], cfg["dilation"], act)
    expected = fuse_conv2d_reference_backward(grad64, *args64, *geometry)
    leaves = [a.detach().requires_grad_() if a is not None else None for a in args]
    poison_cuda_allocator(sum(e.numel() for e in expected) * 8)
    out = _forward(backend, leaves, cfg)
    out.backward(grad64.to(dtype))
    rtol, atol = GRAD_TOLERANCES[dtype]
    scale = max(1.0, (cfg["n"] * cfg["h"] * cfg["w"]) ** 0.5 / 4)  # reduction length grows the error
    names = ("x", "weight_row", "weight_col", "bias")
    for name, leaf, want in zip(names, leaves, expected):
        if leaf is None:
            continue
        assert leaf.grad is not None, f"no gradient for {name}"
        assert not leaf.grad.isnan().any(), f"grad {name} has unwritten (NaN-poisoned) elements"
        tol = atol * scale if name != "x" else atol
        torch.testing.assert_close(leaf.grad.double(), want, rtol=rtol, atol=tol, msg=f"gradient of {name}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_non_contiguous_inputs(backend, layout):
    _require(backend)
    cfg = dict(full=False, stride=2, padding=1, dilation=1, activation="relu6")
    args, _ = _make(2, 5, 6, 17, 23, 3, False, torch.float32, True, layout=layout)
    expected = _reference(tuple(None if a is None else a.double() for a in args), cfg)
    torch.testing.assert_close(_forward(backend, args, cfg).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("variant", ["half", "full"])
def test_gradcheck(backend, variant):
    _require(backend)
    full = variant == "full"
    args, _ = _make(2, 3, 3 if full else 2, 9, 8, 3, full, torch.float64, True)
    leaves = [a.requires_grad_() for a in args]

    def fn(x, wr, wc, b):
        with backends.use_backend(backend):
            return fuse_conv2d(x, wr, wc, b, variant=variant, stride=2, dilation=1, activation="hardswish")

    assert torch.autograd.gradcheck(fn, leaves, atol=1e-7)


def test_opcheck_cuda():
    _require("cuda")
    args, _ = _make(2, 3, 4, 10, 12, 3, False, torch.float32, True)
    x, wr, wc, b = (a.requires_grad_() for a in args)
    with backends.use_backend("cuda"):
        torch.library.opcheck(torch.ops.fuseops.fuse_conv2d, (x, wr, wc, b, False, 1, 1, 1, "relu"))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    _require(backend)
    args, _ = _make(2, 4, 4, 12, 12, 3, False, torch.float32, True)

    def fn(x, wr, wc, b):
        return fuse_conv2d(x, wr, wc, b, activation="relu")

    with backends.use_backend(backend):
        compiled = torch.compile(fn, fullgraph=True)
        torch.testing.assert_close(compiled(*args), fn(*args), rtol=0, atol=0)


def test_deterministic_weight_gradients_are_bitwise_repeatable():
    _require("cuda")
    args, _ = _make(8, 16, 16, 28, 28, 3, False, torch.float32, True)
    grad = torch.randn(8, 32, 28, 28, device="cuda")
    results = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(3):
            leaves = [a.detach().requires_grad_() for a in args]
            with backends.use_backend("cuda"):
                fuse_conv2d(*leaves, activation="relu6").backward(grad)
            results.append([leaf.grad.clone() for leaf in leaves])
    finally:
        torch.use_deterministic_algorithms(False)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_runs_on_the_current_stream():
    _require("cuda")
    args, _ = _make(2, 4, 4, 16, 16, 5, False, torch.float32, False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), backends.use_backend("cuda"):
        got = fuse_conv2d(*args)
    side.synchronize()
    args64 = [None if a is None else a.double() for a in args]
    expected = fuse_conv2d_reference(*args64, False, 1, 2, 1, "none")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_wide_halo_uses_the_direct_row_kernel():
    # (K-1)*dilation = 14000 elements of halo: too wide to stage in 48 KB of shared memory.
    _require("cuda")
    cfg = dict(full=False, stride=1, padding=7000, dilation=7000, activation=None)
    args, _ = _make(1, 2, 0, 3, 14003, 3, False, torch.float32, True)
    expected = _reference(tuple(None if a is None else a.double() for a in args), cfg)
    torch.testing.assert_close(_forward("cuda", args, cfg).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_64bit_indexing():
    # 2^31 + a bit fp16 elements (~4.3 GB in, the same out): offsets overflow int32.
    _require("cuda")
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with >= 24 GB")
    n, c, h, w = 1, 2, 32769, 32769
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16)
    wr = torch.randn(1, 1, 1, 3, device="cuda", dtype=torch.float16)
    wc = torch.randn(1, 1, 3, 1, device="cuda", dtype=torch.float16)
    with backends.use_backend("cuda"):
        out = fuse_conv2d(x, wr, wc)
    # Check the last rows, whose offsets are beyond 2^31.
    tail = slice(h - 4, h)
    x_tail = x[:, :, h - 6 :].double()
    ref = fuse_conv2d_reference(x_tail, wr.double(), wc.double(), None, False, 1, 1, 1, "none")
    torch.testing.assert_close(out[:, :, tail].double(), ref[:, :, -4:], rtol=2e-3, atol=2e-3)


def test_bad_inputs_raise():
    _require("cuda")
    x = torch.randn(1, 4, 8, 8, device="cuda")
    wr, wc = torch.randn(2, 1, 1, 3, device="cuda"), torch.randn(2, 1, 3, 1, device="cuda")
    op = torch.ops.fuseops_ext.fuse_conv2d_forward
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        op(x, wr.cpu(), wc, None, False, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="dtype"):
        op(x, wr.double(), wc, None, False, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="activation"):
        op(x, wr, wc, None, False, 1, 1, 1, "gelu")
    with pytest.raises(RuntimeError, match="half variant"):
        op(x, wr[:1], wc, None, False, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="bias"):
        op(x, wr, wc, torch.randn(3, device="cuda"), False, 1, 1, 1, "none")


def test_auto_measures_once_and_picks_a_kernel(monkeypatch, tmp_path):
    import json

    from fuseops import autotune

    _require("cuda")
    _require("triton")
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.delenv(autotune.ENABLE_ENV, raising=False)
    cache = tmp_path / "tune.json"
    monkeypatch.setattr(autotune, "_default", autotune.Autotuner(cache_file=str(cache)))
    args, _ = _make(4, 16, 16, 28, 28, 3, False, torch.float16, True)
    expected = fuse_conv2d_reference(*(a.double() for a in args), False, 1, 1, 1, "relu6")
    for _ in range(2):
        got = fuse_conv2d(*args, activation="relu6")
        torch.testing.assert_close(got.double(), expected, rtol=2e-3, atol=2e-3)
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and set(stored.values()) <= {"cuda", "triton"}
