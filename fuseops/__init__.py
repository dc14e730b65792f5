"""fuseops: FuSe and block convolutions as fast, checked PyTorch ops.

Ops (registered as ``torch.ops.fuseops.*`` custom ops with autograd):

* :func:`fuse_conv2d`: FuSe (fully separable) 1xK / Kx1 depthwise convolution.
* :func:`block_conv2d`: block convolution (each spatial block padded and convolved alone),
  with :func:`block_grid` (the block boundaries) and :func:`block_pad`.

Backends are chosen with :func:`use_backend` or ``$FUSEOPS_BACKEND``; run
``python -m fuseops info`` to see which are available and why others are not.

Loaded on first use (so ``import fuseops`` stays light): :mod:`fuseops.models` (the papers'
networks), :mod:`fuseops.convert` (to_fuse, to_block, fold_bn) and :func:`fuseops.profile`
(params and MACs per layer, from :mod:`fuseops.profiling`).
"""

import importlib

from fuseops import nn
from fuseops.backends import BackendUnavailableError, current_backend, use_backend
from fuseops.block_conv import block_conv2d, block_conv2d_reference, block_grid, block_pad
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference

__version__ = "0.1.0"

_LAZY_MODULES = ("models", "convert", "profiling")
_LAZY_NAMES = {"profile": "fuseops.profiling", "Profile": "fuseops.profiling"}


def __getattr__(name: str):
    # Submodules with heavier imports load on first attribute access (PEP 562).
    if name in _LAZY_MODULES:
        return importlib.import_module(f"fuseops.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'fuseops' has no attribute {name!r}")

__all__ = [
    "BackendUnavailableError",
    "Profile",
    "__version__",
    "block_conv2d",
    "block_conv2d_reference",
    "block_grid",
    "block_pad",
    "convert",
    "current_backend",
    "fuse_conv2d",
    "fuse_conv2d_reference",
    "models",
    "nn",
    "profile",
    "use_backend",
]
