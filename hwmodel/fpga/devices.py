"""FPGA boards: the resource figures the model reads, and how the board's DRAM behaves.

Block RAM is counted as *data* bytes: a 36 Kb block RAM (BRAM36) holds 32 Kib of data
plus 4 Kib of parity bits that a 16-bit or 8-bit datapath cannot use, so it counts
4096 bytes.  UltraRAM (288 Kb, 64 data bits + 8 ECC bits per word) counts 32768 bytes;
Intel's M20K (20 Kb, 16 Kib of data in x16 mode) counts 2048 bytes.
``dram_gbps`` is the theoretical peak of the DRAM the accelerator uses (bus width x
transfer rate); :class:`DramAccess` says how much of it a design sustains.  ``freq_mhz``
is a typical clock for CNN accelerators on that part, not a limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwmodel.fpga.engine import DSP_FAMILIES

BRAM36_BYTES = 4096
URAM_BYTES = 32768
M20K_BYTES = 2048


def _number(owner: str, field: str, value: object, *, low: float, inclusive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and (
        value >= low if inclusive else value > low)
    if not ok:
        raise ValueError(f"{owner}.{field} must be a number {'>=' if inclusive else '>'} {low:g}, got {value!r}")


@dataclass(frozen=True)
class DramAccess:
    """How much of the DRAM's peak an accelerator sustains.

    A transfer of contiguous runs of ``b`` bytes (a burst: one tile row, one weight tile)
    moves at ``peak * efficiency * b / (b + half_burst_bytes)`` bytes/s: every burst pays
    a fixed cost (command, row activation, bus turnaround) worth ``half_burst_bytes`` of
    data at the sustained rate, so a burst that long runs at half speed.
    ``efficiency`` is the best sustained fraction, on long sequential bursts (refresh,
    controller scheduling).  ``port_gbps`` caps reads and writes separately: the
    accelerator's own AXI ports into the memory controller (on Zynq, the HP ports),
    None when they do not limit.  ``duplex`` is True when reads and writes go to
    separate memories (a board with two DDR channels used one per direction); on one
    DDR bus they take turns.
    """

    efficiency: float = 1.0
    half_burst_bytes: float = 0.0
    port_gbps: float | None = None
    duplex: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        _number("DramAccess", "efficiency", self.efficiency, low=0, inclusive=False)
        if self.efficiency > 1:
            raise ValueError(f"DramAccess.efficiency must be in (0, 1], got {self.efficiency!r}")
        _number("DramAccess", "half_burst_bytes", self.half_burst_bytes, low=0, inclusive=True)
        if self.port_gbps is not None:
            _number("DramAccess", "port_gbps", self.port_gbps, low=0, inclusive=False)
        if not isinstance(self.duplex, bool):
            raise TypeError(f"DramAccess.duplex must be a bool, got {type(self.duplex).__name__}")

    def rate(self, peak_gbps: float, burst_bytes: float) -> float:
        """Sustained bytes/s for bursts of ``burst_bytes`` on a DRAM of ``peak_gbps`` (1e9 B/s)."""
        if burst_bytes <= 0:
            raise ValueError(f"burst_bytes must be > 0, got {burst_bytes!r}")
        rate = peak_gbps * 1e9 * self.efficiency * burst_bytes / (burst_bytes + self.half_burst_bytes)
        return rate if self.port_gbps is None else min(rate, self.port_gbps * 1e9)

    def describe(self, peak_gbps: float) -> str:
        parts = [f"DRAM sustains {peak_gbps:g} GB/s peak x {self.efficiency:g}"]
        if self.half_burst_bytes:
            parts.append(f" x b/(b + {self.half_burst_bytes:g} B) for bursts of b contiguous bytes")
        if self.port_gbps is not None:
            parts.append(f", capped at {self.port_gbps:g} GB/s per direction by the accelerator's ports")
        parts.append("; reads and writes " + ("on separate memories" if self.duplex else "share one bus"))
        if self.source:
            parts.append(f" ({self.source})")
        return "".join(parts)


#: The DRAM of a Device that names no DramAccess: its peak, every burst at full speed.
IDEAL_DRAM = DramAccess()


@dataclass(frozen=True)
class Device:
    """An FPGA board: DSP slices (or blocks) of ``dsp_family``, on-chip RAM (bytes), DRAM peak
    bandwidth (GB/s, 1e9 B/s), clock (MHz), and how the DRAM is sustained (``dram``)."""

    name: str
    dsp: int
    bram_bytes: int
    dram_gbps: float
    freq_mhz: float
    source: str = ""
    dsp_family: str = "DSP48E2"
    dram: DramAccess = IDEAL_DRAM

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Device.name must be a non-empty str, got {self.name!r}")
        for field in ("dsp", "bram_bytes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Device.{field} must be an int >= 1, got {value!r}")
        for field in ("dram_gbps", "freq_mhz"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Device.{field} must be a number > 0, got {value!r}")
        if self.dsp_family not in DSP_FAMILIES:
            raise ValueError(f"Device.dsp_family must be one of {sorted(DSP_FAMILIES)}, got {self.dsp_family!r}")
        if not isinstance(self.dram, DramAccess):
            raise TypeError(f"Device.dram must be a hwmodel.fpga.DramAccess, got {type(self.dram).__name__}")

    def dram_rate(self, burst_bytes: float) -> float:
        """Sustained DRAM bytes/s for bursts of ``burst_bytes``."""
        return self.dram.rate(self.dram_gbps, burst_bytes)


#: Sustained DDR3/DDR4 behind a Xilinx memory controller (MIG) reached over AXI.  The 0.8
#: ceiling: 7-series MIG AXI designs measure 80.6-82.8 % of peak on long sequential streams
#: (64- and 256-bit ports, 100 and 200 MHz), and Vitis HLS (UG1399, "Using Manual Burst")
#: plans with "80-95 % efficiency of the DDR".  The 128-byte half-speed burst: a lone short
#: access pays activate, command and turnaround cycles worth about two DDR bursts of data;
#: Intel's EMIF guide gives a lone read as 14.5 controller cycles with 4 carrying data (27 %,
#: about 170 bytes of overhead on a 64-bit bus), and measured AWS F1 DDR4 reaches its
#: plateau only from 4-8 beat (256-512 byte) AXI bursts.
MIG_DDR = DramAccess(
    efficiency=0.8, half_burst_bytes=128.0,
    source="ceiling: 7-series MIG AXI measurements and UG1399; burst cost: Intel EMIF bandwidth guide",
)

ZC706 = Device(
    "zc706", dsp=900, bram_bytes=545 * BRAM36_BYTES, dram_gbps=12.8, freq_mhz=150.0, dsp_family="DSP48E1",
    dram=MIG_DDR,
    source=(
        "Xilinx ZC706 (Zynq-7000 XC7Z045-2): 900 DSP48E1 slices and 545 BRAM36 (19.1 Mb), "
        "DS190 Zynq-7000 SoC Data Sheet: Overview, Table 3; DRAM: the 1 GB DDR3 SODIMM on the PL side, "
        "64 bits at 1600 MT/s = 12.8 GB/s, UG954 ZC706 Evaluation Board User Guide. 150 MHz is the clock of "
        "the DATE 2018 block-convolution accelerator and of Qiu et al., FPGA 2016 on this board."
    ),
)

ZC706_PS = Device(
    "zc706-ps", dsp=900, bram_bytes=545 * BRAM36_BYTES, dram_gbps=4.264, freq_mhz=150.0, dsp_family="DSP48E1",
    dram=DramAccess(efficiency=0.8, half_burst_bytes=128.0, port_gbps=4.8,
                    source="MIG_DDR's figures; ports: four 64-bit AXI_HP ports at 150 MHz, 1.2 GB/s each per "
                           "direction (UG585, Theoretical Bandwidth)"),
    source=(
        "The ZC706 with the accelerator on the processor-side DDR3: 1 GB, 32 bits at 1066 MT/s = 4,264 MB/s "
        "shared by reads and writes, reached through the four AXI_HP ports (UG585 Zynq-7000 TRM, Theoretical "
        "Bandwidth table). The PL-side SODIMM is the 'zc706' preset."
    ),
)

VC707 = Device(
    "vc707", dsp=2800, bram_bytes=1030 * BRAM36_BYTES, dram_gbps=12.8, freq_mhz=100.0, dsp_family="DSP48E1",
    dram=MIG_DDR,
    source=(
        "Xilinx VC707 (Virtex-7 XC7VX485T-2): 2800 DSP48E1 slices and 1030 BRAM36 (37 Mb), "
        "DS180 7 Series FPGAs Data Sheet: Overview, Table 8; DRAM: 1 GB DDR3 SODIMM, 64 bits at 1600 MT/s "
        "= 12.8 GB/s, UG885 VC707 Evaluation Board User Guide. 100 MHz is the clock of Zhang et al., "
        "FPGA 2015 on this board."
    ),
)

ZCU102 = Device(
    "zcu102", dsp=2520, bram_bytes=912 * BRAM36_BYTES, dram_gbps=19.2, freq_mhz=200.0, dsp_family="DSP48E2",
    dram=MIG_DDR,
    source=(
        "Xilinx ZCU102 (Zynq UltraScale+ XCZU9EG-2): 2520 DSP48E2 slices and 912 BRAM36 (32.1 Mb), no "
        "UltraRAM, DS891 Zynq UltraScale+ MPSoC Data Sheet: Overview, Table 2 (EG devices); DRAM: the PS-side "
        "4 GB DDR4 SODIMM, 64 bits at 2400 MT/s (the PS DDR controller's rating for -2 parts) = 19.2 GB/s "
        "peak, UG1182 ZCU102 Evaluation Board User Guide. "
        "200 MHz is a common accelerator clock on this part."
    ),
)

ULTRA96V2 = Device(
    "ultra96v2", dsp=360, bram_bytes=216 * BRAM36_BYTES, dram_gbps=8.5, freq_mhz=150.0, dsp_family="DSP48E2",
    dram=MIG_DDR,
    source=(
        "Avnet Ultra96-V2 (Zynq UltraScale+ XCZU3EG): 360 DSP48E2 slices and 216 BRAM36 (7.6 Mb), no "
        "UltraRAM, DS891 Table 2; DRAM: 2 GB LPDDR4, 32 bits at 2133 MT/s = 8.5 GB/s peak, Avnet Ultra96-V2 "
        "Hardware User Guide. 150 MHz is a typical clock for DSP-bound designs on this part."
    ),
)

U250 = Device(
    "u250", dsp=12288, bram_bytes=2688 * BRAM36_BYTES + 1280 * URAM_BYTES, dram_gbps=77.0, freq_mhz=300.0,
    dsp_family="DSP48E2", dram=MIG_DDR,
    source=(
        "Xilinx Alveo U250 (XCU250): 12,288 DSP48E2 slices, 2,688 BRAM36 (94.5 Mb) and 1,280 UltraRAM "
        "(360 Mb); both counted in bram_bytes (BRAM36 at 4 KiB, UltraRAM at 32 KiB of data each). DS962 Alveo "
        "U200 and U250 Data Center Accelerator Cards Data Sheet: 4 x 16 GB DDR4-2400, 77 GB/s total. 300 MHz is "
        "the card's default kernel clock."
    ),
)

#: Presets by name.
DEVICES: dict[str, Device] = {d.name: d for d in (ZC706, ZC706_PS, VC707, ZCU102, ULTRA96V2, U250)}


def get_device(device: str | Device) -> Device:
    """A preset by name, or ``device`` itself when it is already a :class:`Device`."""
    if isinstance(device, Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a preset name or a hwmodel.fpga.Device, got {type(device).__name__}")
    key = device.lower()
    if key not in DEVICES:
        raise ValueError(f"device must be one of {sorted(DEVICES)} or a hwmodel.fpga.Device, got {device!r}")
    return DEVICES[key]
