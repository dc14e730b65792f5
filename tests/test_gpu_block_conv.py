"""block_conv2d on a GPU: every backend that runs on CUDA against the float64 reference,
forward and backward, with poisoned outputs, channels_last, ragged grids, every padding
mode, torch.compile and one case past 2^31 elements.  Fixed, small cases so that the
one-shot GPU check (bench/gpu_check.sh) stays compile-bound and within its budget."""

from __future__ import annotations

import pytest
import torch
from backend_helpers import poison_cuda_allocator

from fuseops import backends
from fuseops.block_conv import block_conv2d
from fuseops.block_conv.grid import block_grid, spans_to_bounds
from fuseops.block_conv.reference import block_conv2d_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# (rtol, atol) for outputs of order 1; the reduction runs over C_in * kh * kw in fp32.
TOLERANCES = {torch.float16: (5e-3, 5e-3), torch.bfloat16: (3e-2, 3e-2), torch.float32: (1e-4, 1e-4)}
# (padding_mode, blocking, block_size, stride, dilation, groups, (N, C_in, C_out, H, W))
CASES = [
    ("constant", "fixed", 8, 1, 1, 1, (2, 8, 16, 16, 16)),
    ("replicate", "fixed", 5, 1, 1, 1, (2, 6, 10, 13, 12)),  # ragged last blocks
    ("reflect", "fixed", 6, 2, 1, 2, (1, 8, 8, 18, 15)),
    ("reflect", "hierarchical", 3, 1, 2, 1, (2, 4, 12, 17, 11)),
    ("constant", "hierarchical", 2, 1, 1, 16, (2, 16, 16, 14, 14)),  # depthwise
]


def _gpu_backends() -> list[str]:
    names = [b for b in ("cuda", "triton")
             if backends.availability("block_conv2d", b, torch.device("cuda")).ok]
    if not names:
        pytest.skip("no block_conv2d backend runs on CUDA here")
    return names


def _reference(x, weight, bias, stride, padding, dilation, groups, block_size, mode, blocking):
    rows, cols = block_grid(x.shape[2], x.shape[3], block_size, blocking)
    return block_conv2d_reference(x, weight, bias, [stride] * 2, [padding] * 2, [dilation] * 2, groups,
                                  spans_to_bounds(rows), spans_to_bounds(cols), mode)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}{c[2]}-s{c[3]}-d{c[4]}-g{c[5]}" for c in CASES])
def test_forward_and_backward_against_float64(case, layout, dtype):
    mode, blocking, block_size, stride, dilation, groups, (n, c_in, c_out, h, w) = case
    x64 = torch.randn(n, c_in, h, w, device="cuda", dtype=torch.float64)
    w64 = torch.randn(c_out, c_in // groups, 3, 3, device="cuda", dtype=torch.float64) / 3
    b64 = torch.randn(c_out, device="cuda", dtype=torch.float64)
    grad64 = torch.randn_like(_reference(x64, w64, b64, stride, 1, dilation, groups, block_size, mode, blocking))
    leaves64 = [t.clone().requires_grad_() for t in (x64, w64, b64)]
    expected = _reference(*leaves64, stride, 1, dilation, groups, block_size, mode, blocking)
    expected.backward(grad64)
    rtol, atol = TOLERANCES[dtype]
    for backend in _gpu_backends():
        x = x64.to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        leaves = [x.clone().requires_grad_(), w64.to(dtype).requires_grad_(), b64.to(dtype).requires_grad_()]
        poison_cuda_allocator(4 * x.numel() * max(1, c_out // c_in + 1))
        with backends.use_backend(backend):
            out = block_conv2d(*leaves[:2], leaves[2], stride=stride, padding=1, dilation=dilation, groups=groups,
                               block_size=block_size, padding_mode=mode, blocking=blocking)
            out.backward(grad64.to(dtype))
        assert not out.isnan().any(), backend
        torch.testing.assert_close(out.double(), expected.detach(), rtol=rtol, atol=atol * 4)
        scale = 4 * (h * w * n) ** 0.5  # gradient sums grow with the reduction size
        for got, want in zip(leaves, leaves64):
            torch.testing.assert_close(got.grad.double(), want.grad, rtol=rtol * scale, atol=atol * scale)


def test_compiled_matches_eager_forward_and_backward():
    x = torch.randn(2, 8, 20, 20, device="cuda")
    weight = torch.randn(8, 8, 3, 3, device="cuda")

    def layer(inp, w):
        return block_conv2d(inp, w, padding=1, block_size=7, padding_mode="replicate").relu()

    compiled = torch.compile(layer, fullgraph=True)
    results = []
    for run in (layer, compiled):
        inp, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = run(inp, w)
        out.sum().backward()
        results.append((out, inp.grad, w.grad))
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_past_two_to_the_31_elements():
    # 64-bit indexing: an input of 2^31 + some elements (8.6 GB in fp32).
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with >= 40 GB")
    n, c, h, w = 1, 2, 32768, 32770
    x = torch.randn(n, c, h, w, device="cuda")
    weight = torch.randn(c, 1, 3, 3, device="cuda")
    for backend in _gpu_backends():
        with backends.use_backend(backend):
            out = block_conv2d(x, weight, padding=1, groups=c, block_size=4096, padding_mode="reflect")
        # The last block of the last row, checked against the reference on that corner alone.
        corner = x[:, :, -4096:, -(w - 8 * 4096):].double()
        want = _reference(corner, weight.double(), None, 1, 1, 1, c, 4096, "reflect", "fixed")
        torch.testing.assert_close(out[:, :, -4096:, -(w - 8 * 4096):].double(), want, rtol=1e-4, atol=1e-4)
        del out
