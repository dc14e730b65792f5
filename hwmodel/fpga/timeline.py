"""Time: phases run one after another on one engine and one DRAM.

A schedule is a sequence of *phases*.  A phase is a stretch of work whose steps pipeline
against each other: one layer's tiles (layer by layer), a run of block-conv layers that
repeat block by block, or one layer that must wait for a whole map (a fully connected
layer after the last conv).  Inside a phase the tile buffers are double-buffered, so
the next step's reads and the last step's writes overlap the current step's compute:

    time = fill + max(compute, memory - fill - drain + compute / steps) + drain

with ``fill`` the first step's reads (nothing to overlap them with), ``drain`` the last
step's writes, and, when memory sets the pace, the last step's compute between its read
and its write.  Phases run in sequence: a layer cannot start before its input
exists.  Reads that do not depend on the phase before (weights, the network input) may
be fetched early, while that phase computes and the DRAM idles, but only into block RAM
free both then and while the receiving phase starts: weight prefetch hides only as much
as the buffers hold.

Memory time counts every transfer at the DRAM rate for its burst length
(``Device.dram_rate``); reads and writes take turns on one bus unless the device's DRAM
is duplex.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwmodel.fpga.devices import Device


@dataclass(frozen=True)
class Transfer:
    """Bytes of one kind moved in one direction, in bursts of ``burst`` contiguous bytes."""

    kind: str  # "input", "weights", "output" or "intermediate"
    nbytes: int
    burst: int
    write: bool = False
    prefetchable: bool = False  # a read that does not wait for the phase before

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            raise ValueError(f"Transfer.nbytes must be >= 0, got {self.nbytes}")
        if self.burst <= 0:
            raise ValueError(f"Transfer.burst must be > 0, got {self.burst}")


@dataclass(frozen=True)
class Phase:
    """Work that pipelines: ``cycles`` of compute in ``steps`` double-buffered steps, moving ``transfers``,
    with ``buffer_bytes`` of block RAM in use."""

    cycles: int
    steps: int
    transfers: tuple[Transfer, ...]
    buffer_bytes: int


@dataclass(frozen=True)
class PhaseTime:
    compute_s: float
    read_s: float  # after prefetch
    write_s: float
    prefetched_bytes: int  # read during the phase before
    time_s: float
    memory_s: float  # the DRAM's busy time in this phase: reads and writes, in turn or side by side
    prefetch_s: float = 0.0  # DRAM time spent on this phase's prefetch, inside the phase before

    @property
    def bound(self) -> str:
        """What sets the pace: "memory" when the DRAM is busy longer than the engine."""
        return "memory" if self.memory_s > self.compute_s else "compute"


def _seconds(device: Device, transfers: list[Transfer]) -> float:
    return sum(t.nbytes / device.dram_rate(t.burst) for t in transfers if t.nbytes)


def run(phases: list[Phase], device: Device, hz: float) -> list[PhaseTime]:
    """The time of each phase, in order, with the prefetch each could make of the next."""
    times: list[PhaseTime] = []
    idle_s, free_bytes = 0.0, 0  # of the phase before: DRAM idle time and block RAM left free
    for phase in phases:
        compute_s = phase.cycles / hz
        steps = max(phase.steps, 1)
        reads = [t for t in phase.transfers if not t.write]
        writes = [t for t in phase.transfers if t.write]
        read_s, write_s = _seconds(device, reads), _seconds(device, writes)
        early = [t for t in reads if t.prefetchable and t.nbytes]
        early_bytes = sum(t.nbytes for t in early)
        prefetched, prefetch_s = 0, 0.0
        # What is fetched early must also wait on chip while this phase starts: beyond its first
        # step (which its own buffers hold), only in the block RAM this phase leaves free.
        room = min(free_bytes, max(0, device.bram_bytes - phase.buffer_bytes) + early_bytes // steps)
        if early_bytes and idle_s > 0 and room > 0:
            early_s = _seconds(device, early)
            prefetched = int(min(early_bytes, room, idle_s * early_bytes / early_s))
            prefetch_s = early_s * prefetched / early_bytes
            read_s -= prefetch_s
        fill, drain = read_s / steps, write_s / steps
        memory_s = max(read_s, write_s) if device.dram.duplex else read_s + write_s
        if device.dram.duplex:
            # Separate memories: the fill and the drain are each one direction's share of it.
            body = max(read_s - fill, write_s - drain)
        else:
            body = memory_s - fill - drain
        # Memory-bound, the last step still computes between its read and its write.
        time_s = fill + max(compute_s, body + compute_s / steps) + drain
        times.append(PhaseTime(compute_s, read_s, write_s, prefetched, time_s, memory_s, prefetch_s))
        idle_s = max(0.0, time_s - memory_s)
        free_bytes = max(0, device.bram_bytes - phase.buffer_bytes)
    return times
