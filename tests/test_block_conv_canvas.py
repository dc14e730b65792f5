"""The ``cuda`` block_conv2d launchers (gather onto a block-padded canvas, one conv, crop),
run on CPU tensors through the C++ gather, against the float64 reference, forward and
backward, over drawn geometries: ragged fixed and hierarchical grids, every padding mode,
unequal strides, dilation, groups, bias or none.  On a GPU the same code runs with the CUDA
gather (tests/test_gpu_block_conv.py)."""

from __future__ import annotations

import pytest
import torch
from backend_helpers import TORCH_SEEDS
from hypothesis import assume, given
from hypothesis import strategies as st

from fuseops import backends
from fuseops._extension import has_kernel
from fuseops.block_conv.grid import block_grid, block_out_size, spans_to_bounds
from fuseops.block_conv.reference import block_conv2d_reference, block_conv2d_reference_backward

if not has_kernel("block_pad_gather")[0]:
    pytest.skip("fuseops._C without the block-pad gather", allow_module_level=True)

from fuseops.block_conv import cuda_impl  # noqa: E402


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3])))
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 2))]
    dilation = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    padding = [draw(st.integers(0, 2)), draw(st.integers(0, 2))]
    height, width = draw(st.integers(5, 19)), draw(st.integers(5, 19))
    blocking = draw(st.sampled_from(["fixed", "hierarchical"]))
    size = (draw(st.integers(3, 9)), draw(st.integers(3, 9))) if blocking == "fixed" else \
        (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["constant", "replicate", "reflect"]))
    rows, cols = block_grid(height, width, size, blocking)
    for spans, pad, k, d in ((rows, padding[0], kernel[0], dilation[0]), (cols, padding[1], kernel[1], dilation[1])):
        assume(all(stop - start + 2 * pad - d * (k - 1) >= 1 for start, stop in spans))
        assume(mode != "reflect" or all(pad < stop - start for start, stop in spans))
    return {"n": draw(st.integers(1, 2)), "c_in": c_in, "c_out": c_out, "kernel": kernel, "groups": groups,
            "bias": draw(st.booleans()), "shape": (height, width),
            "args": (stride, padding, dilation, groups, spans_to_bounds(rows), spans_to_bounds(cols), mode)}


def _tensors(g, dtype, generator):
    x = torch.randn(g["n"], g["c_in"], *g["shape"], dtype=dtype, generator=generator)
    weight = torch.randn(g["c_out"], g["c_in"] // g["groups"], *g["kernel"], dtype=dtype, generator=generator)
    bias = torch.randn(g["c_out"], dtype=dtype, generator=generator) if g["bias"] else None
    return x, weight, bias


@given(g=geometries(), seed=TORCH_SEEDS)
def test_forward_and_backward_match_the_reference_in_float64(g, seed):
    generator = torch.Generator().manual_seed(seed)
    x, weight, bias = _tensors(g, torch.float64, generator)
    expected = block_conv2d_reference(x, weight, bias, *g["args"])
    out = cuda_impl.forward(x, weight, bias, *g["args"])
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    for got, want in zip(cuda_impl.backward(grad, x, weight, bias, *g["args"]),
                         block_conv2d_reference_backward(grad, x, weight, bias, *g["args"])):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


@given(g=geometries(), seed=TORCH_SEEDS)
def test_float32_and_channels_last(g, seed):
    generator = torch.Generator().manual_seed(seed)
    x, weight, bias = _tensors(g, torch.float32, generator)
    expected = block_conv2d_reference(x.double(), weight.double(), None if bias is None else bias.double(),
                                      *g["args"])
    out = cuda_impl.forward(x.contiguous(memory_format=torch.channels_last), weight, bias, *g["args"])
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_crop_indices_skip_the_straddling_outputs():
    # Blocks of 5 and a ragged 3, padding 1, K=3, stride 2, aligned to 2: padded blocks of
    # 7 -> 8 and 5 -> 6 on the canvas; the canvas conv (length 22 -> 10 outputs) keeps
    # outputs 0-2 of the first block and 4-5 (canvas offset 8 / 2) of the second.
    index = cuda_impl._crop_index([0, 5, 8], 3, 2, 1, 1, 2, torch.device("cpu"))
    assert index.tolist() == [0, 1, 2, 4, 5]
    assert len(index) == block_out_size(5, 3, 2, 1, 1) + block_out_size(3, 3, 2, 1, 1)
    assert cuda_impl._crop_index([0, 5, 8], 3, 2, 1, 1, 2, torch.device("cpu")) is index  # cached


def test_cuda_backend_takes_cuda_tensors_only():
    availability = backends.availability("block_conv2d", "cuda", torch.device("cpu"))
    assert not availability.ok and "CUDA tensors only" in availability.reason
