"""The C++ CPU backend of block_conv2d: launchers for ``torch.ops.fuseops_ext``.

The kernels (csrc/block_conv_cpu.cpp) gather the padded blocks of each block size in
one pass, run ATen's conv on them as one batch and scatter the output blocks into the
stitched map; the backward runs ATen's conv backward on the gathered blocks and sums
the padded-block gradients back onto x deterministically.
"""

from __future__ import annotations

import torch

from fuseops import _C  # noqa: F401  (importing registers torch.ops.fuseops_ext.*)


def forward(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    return torch.ops.fuseops_ext.block_conv2d_forward(
        x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode
    )


def backward(grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    return torch.ops.fuseops_ext.block_conv2d_backward(
        grad_out, x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode
    )


def pad_forward(x, row_bounds, col_bounds, padding, padding_mode):
    return torch.ops.fuseops_ext.block_pad_forward(x, row_bounds, col_bounds, padding, padding_mode)


def pad_backward(grad, x_sizes, row_bounds, col_bounds, padding, padding_mode):
    return torch.ops.fuseops_ext.block_pad_backward(grad, x_sizes, row_bounds, col_bounds, padding, padding_mode)
