"""Analytical hardware models: systolic arrays (FuSeConv) and FPGAs (block convolution)."""

from hwmodel.layers import Layer

__all__ = ["Layer"]
