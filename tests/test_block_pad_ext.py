"""The block-pad gather/scatter ops (C++ CPU kernels) against the per-block F.pad reference.

The CUDA kernels share the index maps tested here (csrc/block_pad_maps.h); their own
tests are in tests/test_gpu_block_pad.py and need a GPU.
"""

from __future__ import annotations

import pytest
import torch
from backend_helpers import TORCH_SEEDS, in_ci
from hypothesis import given
from hypothesis import strategies as st

from fuseops._extension import has_kernel

_ok, _reason = has_kernel("block_pad_gather")
if not _ok:
    if in_ci():
        raise RuntimeError(f"block_pad_gather must be built in CI: {_reason}")
    pytest.skip(f"C++ extension without block_pad_gather: {_reason}", allow_module_level=True)

from fuseops.block_conv.grid import block_grid  # noqa: E402
from fuseops.block_conv.grid import spans_to_bounds as flat  # noqa: E402
from fuseops.block_pad_canvas import block_pad_canvas as block_pad  # noqa: E402
from fuseops.block_pad_canvas import block_pad_canvas_reference as block_pad_reference  # noqa: E402


def fixed_spans(size, block):
    return block_grid(size, 1, (block, 1))[0]  # noqa: E402


@st.composite
def cases(draw):
    h = draw(st.integers(1, 13))
    w = draw(st.integers(1, 13))
    mode = draw(st.sampled_from(("constant", "replicate", "reflect")))
    if draw(st.booleans()):
        row, col = block_grid(h, w, (draw(st.integers(1, h)), draw(st.integers(1, w))), "fixed")
    else:
        row, col = block_grid(h, w, (draw(st.integers(1, h)), draw(st.integers(1, w))), "hierarchical")
    smallest_h, smallest_w = min(b - a for a, b in row), min(b - a for a, b in col)
    cap_h = smallest_h - 1 if mode == "reflect" else 3
    cap_w = smallest_w - 1 if mode == "reflect" else 3
    padding = (draw(st.integers(0, cap_h)), draw(st.integers(0, cap_h)),
               draw(st.integers(0, cap_w)), draw(st.integers(0, cap_w)))
    align = draw(st.integers(1, 3))
    return (h, w), row, col, padding, mode, align


@given(case=cases(), n=st.integers(1, 2), c=st.integers(1, 3), seed=TORCH_SEEDS)
def test_gather_matches_reference(case, n, c, seed):
    torch.manual_seed(seed)
    (h, w), row, col, padding, mode, align = case
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    expected = block_pad_reference(x, row, col, padding, mode, align)
    got = block_pad(x, row, col, padding, mode, align)
    # A gather copies values: it must be exact.
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@given(case=cases(), seed=TORCH_SEEDS)
def test_scatter_is_the_adjoint_of_gather(case, seed):
    torch.manual_seed(seed)
    (h, w), row, col, padding, mode, align = case
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    expected_out = block_pad_reference(x, row, col, padding, mode, align)
    grad = torch.randn_like(expected_out)
    (expected,) = torch.autograd.grad(expected_out, x, grad)
    scatter = torch.ops.fuseops_ext.block_pad_scatter
    got = scatter(grad, flat(row), flat(col), list(padding), mode, align, h, w)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["constant", "replicate", "reflect"])
def test_gradcheck(mode):
    # Ragged last blocks (8 = 3+3+2, 5 = 3+2); reflect needs padding < every block size.
    x = torch.randn(1, 2, 8, 5, dtype=torch.float64, requires_grad=True)
    row, col = fixed_spans(8, 3), fixed_spans(5, 3)
    assert torch.autograd.gradcheck(lambda t: block_pad(t, row, col, (1, 1, 1, 0), mode, 2), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_exact(dtype):
    x = torch.randn(2, 3, 11, 9).to(dtype)
    row, col = fixed_spans(11, 4), fixed_spans(9, 4)
    got = block_pad(x, row, col, (1, 2, 2, 1), "replicate")
    assert got.dtype == dtype
    expected = block_pad_reference(x, row, col, (1, 2, 2, 1), "replicate")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["sliced", "channels_last"])
def test_non_contiguous_inputs(layout):
    base = torch.randn(2, 6, 10, 12, dtype=torch.float64)
    x = base[:, ::2, :, 1:] if layout == "sliced" else base.to(memory_format=torch.channels_last)
    row, col = fixed_spans(x.shape[2], 4), fixed_spans(x.shape[3], 4)
    expected = block_pad_reference(x.contiguous(), row, col, (1, 1, 1, 1), "reflect")
    torch.testing.assert_close(block_pad(x, row, col, (1, 1, 1, 1), "reflect"), expected, rtol=0, atol=0)


def test_opcheck():
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    args = (x, flat(fixed_spans(6, 4)), flat(fixed_spans(7, 3)), [1, 0, 1, 1], "replicate", 1)
    utils = ("test_schema", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.fuseops_ext.block_pad_gather, args, test_utils=utils)


def test_bad_inputs_are_rejected():
    x = torch.randn(1, 1, 6, 6)
    with pytest.raises(ValueError, match="mode"):
        block_pad(x, fixed_spans(6, 3), fixed_spans(6, 3), (1, 1, 1, 1), "circular")
    with pytest.raises(RuntimeError, match="reflect padding needs padding < block size"):
        block_pad(x, fixed_spans(6, 3), fixed_spans(6, 3), (3, 0, 0, 0), "reflect")
    with pytest.raises(RuntimeError, match=r"must lie inside \[0, 6\]"):
        block_pad(x, ((0, 4), (4, 8)), fixed_spans(6, 3), (1, 1, 1, 1), "constant")
    with pytest.raises(RuntimeError, match="strictly increasing"):
        torch.ops.fuseops_ext.block_pad_gather(x, [0, 3, 3, 6], [0, 6], [1, 1, 1, 1], "constant", 1)
    with pytest.raises(RuntimeError, match=r"padding must be \[top, bottom, left, right\]"):
        torch.ops.fuseops_ext.block_pad_gather(x, [0, 6], [0, 6], [1, 1], "constant", 1)
    with pytest.raises(RuntimeError, match="at least two block boundaries"):
        torch.ops.fuseops_ext.block_pad_gather(x, [6], [0, 6], [1, 1, 1, 1], "constant", 1)
