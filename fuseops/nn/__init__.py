"""Layers: FuSe and block convolutions as drop-in nn.Module replacements."""

from fuseops.nn.block import BlockConv2d
from fuseops.nn.fuse import FuSeConv2d, FuSeConvBNAct

__all__ = ["BlockConv2d", "FuSeConv2d", "FuSeConvBNAct"]
