"""An optional SRAM + DRAM memory system for :class:`hwmodel.systolic.SystolicArray`.

The model follows SCALE-Sim 3.0.0's memory system (``memory/double_buffered_scratchpad_mem.py``,
``read_buffer.py``, ``write_buffer.py``) in USER-bandwidth mode, as an analytical per-fold
loop rather than its address-by-address simulation:

* **Three SRAMs** (ifmap, filter, ofmap) of ``kb * 1024 / word_bytes`` words each.  SCALE-Sim
  has 1-byte words and whole-kB sizes.
* **Read buffers (ifmap, filter) are double-buffered** and follow ``read_buffer.py`` to the
  element (:class:`_Ring`): the operand's fetch order is cut into sets of ceil(S/100)
  elements; the window the array reads from is ceil(ceil(S/2) / set) sets and slides forward,
  round a ring, by floor(S/2) words' worth of sets per refill; an element is looked up in the
  window only, so an element the window has passed costs a slide all the way round.  An
  operand that fits the window is fetched once, before the layer; SCALE-Sim leaves that first
  fill out of "Total Cycles" (it is in "(incl. prefetch)"), and so does this model, as it
  leaves out the first fill of a streamed operand.
* **Where each fold reads in the fetch order** (``compute/systolic_compute_*.py``):

  ========  =========================================  ========================================
  dataflow  ifmap                                      filter
  ========  =========================================  ========================================
  os        skewed: blocks = row folds of P, T long    skewed: blocks = column folds of M, T long
  ws        skewed: blocks = row folds of T, P long    stationary: rows of column fold blocks
  is        stationary: rows of column fold blocks     skewed: blocks = row folds of T, M long
  ========  =========================================  ========================================

  *Skewed* operands (:class:`_Skewed`) are fetched along the anti-diagonals of the stacked
  blocks and fed along the anti-diagonals of one block: reads move forward within a fold, and
  a fold starts a little behind where the previous one ended (the blocks share diagonals).
  *Stationary* operands (:class:`_Stationary`) are fetched row-major and fed a row per line,
  last row first.  Either way the model computes, per fold, at which line each slide is
  needed (bisection over the fold's diagonals, or one step per loading line): a loop over
  folds and refills, never over array cycles.
* **Refills are chained back to back on the DRAM port**: refill k arrives at cycle
  ``1 + k * (ceil(floor(S/2) / B) + 1)`` (B = words per cycle, one cycle of DRAM latency
  each), whatever the array is doing, as SCALE-Sim issues each prefetch right after the
  previous one returned.  A line that needs refill k stalls as ``service_reads`` counts it,
  which counts a wait twice (:func:`_line_stall`); a line's stall is the larger of its two
  operands'.  Without double buffering (not a SCALE-Sim mode) the window is the whole SRAM,
  a refill is asked for only when needed, and the array waits for all of it.
* **The ofmap write buffer** is drained to DRAM at B words per cycle and holds S words; the
  words of a fold are written at the fold's end, and the array stalls while the backlog
  would exceed S (a fluid queue; SCALE-Sim drains in half-buffer chunks).
* **Dataflows** map the GEMM as in :mod:`hwmodel.systolic`, folds in SCALE-Sim's order
  (column folds outer, row folds inner).

* **Addresses** (:class:`ConvGeometry`, :class:`_AddressedStationary`): SCALE-Sim looks up
  *addresses*, and an im2col ifmap holds each input pixel up to kh*kw times (a conv whose
  kernel is larger than its stride).  A pixel the window has passed can then still be found
  under another of its copies inside the window, saving the slide round the ring.  Given the
  conv's geometry, the is ifmap (stationary, each fold's rows read backwards: where this
  matters) is looked up by address as SCALE-Sim does (within 0.12% of SCALE-Sim's cycles on
  the test layers; followed by position it would be charged a slide round the ring for each
  passed pixel, up to 3.85x).  The os and ws ifmaps are followed by position (within 2% with
  duplicates: their skewed reads rarely go back to a passed pixel); operands without
  duplicates (filters, 1x1 and linear ifmaps) have addresses in the order of positions and
  take the same refills (cycles within 0.2%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ConvGeometry", "MemoryCost", "MemorySystem", "gemm_memory_cost"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class MemorySystem:
    """SRAM sizes in kB (1024 bytes), DRAM bandwidth in words per cycle (the same bandwidth
    on each of the three ports, ifmap read, filter read and ofmap write, not shared, as in
    SCALE-Sim), and the word size in bytes (SCALE-Sim: 1).

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

@dataclass(frozen=True)
class ConvGeometry:
    """The conv behind a GEMM, so that the memory model can name each element of the im2col
    ifmap by its *address*, as SCALE-Sim does (``compute/operand_matrix.py``,
    ``calc_ifmap_elem_addr``).  ``in_h`` and ``in_w`` are the padded input (SCALE-Sim's
    topologies are pre-padded), ``channels`` the input channels of one group; ``out_h`` and
    ``out_w`` the output the GEMM computes (SCALE-Sim's ceil((H - R + s) / s) can put windows
    partly off the map: their missing pixels are address -1, which SCALE-Sim neither fetches nor
    reads).  Images of a batch > 1 (which SCALE-Sim has no notion of) get addresses of their own.

    Output pixel p = (n, oy, ox) and reduction index t = (ky, kx, c), both row-major, read
    address ``((n H + oy sh + ky dh) W + ox sw + kx dw) C + c`` (dh, dw the dilation): with a
    kernel span larger than its stride the same address is held by several (p, t), the im2col
    duplicates.  Raises TypeError/ValueError naming the field for a field that is not a
    positive int."""

    in_h: int
    in_w: int
    channels: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    out_h: int
    out_w: int
    batch: int = 1
    dilation_h: int = 1
    dilation_w: int = 1

    def __post_init__(self) -> None:
        for name in ("in_h", "in_w", "channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "out_h",
                     "out_w", "batch", "dilation_h", "dilation_w"):
            _positive_int(name, getattr(self, name))

    @property
    def outputs(self) -> int:
        return self.batch * self.out_h * self.out_w

    @property
    def reduction(self) -> int:
        return self.channels * self.kernel_h * self.kernel_w

    def _valid(self, out: int, kernel: int, stride: int, dilation: int, size: int) -> np.ndarray:
        """(out, kernel) mask of the window rows (or columns) that fall on the map."""
        return (np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * dilation) < size

    @property
    def volume(self) -> int:
        """Elements of the im2col ifmap that have an address (the ones SCALE-Sim fetches)."""
        rows = int(self._valid(self.out_h, self.kernel_h, self.stride_h, self.dilation_h, self.in_h).sum())
        cols = int(self._valid(self.out_w, self.kernel_w, self.stride_w, self.dilation_w, self.in_w).sum())
        return self.batch * rows * cols * self.channels

    @property
    def readdressed(self) -> bool:
        """Whether addresses and positions differ: some pixel is held twice (kernel span >
        stride) or some window element is off the map."""
        span_h, span_w = self.dilation_h * (self.kernel_h - 1) + 1, self.dilation_w * (self.kernel_w - 1) + 1
        return (span_h > self.stride_h or span_w > self.stride_w
                or self.volume != self.outputs * self.reduction)

    def addresses(self) -> np.ndarray:
        """The (P, T) im2col ifmap as addresses, -1 where a window is off the map."""
        n, oy, ox = np.unravel_index(np.arange(self.outputs), (self.batch, self.out_h, self.out_w))
        ky, kx, c = np.unravel_index(np.arange(self.reduction), (self.kernel_h, self.kernel_w, self.channels))
        y = (oy * self.stride_h)[:, None] + (ky * self.dilation_h)[None, :]
        x = (ox * self.stride_w)[:, None] + (kx * self.dilation_w)[None, :]
        addr = ((n[:, None] * self.in_h + y) * self.in_w + x) * self.channels + c[None, :]
        return np.where((y < self.in_h) & (x < self.in_w), addr, -1)


def _ramp(x: int, cap: int) -> int:
    """sum_{u=0..x} min(u, cap): the elements of ``x + 1`` consecutive diagonals of a column
    group whose rows are capped at ``cap`` (0 for x < 0)."""
    if x < 0:
        return 0
    if x <= cap:
        return x * (x + 1) // 2
    return cap * (cap + 1) // 2 + (x - cap) * cap


class _Ring:
    """SCALE-Sim's read buffer (``memory/read_buffer.py``) over one operand: where its window
    is, and how many refills each demanded element costs.

    * The operand's fetch order (its "prefetch matrix", duplicates included, the -1 padding of
      partial folds dropped) is cut into *sets* of ``eps = ceil(S / 100)`` elements
      (``prepare_hashed_buffer``); there are ``n = V // eps + 1`` of them, the last partial or
      empty.  The ring is these sets, in order.
    * The active window is ``A = ceil(ceil(S/2) / eps)`` consecutive sets (mod n) and a refill
      moves it forward by ``P = ceil(floor(S/2) / eps)`` sets (``new_prefetch``): with S even
      (whole kB) P = A, so consecutive windows tile the ring, and a window that passed an
      element leaves it behind.
    * A demanded element is looked up in the window's sets only (``active_buffer_hit``); on a
      miss the window slides forward, one refill at a time, until it holds the element, round
      the ring if the element is behind it.  That is the whole rule: no search of the whole
      SRAM, no backward step.
    * Refill k (k = 1, 2, ...) is requested ``ceil(floor(S/2) / B)`` lines after refill k - 1
      returned, and returns one cycle of DRAM latency later, whenever the array asked for it:
      ``arrival_k = 1 + k * (ceil(floor(S/2) / B) + 1)`` (the first fill returns at cycle 1).

    Without double buffering (a mode of this model, not of SCALE-Sim) the window is the whole
    SRAM in single words, a refill replaces all of it, and the array waits for each refill."""

    def __init__(self, size: int, volume: int, bandwidth: float, double_buffered: bool) -> None:
        self.double = double_buffered
        if double_buffered:
            eps = -(-size // 100)
            active_words, prefetch_words = -(-size // 2), size // 2
        else:
            eps, active_words, prefetch_words = 1, size, size
        self.eps = eps
        self.n = volume // eps + 1
        self.active = min(-(-active_words // eps), self.n)
        self.step = min(-(-prefetch_words // eps), self.n - self.active)
        # useful words: the first fill (SCALE-Sim leaves it out of "Total Cycles") and the refills
        self.first_fill = min(volume, active_words)
        self.prefetch_words = prefetch_words
        self.refill_cycles = math.ceil(prefetch_words / bandwidth) + 1
        self.start = 0  # the window's first set
        self.refills = 0
        self.served = 0  # refills whose stall has been counted

    @property
    def dram_words(self) -> int:
        return self.first_fill + self.refills * self.prefetch_words

    def slides_to(self, set_id: int) -> int:
        """The slides that bring ``set_id`` into the window (0 if it is there), without moving it.

        SCALE-Sim slides one refill (``step`` sets) at a time until the set is in the window.
        As ``step <= active`` (ceil(floor(S/2) / eps) <= ceil(ceil(S/2) / eps)) the window
        cannot jump over a set, so the count is the closed form ceil((d - active + 1) / step),
        d the set's distance ahead of the window's start."""
        d = (set_id - self.start) % self.n
        if d < self.active:
            return 0
        assert self.step > 0, "a window that covers the ring never slides"
        return -(-(d - self.active + 1) // self.step)

    def advance(self, slides: int) -> None:
        """Slide the window forward ``slides`` refills."""
        self.start = (self.start + slides * self.step) % self.n
        self.refills += slides

    def cover(self, set_id: int) -> int:
        """Slide the window forward until it holds ``set_id``; return the slides."""
        slides = self.slides_to(set_id)
        self.advance(slides)
        return slides

    def end_after(self, set_id: int) -> int:
        """The first set past the window, counted forward from ``set_id`` (which it holds),
        without wrapping: the window covers [set_id, end)."""
        return set_id + self.active - (set_id - self.start) % self.n

    def cover_run(self, first: int, last: int) -> int:
        """The array reads the sets ``first`` .. ``last`` (ascending, same line): slides to hold
        ``first``, then forward ones as the reads pass the window's end."""
        slides = self.cover(first)
        end = self.end_after(first)
        if last >= end:
            assert self.step > 0, "a window that covers the ring never slides"
            more = -(-(last - end + 1) // self.step)
            self.start = (self.start + more * self.step) % self.n
            self.refills += more
            slides += more
        return slides


class _Skewed:
    """An operand that SCALE-Sim both fetches and feeds along anti-diagonals: the ifmap and
    filter of os, the ifmap of ws, the filter of is.

    Its prefetch matrix stacks ``blocks`` blocks of ``length`` rows (the streamed dimension:
    T in os, P for the ws ifmap, M for the is filter) by ``width`` columns (the array edge the
    operand enters by); the last block uses only ``last_width`` columns, the rest being -1.
    ``create_*_prefetch_mat`` reads the whole stack along its anti-diagonals, top row first,
    so element (row, col) is fetched in diagonal row + col, and within it by column.  A fold
    reading block b feeds it skewed: demand line j reads diagonal ``b * length + j``, columns
    ``max(0, j - length + 1)`` .. ``min(j, w_b - 1)``.  Within a fold the reads therefore only
    move forward through the fetch order; across a fold boundary the next block's first
    diagonals were fetched *before* the previous block's last ones (they share diagonals), so
    the new fold starts up to ``w (w - 1) / 2`` elements behind where the last one ended, and
    a window that slid during that tail has left them behind: SCALE-Sim then slides it round
    the whole ring (``_Ring.cover``).  Positions are closed forms in the diagonal; the slide
    lines are found by bisection over a fold's diagonals, one per refill."""

    def __init__(self, ring: _Ring, length: int, width: int, blocks: int, last_width: int) -> None:
        self.ring = ring
        self.length, self.width, self.blocks, self.last_width = length, width, blocks, last_width
        self.rows_full = blocks * length  # rows of the columns < last_width
        self.rows_short = (blocks - 1) * length  # rows of the other columns

    def _before(self, diag: int) -> int:
        """Elements fetched before diagonal ``diag``: sum over columns c of the rows r < diag - c."""
        lw, w = self.last_width, self.width
        full = _ramp(diag, self.rows_full) - _ramp(diag - lw, self.rows_full)
        short = _ramp(diag - lw, self.rows_short) - _ramp(diag - w, self.rows_short)
        return full + short

    def _index(self, diag: int, col: int) -> int:
        """Position of (diag - col, col) within its diagonal: the valid columns before it."""
        def count(lo: int, hi: int, rows: int) -> int:  # columns c in [lo, hi) with 0 <= diag - c < rows
            return max(0, min(hi, diag + 1) - max(lo, diag - rows + 1))
        lw = self.last_width
        return count(0, min(col, lw), self.rows_full) + count(lw, max(col, lw), self.rows_short)

    def pos(self, diag: int, col: int) -> int:
        return self._before(diag) + self._index(diag, col)

    def fold(self, block: int, prefix: int) -> list[tuple[int, int]]:
        """The refills of a fold that reads ``block``, its line j being fold line
        ``prefix + j``: a list of (fold line, refills wanted there)."""
        ring, eps, length = self.ring, self.ring.eps, self.length
        w = self.last_width if block == self.blocks - 1 else self.width
        base, last_line = block * length, length + w - 2

        def span(j: int) -> tuple[int, int]:  # first and last position line j reads
            d = base + j
            return self.pos(d, max(0, j - length + 1)), self.pos(d, min(j, w - 1))

        events = []
        first, last = span(0)
        slides = ring.cover_run(first // eps, last // eps)
        if slides:
            events.append((prefix, slides))
        end = ring.end_after(last // eps) if ring.active < ring.n else ring.n
        while end * eps <= span(last_line)[1] and end < ring.n:
            # the first line that reads a position >= end * eps: bisection over the lines
            lo, hi = 0, last_line
            while lo < hi:
                mid = (lo + hi) // 2
                if span(mid)[1] >= end * eps:
                    hi = mid
                else:
                    lo = mid + 1
            top = span(lo)[1] // eps
            more = -(-(top - end + 1) // ring.step)
            ring.start = (ring.start + more * ring.step) % ring.n
            ring.refills += more
            events.append((prefix + lo, more))
            end += more * ring.step
        return events


class _Stationary:
    """An operand that SCALE-Sim fetches row by row and feeds a row per line, bottom row
    first: the filter of ws, the ifmap of is (the stationary operand).

    The prefetch matrix stacks the column folds (blocks of ``length`` = T rows by ``width``
    columns, the last one ``last_width`` wide) and is fetched row-major
    (``create_*_prefetch_mat`` does not diagonalise it).  A fold (column fold b, row fold f)
    reads rows f X .. f X + r - 1 of block b, *flipped* (``np.flip``): its first line reads
    the last row.  When that row is past the window's end the window slides to it, which can
    leave the fold's other rows behind, and SCALE-Sim slides it round the whole ring to reach
    them (``_Ring.cover``).  One step per line of the fold's X loading lines."""

    def __init__(self, ring: _Ring, length: int, width: int, blocks: int, last_width: int) -> None:
        self.ring = ring
        self.length, self.width, self.blocks, self.last_width = length, width, blocks, last_width

    def fold(self, block: int, row0: int, rows: int, pad_lines: int) -> list[tuple[int, int]]:
        ring, eps = self.ring, self.ring.eps
        w = self.last_width if block == self.blocks - 1 else self.width
        base = block * self.length * self.width
        events = []
        for k in range(rows):
            first = base + (row0 + rows - 1 - k) * w
            slides = ring.cover_run(first // eps, (first + w - 1) // eps)
            if slides:
                events.append((pad_lines + k, slides))
        return events

class _AddressedStationary:
    """The stationary ifmap of is (:class:`_Stationary`'s fetch and feed orders) looked up by
    *address*, as ``read_buffer.active_buffer_hit`` does: the rule that matters where the
    im2col ifmap holds a pixel several times (a kernel larger than its stride).

    * **Positions.**  The fetch order is the column folds' blocks (T rows by ``w`` output
      pixels) stacked and read row-major; the -1s (partial folds' padding, window elements off
      the map) are not fetched and take no place in a set.  Position q of an element is its
      rank among the fetched ones, its set ``q // eps`` (a set is a *set* of addresses: a
      duplicate still counts towards the set's ``eps`` elements).
    * **Hit.**  An element is a hit when *any* position holding its address lies in the
      window's sets, not only its own: a pixel the window has passed is still found under a
      copy further on (the same pixel under another kernel offset, for a later reduction row
      or a neighbouring output pixel), and SCALE-Sim then does not slide round the ring.
    * **Miss.**  SCALE-Sim slides the window one refill at a time and looks the address up
      again after each; it stops at the first window that holds any copy, so the slides are
      the fewest over the copies (:meth:`_Ring.slides_to` for each copy's set).
    * **Order.**  A line's reads are served in column order (``service_reads`` walks the
      request line), so an element read after a slide on the same line is looked up in the
      moved window.  A line all of whose addresses are in the window costs one vectorised
      look-up; the element-by-element walk is only for lines that slide (at most one per
      refill).

    Addresses are kept as ``addr * V + q`` (V fetched elements) sorted, so the copies of an
    address in a position range are a ``searchsorted`` of the range's ends."""

    def __init__(self, ring: _Ring, addresses: np.ndarray, width: int) -> None:
        self.ring = ring
        outputs, _ = addresses.shape
        # Column fold b's block: rows t, columns the output pixels b Y .. b Y + w - 1.
        self.blocks = [np.ascontiguousarray(addresses[b:b + width].T) for b in range(0, outputs, width)]
        order = np.concatenate([blk.ravel() for blk in self.blocks])
        fetched = order >= 0
        self.volume = volume = int(fetched.sum())
        self.keys = np.sort(order[fetched].astype(np.int64) * volume + np.arange(volume, dtype=np.int64))

    def _in_window(self, addrs: np.ndarray) -> np.ndarray:
        """Which of ``addrs`` have a copy in the window's sets (vectorised)."""
        ring, eps, volume = self.ring, self.ring.eps, self.volume
        base = addrs.astype(np.int64) * volume
        ranges = [(ring.start, min(ring.start + ring.active, ring.n))]
        if ring.start + ring.active > ring.n:  # the window wraps round the ring
            ranges.append((0, ring.start + ring.active - ring.n))
        hit = np.zeros(addrs.shape, dtype=bool)
        for lo, hi in ranges:
            lo_q, hi_q = lo * eps, min(hi * eps, volume)
            hit |= np.searchsorted(self.keys, base + hi_q) > np.searchsorted(self.keys, base + lo_q)
        return hit

    def _slides_for(self, addr: int) -> int:
        """The slides SCALE-Sim makes for ``addr``: to the first window holding any copy."""
        volume, eps = self.volume, self.ring.eps
        lo, hi = np.searchsorted(self.keys, [addr * volume, (addr + 1) * volume])
        sets = np.unique((self.keys[lo:hi] - addr * volume) // eps)
        return min(self.ring.slides_to(int(s)) for s in sets)

    def fold(self, block: int, row0: int, rows: int, pad_lines: int) -> list[tuple[int, int]]:
        """As :meth:`_Stationary.fold`: rows ``row0`` .. ``row0 + rows - 1`` of ``block``, last
        row first, one per line after ``pad_lines`` lines of padding.  The fold's remaining rows
        are looked up together in the current window; the first one with a miss is walked
        element by element (it slides the window), and the rest looked up again."""
        lines = self.blocks[block][row0:row0 + rows][::-1]  # in the order they are read
        fetched = lines >= 0
        events = []
        k = 0
        while k < rows:
            hit = self._in_window(lines[k:].ravel()).reshape(rows - k, -1) | ~fetched[k:]
            missing = ~hit.all(axis=1)
            if not missing.any():
                break
            first_row = int(np.argmax(missing))
            k += first_row
            # the row's reads before its first miss hit; from there on each read may slide
            line = lines[k][int(np.argmax(~hit[first_row])):]
            slides = 0
            for addr in line[line >= 0]:
                more = self._slides_for(int(addr))
                self.ring.advance(more)
                slides += more
            events.append((pad_lines + k, slides))
            k += 1
        return events


class _Resident:
    """An operand that the first fill holds whole: no fold ever wants a refill."""

    def fold(self, *args: int) -> list[tuple[int, int]]:
        return []


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


def _line_stall(ring: _Ring, first_refill: int, count: int, cycle: int) -> int:
    """Stall of one operand at a line (array cycle ``cycle``) that needs refills
    ``first_refill`` .. ``first_refill + count - 1``, as ``read_buffer.service_reads``
    counts it: an offset starting at the hit latency (1) moves to each refill's arrival, and
    a wait is counted *twice* (it does ``offset += stall`` and then, when positive, once more);
    a refill that had already arrived pulls the offset down to its arrival.  The stall is the
    final offset minus the hit latency; a negative one is no stall.

    Step by step (k = first_refill ..): ``wait = 1 + k R - (cycle + offset)``, then
    ``offset += 2 wait if wait > 0 else wait`` (R = ``refill_cycles``).  Successive waits obey
    ``wait' = R - max(wait, 0)``, which is 2-periodic from the second wait on, so the sum is
    closed: the first three steps explicitly, then whole pairs."""
    if not ring.double:
        return count * ring.refill_cycles  # single buffer: the array waits for each refill
    refill = ring.refill_cycles
    wait = 1 + first_refill * refill - (cycle + 1)

    def charged(w):  # what one wait adds to the offset
        return 2 * w if w > 0 else w

    total, k = 0, 0
    while k < count and k < 3:
        total += charged(wait)
        wait = refill - max(wait, 0)
        k += 1
    rest = count - k
    if rest > 0:
        after = refill - max(wait, 0)
        total += (rest // 2) * (charged(wait) + charged(after))
        if rest % 2:
            total += charged(wait)
    return total


def gemm_memory_cost(memory: MemorySystem, dataflow: str, rows: int, cols: int, outputs: int, reduction: int,
                     filters: int, fold_lines, geometry: ConvGeometry | None = None) -> MemoryCost:
    """Stalls and DRAM traffic of one GEMM (P = ``outputs``, T = ``reduction``, M =
    ``filters``) on a ``rows`` x ``cols`` array.  ``fold_lines(r, c)`` is the cycles of a
    fold that uses r rows and c columns (the compute convention's).  ``geometry``, the conv
    behind the GEMM (P and T must be its own), lets the is ifmap be looked up by address
    (:class:`_AddressedStationary`); without it elements are followed by position."""
    if dataflow not in ("os", "ws", "is"):
        raise ValueError(f"dataflow must be one of ('os', 'ws', 'is'), got {dataflow!r}")
    for name, value in (("rows", rows), ("cols", cols), ("outputs", outputs), ("reduction", reduction),
                        ("filters", filters)):
        _positive_int(name, value)
    x, y = rows, cols
    p, t, m = outputs, reduction, filters
    bw = memory.dram_words_per_cycle
    if geometry is not None and (geometry.outputs, geometry.reduction) != (p, t):
        raise ValueError(f"geometry gives a {geometry.outputs} x {geometry.reduction} ifmap, the GEMM is {p} x {t}")
    # Only is reads its ifmap by address (os and ws follow positions, within 2% of SCALE-Sim),
    # and only where addresses and positions differ.
    by_address = dataflow == "is" and geometry is not None and geometry.readdressed
    ifmap = _Ring(memory.ifmap_words, geometry.volume if by_address else p * t, bw, memory.double_buffered)
    # An addressed ifmap that fits the window is fetched once (its addressed volume, as
    # SCALE-Sim does) and never looked up past it: the ring keeps that volume.
    resident = by_address and ifmap.active >= ifmap.n
    filt = _Ring(memory.filter_words, t * m, bw, memory.double_buffered)

    def blocks(total: int, edge: int) -> tuple[int, int]:  # (blocks, width of the last one)
        count = -(-total // edge)
        return count, total - (count - 1) * edge

    # Each operand's fetch order and feed pattern (the module docstring's table).
    if dataflow == "os":
        ifmap_op = _Skewed(ifmap, t, x, *blocks(p, x))
        filt_op = _Skewed(filt, t, y, *blocks(m, y))
    elif dataflow == "ws":
        ifmap_op = _Skewed(ifmap, p, x, *blocks(t, x))
        filt_op = _Stationary(filt, t, y, *blocks(m, y))
    else:
        if resident:
            ifmap_op = _Resident()
        elif by_address:
            ifmap_op = _AddressedStationary(ifmap, geometry.addresses(), y)
        else:
            ifmap_op = _Stationary(ifmap, t, y, *blocks(p, y))
        filt_op = _Skewed(filt, m, x, *blocks(t, x))
    ofmap_size = memory.ofmap_words
    now = 0.0  # array time at the start of the fold, stalls included
    stalls = 0.0
    backlog = 0.0  # ofmap words waiting to be drained
    ofmap_words = 0
    for fr, fc, r, c in _fold_schedule(dataflow, x, y, p, t, m):
        lines = fold_lines(r, c)
        # The refills each operand wants, by fold line (SCALE-Sim's demand-matrix lines).
        if dataflow == "os":
            # ifmap: row fold fr's block, filter: column fold fc's, both skewed from line 0.
            wants = ((ifmap, ifmap_op.fold(fr, 0)), (filt, filt_op.fold(fc, 0)))
            written, span = r * c, x + y - 1  # drained out of the array in its last X + Y - 1 lines
        elif dataflow == "ws":
            # filter (stationary): rows fr X.. of column block fc over the first X lines (the
            # X - r padding rows first); ifmap: block fr, skewed after those X lines.
            wants = ((filt, filt_op.fold(fc, fr * x, r, x - r)), (ifmap, ifmap_op.fold(fr, x)))
            written, span = p * c, p + y - 1  # one partial-sum row per streamed input
        else:
            # ifmap (stationary): rows fr X.. of pixel block fc; filter: block fr, skewed after X lines.
            wants = ((ifmap, ifmap_op.fold(fc, fr * x, r, x - r)), (filt, filt_op.fold(fr, x)))
            written, span = c * m, m + y - 1
        # SCALE-Sim stalls a line by the larger of its two operands' stalls; the stalls of
        # earlier lines delay the cycle at which later lines ask.  One step per line that
        # wants a refill.
        by_line: dict[int, list] = {}
        for ring, events in wants:
            for line, count in events:
                by_line.setdefault(line, []).append((ring, count))
        fold_stall = 0
        for line in sorted(by_line):
            cycle = now + min(line, lines - 1) + fold_stall
            worst = 0
            for ring, count in by_line[line]:
                first = ring.served + 1
                ring.served += count
                worst = max(worst, _line_stall(ring, first, count, cycle))
            fold_stall += worst
        end = now + lines + fold_stall
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
