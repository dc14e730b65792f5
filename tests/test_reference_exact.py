"""The two reference ops against constructions that share no code with them.

The references (fuseops/fuse_conv/reference.py, fuseops/block_conv/reference.py) are the
definition every backend is compared with, so a wrong reference would make every backend
test agree with a wrong answer.  Here:

* the FuSe forward is checked against an explicit loop over output pixels and taps;
* the block forward and ``block_pad`` against blocks padded by index gathering (each
  padding mode's rule written out per index, no ``F.pad``) and convolved with ``F.conv2d``;
* every hand-written backward against autograd through those plain compositions.

All sizes are tiny and float64, so the whole file runs in about a second.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fuseops.block_conv.reference import (
    PAD_MODES,
    block_conv2d_composition,
    block_conv2d_reference,
    block_conv2d_reference_backward,
    block_pad_reference,
    block_pad_reference_backward,
)
from fuseops.fuse_conv.reference import fuse_conv2d_reference, fuse_conv2d_reference_backward

DT = torch.float64
ACTS = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}

# ----------------------------------------------------------------------------- FuSe


def _fuse_loop(x, w_row, w_col, bias, full, stride, padding, dilation, activation):
    """The FuSe op by its definition: output pixel by output pixel, tap by tap."""
    n, _, h, w = x.shape
    c_row, c_col, k = w_row.shape[0], w_col.shape[0], w_row.shape[-1]
    col_start = 0 if full else c_row
    # Row part: no padding along H (kernel height 1); column part: none along W.
    out_h = (h - 1) // stride + 1
    out_w = (w - 1) // stride + 1
    if c_row:
        out_w = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    if c_col:
        out_h = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out = torch.zeros(n, c_row + c_col, out_h, out_w, dtype=x.dtype)
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                for c in range(c_row):
                    acc = 0.0
                    for t in range(k):
                        col = j * stride + t * dilation - padding
                        if 0 <= col < w:
                            acc += float(x[b, c, i * stride, col]) * float(w_row[c, 0, 0, t])
                    out[b, c, i, j] = acc
                for c in range(c_col):
                    acc = 0.0
                    for t in range(k):
                        row = i * stride + t * dilation - padding
                        if 0 <= row < h:
                            acc += float(x[b, col_start + c, row, j * stride]) * float(w_col[c, 0, t, 0])
                    out[b, c_row + c, i, j] = acc
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return ACTS[activation](out)


def _fuse_plain(x, w_row, w_col, bias, full, stride, padding, dilation, activation):
    """The same op as a plain differentiable composition of F.conv2d calls."""
    c_row, c_col = w_row.shape[0], w_col.shape[0]
    parts = []
    if c_row:
        parts.append(F.conv2d(x[:, :c_row] if not full else x, w_row, None, stride, (0, padding), dilation,
                              groups=c_row))
    if c_col:
        parts.append(F.conv2d(x[:, c_row:] if not full else x, w_col, None, stride, (padding, 0), dilation,
                              groups=c_col))
    out = torch.cat(parts, 1)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return ACTS[activation](out)


FUSE_CASES = [
    # (channels, c_row, c_col, full, kernel, stride, dilation, activation, bias)
    (5, 2, 3, False, 3, 1, 1, "none", True),  # uneven halves
    (5, 3, 2, False, 3, 2, 1, "relu", True),
    (4, 4, 4, True, 3, 2, 1, "relu6", True),  # full: both parts read every channel
    (3, 3, 3, True, 5, 1, 2, "hardswish", False),
    (4, 0, 4, False, 3, 1, 1, "relu", True),  # column part only
    (4, 4, 0, False, 3, 2, 2, "none", True),  # row part only
    (2, 1, 1, False, 3, 1, 1, "relu6", False),  # one channel per part
]


over_fuse_cases = pytest.mark.parametrize(
    ("channels", "c_row", "c_col", "full", "kernel", "stride", "dilation", "activation", "bias"), FUSE_CASES)


def _fuse_options(full, kernel, stride, dilation, activation):
    """The op's options after the tensors, with "same" padding."""
    return (full, stride, dilation * (kernel - 1) // 2, dilation, activation)


def _fuse_inputs(channels, c_row, c_col, kernel, bias, h=6, w=7):
    g = torch.Generator().manual_seed(1000 * channels + 10 * c_row + kernel)
    x = torch.randn(2, channels, h, w, dtype=DT, generator=g) * 3  # some values past relu6's 6
    w_row = torch.randn(c_row, 1, 1, kernel, dtype=DT, generator=g)
    w_col = torch.randn(c_col, 1, kernel, 1, dtype=DT, generator=g)
    b = torch.randn(c_row + c_col, dtype=DT, generator=g) if bias else None
    return x, w_row, w_col, b


@over_fuse_cases
def test_fuse_reference_forward_equals_the_pixel_loop(channels, c_row, c_col, full, kernel, stride, dilation,
                                                      activation, bias):
    x, w_row, w_col, b = _fuse_inputs(channels, c_row, c_col, kernel, bias)
    args = _fuse_options(full, kernel, stride, dilation, activation)
    got = fuse_conv2d_reference(x, w_row, w_col, b, *args)
    want = _fuse_loop(x, w_row, w_col, b, *args)
    assert got.shape == want.shape
    assert got.is_contiguous()
    torch.testing.assert_close(got, want)


@over_fuse_cases
def test_fuse_reference_backward_equals_autograd(channels, c_row, c_col, full, kernel, stride, dilation,
                                                 activation, bias):
    x, w_row, w_col, b = _fuse_inputs(channels, c_row, c_col, kernel, bias)
    args = _fuse_options(full, kernel, stride, dilation, activation)
    leaves = [t.clone().requires_grad_() for t in (x, w_row, w_col)]
    # A zero bias leaf gives autograd's bias gradient even when the call has no bias.
    bias_leaf = (b if b is not None else torch.zeros(c_row + c_col, dtype=DT)).clone().requires_grad_()
    out = _fuse_plain(*leaves, bias_leaf, *args)
    grad_out = torch.randn(out.shape, dtype=DT, generator=torch.Generator().manual_seed(7))
    out.backward(grad_out)
    got = fuse_conv2d_reference_backward(grad_out, x, w_row, w_col, b, *args)
    # A part with no channels gets a zero (empty-shaped) weight gradient.
    want = (*(t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves), bias_leaf.grad)
    for name, g, e in zip(("x", "weight_row", "weight_col", "bias"), got, want):
        assert g.shape == e.shape, name
        torch.testing.assert_close(g, e, msg=name)


def test_fuse_reference_by_hand():
    # One image, one channel per part, 1x3 taps (1, 2, 3) along W and (1, 10, 100) along H,
    # padding 1, on x = [[1, 2], [3, 4]] (channel 0) and [[5, 6], [7, 8]] (channel 1).
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]], dtype=DT)
    w_row = torch.tensor([1.0, 2.0, 3.0], dtype=DT).view(1, 1, 1, 3)
    w_col = torch.tensor([1.0, 10.0, 100.0], dtype=DT).view(1, 1, 3, 1)
    out = fuse_conv2d_reference(x, w_row, w_col, torch.tensor([0.5, -1.0], dtype=DT), False, 1, 1, 1, "none")
    # row of [1, 2]: (0*1 + 1*2 + 2*3, 1*1 + 2*2 + 0*3) = (8, 5); of [3, 4]: (18, 11); + 0.5.
    # column of [5, 7]: (0*1 + 5*10 + 7*100, 5*1 + 7*10 + 0) = (750, 75); of [6, 8]: (860, 86); - 1.
    want = torch.tensor([[[[8.5, 5.5], [18.5, 11.5]], [[749.0, 859.0], [74.0, 85.0]]]], dtype=DT)
    torch.testing.assert_close(out, want)


# ----------------------------------------------------------------------------- block conv


def _source_index(t: int, size: int, mode: str) -> int | None:
    """The block pixel that padded position t (-pad <= t < size + pad) reads, None for a zero."""
    if 0 <= t < size:
        return t
    if mode == "constant":
        return None
    if mode == "replicate":
        return 0 if t < 0 else size - 1
    return -t if t < 0 else 2 * (size - 1) - t  # reflect, without repeating the edge


def _pad_by_gather(block: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    h, w = block.shape[-2:]
    rows = [_source_index(t, h, mode) for t in range(-pad_h, h + pad_h)]
    cols = [_source_index(t, w, mode) for t in range(-pad_w, w + pad_w)]
    zero = block.new_zeros(block.shape[:-2])
    return torch.stack([torch.stack([block[..., r, c] if r is not None and c is not None else zero
                                     for c in cols], -1) for r in rows], -2)


def _spans(bounds):
    return list(zip(bounds[:-1], bounds[1:]))


def _block_plain(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, mode):
    rows = []
    for r0, r1 in _spans(row_bounds):
        cols = [F.conv2d(_pad_by_gather(x[:, :, r0:r1, c0:c1], padding[0], padding[1], mode), weight, bias,
                         tuple(stride), 0, tuple(dilation), groups) for c0, c1 in _spans(col_bounds)]
        rows.append(torch.cat(cols, 3))
    return torch.cat(rows, 2)


BLOCK_CASES = [
    # (shape, c_out, kernel, stride, padding, dilation, groups, row_bounds, col_bounds, mode, bias)
    ((2, 4, 7, 9), 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, [0, 3, 6, 7], [0, 4, 8, 9], "constant", True),
    ((1, 3, 8, 7), 2, (3, 3), (2, 2), (1, 2), (1, 1), 1, [0, 4, 8], [0, 3, 7], "replicate", True),
    ((1, 2, 7, 8), 4, (3, 2), (2, 1), (2, 1), (1, 2), 2, [0, 3, 7], [0, 5, 8], "reflect", False),
    ((2, 3, 6, 6), 3, (3, 3), (1, 2), (0, 1), (1, 1), 3, [0, 3, 6], [0, 6], "reflect", True),  # pad_h = 0
    ((1, 2, 5, 7), 2, (3, 3), (1, 1), (1, 0), (1, 1), 1, [0, 5], [0, 3, 7], "replicate", False),  # pad_w = 0
    ((1, 2, 5, 5), 3, (1, 1), (1, 1), (0, 0), (1, 1), 1, [0, 2, 5], [0, 3, 5], "constant", True),  # no padding
]


def _block_inputs(shape, c_out, kernel, groups, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=DT, generator=g)
    weight = torch.randn(c_out, shape[1] // groups, *kernel, dtype=DT, generator=g)
    b = torch.randn(c_out, dtype=DT, generator=g) if bias else None
    return x, weight, b


@pytest.mark.parametrize("case", range(len(BLOCK_CASES)))
def test_block_reference_forward_equals_gathered_blocks(case):
    shape, c_out, kernel, stride, padding, dilation, groups, rows, cols, mode, bias = BLOCK_CASES[case]
    x, weight, b = _block_inputs(shape, c_out, kernel, groups, bias, case)
    args = (list(stride), list(padding), list(dilation), groups, rows, cols, mode)
    got = block_conv2d_reference(x, weight, b, *args)
    want = _block_plain(x, weight, b, *args)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("case", range(len(BLOCK_CASES)))
def test_block_reference_backward_equals_autograd(case):
    shape, c_out, kernel, stride, padding, dilation, groups, rows, cols, mode, bias = BLOCK_CASES[case]
    x, weight, b = _block_inputs(shape, c_out, kernel, groups, bias, case)
    args = (list(stride), list(padding), list(dilation), groups, rows, cols, mode)
    xl, wl = x.clone().requires_grad_(), weight.clone().requires_grad_()
    bl = (b if b is not None else torch.zeros(c_out, dtype=DT)).clone().requires_grad_()
    out = _block_plain(xl, wl, bl, *args)
    grad_out = torch.randn(out.shape, dtype=DT, generator=torch.Generator().manual_seed(100 + case))
    out.backward(grad_out)
    got = block_conv2d_reference_backward(grad_out, x, weight, b, *args)
    for name, g, e in zip(("x", "weight", "bias"), got, (xl.grad, wl.grad, bl.grad)):
        assert g.shape == e.shape, name
        torch.testing.assert_close(g, e, msg=name)


def test_block_reference_by_hand():
    # A 1x4 map [1, 2, 3, 4] in two blocks of 2 along W, a 1x3 kernel of ones, padding 1 along W.
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]], dtype=DT)
    weight = torch.ones(1, 1, 1, 3, dtype=DT)
    expected = {
        "constant": [0 + 1 + 2, 1 + 2 + 0, 0 + 3 + 4, 3 + 4 + 0],
        "replicate": [1 + 1 + 2, 1 + 2 + 2, 3 + 3 + 4, 3 + 4 + 4],
        "reflect": [2 + 1 + 2, 1 + 2 + 1, 4 + 3 + 4, 3 + 4 + 3],
    }
    assert set(PAD_MODES) == set(expected)
    for mode, values in expected.items():
        out = block_conv2d_reference(x, weight, None, [1, 1], [0, 1], [1, 1], 1, [0, 1], [0, 2, 4], mode)
        assert out.flatten().tolist() == values, mode


@pytest.mark.parametrize("mode", ["constant", "replicate", "reflect"])
@pytest.mark.parametrize(("block", "padding"), [((2, 3), (1, 2)), ((3, 2), (2, 0)), ((2, 2), (0, 1))])
def test_block_pad_and_its_backward(mode, block, padding):
    bh, bw = block
    g = torch.Generator().manual_seed(bh * 10 + bw)
    x = torch.randn(2, 3, 2 * bh, 3 * bw, dtype=DT, generator=g)
    got = block_pad_reference(x, bh, bw, padding, mode)
    # Ordered (image, block row, block column), each block padded by gathering.
    want = torch.stack([_pad_by_gather(x[n, :, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw], *padding, mode)
                        for n in range(2) for i in range(2) for j in range(3)])
    assert got.shape == (12, 3, bh + 2 * padding[0], bw + 2 * padding[1])
    torch.testing.assert_close(got, want)
    # The backward is the adjoint: autograd through the gathered construction.
    leaf = x.clone().requires_grad_()
    built = torch.stack([_pad_by_gather(leaf[n, :, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw], *padding, mode)
                         for n in range(2) for i in range(2) for j in range(3)])
    grad = torch.randn(built.shape, dtype=DT, generator=g)
    built.backward(grad)
    back = block_pad_reference_backward(grad, list(x.shape), bh, bw, padding, mode)
    assert back.is_contiguous()
    torch.testing.assert_close(back, leaf.grad)


@pytest.mark.parametrize("mode", ["constant", "replicate", "reflect"])
def test_block_composition_equals_gathered_blocks(mode):
    # The paper code's view/permute/pad form, on a map the blocks divide (2 x 3 blocks of 3 x 2).
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 6, dtype=DT, generator=g)
    weight = torch.randn(6, 2, 3, 2, dtype=DT, generator=g)
    bias = torch.randn(6, dtype=DT, generator=g)
    got = block_conv2d_composition(x, weight, bias, 3, 2, (2, 1), (1, 1), (1, 1), 2, mode)
    want = _block_plain(x, weight, bias, (2, 1), (1, 1), (1, 1), 2, [0, 3, 6], [0, 2, 4, 6], mode)
    torch.testing.assert_close(got, want)


def test_reference_gradients_are_contiguous_for_channels_last_inputs():
    # The references write NCHW gradients whatever the layout of x (the op then stores grad_x
    # in x's memory format: fuseops/_op_definition.py).
    x, w_row, w_col, b = _fuse_inputs(4, 2, 2, 3, True)
    x = x.to(memory_format=torch.channels_last)
    grad_out = torch.ones(2, 4, 6, 7, dtype=DT)
    grads = fuse_conv2d_reference_backward(grad_out, x, w_row, w_col, b, False, 1, 1, 1, "relu")
    assert all(g.is_contiguous() for g in grads)
    shape, c_out, kernel, stride, padding, dilation, groups, rows, cols, mode, bias = BLOCK_CASES[0]
    xb, weight, bb = _block_inputs(shape, c_out, kernel, groups, bias, 0)
    xb = xb.to(memory_format=torch.channels_last)
    weight = weight.to(memory_format=torch.channels_last)
    out = block_conv2d_reference(xb, weight, bb, list(stride), list(padding), list(dilation), groups, rows, cols, mode)
    grads = block_conv2d_reference_backward(torch.ones_like(out), xb, weight, bb, list(stride), list(padding),
                                            list(dilation), groups, rows, cols, mode)
    assert all(g.is_contiguous() for g in grads)
