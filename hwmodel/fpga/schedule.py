"""Group plans: how a run of consecutive layers executes, what it moves off chip, what it buffers.

Three ways to run a group [start, stop) of the layer list:

* ``layer`` (one layer): Zhang et al.'s tiled engine; the input map, weights and output
  map go through DRAM tile by tile with their load counts (engine.tile_traffic).
* ``block``: the group runs block by block on chip.  Each layer runs once per block of
  its own grid; grids must nest along every edge inside the group (a consumer block is a
  union of producer blocks, or the reverse), so no block needs a halo.  The buffering
  that nesting needs is counted with liveness: while a fine layer runs, every tensor
  being assembled for a coarser layer further on stays on chip.
* ``tiled``: Alwani et al., MICRO 2016 fused-layer tiling of ordinary convs: the last
  layer's output is cut into t x t tiles, each tile's receptive field is pulled back
  through the group and recomputed per tile (the overlap is the halo recompute).

For the fused modes DRAM traffic is: tensors read from outside the group (the network
input counts as "input"), tensors needed outside written once ("output" for tensors
nobody reads, "intermediate" otherwise), and weights: once when they all fit on chip
beside the activations, otherwise per execution, except for the layers pinned on chip
(greedily, most re-read first) in the BRAM left over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hwmodel.fpga import engine as eng
from hwmodel.fpga.graph import (
    NETWORK_INPUT,
    Graph,
    block_count,
    input_spans,
    is_blocked,
    max_span,
    nest,
    output_spans,
    tensor_shape,
)
from hwmodel.fpga.timeline import Phase, Transfer
from hwmodel.layers import Layer

KINDS = ("input", "weights", "output", "intermediate")


def empty_traffic() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


@dataclass
class GroupPlan:
    start: int
    stop: int
    mode: str  # "layer", "block" or "tiled"
    traffic: dict[str, int]  # bytes by kind
    buffer_bytes: int
    cycles: int
    extra_macs: int = 0
    units: int = 1  # blocks (block), tiles (tiled) or spatial tiles (layer) of the largest layer
    fits: bool = True
    detail: str = ""
    layer_cycles: list[int] = field(default_factory=list)
    layer_extra_macs: list[int] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)  # how the group's work runs in time (timeline.run)

    @property
    def dram_bytes(self) -> int:
        return sum(self.traffic.values())


@dataclass(frozen=True)
class Context:
    graph: Graph
    engine: eng.Engine
    bits: int
    bram_bytes: int

    @property
    def word(self) -> int:
        return self.bits // 8

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.graph.layers


# ---------------------------------------------------------------------------- shared pieces

def _input_size(layer: Layer) -> int:
    """Elements of a layer's (pooled) input, all images."""
    return layer.batch * layer.in_channels * layer.in_h * layer.in_w


def _tensor_size(ctx: Context, t: int) -> int:
    c, h, w = tensor_shape(ctx.layers, t)
    batch = ctx.layers[max(t, 0)].batch
    return batch * c * h * w


def _is_final(ctx: Context, t: int) -> bool:
    return not ctx.graph.consumers(t) and all(a != t for a, _ in ctx.graph.merges)


def _write_kind(ctx: Context, t: int) -> str:
    return "output" if _is_final(ctx, t) else "intermediate"


def _read_kind(t: int) -> str:
    return "input" if t == NETWORK_INPUT else "intermediate"


def _boundary(ctx: Context, start: int, stop: int) -> list[tuple[int, str, int, bool, int]]:
    """Words read from / written to DRAM at a fused group's edges (activations only), as
    (layer that moves them, kind, words, is a write, tensor).  A tensor from outside is read
    once, at its largest, by the first layer inside that needs it."""
    moves: list[tuple[int, str, int, bool, int]] = []
    inside = range(start, stop)
    reads: dict[int, tuple[int, int]] = {}  # tensor -> (words, first reader)

    def read(t: int, words: int, reader: int) -> None:
        old_words, old_reader = reads.get(t, (0, reader))
        reads[t] = (max(old_words, words), min(old_reader, reader))

    for i in inside:
        e = ctx.graph.inputs[i]
        if e.source not in inside:
            read(e.source, _input_size(ctx.layers[i]), i)
    for t, k in ctx.graph.merges:
        if k in inside and t not in inside:
            read(t, _tensor_size(ctx, t), k)
    for t, (words, reader) in reads.items():
        moves.append((reader, _read_kind(t), words, False, t))
    for t in inside:
        outside = [ctx.layers[c] for c in ctx.graph.consumers(t) if c not in inside]
        merged_out = any(a == t and k not in inside for a, k in ctx.graph.merges)
        if outside:
            moves.append((t, "intermediate", max(_input_size(layer) for layer in outside), True, t))
        elif merged_out:
            moves.append((t, "intermediate", _tensor_size(ctx, t), True, t))
        elif _is_final(ctx, t):
            moves.append((t, "output", _tensor_size(ctx, t), True, t))
    return moves


def _boundary_traffic(ctx: Context, start: int, stop: int) -> dict[str, int]:
    """Words read from / written to DRAM at a fused group's edges (activations only), by kind."""
    traffic = empty_traffic()
    for _, kind, words, _, _ in _boundary(ctx, start, stop):
        traffic[kind] += words
    return traffic


def _run_bytes(ctx: Context, width: int, tile_w: int, tile_h: int) -> int:
    """Contiguous bytes of a tile_h x tile_w window of a row-major map ``width`` pixels wide:
    one row of the window, or the whole window when it spans the full width."""
    return ctx.word * (tile_h * width if tile_w >= width else tile_w)


def _weight_burst(ctx: Context, layer: Layer, streamed: bool) -> int:
    """Weights are stored in the order the engine reads them: a streamed layer's bursts are
    its Tm x Tn x K^2 tiles, a layer loaded whole is one burst."""
    if not streamed:
        return max(1, layer.params * ctx.word)
    s = eng.conv_shape(layer)
    return min(ctx.engine.tm, s.m) * min(ctx.engine.tn, s.n) * s.kh * s.kw * ctx.word


def _activation_burst(ctx: Context, layer: Layer, output: bool) -> int:
    """Bytes per burst of a block (or whole map) of a layer's input or output."""
    if layer.kind == "linear":
        return (layer.out_channels if output else layer.in_channels) * ctx.word
    h, w = _block_shape(layer, output)
    return _run_bytes(ctx, layer.out_w if output else layer.in_w, w, h)


@dataclass(frozen=True)
class WeightPlan:
    words: int  # moved in all
    buffer_words: int  # peak on-chip need, activations included
    note: str
    per_layer: tuple[int, ...]  # words moved for each layer
    streamed: tuple[bool, ...]  # each layer's weights stream tile by tile (not loaded once)


def _weights(
    ctx: Context, start: int, stop: int, act_words: list[int], executions: list[int], live: list[set[int]]
) -> WeightPlan:
    """How a fused group's weights reach the engine.

    ``act_words[j]`` is the activation buffering live while layer start+j runs,
    ``executions[j]`` how often it runs, and ``live[j]`` the layers (offsets) during
    which layer start+j's weights must stay on chip if pinned.  All weights stay on chip
    when they fit beside the peak; otherwise they stream through a double-buffered
    Tm x Tn x K^2 tile buffer and the most re-read layers are pinned where they fit.
    """
    layers = ctx.layers[start:stop]
    budget = ctx.bram_bytes // ctx.word
    sizes = [layer.params for layer in layers]
    if max(act_words) + sum(sizes) <= budget:
        return WeightPlan(sum(sizes), max(act_words) + sum(sizes), "weights on chip", tuple(sizes),
                          (False,) * len(sizes))
    stream = 0
    for layer in layers:
        s = eng.conv_shape(layer)
        stream = max(stream, 2 * min(ctx.engine.tm, s.m) * min(ctx.engine.tn, s.n) * s.kh * s.kw)
    used = [a + stream for a in act_words]
    pinned = [False] * len(layers)
    # Pin the most re-read layers first: each pinned word saves (executions - 1) reads.
    for i in sorted(range(len(layers)), key=lambda i: (-executions[i], sizes[i])):
        if executions[i] > 1 and all(used[j] + sizes[i] <= budget for j in live[i]):
            pinned[i] = True
            for j in live[i]:
                used[j] += sizes[i]
    moved = [w if p else w * n for w, p, n in zip(sizes, pinned, executions)]
    note = f"weights streamed, {sum(pinned)} of {len(layers)} layers pinned" if any(pinned) else "weights streamed"
    return WeightPlan(sum(moved), max(used), note, tuple(moved), tuple(not p for p in pinned))


def _to_bytes(ctx: Context, traffic: dict[str, int]) -> dict[str, int]:
    return {k: v * ctx.word for k, v in traffic.items()}


# ---------------------------------------------------------------------------- layer by layer

def plan_layer(ctx: Context, i: int) -> GroupPlan:
    """One layer on Zhang et al.'s tiled engine, every map through DRAM."""
    layer = ctx.layers[i]
    bram_words = ctx.bram_bytes // ctx.word
    tiles = eng.best_tiles(layer, ctx.engine, bram_words)
    fits = tiles is not None
    if tiles is None:
        tiles = eng.tile_traffic(layer, ctx.engine, ctx.engine.tr or 1, ctx.engine.tc or 1)
    traffic = empty_traffic()
    traffic[_read_kind(ctx.graph.inputs[i].source)] += tiles.input_words
    traffic["weights"] += tiles.weight_words
    traffic[_write_kind(ctx, i)] += tiles.output_words
    for t, k in ctx.graph.merges:
        if k == i:  # the residual added to this layer's output is read back
            traffic["intermediate"] += _tensor_size(ctx, t)
    cycles = eng.compute_cycles(layer, ctx.engine)
    s = eng.conv_shape(layer)
    source = ctx.graph.inputs[i].source
    w = ctx.word
    tm, tn = min(ctx.engine.tm, s.m), min(ctx.engine.tn, s.n)
    if layer.kind == "linear":
        # [batch, features] rows: a tile's Tn features of one input vector are contiguous.
        in_burst = tn * w if tn < s.n and not tiles.hold_input else s.n * tiles.tc * w
        out_burst = tm * w if tm < s.m else tm * tiles.tc * w
    else:
        in_rows = min(s.sh * tiles.tr + s.ext_h - s.sh, s.in_h)
        # A tile spanning every output column reads whole input rows (a strided conv may skip the
        # last column or two; reading them costs less than breaking every row into its own burst).
        in_cols = layer.in_w if tiles.tc >= s.c else min(s.sw * tiles.tc + s.ext_w - s.sw, s.in_w)
        in_burst = _run_bytes(ctx, layer.in_w, min(in_cols, layer.in_w), min(in_rows, layer.in_h))
        out_burst = _run_bytes(ctx, layer.out_w, tiles.tc, tiles.tr)
    transfers = [
        Transfer(_read_kind(source), tiles.input_words * w, in_burst, prefetchable=source == NETWORK_INPUT),
        Transfer("weights", tiles.weight_words * w, _weight_burst(ctx, layer, streamed=True), prefetchable=True),
        Transfer(_write_kind(ctx, i), tiles.output_words * w, out_burst, write=True),
    ]
    for t, k in ctx.graph.merges:
        if k == i:
            transfers.append(Transfer("intermediate", _tensor_size(ctx, t) * w, out_burst))
    phase = Phase(cycles, tiles.steps, tuple(transfers), tiles.buffer_words * w)
    return GroupPlan(
        i, i + 1, "layer", _to_bytes(ctx, traffic), tiles.buffer_words * ctx.word, cycles,
        units=math.ceil(s.r / tiles.tr) * math.ceil(s.c / tiles.tc), fits=fits,
        detail=f"Tr={tiles.tr} Tc={tiles.tc}" + (", input held" if tiles.hold_input else ""), layer_cycles=[cycles],
        layer_extra_macs=[0], phases=[phase],
    )


# ---------------------------------------------------------------------------- block by block

def _block_shape(layer: Layer, output: bool) -> tuple[int, int]:
    rows, cols = output_spans(layer) if output else input_spans(layer)
    return max_span(rows), max_span(cols)


def _weight_live(ctx: Context, start: int, stop: int) -> list[set[int]]:
    """For each layer (offset), the layers during which its pinned weights must stay on chip.

    Block by block, the group repeats its coarsest level ``top`` times (the fewest blocks
    of any of its layers).  A layer that runs more often than that repeats only inside
    the run of finer layers around it, so its weights can leave once that run is over;
    when ``top`` > 1 every layer repeats across the whole group.
    """
    counts = [block_count(layer) for layer in ctx.layers[start:stop]]
    top, n = min(counts), len(counts)
    if top > 1:
        return [set(range(n)) for _ in counts]
    live = []
    for j, count in enumerate(counts):
        if count == top:
            live.append({j})
            continue
        lo, hi = j, j
        while lo - 1 >= 0 and counts[lo - 1] > top:
            lo -= 1
        while hi + 1 < n and counts[hi + 1] > top:
            hi += 1
        live.append(set(range(lo, hi + 1)))
    return live


def plan_block(ctx: Context, start: int, stop: int) -> GroupPlan | None:
    """The group block by block on chip, or None when its grids don't nest or its buffers don't fit."""
    layers, graph = ctx.layers, ctx.graph
    inside = range(start, stop)
    # Buffer (words) per on-chip tensor, and the layers during which it is live.
    buffers: dict[int, int] = {}
    live: dict[int, set[int]] = {}

    def hold(t: int, words: int, during: set[int]) -> None:
        buffers[t] = max(buffers.get(t, 0), words)
        live.setdefault(t, set()).update(during)

    for i in inside:
        layer, e = layers[i], graph.inputs[i]
        in_h, in_w = _block_shape(layer, output=False)
        # A linear layer runs once for the whole batch, so it needs every image's input at once.
        vectors = layer.batch if layer.kind == "linear" else 1
        if layer.kind == "linear":
            in_h = in_w = 1
        if e.source in inside:
            producer = layers[e.source]
            p_rows, p_cols = output_spans(producer)
            c_rows, c_cols = input_spans(layer)
            along_h = nest(p_rows, producer.out_h, c_rows, e.pool_h, e.flatten)
            along_w = nest(p_cols, producer.out_w, c_cols, e.pool_w, e.flatten)
            if along_h is None or along_w is None or {along_h, along_w} == {"coarser", "finer"}:
                return None
            ph, pw = _block_shape(producer, output=True)
            rows = max(math.ceil(ph / e.pool_h), in_h) if not e.flatten else 1
            cols = max(math.ceil(pw / e.pool_w), in_w) if not e.flatten else 1
            during = set(range(e.source, i + 1))
            if "coarser" in (along_h, along_w):
                # Assembled over several producer blocks: live through the finer run feeding it.
                j = e.source
                while j - 1 >= start and block_count(layers[j - 1]) > block_count(layer):
                    j -= 1
                during |= set(range(j, i + 1))
            hold(e.source, vectors * (layer.in_channels * rows * cols if not e.flatten else layer.in_channels), during)
        else:
            # Streamed in from DRAM block by block, double-buffered.
            words = vectors * layer.in_channels * (in_h * in_w if layer.kind != "linear" else 1)
            hold(("in", i), 2 * words, {i})  # type: ignore[arg-type]
    for t in inside:
        oh, ow = _block_shape(layers[t], output=True)
        own = layers[t].out_channels * oh * ow * (layers[t].batch if layers[t].kind == "linear" else 1)
        hold(t, own, {t})
        needed_outside = any(c not in inside for c in graph.consumers(t)) or _is_final(ctx, t) or any(
            a == t and k not in inside for a, k in graph.merges)
        if needed_outside:
            hold(("out", t), own, {t})  # type: ignore[arg-type]  # second buffer: drained while the next fills
    for t, k in graph.merges:
        if t in inside and k in inside:
            if None in (nest(output_spans(layers[t])[0], layers[t].out_h, output_spans(layers[k])[0], 1, False),
                        nest(output_spans(layers[t])[1], layers[t].out_w, output_spans(layers[k])[1], 1, False)):
                return None
            hold(t, buffers[t], set(range(t, k + 1)))
        elif k in inside:
            oh, ow = _block_shape(layers[k], output=True)
            hold(("merge", k), 2 * layers[k].out_channels * oh * ow, {k})  # type: ignore[arg-type]
    act = [sum(buffers[t] for t in buffers if i in live[t]) for i in inside]
    executions = [_executions(layers[i]) for i in inside]
    weights = _weights(ctx, start, stop, act, executions, _weight_live(ctx, start, stop))
    if weights.buffer_words * ctx.word > ctx.bram_bytes:
        return None
    traffic = _boundary_traffic(ctx, start, stop)
    traffic["weights"] += weights.words
    cycles = [eng.compute_cycles(layers[i], ctx.engine) for i in inside]
    counts = [block_count(layers[i]) for i in inside]
    detail = f"blocks {counts[0]}" + (f"->{counts[-1]}" if counts[-1] != counts[0] else "") + f"; {weights.note}"
    return GroupPlan(
        start, stop, "block", _to_bytes(ctx, traffic), weights.buffer_words * ctx.word, sum(cycles),
        units=max(counts), detail=detail, layer_cycles=cycles, layer_extra_macs=[0] * len(cycles),
        phases=_block_phases(ctx, start, stop, cycles, weights),
    )


def _executions(layer: Layer) -> int:
    """How often a layer runs in a block-fused group: once per block per image, and a linear
    layer once per block for the whole batch (its weights serve every image)."""
    return block_count(layer) * (1 if layer.kind == "linear" else layer.batch)


def _segments(counts: list[int]) -> list[range]:
    """Offsets of a block group split where the work must wait.

    A layer with one block reads a whole map, so it starts only when every block before it
    is done and runs alone; runs of layers with several blocks interleave block by block.
    When every layer has several blocks the group repeats as a whole.
    """
    if min(counts) > 1:
        return [range(len(counts))]
    segments: list[range] = []
    j = 0
    while j < len(counts):
        k = j + 1
        if counts[j] > 1:
            while k < len(counts) and counts[k] > 1:
                k += 1
        segments.append(range(j, k))
        j = k
    return segments


def _block_phases(ctx: Context, start: int, stop: int, cycles: list[int], weights: WeightPlan) -> list[Phase]:
    layers, w = ctx.layers, ctx.word
    moves = _boundary(ctx, start, stop)
    phases = []
    for segment in _segments([block_count(layers[start + j]) for j in range(stop - start)]):
        transfers = []
        for j in segment:
            i = start + j
            layer = layers[i]
            burst = _weight_burst(ctx, layer, weights.streamed[j])
            transfers.append(Transfer("weights", weights.per_layer[j] * w, burst, prefetchable=True))
            for mover, kind, words, write, _ in moves:
                if mover == i:
                    transfers.append(Transfer(kind, words * w, _activation_burst(ctx, layer, output=write), write=write,
                                              prefetchable=kind == "input"))
        if len(segment) == 1 and block_count(layers[start + segment[0]]) == 1:
            # A layer alone on a whole map: its steps are the weight tiles it runs through.
            s = eng.conv_shape(layers[start + segment[0]])
            steps = s.batch * s.groups * math.ceil(s.m / ctx.engine.tm) * math.ceil(s.n / ctx.engine.tn)
        else:
            steps = max(_executions(layers[start + j]) for j in segment)
        phases.append(Phase(sum(cycles[j] for j in segment), steps, tuple(transfers), weights.buffer_words * w))
    return phases


# ---------------------------------------------------------------------------- fused tiling with halo recompute

def _pull_back(layer: Layer, intervals: list[tuple[int, int]], dim: str) -> list[tuple[int, int]]:
    """Input rows (or cols) an ordinary conv needs for each output interval."""
    k, s, p, d, size = ((layer.kernel_h, layer.stride_h, layer.pad_h, layer.dilation_h, layer.in_h) if dim == "h"
                        else (layer.kernel_w, layer.stride_w, layer.pad_w, layer.dilation_w, layer.in_w))
    ext = d * (k - 1) + 1
    return [(max(0, a * s - p), min(size, (b - 1) * s - p + ext)) for a, b in intervals]


def _tile_intervals(size: int, tile: int) -> list[tuple[int, int]]:
    return [(a, min(a + tile, size)) for a in range(0, size, tile)]


def plan_tiled(ctx: Context, start: int, stop: int, max_layers: int = 10) -> GroupPlan | None:
    """Alwani et al.'s fused tiling of ordinary convs, or None when the group can't be fused so."""
    layers, graph = ctx.layers, ctx.graph
    if stop - start > max_layers:
        return None
    inside = range(start, stop)
    for i in range(start + 1, stop):
        e = graph.inputs[i]
        if e.source != i - 1 or e.flatten or layers[i].kind == "linear":
            return None  # a chain of convs only
    if any(layers[i].kind == "linear" for i in inside):
        return None  # no map to cut into tiles: a linear layer runs on the tiled engine
    if any(t in inside and k in inside for t, k in graph.merges):
        return None
    last = layers[stop - 1]
    best: GroupPlan | None = None
    for tile in sorted({math.ceil(last.out_h / n) for n in range(1, last.out_h + 1)}, reverse=True):
        rows = _tile_intervals(last.out_h, tile)
        cols = _tile_intervals(last.out_w, tile)
        # Per layer: outputs computed (sum over tiles of rows, of cols), largest output tile, largest input tile.
        computed: list[tuple[int, int, int, int, int]] = []
        for i in reversed(inside):
            layer = layers[i]
            out_rows, out_cols = rows, cols
            rows, cols = _pull_back(layer, rows, "h"), _pull_back(layer, cols, "w")
            computed.append((sum(b - a for a, b in out_rows), sum(b - a for a, b in out_cols),
                             max(b - a for a, b in out_rows) * max(b - a for a, b in out_cols),
                             max(b - a for a, b in rows) * max(b - a for a, b in cols)))
            if i > start:
                e = graph.inputs[i]
                prev = layers[i - 1]
                rows = [(a * e.pool_h, min(b * e.pool_h, prev.out_h)) for a, b in rows]
                cols = [(a * e.pool_w, min(b * e.pool_w, prev.out_w)) for a, b in cols]
        computed.reverse()
        in_rows, in_cols = sum(b - a for a, b in rows), sum(b - a for a, b in cols)
        max_in = max(b - a for a, b in rows) * max(b - a for a, b in cols)
        peak, cycles, extra = 0, [], []
        for i, (sr, sc, out_tile, in_tile) in zip(inside, computed):
            layer = layers[i]
            peak = max(peak, layer.in_channels * in_tile + layer.out_channels * out_tile)
            cycles.append(eng.compute_cycles(layer, ctx.engine, rows=sr, cols=sc))
            per_output = (layer.in_channels // layer.groups) * layer.kernel_h * layer.kernel_w
            extra.append(layer.batch * layer.out_channels * (sr * sc - layer.out_h * layer.out_w) * per_output)
        # DRAM-facing tiles are double-buffered.
        peak += layers[start].in_channels * max_in + last.out_channels * computed[-1][2]
        n_tiles = len(_tile_intervals(last.out_h, tile)) * len(_tile_intervals(last.out_w, tile))
        if peak * ctx.word > ctx.bram_bytes:
            continue
        executions = [_executions(layers[i]) * n_tiles for i in inside]
        everywhere = [set(range(stop - start)) for _ in inside]  # tiles repeat the whole group
        weights = _weights(ctx, start, stop, [peak] * (stop - start), executions, everywhere)
        if weights.buffer_words * ctx.word > ctx.bram_bytes:
            continue
        moves = _boundary(ctx, start, stop)
        traffic = _boundary_traffic(ctx, start, stop)
        # The group input is read tile by tile, overlaps included.
        src = graph.inputs[start].source
        overlap = layers[start].batch * layers[start].in_channels * in_rows * in_cols - _input_size(layers[start])
        traffic[_read_kind(src)] += overlap
        traffic["weights"] += weights.words
        w = ctx.word
        first = layers[start]
        tile_in = (max(b - a for a, b in rows), max(b - a for a, b in cols))
        in_burst = _run_bytes(ctx, first.in_w, tile_in[1], tile_in[0])
        out_burst = _run_bytes(ctx, last.out_w, tile, tile)
        transfers = []
        for _, kind, words, write, tensor in moves:
            if tensor == src and not write:
                words += overlap  # the group input, tile by tile: one read of every tile's window
            transfers.append(Transfer(kind, words * w, out_burst if write else in_burst, write=write,
                                      prefetchable=kind == "input"))
        for j, i in enumerate(inside):
            transfers.append(Transfer("weights", weights.per_layer[j] * w,
                                      _weight_burst(ctx, layers[i], weights.streamed[j]), prefetchable=True))
        phase = Phase(sum(cycles), max(executions), tuple(transfers), weights.buffer_words * w)
        plan = GroupPlan(
            start, stop, "tiled", _to_bytes(ctx, traffic), weights.buffer_words * ctx.word, sum(cycles),
            extra_macs=sum(extra), units=n_tiles, detail=f"tile {tile}x{tile}; {weights.note}",
            layer_cycles=cycles, layer_extra_macs=extra, phases=[phase],
        )
        if best is None or (plan.dram_bytes, plan.extra_macs) < (best.dram_bytes, best.extra_macs):
            best = plan
    return best


# ---------------------------------------------------------------------------- grouping

OBJECTIVES = ("traffic", "intermediate")


def choose_groups(ctx: Context, mode: str, objective: str = "traffic") -> list[GroupPlan]:
    """Split the layer list into the groups with the least DRAM traffic (ties: least time).

    ``objective="intermediate"`` first minimises the intermediate-map traffic (the design
    goal of keeping all intermediate data on chip), then the total.
    """
    n = len(ctx.layers)
    planner = {"layer": None, "block": plan_block, "tiled": plan_tiled}[mode]
    singles = [plan_layer(ctx, i) for i in range(n)]
    if planner is None:
        return singles
    best: list[tuple[int, int, int, list[GroupPlan]] | None] = [None] * (n + 1)
    best[0] = (0, 0, 0, [])
    first = (lambda p: p.traffic["intermediate"]) if objective == "intermediate" else (lambda p: 0)
    for stop in range(1, n + 1):
        for start in range(stop):
            if best[start] is None:
                continue
            options = [singles[start]] if stop == start + 1 else []
            fused = planner(ctx, start, stop)
            if fused is not None:
                options.append(fused)
            for plan in options:
                inter, traffic, cycles, plans = best[start]
                key = (inter + first(plan), traffic + plan.dram_bytes, cycles + plan.cycles, [*plans, plan])
                if best[stop] is None or key[:3] < best[stop][:3]:
                    best[stop] = key
    assert best[n] is not None
    return best[n][3]


def has_block_convs(layers: tuple[Layer, ...] | list[Layer]) -> bool:
    return any(is_blocked(layer) for layer in layers)
