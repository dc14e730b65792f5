"""Layers: FuSe and block convolutions as drop-in nn.Module replacements."""

from fuseops.nn.fuse import FuSeConv2d, FuSeConvBNAct

__all__ = ["FuSeConv2d", "FuSeConvBNAct"]
