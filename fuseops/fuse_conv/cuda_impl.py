"""CUDA backend of fuse_conv2d: launchers for the kernels in csrc/cuda/fuse_conv_cuda.cu.

STATUS: the kernels compile (CI's nvcc check) but have never run on a GPU; see
docs/cuda.md.  Arguments arrive validated by ``fuseops.fuse_conv.api``; the kernels
check what could make them read or write out of bounds.  Weight gradients are reduced in
a fixed order when ``torch.use_deterministic_algorithms(True)`` is set.  The arguments
are the op's schema (:mod:`fuseops.fuse_conv.op`).
"""

from __future__ import annotations

import torch


def forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    """(N, C, H, W) -> (N, C_r + C_c, H_out, W_out), contiguous; one kernel per part."""
    return torch.ops.fuseops_ext.fuse_conv2d_forward(
        x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)


def backward(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    """(grad_x, grad_weight_row, grad_weight_col, grad_bias); grad_bias has shape (C_out,)."""
    return torch.ops.fuseops_ext.fuse_conv2d_backward(
        grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)
