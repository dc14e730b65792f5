"""Launcher for the C++ CPU kernels of ``fuse_conv2d`` (csrc/fuse_conv_cpu.cpp).

The kernels read NCHW-contiguous tensors.  Any other layout (channels_last, a sliced
view) is copied to NCHW here, explicitly, before the kernel runs; that copy costs one
extra pass over x and is documented in docs/fuse_conv_cpu.md.  Outputs are contiguous
NCHW, as the op's contract says.
"""

from __future__ import annotations

import torch

from fuseops import _extension

# The two ops' overloads, found once: the attribute walk through torch.ops (namespace,
# packet, overload) costs as much per call as the rest of this module.
_ops: tuple | None = None


def _kernels() -> tuple:
    global _ops
    if _ops is None:
        loaded, reason = _extension.load()
        if not loaded:  # the backend probe already said so; this guards direct imports
            raise RuntimeError(reason)
        ext = torch.ops.fuseops_ext
        _ops = (ext.fuse_conv2d_forward.default, ext.fuse_conv2d_backward.default)
    return _ops


# The one layout copy of the cpu backend: ``Tensor.contiguous()`` (a no-op for contiguous
# NCHW input) before each kernel.


def forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    kernel = (_ops or _kernels())[0]
    return kernel(
        x.contiguous(), weight_row.contiguous(), weight_col.contiguous(), None if bias is None else bias.contiguous(),
        full, stride, padding, dilation, activation,
    )


def backward(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    kernel = (_ops or _kernels())[1]
    return kernel(
        grad_out.contiguous(), x.contiguous(), weight_row.contiguous(), weight_col.contiguous(),
        None if bias is None else bias.contiguous(), full, stride, padding, dilation, activation,
    )
