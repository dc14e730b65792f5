"""CUDA backend of fuse_conv2d: launchers for the kernels in csrc/cuda/fuse_conv_cuda.cu.

STATUS: the kernels compile (CI's nvcc check) but have never run on a GPU; see
docs/cuda.md.  Arguments arrive validated by ``fuseops.fuse_conv.api`` and the kernels
repeat the checks with TORCH_CHECK.  Weight gradients are reduced in a fixed order
when ``torch.use_deterministic_algorithms(True)`` is set.
"""

from __future__ import annotations

import torch


def forward(
    x: torch.Tensor,
    weight_row: torch.Tensor,
    weight_col: torch.Tensor,
    bias: torch.Tensor | None,
    full: bool,
    stride: int,
    padding: int,
    dilation: int,
    activation: str,
) -> torch.Tensor:
    """(N, C, H, W) -> (N, C_r + C_c, H_out, W_out), contiguous; one kernel per part."""
    return torch.ops.fuseops_ext.fuse_conv2d_forward(
        x, weight_row, weight_col, bias, full, stride, padding, dilation, activation
    )


def backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight_row: torch.Tensor,
    weight_col: torch.Tensor,
    bias: torch.Tensor | None,
    full: bool,
    stride: int,
    padding: int,
    dilation: int,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight_row, grad_weight_col, grad_bias); grad_bias has shape (C_out,)."""
    return torch.ops.fuseops_ext.fuse_conv2d_backward(
        grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation
    )
