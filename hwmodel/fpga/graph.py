"""Dataflow between the layers of a flat layer list, and each layer's block grid.

The Layer IR is a list of compute layers with no edges and no pooling layers.  The FPGA
model needs both: which tensor each layer reads, and how much pooling lies in between
(pooling changes the coordinates in which block grids must nest).  Both are inferred
from shapes, nearest producer first:

* layer i reads tensor j (the output of layer j < i, or the network input, j = -1) when
  j has layer i's input channels and its H x W shrinks to layer i's by an integer pooling
  factor p >= 1 (floor pooling: H_j // p == H_i); a linear layer also matches a tensor
  it flattens (C*H*W == in_features, after pooling);
* a FuSe 1xK / Kx1 layer may read a channel slice of a tensor (the half variant splits
  the channels between the row and the column conv);
* when no single tensor matches, a layer may read the concatenation of two consecutive
  layer outputs (the FuSe row and column halves, [row, col]);
* a tensor no layer reads, other than the last, is taken to be added (a residual) into
  the nearest later tensor of the same shape, or else folded into the next layer's
  output (a concatenated half, an SE gate): it must be kept until then.

Identity shortcuts (a block input added to a later output) leave no trace in a layer
list, so they are not modelled: their buffering and, where a group boundary splits
them, their traffic are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwmodel.layers import Layer

Spans = tuple[tuple[int, int], ...]
NETWORK_INPUT = -1


@dataclass(frozen=True)
class Edge:
    """Layer ``consumer`` reads tensor ``source`` (a layer index or NETWORK_INPUT), pooled by (ph, pw)."""

    source: int
    consumer: int
    pool_h: int
    pool_w: int
    flatten: bool = False


@dataclass(frozen=True)
class Graph:
    layers: tuple[Layer, ...]
    inputs: tuple[Edge, ...]  # inputs[i]: what layer i reads
    merges: tuple[tuple[int, int], ...]  # (tensor, later layer whose output it is added to)

    def consumers(self, tensor: int) -> list[int]:
        return [e.consumer for e in self.inputs if e.source == tensor]


def tensor_shape(layers: tuple[Layer, ...] | list[Layer], tensor: int) -> tuple[int, int, int]:
    """(C, H, W) of a layer's output, or of the network input for NETWORK_INPUT."""
    if tensor == NETWORK_INPUT:
        first = layers[0]
        return first.in_channels, first.in_h, first.in_w
    layer = layers[tensor]
    return layer.out_channels, layer.out_h, layer.out_w


def _pool_factor(src: int, dst: int) -> int | None:
    if dst > src:
        return None
    p = src // dst
    return p if src // p == dst else None


def _match(layer: Layer, shape: tuple[int, int, int]) -> tuple[int, int, bool] | None:
    c, h, w = shape
    sliced = layer.kind in ("fuse_row", "fuse_col") and c > layer.in_channels
    if c == layer.in_channels or sliced:
        ph, pw = _pool_factor(h, layer.in_h), _pool_factor(w, layer.in_w)
        if ph is not None and pw is not None:
            return ph, pw, False
    if layer.kind == "linear" and layer.in_h == 1 and layer.in_w == 1 and layer.in_channels % c == 0:
        # Flatten: in_features = C * (H/p) * (W/p) for one pooling factor.
        area = layer.in_channels // c
        for p in range(1, max(h, w) + 1):
            if (h // p) * (w // p) == area:
                return p, p, True
    return None


def build_graph(layers: list[Layer]) -> Graph:
    inputs: list[Edge] = []
    concat: list[tuple[int, int]] = []
    for i, layer in enumerate(layers):
        edge = None
        prev = layers[i - 1] if i else None
        if (layer.kind == "fuse_col" and prev is not None and prev.kind == "fuse_row"
                and (prev.in_h, prev.in_w) == (layer.in_h, layer.in_w)):
            # The two halves of one FuSe conv read the same tensor.
            inputs.append(Edge(inputs[-1].source, i, inputs[-1].pool_h, inputs[-1].pool_w, inputs[-1].flatten))
            continue
        if i >= 2 and layers[i - 2].kind == "fuse_row" and prev is not None and prev.kind == "fuse_col":
            # After a FuSe conv comes its [row, col] concatenation, even where an older tensor has that shape.
            (c1, h1, w1), (c0, h0, w0) = tensor_shape(layers, i - 1), tensor_shape(layers, i - 2)
            found = _match(layer, (c0 + c1, h1, w1)) if (h0, w0) == (h1, w1) else None
            if found is not None:
                inputs.append(Edge(i - 1, i, found[0], found[1], found[2]))
                concat.append((i - 2, i - 1))
                continue
        for j in [*range(i - 1, -1, -1), NETWORK_INPUT]:
            found = _match(layer, tensor_shape(layers, j))
            if found is not None:
                edge = Edge(j, i, found[0], found[1], found[2])
                break
        if edge is None:
            # The concatenation of two consecutive outputs, nearest first.
            for j in range(i - 1, 0, -1):
                (c1, h1, w1), (c0, h0, w0) = tensor_shape(layers, j), tensor_shape(layers, j - 1)
                if (h1, w1) != (h0, w0):
                    continue
                found = _match(layer, (c0 + c1, h1, w1))
                if found is not None:
                    edge = Edge(j, i, found[0], found[1], found[2])
                    concat.append((j - 1, j))
                    break
        if edge is None:
            raise ValueError(
                f"cannot tell where layer {i} ({layer.name!r}, input {layer.in_channels}x{layer.in_h}x{layer.in_w}) "
                "reads from: no earlier layer output (or the network input) has its channels and a size that "
                "pools down to its size"
            )
        inputs.append(edge)
    merges = list(concat)
    read = {e.source for e in inputs} | {t for t, _ in concat}
    for t in range(len(layers) - 1):
        if t in read:
            continue
        shape = tensor_shape(layers, t)
        later = next((k for k in range(t + 1, len(layers)) if tensor_shape(layers, k) == shape), t + 1)
        merges.append((t, later))
    return Graph(tuple(layers), tuple(inputs), tuple(merges))


# ---------------------------------------------------------------------------- block grids

def input_spans(layer: Layer) -> tuple[Spans, Spans]:
    """The layer's blocks along H and W in input coordinates (one block when unblocked)."""
    rows = layer.block_rows if layer.block_rows is not None else ((0, layer.in_h),)
    cols = layer.block_cols if layer.block_cols is not None else ((0, layer.in_w),)
    return rows, cols


def _out_spans(spans: Spans, kernel: int, stride: int, pad: int, dilation: int, blocked: bool, out: int) -> Spans:
    if not blocked:
        return ((0, out),)
    result, at = [], 0
    for start, stop in spans:
        n = (stop - start + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        result.append((at, at + n))
        at += n
    return tuple(result)


def output_spans(layer: Layer) -> tuple[Spans, Spans]:
    """The layer's blocks along H and W in output coordinates."""
    rows, cols = input_spans(layer)
    return (
        _out_spans(rows, layer.kernel_h, layer.stride_h, layer.pad_h, layer.dilation_h,
                   layer.block_rows is not None, layer.out_h),
        _out_spans(cols, layer.kernel_w, layer.stride_w, layer.pad_w, layer.dilation_w,
                   layer.block_cols is not None, layer.out_w),
    )


def is_blocked(layer: Layer) -> bool:
    return layer.block_rows is not None or layer.block_cols is not None


def block_count(layer: Layer) -> int:
    rows, cols = input_spans(layer)
    return len(rows) * len(cols)


def _cuts(spans: Spans, end: int) -> set[int]:
    return {start for start, _ in spans} | {end}


def nest(producer_spans: Spans, produced: int, consumer_spans: Spans, pool: int, flatten: bool) -> str | None:
    """How a consumer's blocks sit on a producer's, along one dimension.

    Returns "coarser" (each consumer block is a union of whole producer blocks: the
    consumer waits for several), "finer" (each producer block is a union of consumer
    blocks), "same", or None when they straddle (the consumer needs a halo).
    """
    if flatten:
        return "same" if len(producer_spans) == 1 else "coarser"
    p_cuts = _cuts(producer_spans, produced)
    # Pull the consumer's cuts back through floor pooling; its last block takes the remainder.
    c_cuts = {start * pool for start, _ in consumer_spans} | {produced}
    if p_cuts == c_cuts:
        return "same"
    if c_cuts <= p_cuts:
        return "coarser"
    if p_cuts <= c_cuts:
        return "finer"
    return None


def max_span(spans: Spans) -> int:
    return max(stop - start for start, stop in spans)
