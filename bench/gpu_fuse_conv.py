"""GPU benchmarks of fuse_conv2d: CUDA and Triton kernels against the eager reference,
``torch.compile(reference)`` and the floor, a device copy of the same bytes.  Needs a
CUDA device; everything is skipped without one.

    pytest bench/gpu_fuse_conv.py --benchmark-enable --benchmark-json=bench/results/gpu_fuse_conv.json
    pytest bench/gpu_fuse_conv.py --benchmark-enable -k "fp16 and n64 and forward"

Each timed call ends with ``torch.cuda.synchronize()`` so wall-clock rounds measure the
GPU work (plus one launch latency, ~5-10 us, which matters only at N=1).  Every case
records ``bytes`` (the minimum traffic: read x, write out; backward adds grad_out in,
grad_x out) in ``extra_info``, so GB/s = bytes / mean time, compared with the copy row
of the same shape (the measured bandwidth).  Before timing, each kernel backend's output
is checked against the reference, so a wrong kernel is never timed.

STATUS: written without a GPU; never run.
"""

from __future__ import annotations

import pytest
import torch

from fuseops import backends
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# MobileNetV2's depthwise layers (C, H, W) from the foundation issue; FuSe-half, K = 3, stride 1.
SHAPES = [(144, 56, 56), (192, 28, 28), (384, 14, 14), (576, 14, 14), (960, 7, 7)]
BATCHES = [64, 1]
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
RUNNERS = ["copy", "reference", "compiled_reference", "cuda", "triton"]
TOL = {torch.float16: 2e-3, torch.float32: 1e-5}


def _case(n, shape, dtype):
    c, h, w = shape
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtype)
    wr = torch.randn(c // 2, 1, 1, 3, device="cuda", dtype=dtype) / 3**0.5
    wc = torch.randn(c - c // 2, 1, 3, 1, device="cuda", dtype=dtype) / 3**0.5
    bias = torch.randn(c, device="cuda", dtype=dtype)
    return x, wr, wc, bias


def _reference(x, wr, wc, bias):
    return fuse_conv2d_reference(x, wr, wc, bias, False, 1, 1, 1, "relu6")


def _kernel(backend):
    def run(x, wr, wc, bias):
        with backends.use_backend(backend):
            return fuse_conv2d(x, wr, wc, bias, activation="relu6")

    return run


def _runner(name):
    if name == "copy":
        return lambda x, wr, wc, bias: x.clone()
    if name == "reference":
        return _reference
    if name == "compiled_reference":
        return torch.compile(_reference)
    avail = backends.availability("fuse_conv2d", name, torch.device("cuda"))
    if not avail.ok:
        pytest.skip(f"{name}: {avail.reason}")
    return _kernel(name)


def _check(name, fn, args):
    if name == "copy":
        return
    expected = _reference(*(a.double() for a in args))
    tol = TOL[args[0].dtype]
    torch.testing.assert_close(fn(*args).double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d)
@pytest.mark.parametrize("n", BATCHES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward(benchmark, runner, dtype, n, shape):
    args = _case(n, shape, DTYPES[dtype])
    fn = _runner(runner)
    _check(runner, fn, args)

    def step():
        fn(*args)
        torch.cuda.synchronize()

    benchmark.extra_info["bytes"] = 2 * args[0].numel() * args[0].element_size()
    benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.pedantic(step, warmup_rounds=10, rounds=100, iterations=1)


@pytest.mark.parametrize("runner", [r for r in RUNNERS if r != "copy"] + ["copy"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d)
@pytest.mark.parametrize("n", BATCHES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward(benchmark, runner, dtype, n, shape):
    x, wr, wc, bias = _case(n, shape, DTYPES[dtype])
    fn = _runner(runner)
    _check(runner, fn, (x, wr, wc, bias))
    leaves = [t.detach().requires_grad_() for t in (x, wr, wc, bias)]
    grad = torch.randn_like(x)

    if runner == "copy":
        # Floor for forward+backward: the four tensors of the minimum traffic, copied.
        def step():
            x.clone()
            grad.clone()
            torch.cuda.synchronize()
    else:
        def step():
            out = fn(*leaves)
            out.backward(grad)
            torch.cuda.synchronize()

    benchmark.extra_info["bytes"] = 4 * x.numel() * x.element_size()
    benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.pedantic(step, warmup_rounds=5, rounds=50, iterations=1)
