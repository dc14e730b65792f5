"""What ``block_conv2d`` becomes in an inference graph under ``torch.compile``.

When every block has the same size, a block conv is the paper code's composition: view
the map as a batch of blocks, pad each, convolve the batch, and view the result back
(:func:`~fuseops.block_conv.reference.block_conv2d_composition`; a single zero-padded
block is a plain conv).  To Inductor that is an ``aten.convolution`` between two index
maps, so in a compiled network it:

* lays the block network out in channels_last, as it does a plain CNN (it does so only
  for graphs that contain convolutions, and the opaque op is none);
* folds the gather into one copy and the stitch back into the BatchNorm/ReLU kernel that
  follows, where the op writes its output in a pass of its own.

docs/block-conv.md ("Under `torch.compile`") and docs/benchmarks.md ("Whole networks on
CPU") have what that does to compiled block ResNet-18, and how it was measured.

Graphs that need gradients keep the op, whose C++ backward is fused: Inductor's compiled
backward of the composition is slower for reflect padding and fails for replicate padding
with channels_last strides in torch 2.13 (docs/benchmarks.md, block conv table).  Ragged
and hierarchical grids (blocks of different sizes) keep the op too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuseops.block_conv.reference import block_conv2d_composition


def _uniform_size(bounds: tuple[int, ...]) -> int | None:
    """The block size when every block between ``bounds`` has it, else None."""
    sizes = {bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)}
    return sizes.pop() if len(sizes) == 1 else None


def composes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, row_bounds: tuple[int, ...],
             col_bounds: tuple[int, ...]) -> bool:
    """Whether a call traced now becomes the composition: under torch.compile, without
    gradients, on a grid of equal blocks."""
    if not torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return False
    return _uniform_size(row_bounds) is not None and _uniform_size(col_bounds) is not None


def compose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
            padding: tuple[int, int], dilation: tuple[int, int], groups: int, row_bounds: tuple[int, ...],
            col_bounds: tuple[int, ...], padding_mode: str) -> torch.Tensor:
    """The block conv of a grid of equal blocks (``composes`` said so) as standard ops.

    x: (N, C_in, H, W) -> (N, C_out, H_out, W_out), the op's output."""
    if len(row_bounds) == 2 and len(col_bounds) == 2 and padding_mode == "constant":
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)  # one block, zero padded
    block_h, block_w = _uniform_size(row_bounds), _uniform_size(col_bounds)
    return block_conv2d_composition(x, weight, bias, block_h, block_w, stride, padding, dilation, groups,
                                    padding_mode)
