"""The FPGA model: what block convolution saves in off-chip traffic and on-chip buffers.

``estimate(layers_or_model, device="zc706", bits=16, schedule="block-fused")`` puts a
network on a Zhang et al. (FPGA 2015) style Tm x Tn MAC array and reports latency, fps,
DRAM traffic by kind and the on-chip buffer need against the board's block RAM, for
three schedules: layer by layer, block-fused (block-conv networks, no halo) and
tiled-fused (Alwani et al., MICRO 2016, halo recompute).  See docs/hwmodel-fpga.md.
"""

from hwmodel.fpga.devices import DEVICES, Device, DramAccess, get_device
from hwmodel.fpga.engine import DSP_FAMILIES, Engine, dsp_per_mac
from hwmodel.fpga.estimate import SCHEDULES, FpgaEstimate, estimate

__all__ = [
    "DEVICES", "DSP_FAMILIES", "SCHEDULES", "Device", "DramAccess", "Engine", "FpgaEstimate", "dsp_per_mac", "estimate",
    "get_device",
]
