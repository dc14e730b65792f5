"""Triton kernels, shipped as ``fuseops.kernels`` (the top-level name ``kernels`` belongs to a PyPI package).

Importing this package does not import triton; each kernel module does, so the core
``import fuseops`` stays light.
"""
