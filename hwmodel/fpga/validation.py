"""The FPGA model against accelerators that were built and measured.

Each :class:`Design` is a published FPGA CNN accelerator: its board, precision, clock,
DSP budget, engine where the paper gives it, the network it ran and what it measured.
:func:`compare` configures :func:`hwmodel.fpga.estimate` the same way and sets the
model's throughput beside the measured one, convolution layers and end to end apart.
A ratio above 1 means the model is faster than the hardware (optimistic).

Every figure carries where it comes from.  ``VERIFIED`` figures were read in the
paper's own text (abstract or tables) or in a vendor document; ``SECONDARY`` ones come
from third-party notes that copy the paper's tables; ``ASSUMED`` ones are not published
in any source we could read and are the model's choice, stated so it can be challenged.
Designs the model cannot express are listed in :data:`NOT_EXPRESSIBLE` with what is
missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hwmodel.fpga.devices import DEVICES, M20K_BYTES, Device, DramAccess
from hwmodel.fpga.engine import Engine
from hwmodel.fpga.estimate import FpgaEstimate, estimate
from hwmodel.fpga.networks import alexnet_two_group, vgg16
from hwmodel.layers import Layer

#: The goal: end to end within 25 %, convolution layers within 20 % of the measured throughput.
GOAL_END_TO_END = 0.25
GOAL_CONV = 0.20

#: Intel external-memory interfaces: "DRAM typically has an efficiency of around 70 %"
#: (Intel EMIF user guides, "Bandwidth"); the burst cost as for MIG_DDR.
INTEL_EMIF = DramAccess(efficiency=0.7, half_burst_bytes=128.0,
                        source="Intel EMIF user guide, Bandwidth: typically 70 %")


@dataclass(frozen=True)
class Measured:
    """One published measurement, in the paper's unit: ``gops`` (2 x MAC per second), ``ms`` per image or ``fps``."""

    gops: float | None = None
    ms: float | None = None
    fps: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.gops, self.ms, self.fps)) != 1:
            raise ValueError("Measured takes exactly one of gops, ms and fps")


@dataclass(frozen=True)
class Design:
    key: str
    paper: str
    device: Device
    bits: int
    network: str
    layers: Callable[[bool], list[Layer]]  # classifier -> layer list
    engine: Engine | None = None  # None: explored within the device's DSP budget
    dsp_published: int | None = None  # the DSPs the paper reports using, beside the model's count
    calibrated: str = ""  # what was fitted to this design's own measurement; such a row validates nothing
    conv: Measured | None = None
    end_to_end: Measured | None = None
    facts: tuple[str, ...] = ()  # the configuration, each with its status
    note: str = ""


@dataclass
class Comparison:
    design: Design
    conv: FpgaEstimate | None
    end_to_end: FpgaEstimate | None
    conv_ratio: float | None = None  # model throughput / measured throughput
    end_to_end_ratio: float | None = None
    within_goal: bool = True
    rows: list[dict] = field(default_factory=list)


def _ratio(est: FpgaEstimate, measured: Measured) -> float:
    if measured.ms is not None:
        return measured.ms / (est.latency_s * 1e3)
    if measured.fps is not None:
        return est.fps / measured.fps
    return est.gops / measured.gops


def compare(design: Design) -> Comparison:
    """The model at the design's configuration beside the design's measurements."""
    kw = {"device": design.device, "bits": design.bits, "engine": design.engine, "schedule": "layer"}
    conv = estimate(design.layers(False), **kw) if design.conv else None
    full = estimate(design.layers(True), **kw) if design.end_to_end else None
    result = Comparison(design, conv, full)
    ok = True
    if conv is not None:
        result.conv_ratio = _ratio(conv, design.conv)
        ok &= abs(result.conv_ratio - 1) <= GOAL_CONV
    if full is not None:
        result.end_to_end_ratio = _ratio(full, design.end_to_end)
        ok &= abs(result.end_to_end_ratio - 1) <= GOAL_END_TO_END
    result.within_goal = ok
    return result


def _cell(est: FpgaEstimate | None, measured: Measured | None) -> tuple[str, str]:
    if est is None or measured is None:
        return "-", "-"
    if measured.ms is not None:
        return f"{measured.ms:g} ms", f"{est.latency_s * 1e3:.1f} ms"
    if measured.fps is not None:
        return f"{measured.fps:g} fps", f"{est.fps:.2f} fps"
    return f"{measured.gops:g} GOP/s", f"{est.gops:.1f} GOP/s"


def table_rows(comparisons: list[Comparison]) -> list[dict]:
    """One row per design: configuration, measured and modelled figures, ratios."""
    rows = []
    for c in comparisons:
        d = c.design
        conv_measured, conv_model = _cell(c.conv, d.conv)
        e2e_measured, e2e_model = _cell(c.end_to_end, d.end_to_end)
        est = c.end_to_end or c.conv
        rows.append({
            "design": d.key, "device": d.device.name, "bits": d.bits, "MHz": f"{d.device.freq_mhz:g}",
            "DSP paper": "-" if d.dsp_published is None else str(d.dsp_published),
            "DSP model/budget": f"{est.dsp_used}/{d.device.dsp}", "engine": f"{est.engine.tm}x{est.engine.tn}",
            "BRAM MB": f"{d.device.bram_bytes / 1e6:.2f}", "DRAM GB/s": f"{d.device.dram_gbps:g}",
            "network": d.network,
            "conv measured": conv_measured, "conv model": conv_model,
            "conv ratio": "-" if c.conv_ratio is None else f"{c.conv_ratio:.2f}",
            "e2e measured": e2e_measured, "e2e model": e2e_model,
            "e2e ratio": "-" if c.end_to_end_ratio is None else f"{c.end_to_end_ratio:.2f}",
            "goal": ("yes" if c.within_goal else "NO") + (" (calibrated)" if d.calibrated else ""),
        })
    return rows


# ---------------------------------------------------------------------------- the designs

_ZC706_PS_780 = replace(DEVICES["zc706-ps"], name="zc706-ps", dsp=780)

_ZC706_PS_ONE_PORT = replace(
    _ZC706_PS_780, name="zc706-ps-1hp",
    dram=DramAccess(efficiency=0.8, half_burst_bytes=128.0, port_gbps=1.2,
                    source="one 64-bit AXI_HP port at 150 MHz: 1.2 GB/s per direction (UG585)"),
)

_DE5_NET = Device(
    "de5-net", dsp=256, bram_bytes=2560 * M20K_BYTES, dram_gbps=25.6, freq_mhz=198.0, dsp_family="intel-sv",
    dram=INTEL_EMIF,
    source="Terasic DE5-Net, Stratix V 5SGXEA7: 256 DSP blocks (PipeCNN, Table I); 2,560 M20K and two DDR3-1600 "
           "x64 SO-DIMMs (ASSUMED, not in the paper)",
)

_ARRIA10_GX1150 = Device(
    "arria10-gx1150", dsp=1518, bram_bytes=2713 * M20K_BYTES, dram_gbps=25.6, freq_mhz=150.0, dsp_family="intel-vp",
    dram=INTEL_EMIF,
    source="Arria 10 GX 1150: 1,518 variable-precision DSP blocks (Intel Arria 10 device overview); 2,713 M20K "
           "and two DDR3-1600 x64 banks (ASSUMED)",
)

DESIGNS: tuple[Design, ...] = (
    Design(
        key="zhang2015",
        paper="C. Zhang, P. Li, G. Sun, Y. Guan, B. Xiao, J. Cong, Optimizing FPGA-based Accelerator Design for "
              "Deep Convolutional Neural Networks, FPGA 2015",
        device=DEVICES["vc707"], bits=32, network="AlexNet (conv)", layers=alexnet_two_group,
        engine=Engine(64, 7), dsp_published=2240,
        conv=Measured(gops=61.62, source="VERIFIED, abstract: 61.62 GFLOPS at 100 MHz on VC707"),
        facts=("VC707, 100 MHz: VERIFIED (abstract)", "float32, 2240 DSP (448 MACs x 5): SECONDARY",
               "Tm = 64, Tn = 7, one engine for all layers: SECONDARY (the paper's design point)"),
        note="conv layers only; every layer compute-bound",
    ),
    Design(
        key="qiu2016",
        paper="J. Qiu, J. Wang, S. Yao, K. Guo, B. Li, E. Zhou, J. Yu, T. Tang, N. Xu, S. Song, Y. Wang, H. Yang, "
              "Going Deeper with Embedded FPGA Platform for Convolutional Neural Network, FPGA 2016",
        device=_ZC706_PS_780, bits=16, network="VGG16-SVD", layers=lambda c: vgg16(classifier=c, svd_rank=500),
        dsp_published=780,
        conv=Measured(gops=187.8, source="VERIFIED, abstract: CONV layers 187.8 GOP/s"),
        end_to_end=Measured(fps=4.45, source="VERIFIED, abstract: 4.45 fps (137.0 GOP/s)"),
        facts=("ZC706 (XC7Z045), 150 MHz, 16-bit fixed point: VERIFIED (abstract)",
               "780 DSP, processor-side DDR3 (4.2 GB/s): SECONDARY",
               "the zc706-ps preset: all four 64-bit AXI_HP ports (ASSUMED; the paper's port count is not in the "
               "sources read)",
               "engine: explored within 780 DSP (the paper's PE is an array of 3x3 convolvers, not a channel "
               "array; the model gives it the same DSP budget)"),
        note="outside the goal end to end: the model streams the 71 MB of FC weights at 3.4 GB/s (about 21 ms); "
             "the measured FC time is about 61 ms (1.16 GB/s), which one HP port would explain (qiu2016-1hp)",
    ),
    Design(
        key="qiu2016-1hp",
        paper="Qiu et al., FPGA 2016, with the accelerator behind one AXI_HP port",
        device=_ZC706_PS_ONE_PORT, bits=16, network="VGG16-SVD", layers=lambda c: vgg16(classifier=c, svd_rank=500),
        dsp_published=780,
        calibrated="the port count, chosen so that the FC layers' measured time (71 MB in ~61 ms) fits",
        conv=Measured(gops=187.8, source="VERIFIED, abstract: CONV layers 187.8 GOP/s"),
        end_to_end=Measured(fps=4.45, source="VERIFIED, abstract: 4.45 fps (137.0 GOP/s)"),
        facts=("as qiu2016, with one 64-bit AXI_HP port (1.2 GB/s per direction, UG585): CALIBRATED",),
        note="shows what the port accounts for; it validates nothing, as the port was fitted to this measurement",
    ),
    Design(
        key="pipecnn-vgg16",
        paper="D. Wang, K. Xu, D. Jiang, PipeCNN: An OpenCL-Based Open-Source FPGA Accelerator for Convolution "
              "Neural Networks, FPT 2017",
        device=_DE5_NET, bits=8, network="VGG-16", layers=lambda c: vgg16(classifier=c), engine=Engine(28, 16),
        dsp_published=247,
        end_to_end=Measured(ms=254.0, source="VERIFIED, paper Table I: VGG-16 254 ms on DE5-net"),
        facts=("Stratix V GXA7, 198 MHz, 247 of 256 DSP, 8-bit: VERIFIED (paper, Table I); the repository's "
               "README of the time gives 206 MHz and 228 DSP for the DE5-net build",
               "VEC_SIZE = 16 input channels x CU_NUM = 28 compute units: VERIFIED (paper, design-space exploration)",
               "DDR3 bandwidth and M20K count: ASSUMED", "batch 1"),
        note="OpenCL kernels pipelined through channels; FC at batch 1",
    ),
    Design(
        key="pipecnn-alexnet",
        paper="D. Wang, K. Xu, D. Jiang, PipeCNN, FPT 2017",
        device=_DE5_NET, bits=8, network="AlexNet", layers=lambda c: alexnet_two_group(classifier=c),
        engine=Engine(28, 16), dsp_published=247,
        end_to_end=Measured(ms=15.0, source="VERIFIED, paper Table I: AlexNet 15 ms on DE5-net"),
        facts=("as pipecnn-vgg16", "batch 1; the repository's README gives this figure at batch 16, where the "
               "FC weights serve 16 images and the model gives 14.75 ms per image (ratio 1.02)"),
        note="model pessimistic at batch 1: conv1 (3 input channels) keeps 3 of 16 lanes busy",
    ),
    Design(
        key="ma2017",
        paper="Y. Ma, Y. Cao, S. Vrudhula, J. Seo, Optimizing Loop Operation and Dataflow in FPGA Acceleration of "
              "Deep Convolutional Neural Networks, FPGA 2017",
        device=_ARRIA10_GX1150, bits=16, network="VGG-16", layers=lambda c: vgg16(classifier=c),
        end_to_end=Measured(ms=47.97, source="SECONDARY: 645.25 GOP/s and 47.97 ms, the abstract as quoted by two "
                                             "independent notes"),
        facts=("Arria 10 GX 1150, 1518 DSP blocks: SECONDARY / vendor data", "150 MHz, 16-bit: ASSUMED",
               "engine: explored within 1518 blocks (two 16-bit multipliers each); the paper unrolls output "
               "pixels x output channels"),
        note="the weakest anchor: clock and precision are not in any source we could read",
    ),
)

#: Published designs the model cannot express, and what it would need.
NOT_EXPRESSIBLE: dict[str, str] = {
    "Lu et al., FCCM 2017 (ZCU102, VGG16 2940.7 GOP/s end to end)":
        "Winograd F(m, 3) processing elements: 2940.7 GOP/s exceeds the 1008 GOP/s of 2520 DSP x 1 MAC x 200 MHz; "
        "the model has no Winograd engine (fewer multiplies per output)",
    "Aydonat et al., FPGA 2017 (Intel DLA, Arria 10, AlexNet 1020 img/s)":
        "Winograd, and every feature map kept on chip in stream buffers: no tiled DRAM traffic",
    "Li et al., FPL 2016 (VC709, AlexNet 391 fps)":
        "one engine per layer, all layers running at once (throughput set by the slowest stage); the model has one "
        "engine that runs the layers in turn",
    "PipeCNN on DE5a-net (Arria 10, 683 DSP, 218 MHz; AlexNet 5 ms, VGG-16 110 ms)":
        "its VEC_SIZE and CU_NUM are not published; with an engine explored per network the model is 0.69x "
        "(AlexNet) and 1.63x (VGG-16), so the engine, not the memory, decides",
    "Xilinx DPU B4096 (ZCU104, ResNet-18 217.7 fps single thread)":
        "pixel parallelism (8 pixels x 16 x 16 channels) and DSPs clocked at twice the fabric clock: the engine "
        "parallelises output x input channels only, one clock",
}


def run() -> list[Comparison]:
    return [compare(d) for d in DESIGNS]
