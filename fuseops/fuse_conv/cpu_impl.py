"""Launcher for the C++ CPU kernels of ``fuse_conv2d`` (csrc/fuse_conv_cpu.cpp).

The kernels read NCHW-contiguous tensors.  Any other layout (channels_last, a sliced
view) is copied to NCHW here, explicitly, before the kernel runs; that copy costs one
extra pass over x and is documented in docs/fuse_conv_cpu.md.  Outputs are contiguous
NCHW, as the op's contract says.
"""

from __future__ import annotations

import torch

from fuseops import _extension


def _kernels():
    loaded, reason = _extension.load()
    if not loaded:  # the backend probe already said so; this guards direct imports
        raise RuntimeError(reason)
    return torch.ops.fuseops_ext


def _nchw(t: torch.Tensor) -> torch.Tensor:
    # The one layout copy of the cpu backend (a no-op for contiguous NCHW input).
    return t.contiguous(memory_format=torch.contiguous_format)


def forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    return _kernels().fuse_conv2d_forward(
        _nchw(x), _nchw(weight_row), _nchw(weight_col), None if bias is None else _nchw(bias),
        full, stride, padding, dilation, activation,
    )


def backward(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    return _kernels().fuse_conv2d_backward(
        _nchw(grad_out), _nchw(x), _nchw(weight_row), _nchw(weight_col),
        None if bias is None else _nchw(bias), full, stride, padding, dilation, activation,
    )
