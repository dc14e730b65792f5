"""SCALE-Sim's topology CSV, read and written as the layer IR.

The format (SCALE-Sim 3, convolution mode) has one row per layer after a header line::

    Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,
    conv1, 226, 226, 3, 3, 3, 32, 2,

The IFMAP is already padded, one stride applies to both axes, every row ends with a
comma, and a name containing "DP" marks a depthwise layer: SCALE-Sim runs it as one
layer per channel, each with one channel and "Num Filter" filters (so "Num Filter" is the
channel multiplier, 1 for an ordinary depthwise conv).  An optional ninth column holds a
sparsity ratio "N:M"; only the dense "1:1" is accepted here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from hwmodel.layers import Layer

HEADER = ("Layer name", "IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels",
          "Num Filter", "Strides")


def _cell_int(path: str, line_no: int, column: int, cell: str) -> int:
    text = cell.strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{path}: line {line_no}, column {column + 1} ({HEADER[column]}): expected a "
                         f"positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{path}: line {line_no}, column {column + 1} ({HEADER[column]}): must be >= 1, "
                         f"got {value}")
    return value


def _row_layer(path: str, line_no: int, cells: list[str]) -> Layer:
    if len(cells) not in (8, 9):
        raise ValueError(f"{path}: line {line_no}: expected 8 columns ({', '.join(HEADER)}) and an optional "
                         f"sparsity ratio, got {len(cells)}: {','.join(cells)!r}")
    name = cells[0].strip()
    if not name:
        raise ValueError(f"{path}: line {line_no}, column 1 (Layer name): the name is empty")
    in_h, in_w, k_h, k_w, channels, filters, stride = (
        _cell_int(path, line_no, col, cells[col]) for col in range(1, 8))
    if len(cells) == 9 and cells[8].strip().replace(" ", "") not in ("", "1:1"):
        raise ValueError(f"{path}: line {line_no}, column 9 (sparsity): only dense layers ('1:1') are "
                         f"modelled, got {cells[8].strip()!r}")
    if k_h > in_h or k_w > in_w:
        raise ValueError(f"{path}: line {line_no}: filter {k_h}x{k_w} is larger than the (padded) IFMAP "
                         f"{in_h}x{in_w}")
    common = dict(name=name, batch=1, in_h=in_h, in_w=in_w, kernel_h=k_h, kernel_w=k_w,
                  stride_h=stride, stride_w=stride, meta={"source": f"{os.fspath(path)}:{line_no}"})
    if "DP" in name:  # SCALE-Sim's own marker, matched the way SCALE-Sim matches it
        kind = "fuse_row" if k_h == 1 and k_w > 1 else "fuse_col" if k_w == 1 and k_h > 1 else "depthwise"
        if channels == 1:
            kind = "conv"  # one channel: a depthwise conv is an ordinary one
        return Layer(kind=kind, in_channels=channels, out_channels=channels * filters, groups=channels,
                     **common)
    return Layer(kind="conv", in_channels=channels, out_channels=filters, **common)


def read_topology(path: str | os.PathLike) -> list[Layer]:
    """Layers of a SCALE-Sim topology CSV (batch 1, padding already in the IFMAP size).

    Raises ValueError naming the line and column of anything malformed.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    layers = []
    header_seen = False
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if not header_seen:
            if not line.lower().startswith("layer name"):
                raise ValueError(f"{path}: line {line_no}: expected the header "
                                 f"'{', '.join(HEADER)},', got {line[:80]!r}")
            header_seen = True
            continue
        cells = line.split(",")
        if cells and cells[-1].strip() == "":
            cells = cells[:-1]  # the trailing comma every SCALE-Sim row has
        layers.append(_row_layer(path, line_no, cells))
    if not header_seen:
        raise ValueError(f"{path}: the file is empty; expected the header '{', '.join(HEADER)},'")
    return layers


def _clean_name(name: str, depthwise: bool) -> str:
    # Commas would split the row; "DP" is SCALE-Sim's depthwise marker, so it must appear in
    # exactly the depthwise rows.
    name = name.replace(",", "_").strip() or "layer"
    if depthwise:
        return name if "DP" in name else f"DP_{name}"
    return name.replace("DP", "D_P")


def topology_rows(layer: Layer) -> list[tuple[str, int, int, int, int, int, int, int]]:
    """The topology rows of one layer; a grouped (not depthwise) conv becomes one row per
    group.  Raises ValueError for what one row cannot express."""
    if layer.batch != 1 and layer.kind != "linear":
        raise ValueError(f"layer {layer.name!r}: a topology row has no batch; trace with batch 1 "
                         f"(got batch={layer.batch})")
    if layer.dilation_h != 1 or layer.dilation_w != 1:
        raise ValueError(f"layer {layer.name!r}: SCALE-Sim topologies have no dilation")
    if layer.block_rows is not None or layer.block_cols is not None:
        raise ValueError(f"layer {layer.name!r}: a block convolution has no topology row")
    if layer.stride_h != layer.stride_w:
        raise ValueError(f"layer {layer.name!r}: SCALE-Sim topologies have one stride for both axes, "
                         f"got ({layer.stride_h}, {layer.stride_w})")
    if layer.kind == "linear":
        # Each of the batch rows is one output pixel of a 1x1 conv over a batch x 1 map.
        return [(_clean_name(layer.name, False), layer.batch, 1, 1, 1, layer.in_channels,
                 layer.out_channels, 1)]
    in_h, in_w = layer.in_h + 2 * layer.pad_h, layer.in_w + 2 * layer.pad_w
    geometry = (in_h, in_w, layer.kernel_h, layer.kernel_w)
    groups, stride = layer.groups, layer.stride_h
    if groups > 1 and groups == layer.in_channels:
        return [(_clean_name(layer.name, True), *geometry, layer.in_channels, layer.out_channels // groups,
                 stride)]
    name = _clean_name(layer.name, False)
    per_group = (layer.in_channels // groups, layer.out_channels // groups, stride)
    if groups == 1:
        return [(name, *geometry, *per_group)]
    return [(f"{name}_g{g}", *geometry, *per_group) for g in range(groups)]


def write_topology(layers: Iterable[Layer], path: str | os.PathLike) -> int:
    """Write ``layers`` as a SCALE-Sim topology CSV; returns the number of rows written.

    Batch-1 layers only (a linear layer's batch becomes the IFMAP height); no dilation
    or blocks; one stride.  Padding is folded into the IFMAP size.
    """
    rows = []
    for layer in layers:
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must hold hwmodel.Layer, got {type(layer).__name__}")
        rows.extend(topology_rows(layer))
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write(", ".join(HEADER) + ",\n")
        for row in rows:
            f.write(", ".join(str(v) for v in row) + ",\n")
    return len(rows)
