"""The CUDA block-pad gather/scatter against the per-block F.pad reference.

Needs a GPU (marker ``gpu``); skipped without one.  Run on a lent device with
``pytest -m gpu tests/test_gpu_block_pad.py``.

STATUS: written without a GPU and never run yet.
"""

from __future__ import annotations

import pytest
import torch
from backend_helpers import TORCH_SEEDS, in_ci, poison_cuda_allocator
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseops._extension import cuda_compiled, has_kernel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MODES = ("constant", "replicate", "reflect")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The backward sums at most (1 + pad)^2 canvas entries per pixel in fp32, then rounds once.
GRAD_TOLERANCES = {
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.float32: (1e-6, 1e-6),
    torch.float64: (1e-12, 1e-12),
}


@pytest.fixture(autouse=True)
def _require_kernel():
    ok, reason = has_kernel("block_pad_gather")
    if not (ok and cuda_compiled()):
        reason = reason or "fuseops._C was built without CUDA"
        if in_ci():
            pytest.fail(f"the CUDA block-pad kernels must be built on a GPU machine in CI: {reason}")
        pytest.skip(reason)


def fixed_spans(size: int, block: int):
    from fuseops.block_conv.grid import block_grid

    return block_grid(size, 1, (block, 1))[0]


@st.composite
def cases(draw):
    from fuseops.block_conv.grid import block_grid

    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(MODES))
    if draw(st.booleans()):
        row, col = block_grid(h, w, (draw(st.integers(1, h)), draw(st.integers(1, w))), "fixed")
    else:
        sizes = (draw(st.integers(1, min(h, 4))), draw(st.integers(1, min(w, 4))))
        row, col = block_grid(h, w, sizes, "hierarchical")
    cap_h = min(b - a for a, b in row) - 1 if mode == "reflect" else 3
    cap_w = min(b - a for a, b in col) - 1 if mode == "reflect" else 3
    padding = (draw(st.integers(0, cap_h)), draw(st.integers(0, cap_h)),
               draw(st.integers(0, cap_w)), draw(st.integers(0, cap_w)))
    return (h, w), row, col, padding, mode, draw(st.integers(1, 3)), draw(st.booleans())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, deadline=None)
@given(case=cases(), seed=TORCH_SEEDS)
def test_gather_is_exact(dtype, case, seed):
    torch.manual_seed(seed)
    from fuseops.block_pad_canvas import block_pad_canvas as block_pad
    from fuseops.block_pad_canvas import block_pad_canvas_reference as block_pad_reference

    (h, w), row, col, padding, mode, align, channels_last = case
    x = torch.randn(2, 3, h, w, device="cuda").to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    expected = block_pad_reference(x.contiguous(), row, col, padding, mode, align)
    poison_cuda_allocator(expected.numel() * expected.element_size())
    got = block_pad(x, row, col, padding, mode, align)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # a gather copies: exact
    if channels_last and h > 1 and w > 1:
        assert got.is_contiguous(memory_format=torch.channels_last), "layout not kept"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, deadline=None)
@given(case=cases(), seed=TORCH_SEEDS)
def test_scatter_matches_reference_backward(dtype, case, seed):
    torch.manual_seed(seed)
    from fuseops.block_pad_canvas import block_pad_canvas as block_pad
    from fuseops.block_pad_canvas import block_pad_canvas_reference as block_pad_reference

    (h, w), row, col, padding, mode, align, channels_last = case
    x64 = torch.randn(2, 3, h, w, device="cuda", dtype=torch.float64, requires_grad=True)
    out64 = block_pad_reference(x64, row, col, padding, mode, align)
    grad = torch.randn_like(out64).to(dtype)
    (expected,) = torch.autograd.grad(out64, x64, grad.double())
    x = x64.detach().to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        grad = grad.to(memory_format=torch.channels_last)
    x.requires_grad_()
    poison_cuda_allocator(x.numel() * x.element_size())
    block_pad(x, row, col, padding, mode, align).backward(grad)
    rtol, atol = GRAD_TOLERANCES[dtype]
    torch.testing.assert_close(x.grad.double(), expected, rtol=rtol, atol=atol)


def test_cuda_matches_cpu_kernel():
    from fuseops.block_conv.grid import spans_to_bounds as flat

    x = torch.randn(2, 5, 29, 31, dtype=torch.float64)
    args = (flat(fixed_spans(29, 14)), flat(fixed_spans(31, 14)), [1, 1, 1, 1], "reflect", 2)
    cpu = torch.ops.fuseops_ext.block_pad_gather(x, *args)
    gpu = torch.ops.fuseops_ext.block_pad_gather(x.cuda(), *args)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
    grad = torch.randn_like(cpu)
    cpu_g = torch.ops.fuseops_ext.block_pad_scatter(grad, *args, 29, 31)
    gpu_g = torch.ops.fuseops_ext.block_pad_scatter(grad.cuda(), *args, 29, 31)
    torch.testing.assert_close(gpu_g.cpu(), cpu_g, rtol=1e-12, atol=1e-12)


def test_backward_is_bitwise_deterministic():
    from fuseops.block_conv.grid import spans_to_bounds as flat

    grad = torch.randn(4, 16, 2 * 30 + 4 * 2, 2 * 30 + 4 * 2, device="cuda")
    args = (flat(fixed_spans(60, 30)), flat(fixed_spans(60, 30)), [2, 2, 2, 2], "reflect", 1, 60, 60)
    first = torch.ops.fuseops_ext.block_pad_scatter(grad, *args)
    for _ in range(3):
        assert torch.equal(torch.ops.fuseops_ext.block_pad_scatter(grad, *args), first)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    from fuseops.block_pad_canvas import block_pad_canvas as block_pad

    x = torch.randn(1, 2, 8, 7, device="cuda", dtype=torch.float64, requires_grad=True)
    row, col = fixed_spans(8, 3), fixed_spans(7, 4)
    assert torch.autograd.gradcheck(lambda t: block_pad(t, row, col, (1, 1, 1, 0), mode, 2), (x,))


def test_opcheck():
    from fuseops.block_conv.grid import spans_to_bounds as flat

    x = torch.randn(2, 3, 9, 10, device="cuda", requires_grad=True)
    args = (x, flat(fixed_spans(9, 4)), flat(fixed_spans(10, 4)), [1, 1, 1, 1], "replicate", 1)
    torch.library.opcheck(torch.ops.fuseops_ext.block_pad_gather, args)


def test_bad_inputs_raise():
    x = torch.randn(1, 1, 6, 6, device="cuda")
    gather = torch.ops.fuseops_ext.block_pad_gather
    with pytest.raises(RuntimeError, match="mode must be one of"):
        gather(x, [0, 6], [0, 6], [1, 1, 1, 1], "circular", 1)
    with pytest.raises(RuntimeError, match="reflect padding needs padding < block size"):
        gather(x, [0, 3, 6], [0, 6], [3, 0, 0, 0], "reflect", 1)
    with pytest.raises(RuntimeError, match="must lie inside"):
        gather(x, [0, 7], [0, 6], [0, 0, 0, 0], "constant", 1)
    with pytest.raises(RuntimeError, match="strictly increasing"):
        gather(x, [0, 3, 3, 6], [0, 6], [0, 0, 0, 0], "constant", 1)
    with pytest.raises(RuntimeError, match="canvas size"):
        torch.ops.fuseops_ext.block_pad_scatter(x, [0, 6], [0, 6], [1, 1, 1, 1], "constant", 1, 6, 6)
