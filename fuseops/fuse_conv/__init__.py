"""FuSe (fully separable) convolution: the public op, its reference and its backends."""

from fuseops.fuse_conv.api import VARIANTS, fuse_conv2d, resolve_padding
from fuseops.fuse_conv.geometry import FuseGeometry, fuse_geometry
from fuseops.fuse_conv.reference import fuse_conv2d_reference

__all__ = ["VARIANTS", "FuseGeometry", "fuse_conv2d", "fuse_conv2d_reference", "fuse_geometry", "resolve_padding"]
