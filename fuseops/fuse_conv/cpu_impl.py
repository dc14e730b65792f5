"""Launcher for the C++ CPU kernels of ``fuse_conv2d`` (csrc/fuse_conv/).

Two layouts are read natively: contiguous NCHW (the per-plane kernels and the AVX-512 run
path) and channels_last (the NHWC kernels, which write the output and grad_x in
channels_last too, so a channels_last network needs no copy around the op).  Any other
layout (a sliced view, say) is copied to NCHW here, explicitly, before the kernel runs;
that copy costs one extra pass over x and is documented in docs/fuse_conv_cpu.md.
"""

from __future__ import annotations

import torch

from fuseops import _extension

# The ops' overloads, found once: the attribute walk through torch.ops (namespace, packet,
# overload) costs as much per call as the rest of this module.
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


# The C++ op picks its kernels by x's layout (csrc/fuse_conv/ops.cpp): channels_last x goes
# in as it is, anything else is made contiguous NCHW here.  "channels_last" below is
# fuseops._layout.memory_format_of's rule, written inline: one Python call fewer per op call
# on the eager path.


def forward(x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    kernels = _ops or _kernels()
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return kernels[0](x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)
    return kernels[0](
        x.contiguous(), weight_row.contiguous(), weight_col.contiguous(), None if bias is None else bias.contiguous(),
        full, stride, padding, dilation, activation,
    )


def backward(grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation):
    kernels = _ops or _kernels()
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return kernels[1](grad_out, x, weight_row, weight_col, bias, full, stride, padding, dilation, activation)
    return kernels[1](
        grad_out.contiguous(), x.contiguous(), weight_row.contiguous(), weight_col.contiguous(),
        None if bias is None else bias.contiguous(), full, stride, padding, dilation, activation,
    )
