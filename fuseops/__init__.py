"""fuseops: FuSe and block convolutions as fast, checked PyTorch ops.

Ops (registered as ``torch.ops.fuseops.*`` custom ops with autograd):

* :func:`fuse_conv2d`: FuSe (fully separable) 1xK / Kx1 depthwise convolution.
* :func:`block_conv2d`: block convolution (each spatial block padded and convolved alone),
  with :func:`block_grid` (the block boundaries) and :func:`block_pad`.

Backends are chosen with :func:`use_backend` or ``$FUSEOPS_BACKEND``; run
``python -m fuseops info`` to see which are available and why others are not.
"""

from fuseops import nn
from fuseops.backends import BackendUnavailableError, current_backend, use_backend
from fuseops.block_conv import block_conv2d, block_conv2d_reference, block_grid, block_pad
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "block_conv2d",
    "block_conv2d_reference",
    "block_grid",
    "block_pad",
    "current_backend",
    "fuse_conv2d",
    "fuse_conv2d_reference",
    "nn",
    "use_backend",
]
