"""The reference FuSe convolution: two depthwise ``F.conv2d`` calls, a concatenation
and the activation.  It is the definition of the op; the tests and the benchmarks
both import it from here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuseops import activations


def fuse_conv2d_reference(
    x: torch.Tensor, weight_row: torch.Tensor, weight_col: torch.Tensor, bias: torch.Tensor | None,
    full: bool, stride: int, padding: int, dilation: int, activation: str,
) -> torch.Tensor:
    """Reference forward; arguments as validated by ``fuse_conv2d`` (activation canonical).

    x: (N, C, H, W); weight_row: (C_r, 1, 1, K); weight_col: (C_c, 1, K, 1).
    Returns (N, C_r + C_c, H_out, W_out), contiguous.
    """
    c_row, c_col = weight_row.shape[0], weight_col.shape[0]
    x_row = x if full else x[:, :c_row]
    x_col = x if full else x[:, c_row:]
    parts = []
    if c_row > 0:
        parts.append(F.conv2d(x_row, weight_row, None, stride, (0, padding), dilation, groups=c_row))
    if c_col > 0:
        parts.append(F.conv2d(x_col, weight_col, None, stride, (padding, 0), dilation, groups=c_col))
    out = torch.cat(parts, dim=1)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return activations.apply(out, activation).contiguous()


def fuse_conv2d_reference_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight_row: torch.Tensor, weight_col: torch.Tensor,
    bias: torch.Tensor | None, full: bool, stride: int, padding: int, dilation: int, activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x, weight_row, weight_col, bias), written out with ``torch.nn.grad``.

    It runs inside the custom op, below autograd, so it cannot call autograd itself.
    The pre-activation is recomputed from x.  The bias gradient has shape (C_out,)
    even when ``bias`` is None.
    """
    c_row, c_col = weight_row.shape[0], weight_col.shape[0]
    grad_pre = grad_out
    if activation != "none":
        pre = fuse_conv2d_reference(x, weight_row, weight_col, bias, full, stride, padding, dilation, "none")
        grad_pre = activations.backward(grad_out, pre, activation)
    grad_bias = grad_pre.sum(dim=(0, 2, 3))
    grad_x = torch.zeros_like(x, memory_format=torch.contiguous_format)
    grad_weights = []
    parts = (
        (weight_row, 0, c_row, (0, padding), grad_pre[:, :c_row]),
        (weight_col, 0 if full else c_row, c_col, (padding, 0), grad_pre[:, c_row:]),
    )
    for weight, start, count, pad, grad_part in parts:
        if count == 0:
            grad_weights.append(torch.zeros_like(weight))
            continue
        x_part = x[:, start : start + count]
        grad_x[:, start : start + count] += torch.nn.grad.conv2d_input(
            x_part.shape, weight, grad_part, stride, pad, dilation, groups=count
        )
        grad_weights.append(
            torch.nn.grad.conv2d_weight(x_part, weight.shape, grad_part, stride, pad, dilation, groups=count)
        )
    return grad_x, grad_weights[0].contiguous(), grad_weights[1].contiguous(), grad_bias
