"""Block convolution: the grid, the public op, its reference and its backends."""

from fuseops.block_conv.api import PADDING_MODES, STRIDE_MODES, block_conv2d, block_pad
from fuseops.block_conv.grid import BLOCKINGS, block_grid
from fuseops.block_conv.reference import block_conv2d_composition, block_conv2d_reference

__all__ = [
    "BLOCKINGS",
    "PADDING_MODES",
    "STRIDE_MODES",
    "block_conv2d",
    "block_conv2d_composition",
    "block_conv2d_reference",
    "block_grid",
    "block_pad",
]
