"""The compute engine: a Tm x Tn multiply-accumulate array with Tr x Tc output tiles.

In the style of C. Zhang, P. Li, G. Sun, Y. Guan, B. Xiao, J. Cong, "Optimizing FPGA-based
Accelerator Design for Deep Convolutional Neural Networks", FPGA 2015: per cycle the array
multiplies Tn input channels into Tm output channels for one output pixel and one kernel
tap, so a conv layer with M outputs, N inputs, an R x C output and a K x K kernel takes
ceil(M/Tm) * ceil(N/Tn) * R * C * K^2 cycles.  Off-chip traffic is counted in words per
tile, each tile with its load count (Zhang et al.'s loop order: output tile (m, r, c)
outer, input channels n inner; input and weight tiles are loaded once per (m, n, r, c),
output tiles stored once per (m, r, c)):

* input tile   B_in  = Tn * (S*Tr + K - S) * (S*Tc + K - S)  (K is the dilated extent)
* weight tile  B_w   = Tm * Tn * K^2
* output tile  B_out = Tm * Tr * Tc

Tile sides are clipped to the layer (a 64-wide array on a 3-channel input moves 3
channels, not 64), the input tile to the padded input.  Grouped convs run group by group
(M/g outputs from N/g inputs each), so a depthwise conv keeps one multiplier of Tm*Tn
busy: the drop in utilisation is the point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hwmodel.layers import Layer

#: DSP slices (Xilinx) or DSP blocks (Intel) per multiply-accumulate, by family and datapath width.
#:
#: * ``DSP48E1`` (7-series, Zynq-7000; UG479: a 25 x 18 multiplier): a 32-bit float MAC is
#:   a multiplier (3 DSP48) and an adder (2), as in Zhang et al., FPGA 2015; a 16-bit fixed
#:   MAC is one slice, and so is an 8-bit one: two 8-bit products sharing an operand need
#:   the operands 18 bits apart in one multiplier input, 26 bits, more than its 25.
#: * ``DSP48E2`` (UltraScale, UltraScale+; UG579: a 27 x 18 multiplier): float as above; two
#:   8-bit MACs sharing an operand pack into one slice (Xilinx WP486, "Deep Learning with
#:   INT8 Optimization on Xilinx Devices").
#: * ``intel-vp`` (Arria 10, Stratix 10 variable-precision blocks): one hardened IEEE-754
#:   single-precision multiply-add per block, or two 18 x 19 multipliers (the Stratix 10 DSP
#:   user guide's "18 x 18 full mode": two independent multipliers; 16-bit and 8-bit alike,
#:   the 18 x 19 mode being the narrowest).
#: * ``intel-sv`` (Stratix V, Arria V variable-precision blocks; Stratix V Device Overview,
#:   Table 11: a 9 x 9 multiplier is 1/3 of a block, 18 x 18 is 1/2, 27 x 27 or single
#:   precision float is 1): no hardened float adder (soft logic, not counted).
DSP_FAMILIES: dict[str, dict[int, float]] = {
    "DSP48E1": {32: 5.0, 16: 1.0, 8: 1.0},
    "DSP48E2": {32: 5.0, 16: 1.0, 8: 0.5},
    "intel-vp": {32: 1.0, 16: 0.5, 8: 0.5},
    "intel-sv": {32: 1.0, 16: 0.5, 8: 1 / 3},
}


def dsp_per_mac(bits: int, family: str = "DSP48E2") -> float:
    """DSP slices or blocks one ``bits``-wide MAC costs on ``family``."""
    if family not in DSP_FAMILIES:
        raise ValueError(f"family must be one of {sorted(DSP_FAMILIES)}, got {family!r}")
    return DSP_FAMILIES[family][check_bits(bits)]


def check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int (8, 16 or 32), got {type(bits).__name__}")
    if bits not in (8, 16, 32):
        raise ValueError(f"bits must be 8, 16 or 32 (32 = float, 16/8 = fixed point), got {bits}")
    return bits


def word_bytes(bits: int) -> int:
    return check_bits(bits) // 8


@dataclass(frozen=True)
class Engine:
    """A Tm x Tn MAC array; Tr x Tc output tiles (None: chosen per layer for the BRAM budget)."""

    tm: int
    tn: int
    tr: int | None = None
    tc: int | None = None

    def __post_init__(self) -> None:
        for name in ("tm", "tn", "tr", "tc"):
            value = getattr(self, name)
            if value is None and name in ("tr", "tc"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Engine.{name} must be an int >= 1, got {value!r}")

    def dsp(self, bits: int, family: str = "DSP48E2") -> int:
        """DSP slices (or blocks) the array uses at this datapath width on ``family``."""
        # Round before the ceiling: 3 x 7 x (1/3) must be 7 blocks, not 8.
        return math.ceil(round(self.tm * self.tn * dsp_per_mac(bits, family), 9))


# ---------------------------------------------------------------------------- per-layer geometry

@dataclass(frozen=True)
class ConvShape:
    """A layer as the engine sees it: per group M outputs, N inputs; R x C outputs; kernel extent."""

    groups: int
    m: int
    n: int
    r: int
    c: int
    kh: int
    kw: int
    sh: int
    sw: int
    ext_h: int  # dilated kernel extent d*(k-1)+1
    ext_w: int
    in_h: int  # padded input
    in_w: int
    batch: int


def conv_shape(layer: Layer) -> ConvShape:
    """The engine's view of a layer.  A linear layer over a batch of N is one 1 x N "map":
    the N input vectors are the pixels every weight tile is applied to, so a weight tile is
    loaded once for the whole batch, not once per image (Qiu et al., FPGA 2016, batch their
    fully connected layers for this reason)."""
    g = layer.groups
    if layer.kind == "linear":
        return ConvShape(
            groups=g, m=layer.out_channels // g, n=layer.in_channels // g, r=1, c=layer.batch, kh=1, kw=1, sh=1,
            sw=1, ext_h=1, ext_w=1, in_h=1, in_w=layer.batch, batch=1,
        )
    return ConvShape(
        groups=g, m=layer.out_channels // g, n=layer.in_channels // g, r=layer.out_h, c=layer.out_w,
        kh=layer.kernel_h, kw=layer.kernel_w, sh=layer.stride_h, sw=layer.stride_w,
        ext_h=layer.dilation_h * (layer.kernel_h - 1) + 1, ext_w=layer.dilation_w * (layer.kernel_w - 1) + 1,
        in_h=layer.in_h + 2 * layer.pad_h, in_w=layer.in_w + 2 * layer.pad_w, batch=layer.batch,
    )


def compute_cycles(layer: Layer, engine: Engine, rows: int | None = None, cols: int | None = None) -> int:
    """ceil(M/Tm) * ceil(N/Tn) * R * C * Kh * Kw per group, times groups and batch.

    ``rows`` / ``cols`` override R / C (a block's or a tile's outputs).
    """
    s = conv_shape(layer)
    r = s.r if rows is None else rows
    c = s.c if cols is None else cols
    per_group = math.ceil(s.m / engine.tm) * math.ceil(s.n / engine.tn) * r * c * s.kh * s.kw
    return s.batch * s.groups * per_group


def utilisation(layer: Layer, engine: Engine) -> float:
    """Useful MACs / (array MACs per cycle x cycles)."""
    return layer.macs / (engine.tm * engine.tn * compute_cycles(layer, engine))


@dataclass(frozen=True)
class TileTraffic:
    """Words moved for one layer with a given tiling, and the on-chip buffer it needs (words)."""

    tr: int
    tc: int
    input_words: int
    weight_words: int
    output_words: int
    buffer_words: int  # double-buffered input, weight and output tiles
    hold_input: bool = False  # the input tile stays on chip across output-channel tiles
    steps: int = 1  # weight tiles loaded: the steps the tiled loop runs

    @property
    def words(self) -> int:
        return self.input_words + self.weight_words + self.output_words


def tile_traffic(layer: Layer, engine: Engine, tr: int, tc: int, hold_input: bool = False) -> TileTraffic:
    """Zhang et al.'s tiled traffic, with load counts, for output tiles of tr x tc.

    ``hold_input`` keeps all N input channels of an output tile's input on chip while the
    output-channel tiles run, so the input is read once per spatial tile instead of once
    per (output, input) channel tile pair; the buffer holds the whole input tile.
    """
    s = conv_shape(layer)
    tr, tc = min(tr, s.r), min(tc, s.c)
    tm, tn = min(engine.tm, s.m), min(engine.tn, s.n)
    window = min(s.sh * tr + s.ext_h - s.sh, s.in_h) * min(s.sw * tc + s.ext_w - s.sw, s.in_w)
    b_in = (s.n if hold_input else tn) * window
    b_w = tm * tn * s.kh * s.kw
    b_out = tm * tr * tc
    spatial_tiles = math.ceil(s.r / tr) * math.ceil(s.c / tc)
    m_tiles, n_tiles = math.ceil(s.m / tm), math.ceil(s.n / tn)
    loads_w = s.batch * s.groups * m_tiles * n_tiles * spatial_tiles
    loads_in = s.batch * s.groups * spatial_tiles if hold_input else loads_w
    stores_out = s.batch * s.groups * m_tiles * spatial_tiles
    return TileTraffic(
        tr=tr, tc=tc, input_words=loads_in * b_in, weight_words=loads_w * b_w, output_words=stores_out * b_out,
        buffer_words=2 * (b_in + b_w + b_out), hold_input=hold_input, steps=loads_w,
    )


def _tile_candidates(size: int) -> list[int]:
    # Only the tile sides that change the tile count matter: ceil(size / k) for k = 1..size.
    return sorted({math.ceil(size / k) for k in range(1, size + 1)})


def best_tiles(layer: Layer, engine: Engine, bram_words: int) -> TileTraffic | None:
    """The (Tr, Tc) with the least traffic whose double-buffered tiles fit ``bram_words``.

    Uses the engine's own Tr/Tc when it sets them.  None when even 1 x 1 tiles don't fit.
    A linear layer may also hold its input vectors on chip across output tiles (a batch of
    them is what every weight tile is applied to).
    """
    s = conv_shape(layer)
    rows = [engine.tr] if engine.tr is not None else _tile_candidates(s.r)
    cols = [engine.tc] if engine.tc is not None else _tile_candidates(s.c)
    holds = (False, True) if layer.kind == "linear" else (False,)
    best: TileTraffic | None = None
    for hold in holds:
        for tr in rows:
            for tc in cols:
                t = tile_traffic(layer, engine, tr, tc, hold)
                if t.buffer_words > bram_words:
                    continue
                if best is None or (t.words, t.buffer_words) < (best.words, best.buffer_words):
                    best = t
    return best


def explore_engine(layers: list[Layer], dsp_budget: int, bits: int, family: str = "DSP48E2") -> Engine:
    """The (Tm, Tn) within the DSP budget with the fewest total compute cycles.

    Zhang et al. pick one (Tm, Tn) for all layers.  Ties go to the smaller array.  Tr/Tc
    are left to :func:`best_tiles`, per layer, for the BRAM budget.
    """
    per_mac = dsp_per_mac(bits, family)
    max_pes = int(round(dsp_budget / per_mac, 9))
    if max_pes < 1:
        raise ValueError(f"a DSP budget of {dsp_budget} cannot hold one {bits}-bit MAC")
    max_m = max(conv_shape(layer).m for layer in layers)
    max_n = max(conv_shape(layer).n for layer in layers)
    def total(tm: int, tn: int) -> int:
        return sum(compute_cycles(layer, Engine(tm, tn)) for layer in layers)

    by_tn: dict[int, tuple[int, int]] = {}  # tn -> (cycles, tm_cap)
    for tn in range(1, min(max_n, max_pes) + 1):
        tm_cap = min(max_m, max_pes // tn)
        by_tn[tn] = (total(tm_cap, tn), tm_cap)
    fewest = min(cycles for cycles, _ in by_tn.values())
    best: tuple[int, int, int] | None = None  # (pes, tm, tn)
    for tn, (cycles, tm_cap) in by_tn.items():
        if cycles != fewest:
            continue
        # Cycles never grow with Tm: binary-search the smallest Tm that keeps them.
        lo, hi = 1, tm_cap
        while lo < hi:
            mid = (lo + hi) // 2
            if total(mid, tn) == fewest:
                hi = mid
            else:
                lo = mid + 1
        key = (lo * tn, lo, tn)
        if best is None or key < best:
            best = key
    assert best is not None
    return Engine(best[1], best[2])
