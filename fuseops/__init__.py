"""fuseops: FuSe and block convolutions as fast, checked PyTorch ops.

Ops (registered as ``torch.ops.fuseops.*`` custom ops with autograd):

* :func:`fuse_conv2d`: FuSe (fully separable) 1xK / Kx1 depthwise convolution.

Backends are chosen with :func:`use_backend` or ``$FUSEOPS_BACKEND``; run
``python -m fuseops info`` to see which are available and why others are not.
"""

from fuseops import nn
from fuseops.backends import BackendUnavailableError, current_backend, use_backend
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "current_backend",
    "fuse_conv2d",
    "fuse_conv2d_reference",
    "nn",
    "use_backend",
]
