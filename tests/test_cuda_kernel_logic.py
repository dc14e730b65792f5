"""The CUDA kernels' indexing logic, replayed on the CPU against the float64 reference.

There is no GPU in CI, so this compiles csrc/cuda/fuse_conv_kernels.h (the per-thread
code of every fuse_conv2d CUDA kernel) together with tests/native/fuse_conv_emulator.cpp
(the launch plans, replayed block by block, thread by thread) with the host C++
compiler, and checks forward and backward against ``fuse_conv2d_reference``.

It covers tiling, halos, zero padding, the 16-byte staging chunks, the sliding window,
stride, dilation, int32/int64 offsets and the chunked weight reduction.  It does NOT
cover races, device alignment faults, the warp-shuffle reduction or speed: those need
tests/test_gpu_fuse_conv.py and bench/gpu_sanitize.sh (both in bench/gpu_check.sh) on a GPU.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from backend_helpers import TORCH_SEEDS, fuse_configs, in_ci
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseops.fuse_conv.reference import fuse_conv2d_reference, fuse_conv2d_reference_backward

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "native" / "fuse_conv_emulator.cpp"
ACTS = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        if in_ci():
            pytest.fail("CI needs a C++ compiler for the CUDA kernel emulation test")
        pytest.skip("no C++ compiler")
    lib = tmp_path_factory.mktemp("emulator") / "libfuse_conv_emulator.so"
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
           "-I", str(ROOT / "csrc" / "cuda"), str(SOURCE), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    handle = ctypes.CDLL(str(lib))
    for name in ("fc_forward_f64", "fc_forward_f32", "fc_backward_f64", "fc_backward_f32"):
        fn = getattr(handle, name)
        fn.restype = ctypes.c_int
    return handle


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _ints(*values):
    return [ctypes.c_int64(int(v)) for v in values]


def configs():
    return fuse_configs(tuple(ACTS), max_channels=4)


def _inputs(cfg, dtype):
    c = cfg["c_row"] if cfg["full"] else cfg["c_row"] + cfg["c_col"]
    x = torch.randn(cfg["n"], c, cfg["h"], cfg["w"], dtype=dtype)
    wr = torch.randn(cfg["c_row"], 1, 1, cfg["k"], dtype=dtype)
    wc = torch.randn(cfg["c_col"], 1, cfg["k"], 1, dtype=dtype)
    bias = torch.randn(cfg["c_row"] + cfg["c_col"], dtype=dtype) if cfg["bias"] else None
    return x, wr, wc, bias


def _options(cfg):
    return cfg["full"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["activation"]


def _shape_ints(cfg, x):
    return _ints(x.shape[0], x.shape[1], x.shape[2], x.shape[3], cfg["k"], cfg["c_row"], cfg["c_col"],
                 cfg["full"], cfg["stride"], cfg["padding"], cfg["dilation"], ACTS[cfg["activation"]])


def emulate_forward(lib, cfg, x, wr, wc, bias, *, vec1=False, direct=False, index64=False):
    expected_shape = fuse_conv2d_reference(x, wr, wc, bias, *_options(cfg)).shape
    out = torch.full(expected_shape, float("nan"), dtype=x.dtype)  # poisoned
    fn = lib.fc_forward_f64 if x.dtype == torch.float64 else lib.fc_forward_f32
    flags = _ints(vec1, direct, index64)
    fn(_ptr(x), _ptr(wr), _ptr(wc), _ptr(bias), _ptr(out), *_shape_ints(cfg, x), *flags)
    return out


def emulate_backward(lib, cfg, grad, x, wr, wc, bias, *, deterministic, sms, index64=False):
    grads = [torch.full_like(t, float("nan")) for t in (x, wr, wc)]
    grads.append(torch.full((wr.shape[0] + wc.shape[0],), float("nan"), dtype=x.dtype))
    fn = lib.fc_backward_f64 if x.dtype == torch.float64 else lib.fc_backward_f32
    fn(_ptr(grad), _ptr(x), _ptr(wr), _ptr(wc), _ptr(bias), *[_ptr(g) for g in grads], *_shape_ints(cfg, x),
       *_ints(deterministic, sms, index64))
    return grads


@settings(max_examples=60, deadline=None)
@given(cfg=configs(), vec1=st.booleans(), direct=st.booleans(), index64=st.booleans(), seed=TORCH_SEEDS)
def test_forward_float64(emulator, cfg, vec1, direct, index64, seed):
    torch.manual_seed(seed)
    x, wr, wc, bias = _inputs(cfg, torch.float64)
    expected = fuse_conv2d_reference(x, wr, wc, bias, *_options(cfg))
    got = emulate_forward(emulator, cfg, x, wr, wc, bias, vec1=vec1, direct=direct, index64=index64)
    assert not got.isnan().any(), "output elements left unwritten"
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(cfg=configs(), seed=TORCH_SEEDS)
def test_forward_float32_vector_staging(emulator, cfg, seed):
    torch.manual_seed(seed)
    # float32 stages 4-element (16-byte) chunks; W % 4 == 0 takes the vector path.
    x, wr, wc, bias = _inputs(cfg, torch.float32)
    expected = fuse_conv2d_reference(*(None if t is None else t.double() for t in (x, wr, wc, bias)),
                                     *_options(cfg))
    got = emulate_forward(emulator, cfg, x, wr, wc, bias)
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(cfg=configs(), deterministic=st.booleans(), sms=st.sampled_from((1, 4, 132)), index64=st.booleans(),
       seed=TORCH_SEEDS)
def test_backward_float64(emulator, cfg, deterministic, sms, index64, seed):
    torch.manual_seed(seed)
    x, wr, wc, bias = _inputs(cfg, torch.float64)
    out_shape = fuse_conv2d_reference(x, wr, wc, bias, *_options(cfg)).shape
    grad = torch.randn(out_shape, dtype=torch.float64)
    expected = fuse_conv2d_reference_backward(grad, x, wr, wc, bias, *_options(cfg))
    got = emulate_backward(emulator, cfg, grad, x, wr, wc, bias, deterministic=deterministic, sms=sms,
                           index64=index64)
    for name, g, e in zip(("x", "weight_row", "weight_col", "bias"), got, expected):
        assert not g.isnan().any(), f"grad {name} has unwritten elements"
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("dilation", [7000, 2000])
def test_wide_halos(emulator, dilation):
    # (K-1) * dilation = 14000 float32 elements of halo do not fit in 48 KB of shared
    # memory: the direct row kernel.  4000 do, after the tile and the rows per block shrink.
    w = 2 * dilation + 3
    cfg = dict(n=1, c_row=2, c_col=0, h=3, w=w, k=3, full=False, stride=1, dilation=dilation, padding=dilation,
               bias=True, activation="none")
    x, wr, wc, bias = _inputs(cfg, torch.float32)
    expected = fuse_conv2d_reference(x.double(), wr.double(), wc.double(), bias.double(), *_options(cfg))
    got = emulate_forward(emulator, cfg, x, wr, wc, bias)
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_mobilenet_shape_with_many_rows_per_block(emulator):
    # W = 7: a row block packs 146 rows; H, W = 112: a full tile per row.
    for h in (7, 112):
        cfg = dict(n=2, c_row=8, c_col=8, h=h, w=h, k=3, full=False, stride=1, dilation=1, padding=1,
                   bias=True, activation="relu6")
        x, wr, wc, bias = _inputs(cfg, torch.float32)
        expected = fuse_conv2d_reference(*(t.double() for t in (x, wr, wc, bias)), *_options(cfg))
        torch.testing.assert_close(emulate_forward(emulator, cfg, x, wr, wc, bias).double(), expected,
                                   rtol=1e-5, atol=1e-5)


INT32_MAX = 2**31 - 1


@pytest.mark.parametrize("block, thread, total, has_work, index", [
    # The last full block below 2^31 threads: exact indices, work only below total.
    (2**23 - 1, 254, INT32_MAX, True, INT32_MAX - 1),
    (2**23 - 1, 255, INT32_MAX, False, None),  # flat == INT32_MAX == total
    # Past 2^31 threads, with a total that fits int32: 32-bit arithmetic would wrap to a
    # negative index (and pass an `i >= total` check); the 64-bit index has no work.
    (2**23, 0, INT32_MAX, False, None),
    (2**23 + 5, 17, INT32_MAX, False, None),
    (0, 3, 10, True, 3),
])
def test_thread_index_near_two_to_the_31(emulator, block, thread, total, has_work, index):
    flat, narrowed = ctypes.c_int64(), ctypes.c_int32()
    fn = emulator.fc_thread_index_i32
    fn.restype = ctypes.c_int
    got = fn(ctypes.c_int64(block), ctypes.c_int64(256), ctypes.c_int64(thread), ctypes.c_int64(total),
             ctypes.byref(flat), ctypes.byref(narrowed))
    assert flat.value == block * 256 + thread  # no wrap: computed in 64 bits
    assert bool(got) == has_work
    if has_work:
        assert narrowed.value == index


@pytest.mark.parametrize("dtype, width", [(torch.float64, 14), (torch.float32, 20), (torch.float32, 4)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_column_groups_match_single_columns(emulator, dtype, width, dilation):
    # Stride 1 and W a multiple of the 16-byte chunk: the column kernel takes COLS columns per
    # thread.  It must give exactly what one column per thread gives (vec1 forces that), and
    # the reference's values, with every output written (poisoned with NaN first).
    cfg = dict(n=2, c_row=3, c_col=5, h=19, w=width, k=3, full=False, stride=1, dilation=dilation,
               padding=dilation, bias=True, activation="hardswish")
    x, wr, wc, bias = _inputs(cfg, dtype)
    wide = emulate_forward(emulator, cfg, x, wr, wc, bias)
    single = emulate_forward(emulator, cfg, x, wr, wc, bias, vec1=True)
    assert not wide.isnan().any()
    assert torch.equal(wide, single)
    expected = fuse_conv2d_reference(x.double(), wr.double(), wc.double(), bias.double(), *_options(cfg))
    torch.testing.assert_close(wide.double(), expected, rtol=1e-5, atol=1e-5)
