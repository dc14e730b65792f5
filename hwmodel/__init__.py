"""Analytical hardware models: systolic arrays (FuSeConv) and FPGAs (block convolution)."""

from hwmodel.layers import Layer, Unsupported
from hwmodel.onnx_reader import read_onnx
from hwmodel.systolic import Estimate, LayerCost, SystolicArray, speedup
from hwmodel.topology import read_topology, write_topology
from hwmodel.trace import Trace, trace

__all__ = [
    "Estimate",
    "Layer",
    "LayerCost",
    "SystolicArray",
    "Trace",
    "Unsupported",
    "read_onnx",
    "read_topology",
    "speedup",
    "trace",
    "write_topology",
]
