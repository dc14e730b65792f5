"""Shapes of a FuSe convolution: one definition shared by the API, the fake op and the kernels."""

from __future__ import annotations

from dataclasses import dataclass


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a 1-D convolution (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class FuseGeometry:
    """Everything a kernel needs to know about the shapes of one call.

    The row part convolves channels ``[0, c_row)`` of x along W with a 1xK filter and
    padding ``(0, padding)``; the column part convolves channels
    ``[col_start, col_start + c_col)`` along H with a Kx1 filter and padding
    ``(padding, 0)``.  Half: ``col_start = c_row``; full: ``col_start = 0``.
    Output channels ``[0, c_row)`` are the row part and ``[c_row, c_row + c_col)`` the
    column part.
    """

    batch: int
    channels: int
    height: int
    width: int
    kernel: int
    c_row: int
    c_col: int
    col_start: int
    stride: int
    padding: int
    dilation: int
    out_height: int
    out_width: int

    @property
    def out_channels(self) -> int:
        return self.c_row + self.c_col


def fuse_geometry(
    x_shape: tuple[int, ...],
    kernel: int,
    c_row: int,
    c_col: int,
    full: bool,
    stride: int,
    padding: int,
    dilation: int,
) -> FuseGeometry:
    """Output shape of both parts; raises ValueError when they do not line up."""
    n, c, h, w = x_shape
    # Row part: 1xK along W, no padding along H (kernel height 1).
    row_hw = (conv_out_size(h, 1, stride, 0, 1), conv_out_size(w, kernel, stride, padding, dilation))
    # Column part: Kx1 along H.
    col_hw = (conv_out_size(h, kernel, stride, padding, dilation), conv_out_size(w, 1, stride, 0, 1))
    parts = [hw for hw, count in ((row_hw, c_row), (col_hw, c_col)) if count > 0] or [row_hw]
    if any(hw != parts[0] for hw in parts):
        raise ValueError(
            f"the row part's output {row_hw} and the column part's output {col_hw} differ in size, so they "
            f"cannot be concatenated (H={h}, W={w}, kernel={kernel}, stride={stride}, padding={padding}, "
            f"dilation={dilation}); choose padding so that 2*padding == dilation*(kernel-1)"
        )
    out_h, out_w = parts[0]
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"input of size H={h}, W={w} is too small for kernel={kernel} with padding={padding}, "
            f"dilation={dilation}: the output would be {out_h}x{out_w}"
        )
    return FuseGeometry(
        batch=n, channels=c, height=h, width=w, kernel=kernel, c_row=c_row, c_col=c_col,
        col_start=0 if full else c_row, stride=stride, padding=padding, dilation=dilation,
        out_height=out_h, out_width=out_w,
    )


def geometry_of(x, weight_row, weight_col, full: bool, stride: int, padding: int, dilation: int) -> FuseGeometry:
    """:func:`fuse_geometry` of the op's tensor arguments (x, the row and the column weights)."""
    return fuse_geometry(tuple(x.shape), weight_row.shape[-1], weight_row.shape[0], weight_col.shape[0], full,
                         stride, padding, dilation)
