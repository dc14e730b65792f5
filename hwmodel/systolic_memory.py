"""An optional SRAM + DRAM memory system for :class:`hwmodel.systolic.SystolicArray`.

The model follows SCALE-Sim 3.0.0's memory system (``memory/double_buffered_scratchpad_mem.py``,
``read_buffer.py``, ``write_buffer.py``) in USER-bandwidth mode, as an analytical per-fold
loop rather than its address-by-address simulation:

* **Three SRAMs** (ifmap, filter, ofmap) of ``kb * 1024 / word_bytes`` words each.  SCALE-Sim
  has 1-byte words and whole-kB sizes.
* **Read buffers (ifmap, filter) are double-buffered**: an active half of ceil(S/2) words
  that the array reads from, and a prefetch half of S - ceil(S/2) words.  The operand is
  fetched in SCALE-Sim's fetch order, fold after fold, which is a ring of V words (V = the
  operand's im2col volume, duplicates included, since SCALE-Sim fetches the im2col operand
  matrix).  The active window only moves forward round that ring, by one prefetch half at a
  time.  A fold that needs data ahead of the window slides it; a fold that needs data behind
  it (a tile re-read after the window moved on) slides it all the way round the ring.
* **An operand that fits in the active half** (V <= ceil(S/2)) is fetched once, before the
  layer starts; SCALE-Sim leaves that first fill out of "Total Cycles" (it is in the
  "(incl. prefetch)" column), and so does this model.  The first fill of a streamed operand
  is left out the same way.
* **Refills are chained back to back on the DRAM port**: refill k ends at cycle
  ``1 + k * (ceil(half / B) + 1)`` (B = words per cycle, one cycle of DRAM latency each),
  whatever the array is doing, as SCALE-Sim issues each prefetch as soon as the previous one
  returns.  The array stalls at the line that needs refill k until it has arrived.  The
  array's time is max-plus linear in these constraints, so each fold costs
  ``max(start + fold_lines, max_k(L_k - 1 + fold_lines - line_k))``; within one fold the
  refills of one operand are evenly spaced, so only the first and the last can bind.
  Without double buffering a refill starts only when the array asks for it, and the array
  waits for all of it.
* **The ofmap write buffer** is drained to DRAM at B words per cycle and holds S words; the
  words of a fold are written at the fold's end, and the array stalls while the backlog
  would exceed S (a fluid queue; SCALE-Sim drains in half-buffer chunks).
* **Dataflows** map the GEMM as in :mod:`hwmodel.systolic`; per fold, the stationary operand
  (filter in ws, ifmap in is) is read in the first X lines and the streamed one after it;
  in os both operands are read over the T streamed lines.

What it does not reproduce: SCALE-Sim reads each demanded address from the active window
only, and at a fold boundary the skewed demand of the new fold can start a few elements
behind a window that the previous fold's tail just slid; SCALE-Sim then slides the window
round the whole ring.  Whether that happens depends on exact set boundaries, so it is not
modelled (docs/hwmodel-systolic.md has the measured agreement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MemoryCost", "MemorySystem", "gemm_memory_cost"]


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class MemorySystem:
    """SRAM sizes in kB (1024 bytes), DRAM bandwidth in words per cycle (shared by the
    ifmap and filter read ports and the ofmap write port, each of which gets it in full,
    as in SCALE-Sim), and the word size in bytes (SCALE-Sim: 1).

    Raises TypeError/ValueError naming the argument for anything invalid, including an
    SRAM smaller than two words (it could not be double-buffered)."""

    ifmap_sram_kb: float
    filter_sram_kb: float
    ofmap_sram_kb: float
    dram_words_per_cycle: float
    double_buffered: bool = True
    word_bytes: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.word_bytes, bool) or not isinstance(self.word_bytes, int):
            raise TypeError(f"word_bytes must be an int, got {type(self.word_bytes).__name__}")
        if self.word_bytes < 1:
            raise ValueError(f"word_bytes must be >= 1, got {self.word_bytes}")
        if not isinstance(self.double_buffered, bool):
            raise TypeError(f"double_buffered must be a bool, got {type(self.double_buffered).__name__}")
        for name in ("ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb", "dram_words_per_cycle"):
            _positive_number(name, getattr(self, name))
        for name in ("ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb"):
            if self.words(getattr(self, name)) < 2:
                raise ValueError(f"{name} must hold at least 2 words of {self.word_bytes} bytes, "
                                 f"got {getattr(self, name)} kB")

    def words(self, kb: float) -> int:
        """Words in an SRAM of ``kb`` kB."""
        return int(kb * 1024 // self.word_bytes)

    @property
    def ifmap_words(self) -> int:
        return self.words(self.ifmap_sram_kb)

    @property
    def filter_words(self) -> int:
        return self.words(self.filter_sram_kb)

    @property
    def ofmap_words(self) -> int:
        return self.words(self.ofmap_sram_kb)


@dataclass(frozen=True)
class MemoryCost:
    """Stall cycles and DRAM traffic (words) of one GEMM."""

    stall_cycles: int
    ifmap_dram_words: int
    filter_dram_words: int
    ofmap_dram_words: int

    def __mul__(self, n: int) -> MemoryCost:
        return MemoryCost(self.stall_cycles * n, self.ifmap_dram_words * n, self.filter_dram_words * n,
                          self.ofmap_dram_words * n)


class _ReadBuffer:
    """One double-buffered (or single-buffered) read SRAM streaming an operand of
    ``volume`` words, in fetch order, round a ring."""

    def __init__(self, size: int, volume: int, bandwidth: float, double_buffered: bool) -> None:
        self.volume = volume
        self.double = double_buffered
        if double_buffered:
            self.active = -(-size // 2)
            self.half = size - self.active
        else:
            self.active = self.half = size
        self.fits = volume <= self.active
        # One refill: ceil(half / B) request lines, then one cycle of DRAM latency.
        self.refill_cycles = math.ceil(self.half / bandwidth) + 1
        self.window = 0  # start of the active window, unwrapped position along the ring
        self.refills = 0
        self.last_done = 1  # SCALE-Sim's first fill returns at cycle 1
        self.dram_words = volume if self.fits else self.active

    def demand(self, start: int, length: int, first_line: float, lines: float) -> list[tuple[float, int]]:
        """The array reads [start, start + length) of the ring, evenly over ``lines`` fold
        lines from ``first_line``.  Returns the constraints (line, cycle the data is there)
        that can bind: the refills at the first line and the first and last after it."""
        if self.fits or length <= 0:
            return []
        w, a, h = self.window, self.active, self.half
        pos = w + (start - w) % self.volume  # the first copy of ``start`` at or after the window
        jump = max(0, -(-(pos + 1 - (w + a)) // h))  # slides before the first word is in the window
        more = max(0, -(-(pos + length - (w + jump * h + a)) // h))  # slides while reading the tile
        self.window = w + (jump + more) * h
        if not self.double:
            # A single buffer refills only when asked, and the array waits for all of it.
            self._advance(jump + more)
            return [(first_line, None, (jump + more) * self.refill_cycles)] if jump + more else []
        out: list[tuple] = []
        if jump:
            out.append((first_line, self.last_done + jump * self.refill_cycles))
        w += jump * h
        rate = lines / length
        for j in sorted({1, more}) if more else ():
            # Slide j of the tile is needed when the demand reaches the window's end.
            line = first_line + (w + a + (j - 1) * h - pos) * rate
            out.append((line, self.last_done + (jump + j) * self.refill_cycles))
        self._advance(jump + more)
        return out

    def _advance(self, count: int) -> None:
        self.refills += count
        self.last_done += count * self.refill_cycles
        self.dram_words += count * self.half


def _fold_schedule(dataflow: str, rows: int, cols: int, outputs: int, reduction: int, filters: int):
    """SCALE-Sim's folds in order (column folds outer, row folds inner), each as
    (row_fold, col_fold, rows used, cols used), plus the spatial sizes."""
    if dataflow == "os":
        spatial_r, spatial_c = outputs, filters
    elif dataflow == "ws":
        spatial_r, spatial_c = reduction, filters
    else:
        spatial_r, spatial_c = reduction, outputs
    n_r, n_c = -(-spatial_r // rows), -(-spatial_c // cols)
    for fc in range(n_c):
        for fr in range(n_r):
            yield fr, fc, min(rows, spatial_r - fr * rows), min(cols, spatial_c - fc * cols)


def gemm_memory_cost(memory: MemorySystem, dataflow: str, rows: int, cols: int, outputs: int, reduction: int,
                     filters: int, fold_lines) -> MemoryCost:
    """Stalls and DRAM traffic of one GEMM (P = ``outputs``, T = ``reduction``, M =
    ``filters``) on a ``rows`` x ``cols`` array.  ``fold_lines(r, c)`` is the cycles of a
    fold that uses r rows and c columns (the compute convention's)."""
    x, y = rows, cols
    p, t, m = outputs, reduction, filters
    bw = memory.dram_words_per_cycle
    ifmap = _ReadBuffer(memory.ifmap_words, p * t, bw, memory.double_buffered)
    filt = _ReadBuffer(memory.filter_words, t * m, bw, memory.double_buffered)
    ofmap_size = memory.ofmap_words
    now = 0.0  # array time at the start of the fold, stalls included
    stalls = 0.0
    backlog = 0.0  # ofmap words waiting to be drained
    ofmap_words = 0
    for fr, fc, r, c in _fold_schedule(dataflow, x, y, p, t, m):
        lines = fold_lines(r, c)
        if dataflow == "os":
            # ifmap: row fold fr of the P x T operand; filter: column fold fc of T x M.
            reads = ((ifmap, fr * x * t, r * t, 0, t), (filt, fc * y * t, c * t, 0, t))
            written, span = r * c, x + y - 1  # drained out of the array in its last X + Y - 1 lines
        elif dataflow == "ws":
            # filter (stationary): the r x c block, loaded in the first X lines; ifmap: the
            # P x r slice of row fold fr, streamed after it.
            reads = ((filt, fc * y * t + fr * x * c, r * c, 0, x), (ifmap, fr * x * p, p * r, x, p))
            written, span = p * c, p + y - 1  # one partial-sum row per streamed input
        else:
            # ifmap (stationary): the r x c block of column fold fc; filter: the r x M slice.
            reads = ((ifmap, fc * y * t + fr * x * c, r * c, 0, x), (filt, fr * x * m, r * m, x, m))
            written, span = c * m, m + y - 1
        end = now + lines
        for buf, start, length, first, read_lines in reads:
            for constraint in buf.demand(start, length, first, read_lines):
                if constraint[1] is None:  # single-buffered: the array waits for the whole refill
                    end += constraint[2]
                else:
                    line, ready = constraint
                    end = max(end, ready - 1 + lines - line)
        fold_stall = end - now - lines
        # The fold writes its ofmap words over its last ``span`` lines, into a buffer of S
        # words drained at B words per cycle (fluid); the array waits while it would overflow.
        ofmap_words += written
        span = min(span, lines)
        backlog = max(0.0, backlog - (end - now - span) * bw)
        overflow = backlog + written - span * bw - ofmap_size
        if overflow > 0:
            fold_stall += overflow / bw
            end += overflow / bw
        backlog = min(float(ofmap_size), max(0.0, backlog + written - span * bw))
        stalls += fold_stall
        now = end
    return MemoryCost(int(round(stalls)), ifmap.dram_words, filt.dram_words, ofmap_words)
