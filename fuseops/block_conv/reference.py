"""Reference block convolution: an explicit loop over blocks.  It is the definition
of the op; tests and benchmarks import it from here.

Also here: the paper code's composition (view, permute, pad, conv, permute), which
the benchmarks use as the baseline it replaces, and the reference ``block_pad``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuseops.block_conv.grid import bounds_to_spans

# F.pad's name for each padding mode.
PAD_MODES = {"constant": "constant", "replicate": "replicate", "reflect": "reflect"}


def _pad_block(block: torch.Tensor, padding: tuple[int, int], mode: str) -> torch.Tensor:
    pad_h, pad_w = padding
    if pad_h == 0 and pad_w == 0:
        return block
    # F.pad takes (left, right, top, bottom): W's padding first.
    return F.pad(block, (pad_w, pad_w, pad_h, pad_h), mode=PAD_MODES[mode])


def block_conv2d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int], padding: list[int],
    dilation: list[int], groups: int, row_bounds: list[int], col_bounds: list[int], padding_mode: str,
) -> torch.Tensor:
    """Pad each block with its own values, convolve it alone, stitch in grid order.

    x: (N, C_in, H, W); weight: (C_out, C_in/groups, kh, kw); bounds: block edges
    along H and W (``spans_to_bounds(block_grid(...))``).
    Returns (N, C_out, sum of per-block H_out, sum of per-block W_out), contiguous.
    """
    rows = []
    for r0, r1 in bounds_to_spans(row_bounds):
        cols = []
        for c0, c1 in bounds_to_spans(col_bounds):
            block = _pad_block(x[:, :, r0:r1, c0:c1], tuple(padding), padding_mode)
            cols.append(F.conv2d(block, weight, bias, tuple(stride), 0, tuple(dilation), groups))
        rows.append(torch.cat(cols, dim=3))
    return torch.cat(rows, dim=2).contiguous()


def _pad_block_backward(grad: torch.Tensor, block: torch.Tensor, padding: tuple[int, int], mode: str):
    pad_h, pad_w = padding
    if pad_h == 0 and pad_w == 0:
        return grad
    if mode == "constant":
        return grad[:, :, pad_h : grad.shape[2] - pad_h, pad_w : grad.shape[3] - pad_w]
    pads = [pad_w, pad_w, pad_h, pad_h]
    if mode == "replicate":
        return torch.ops.aten.replication_pad2d_backward(grad, block, pads)
    return torch.ops.aten.reflection_pad2d_backward(grad, block, pads)


def block_conv2d_reference_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
    padding: list[int], dilation: list[int], groups: int, row_bounds: list[int], col_bounds: list[int],
    padding_mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x, weight, bias) of the reference, block by block, without autograd
    (it runs inside the custom op, below autograd).  grad_bias has shape (C_out,)
    even when ``bias`` is None.
    """
    grad_x = torch.zeros_like(x, memory_format=torch.contiguous_format)
    grad_weight = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    out_r = 0
    for r0, r1 in bounds_to_spans(row_bounds):
        out_c = 0
        rows_out = None
        for c0, c1 in bounds_to_spans(col_bounds):
            block = x[:, :, r0:r1, c0:c1]
            padded = _pad_block(block, tuple(padding), padding_mode)
            kh, kw = weight.shape[2:]
            oh = (padded.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
            ow = (padded.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
            grad_block = grad_out[:, :, out_r : out_r + oh, out_c : out_c + ow]
            grad_padded = torch.nn.grad.conv2d_input(
                padded.shape, weight, grad_block, tuple(stride), 0, tuple(dilation), groups
            )
            grad_weight += torch.nn.grad.conv2d_weight(
                padded, weight.shape, grad_block, tuple(stride), 0, tuple(dilation), groups
            )
            grad_x[:, :, r0:r1, c0:c1] += _pad_block_backward(
                grad_padded, block, tuple(padding), padding_mode
            )
            out_c += ow
            rows_out = oh
        out_r += rows_out
    grad_bias = grad_out.sum(dim=(0, 2, 3))
    return grad_x, grad_weight, grad_bias


def block_pad_reference(
    x: torch.Tensor, block_h: int, block_w: int, padding: tuple[int, int], padding_mode: str
) -> torch.Tensor:
    """(N, C, H, W) with H, W multiples of the block -> (N*nh*nw, C, bh+2ph, bw+2pw),
    blocks ordered (n, block row, block column), each padded with its own values.
    """
    n, c, h, w = x.shape
    nh, nw = h // block_h, w // block_w
    blocks = x.reshape(n, c, nh, block_h, nw, block_w).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(n * nh * nw, c, block_h, block_w)
    return _pad_block(blocks, padding, padding_mode)


def block_conv2d_composition(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    block_h: int,
    block_w: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    padding_mode: str,
) -> torch.Tensor:
    """The paper code's way (view, permute, pad, conv, permute), for evenly divisible
    maps; the benchmarks' baseline.  Equal to ``block_conv2d_reference`` there.
    """
    n, _, h, w = x.shape
    nh, nw = h // block_h, w // block_w
    out = F.conv2d(block_pad_reference(x, block_h, block_w, padding, padding_mode), weight, bias,
                   stride, 0, dilation, groups)
    c_out, oh, ow = out.shape[1:]
    out = out.reshape(n, nh, nw, c_out, oh, ow).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(n, c_out, nh * oh, nw * ow)


def block_pad_reference_backward(
    grad: torch.Tensor, x_shape: list[int], block_h: int, block_w: int, padding: tuple[int, int], padding_mode: str
) -> torch.Tensor:
    """The adjoint of ``block_pad_reference``: (N*nh*nw, C, bh+2ph, bw+2pw) -> (N, C, H, W),
    each padded block's gradient summed back onto the block pixels it was read from.
    """
    n, c, h, w = x_shape
    nh, nw = h // block_h, w // block_w
    blocks_shape = (n * nh * nw, c, block_h, block_w)
    grad_blocks = _pad_block_backward(grad, grad.new_empty(blocks_shape), tuple(padding), padding_mode)
    grad_blocks = grad_blocks.reshape(n, nh, nw, c, block_h, block_w).permute(0, 3, 1, 4, 2, 5)
    return grad_blocks.reshape(n, c, h, w).contiguous()
