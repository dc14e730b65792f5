"""FPGA boards: the few resource figures the model reads.

Block RAM is counted as *data* bytes: a 36 Kb block RAM (BRAM36) holds 32 Kib of data
plus 4 Kib of parity bits that a 16-bit or 8-bit datapath cannot use, so it counts
4096 bytes.  UltraRAM (288 Kb, 64 data bits + 8 ECC bits per word) counts 32768 bytes.
DRAM bandwidth is the theoretical peak of the board's main DDR memory (bus width x
transfer rate); sustained bandwidth on real designs is lower, often 60-80 % of it.
``freq_mhz`` is a typical clock for CNN accelerators on that part, not a limit.
"""

from __future__ import annotations

from dataclasses import dataclass

BRAM36_BYTES = 4096
URAM_BYTES = 32768


@dataclass(frozen=True)
class Device:
    """An FPGA board: DSP slices, on-chip block RAM (bytes), DRAM bandwidth (GB/s, 1e9 B/s), clock (MHz)."""

    name: str
    dsp: int
    bram_bytes: int
    dram_gbps: float
    freq_mhz: float
    source: str = ""

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


ZC706 = Device(
    "zc706", dsp=900, bram_bytes=545 * BRAM36_BYTES, dram_gbps=12.8, freq_mhz=150.0,
    source=(
        "Xilinx ZC706 (Zynq-7000 XC7Z045-2): 900 DSP48E1 slices and 545 BRAM36 (19.1 Mb), "
        "DS190 Zynq-7000 SoC Data Sheet: Overview, Table 3; DRAM: the 1 GB DDR3 SODIMM on the PL side, "
        "64 bits at 1600 MT/s = 12.8 GB/s, UG954 ZC706 Evaluation Board User Guide. 150 MHz is the clock of "
        "the DATE 2018 block-convolution accelerator and of Qiu et al., FPGA 2016 on this board."
    ),
)

VC707 = Device(
    "vc707", dsp=2800, bram_bytes=1030 * BRAM36_BYTES, dram_gbps=12.8, freq_mhz=100.0,
    source=(
        "Xilinx VC707 (Virtex-7 XC7VX485T-2): 2800 DSP48E1 slices and 1030 BRAM36 (37 Mb), "
        "DS180 7 Series FPGAs Data Sheet: Overview, Table 8; DRAM: 1 GB DDR3 SODIMM, 64 bits at 1600 MT/s "
        "= 12.8 GB/s, UG885 VC707 Evaluation Board User Guide. 100 MHz is the clock of Zhang et al., "
        "FPGA 2015 on this board."
    ),
)

ZCU102 = Device(
    "zcu102", dsp=2520, bram_bytes=912 * BRAM36_BYTES, dram_gbps=19.2, freq_mhz=200.0,
    source=(
        "Xilinx ZCU102 (Zynq UltraScale+ XCZU9EG-2): 2520 DSP48E2 slices and 912 BRAM36 (32.1 Mb), no "
        "UltraRAM, DS891 Zynq UltraScale+ MPSoC Data Sheet: Overview, Table 2 (EG devices); DRAM: the PS-side "
        "4 GB DDR4 SODIMM, 64 bits at 2400 MT/s (the PS DDR controller's rating for -2 parts) = 19.2 GB/s "
        "peak, UG1182 ZCU102 Evaluation Board User Guide. "
        "200 MHz is a common accelerator clock on this part."
    ),
)

ULTRA96V2 = Device(
    "ultra96v2", dsp=360, bram_bytes=216 * BRAM36_BYTES, dram_gbps=8.5, freq_mhz=150.0,
    source=(
        "Avnet Ultra96-V2 (Zynq UltraScale+ XCZU3EG): 360 DSP48E2 slices and 216 BRAM36 (7.6 Mb), no "
        "UltraRAM, DS891 Table 2; DRAM: 2 GB LPDDR4, 32 bits at 2133 MT/s = 8.5 GB/s peak, Avnet Ultra96-V2 "
        "Hardware User Guide. 150 MHz is a typical clock for DSP-bound designs on this part."
    ),
)

U250 = Device(
    "u250", dsp=12288, bram_bytes=2688 * BRAM36_BYTES + 1280 * URAM_BYTES, dram_gbps=77.0, freq_mhz=300.0,
    source=(
        "Xilinx Alveo U250 (XCU250): 12,288 DSP48E2 slices, 2,688 BRAM36 (94.5 Mb) and 1,280 UltraRAM "
        "(360 Mb); both counted in bram_bytes (BRAM36 at 4 KiB, UltraRAM at 32 KiB of data each). DS962 Alveo "
        "U200 and U250 Data Center Accelerator Cards Data Sheet: 4 x 16 GB DDR4-2400, 77 GB/s total. 300 MHz is "
        "the card's default kernel clock."
    ),
)

#: Presets by name.
DEVICES: dict[str, Device] = {d.name: d for d in (ZC706, VC707, ZCU102, ULTRA96V2, U250)}


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
