"""The two ops written in standard ONNX operators (default domain, opset 18).

These are trace-only translation functions for the dynamo ONNX exporter: they run once per
op node at export time, with the node's tensor inputs as symbolic ONNX values and its
other arguments as Python values, and emit ONNX nodes through ``onnxscript``'s opset.

* ``fuse_conv2d``: a Slice per part (half variant), two depthwise ``Conv`` (group =
  channels; the bias as each Conv's B input), ``Concat``, then ``Relu``/``Clip``/``HardSwish``.
* ``block_conv2d``: when the blocks tile the map evenly, one ``Conv`` over all blocks at
  once: ``Reshape``/``Transpose`` the map into a batch of blocks, ``Pad`` each with the
  padding mode, ``Conv`` with pads 0, and ``Reshape``/``Transpose`` back.  Otherwise
  (ragged grids) ``Slice``, ``Pad`` and ``Conv`` per block, ``Concat`` per block row and
  then over rows.  Both are exactly the reference's definition.
"""

from __future__ import annotations

import json

from onnxscript import opset18 as op

# ONNX Pad's name for each padding mode.
PAD_MODES = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}
#: Node metadata on every Conv of a block conv: its grid as JSON {"rows": [[start, stop], ...],
#: "cols": [...]} in input coordinates.  Standard ONNX ignores it; hwmodel reads the grid from
#: it, which is the only trace of a one-block block conv (a Pad and a Conv otherwise).
BLOCK_GRID_KEY = "fuseops.block_grid"


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _activation(out, activation: str):
    if activation == "relu":
        return op.Relu(out)
    if activation == "relu6":
        # Clip's bounds must have the input's type (float16 exports included).
        low, high = (op.CastLike(op.Constant(value_float=bound), out) for bound in (0.0, 6.0))
        return op.Clip(out, low, high)
    if activation == "hardswish":
        return op.HardSwish(out)
    return out


def _slice(value, start: int, stop: int, axis: int):
    return op.Slice(value, op.Constant(value_ints=[start]), op.Constant(value_ints=[stop]),
                    op.Constant(value_ints=[axis]))


def fuse_conv2d(x, weight_row, weight_col, bias=None, full: bool = False, stride: int = 1, padding: int = 0,
                dilation: int = 1, activation: str = "none"):
    c_row, c_col = int(weight_row.shape[0]), int(weight_col.shape[0])
    kernel = int(weight_row.shape[3]) if c_row else int(weight_col.shape[2])
    stride, padding, dilation = int(stride), int(padding), int(dilation)
    parts = []
    for count, start, weight, shape, pads in (
        (c_row, 0, weight_row, [1, kernel], [0, padding, 0, padding]),
        (c_col, c_row, weight_col, [kernel, 1], [padding, 0, padding, 0]),
    ):
        if count == 0:
            continue
        source = x if full else _slice(x, start, start + count, 1)
        inputs = [source, weight] if bias is None else [source, weight, _slice(bias, start, start + count, 0)]
        parts.append(op.Conv(*inputs, group=count, kernel_shape=shape, strides=[stride, stride], pads=pads,
                             dilations=[dilation, dilation]))
    out = parts[0] if len(parts) == 1 else op.Concat(*parts, axis=1)
    return _activation(out, activation)


def _pad(block, padding: list[int], mode: str):
    pad_h, pad_w = padding
    if pad_h == 0 and pad_w == 0:
        return block
    # ONNX Pad: [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over all four axes.
    pads = op.Constant(value_ints=[0, 0, pad_h, pad_w, 0, 0, pad_h, pad_w])
    return op.Pad(block, pads, mode=PAD_MODES[mode])


def _even(bounds: list[int]) -> int | None:
    """The common block size when every block of ``bounds`` has it, else None."""
    sizes = {stop - start for start, stop in zip(bounds, bounds[1:])}
    return sizes.pop() if len(sizes) == 1 else None


def _marked(conv_value, row_bounds: list[int], col_bounds: list[int]):
    grid = {"rows": [list(span) for span in zip(row_bounds, row_bounds[1:])],
            "cols": [list(span) for span in zip(col_bounds, col_bounds[1:])]}
    conv_value.producer().metadata_props[BLOCK_GRID_KEY] = json.dumps(grid, separators=(",", ":"))
    return conv_value


def block_conv2d(x, weight, bias, stride, padding, dilation, groups, row_bounds, col_bounds, padding_mode):
    stride, padding, dilation = _ints(stride), _ints(padding), _ints(dilation)
    row_bounds, col_bounds = _ints(row_bounds), _ints(col_bounds)
    conv = {"group": int(groups), "strides": stride, "pads": [0, 0, 0, 0], "dilations": dilation,
            "kernel_shape": [int(weight.shape[2]), int(weight.shape[3])]}
    inputs = [weight] if bias is None else [weight, bias]
    bh, bw = _even(row_bounds), _even(col_bounds)
    if bh is not None and bw is not None:
        return _block_conv_batched(x, inputs, conv, padding, padding_mode, row_bounds, col_bounds, bh, bw)
    rows = []
    for r0, r1 in zip(row_bounds, row_bounds[1:]):
        band = _slice(x, r0, r1, 2)
        cols = [_marked(op.Conv(_pad(_slice(band, c0, c1, 3), padding, padding_mode), *inputs, **conv),
                        row_bounds, col_bounds) for c0, c1 in zip(col_bounds, col_bounds[1:])]
        rows.append(cols[0] if len(cols) == 1 else op.Concat(*cols, axis=3))
    return rows[0] if len(rows) == 1 else op.Concat(*rows, axis=2)


def _block_conv_batched(x, inputs, conv, padding, mode, row_bounds, col_bounds, bh, bw):
    channels = int(x.shape[1])
    out_channels = int(inputs[0].shape[0])
    nh, nw = len(row_bounds) - 1, len(col_bounds) - 1
    kh, kw = conv["kernel_shape"]
    (sh, sw), (dh, dw) = conv["strides"], conv["dilations"]
    oh = (bh + 2 * padding[0] - dh * (kh - 1) - 1) // sh + 1
    ow = (bw + 2 * padding[1] - dw * (kw - 1) - 1) // sw + 1
    if nh == 1 and nw == 1:
        return _marked(op.Conv(_pad(x, padding, mode), *inputs, **conv), row_bounds, col_bounds)
    # (N, C, nh*bh, nw*bw) -> (N*nh*nw, C, bh, bw): every block a batch entry.
    blocks = op.Reshape(x, op.Constant(value_ints=[-1, channels, nh, bh, nw, bw]))
    blocks = op.Transpose(blocks, perm=[0, 2, 4, 1, 3, 5])
    blocks = op.Reshape(blocks, op.Constant(value_ints=[-1, channels, bh, bw]))
    out = _marked(op.Conv(_pad(blocks, padding, mode), *inputs, **conv), row_bounds, col_bounds)
    out = op.Reshape(out, op.Constant(value_ints=[-1, nh, nw, out_channels, oh, ow]))
    out = op.Transpose(out, perm=[0, 3, 1, 4, 2, 5])
    return op.Reshape(out, op.Constant(value_ints=[-1, out_channels, nh * oh, nw * ow]))
