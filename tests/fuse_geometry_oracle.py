"""The FuSe output size written out from the conv output formula, independently of
fuseops.fuse_conv.geometry: shared by the FuSe test files."""

from __future__ import annotations


def plain_out_hw(h, w, k, c_row, c_col, stride=1, padding=None, dilation=1):
    """The output (H, W) the present parts agree on, or None when they differ in size or
    leave no output: the cases where fuse_conv2d must raise ValueError."""
    pad = dilation * (k - 1) // 2 if padding is None else padding

    def length(size, taps, p, d):
        return (size + 2 * p - d * (taps - 1) - 1) // stride + 1

    sizes = set()
    if c_row:
        sizes.add((length(h, 1, 0, 1), length(w, k, pad, dilation)))
    if c_col:
        sizes.add((length(h, k, pad, dilation), length(w, 1, 0, 1)))
    if len(sizes) != 1:
        return None
    out_h, out_w = sizes.pop()
    return (out_h, out_w) if out_h >= 1 and out_w >= 1 else None
