"""Read an ONNX file into the layer IR, so a network from any framework can be costed.

Understood: ``Conv`` (dense, grouped, depthwise; a 1xK / Kx1 depthwise conv is a fuse_row /
fuse_col layer), a ``Pad`` right before a Conv (folded into its padding), ``Gemm`` and a
``MatMul`` by a constant (linear layers), and the two forms fuseops' exporter gives a
block convolution, which come back as one blocked layer with its grid:

* blocks that tile the map evenly: ``Reshape(-1, C, nh, bh, nw, bw)`` -> ``Transpose`` ->
  ``Reshape(-1, C, bh, bw)`` -> [``Pad``] -> ``Conv``;
* a ragged grid: per block ``Slice`` (H) -> ``Slice`` (W) -> [``Pad``] -> ``Conv``, the
  blocks' Convs sharing one weight.

A Conv that fuseops exported carries its block grid in node metadata
(``fuseops.block_grid``): it marks the Convs of a block conv (the per-block Slice pattern is
read only on marked Convs, so an ordinary crop before a Conv stays an ordinary conv) and is
the only trace of a one-block block conv.  Only the batch dimension may be symbolic.
Other nodes that own weights (``ConvTranspose``, recurrent and attention nodes, ...) are
listed in ``Trace.unsupported``; normalisation, activations, pooling and shape nodes are
free, as in :mod:`hwmodel.trace`.  Needs the ``onnx`` package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from hwmodel.layers import Layer, Unsupported, conv_kind
from hwmodel.trace import Trace

# fuseops.onnx.translations.BLOCK_GRID_KEY (hwmodel must not import fuseops' exporter).
BLOCK_GRID_KEY = "fuseops.block_grid"
# ONNX nodes that carry weights the layer IR cannot describe.
UNSUPPORTED_OPS = frozenset({"ConvTranspose", "ConvInteger", "QLinearConv", "LSTM", "GRU", "RNN", "Attention",
                             "MultiHeadAttention", "DeformConv", "Einsum"})


def is_onnx_source(obj: object) -> bool:
    """A path to an .onnx file, or an ``onnx.ModelProto``."""
    if isinstance(obj, (str, os.PathLike)):
        return os.fspath(obj).lower().endswith(".onnx")
    return type(obj).__name__ == "ModelProto" and type(obj).__module__.startswith("onnx")


def read_onnx(source: Any, *, batch: int = 1) -> Trace:
    """The compute layers of an ONNX model, in graph order.

    Args:
        source: a path to an .onnx file or an ``onnx.ModelProto``.
        batch: the batch size for a dynamic (symbolic) batch dimension.

    Raises:
        ImportError: the ``onnx`` package is missing.
        FileNotFoundError / ValueError: no such file, or a node the reader cannot size.
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX needs the onnx package: pip install 'fuseops[onnx]'") from None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file not found: {path}")
        model = onnx.load(path)
    else:
        model = source
    model = onnx.shape_inference.infer_shapes(model)
    return _Reader(model.graph, batch).read()


@dataclass
class _BlockGroup:
    """Convs of one ragged block conv: same weight, same source map."""

    node: Any
    source: str
    weight: str
    pad: tuple[int, int]
    rows: dict[tuple[int, int], None] = field(default_factory=dict)
    cols: dict[tuple[int, int], None] = field(default_factory=dict)


class _Reader:
    def __init__(self, graph, batch: int) -> None:
        from onnx import numpy_helper

        self.batch = batch
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.shapes: dict[str, list[int | None]] = {}
        for value in (*graph.input, *graph.value_info, *graph.output):
            dims = value.type.tensor_type.shape.dim
            self.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        for name, array in self.constants.items():
            self.shapes.setdefault(name, list(array.shape))
        self.producer = {out: node for node in graph.node for out in node.output}
        self.nodes = list(graph.node)
        self.layers: list[Layer] = []
        self.unsupported: list[Unsupported] = []
        self.group: _BlockGroup | None = None

    # --- helpers ---------------------------------------------------------------------

    def _shape(self, name: str, what: str, rank: int | None = None) -> list[int]:
        """Static dims of ``name``; only dimension 0 (the batch) may be symbolic."""
        dims = self.shapes.get(name)
        if dims is None or (rank is not None and len(dims) != rank):
            found = "no shape" if dims is None else f"shape {dims}"
            raise ValueError(f"cannot size {what}: ONNX shape inference gave {found} for {name!r}"
                             + (f", expected {rank} dimensions" if rank is not None else ""))
        symbolic = [i for i, d in enumerate(dims) if i > 0 and not d]
        if symbolic:
            raise ValueError(f"cannot size {what}: {name!r} has symbolic dimensions {symbolic} ({dims}); "
                             "only the batch dimension may be dynamic, export with a fixed input size")
        return [self.batch if i == 0 and not d else int(d) for i, d in enumerate(dims)]

    def _from(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def _ints(self, name: str) -> list[int] | None:
        value = self.constants.get(name)
        return None if value is None else [int(v) for v in value.reshape(-1)]

    @staticmethod
    def _attr(node, name: str, default):
        for attribute in node.attribute:
            if attribute.name == name:
                from onnx import helper

                return helper.get_attribute_value(attribute)
        return default

    # --- reading ---------------------------------------------------------------------

    def read(self) -> Trace:
        for node in self.nodes:
            if node.op_type == "Conv":
                self._conv(node)
            elif node.op_type in ("Gemm", "MatMul"):
                self._flush()
                self._linear(node)
            elif node.op_type in UNSUPPORTED_OPS:
                self._flush()
                self.unsupported.append(Unsupported(node.name or node.output[0], node.op_type,
                                                    "not a conv or linear layer the hardware models can cost"))
        self._flush()
        return Trace(self.layers, self.unsupported)

    def _flush(self) -> None:
        group, self.group = self.group, None
        if group is None:
            return
        rows, cols = tuple(group.rows), tuple(group.cols)
        _, channels, _, _ = self._shape(group.source, "a block conv's input", rank=4)
        height, width = rows[-1][1], cols[-1][1]
        # Layer sizes the unpadded map; the slices cover it whole.
        self.layers.append(self._conv_layer(group.node, group.source, (channels, height, width), group.pad,
                                            (rows, cols)))

    def _pad_before(self, name: str) -> tuple[str, tuple[int, int]]:
        """(the Conv's real input, extra (pad_h, pad_w) from a Pad node in front of it)."""
        pad = self._from(name, "Pad")
        if pad is None:
            return name, (0, 0)
        pads = self._ints(pad.input[1]) if len(pad.input) > 1 else list(self._attr(pad, "pads", []))
        if pads is None or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) \
                or pads[2] != pads[6] or pads[3] != pads[7]:
            return name, (0, 0)  # not a symmetric spatial pad: the Conv reads the padded map
        return pad.input[0], (pads[2], pads[3])

    def _conv(self, node) -> None:
        source, pad = self._pad_before(node.input[0])
        # Per-block Slices only where fuseops' exporter marked the Conv as a block conv's:
        # any other crop before a Conv is an ordinary conv on the cropped map.
        slices = self._block_slices(source) if self._marked_grid(node) is not None else None
        if slices is not None:
            origin, rows, cols = slices
            group = self.group
            if group is None or group.weight != node.input[1] or group.source != origin:
                self._flush()
                group = self.group = _BlockGroup(node, origin, node.input[1], pad)
            group.rows[rows] = None
            group.cols[cols] = None
            return
        self._flush()
        batched = self._batched_blocks(source)
        if batched is not None:
            origin, (channels, height, width), blocks = batched
            self.layers.append(self._conv_layer(node, origin, (channels, height, width), pad, blocks))
            return
        _, channels, height, width = self._shape(source, f"the input of Conv {node.name!r}", rank=4)
        self.layers.append(self._conv_layer(node, source, (channels, height, width), pad, self._marked_grid(node)))

    @staticmethod
    def _marked_grid(node):
        """The block grid fuseops' exporter wrote on the node, or None."""
        for prop in node.metadata_props:
            if prop.key == BLOCK_GRID_KEY:
                grid = json.loads(prop.value)
                return tuple(map(tuple, grid["rows"])), tuple(map(tuple, grid["cols"]))
        return None

    def _block_slices(self, name: str):
        """(source map, row span, col span) for a Slice(H) -> Slice(W) block, else None."""
        cols = self._from(name, "Slice")
        rows = self._from(cols.input[0], "Slice") if cols is not None else None
        if rows is None:
            return None
        spans = []
        for node, axis in ((rows, 2), (cols, 3)):
            starts, ends, axes = (self._ints(n) for n in node.input[1:4]) if len(node.input) >= 4 else (None,) * 3
            steps = self._ints(node.input[4]) if len(node.input) >= 5 else [1]
            if not starts or not ends or axes != [axis] or steps != [1]:
                return None
            spans.append((starts[0], ends[0]))
        return rows.input[0], spans[0], spans[1]

    def _batched_blocks(self, name: str):
        """(source map, (C, H, W), (row spans, col spans)) for the even block pattern, else None."""
        inner = self._from(name, "Reshape")
        transpose = self._from(inner.input[0], "Transpose") if inner is not None else None
        outer = self._from(transpose.input[0], "Reshape") if transpose is not None else None
        if outer is None or list(self._attr(transpose, "perm", [])) != [0, 2, 4, 1, 3, 5]:
            return None
        shape = self._ints(outer.input[1])
        if shape is None or len(shape) != 6:
            return None
        _, channels, nh, bh, nw, bw = shape
        rows = tuple((i * bh, (i + 1) * bh) for i in range(nh))
        cols = tuple((j * bw, (j + 1) * bw) for j in range(nw))
        return outer.input[0], (channels, nh * bh, nw * bw), (rows, cols)

    def _conv_layer(self, node, source: str, chw: tuple[int, int, int], extra_pad: tuple[int, int],
                    blocks) -> Layer:
        name = node.name or node.output[0]
        weight = self._shape(node.input[1], f"the weight of Conv {name!r}")
        if len(weight) != 4:
            raise ValueError(f"Conv {name!r} is not 2-D (weight shape {weight}); only 2-D convs are costed")
        out_channels, _, kernel_h, kernel_w = weight
        channels, height, width = chw
        groups = int(self._attr(node, "group", 1))
        stride_h, stride_w = self._attr(node, "strides", [1, 1])
        dilation_h, dilation_w = self._attr(node, "dilations", [1, 1])
        top, left, bottom, right = self._attr(node, "pads", [0, 0, 0, 0])
        if self._attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"Conv {name!r} uses auto_pad; export with explicit pads")
        if bottom < top or right < left:
            raise ValueError(f"Conv {name!r} pads more at the start than at the end ({[top, left, bottom, right]})")
        # An extra row/column at the end is folded into the input size (as for "same" padding).
        height += bottom - top
        width += right - left
        batch = self._shape(source, f"the input of Conv {name!r}")[0]
        return Layer(name=name, kind=conv_kind(groups, channels, kernel_h, kernel_w), batch=batch,
                     in_channels=channels, in_h=height, in_w=width, out_channels=out_channels, kernel_h=kernel_h,
                     kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w, pad_h=top + extra_pad[0],
                     pad_w=left + extra_pad[1], dilation_h=dilation_h, dilation_w=dilation_w, groups=groups,
                     block_rows=blocks[0] if blocks else None, block_cols=blocks[1] if blocks else None,
                     meta={"onnx_op": "Conv"})

    def _linear(self, node) -> None:
        name = node.name or node.output[0]
        if node.input[1] not in self.constants and self.producer.get(node.input[1]) is not None:
            if node.op_type == "MatMul":
                return  # a product of two activations (attention): not a layer with weights
        weight = self._shape(node.input[1], f"the weight of {node.op_type} {name!r}")
        data = self._shape(node.input[0], f"the input of {node.op_type} {name!r}")
        if len(weight) != 2:
            return
        if node.op_type == "Gemm" and self._attr(node, "transB", 0):
            out_features, in_features = weight
        else:
            in_features, out_features = weight
        rows = 1
        for dim in data[:-1]:
            rows *= dim
        self.layers.append(Layer(name, "linear", max(rows, 1), in_features, 1, 1, out_features,
                                 meta={"onnx_op": node.op_type}))
