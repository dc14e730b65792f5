"""Shape arithmetic worked by hand: the FuSe geometry and the block grid.

``fuse_geometry`` sizes every FuSe kernel's output and ``block_grid`` splits every block
conv's map; the backends trust both, so each expected value here is written out from the
definitions (PyTorch's output-size formula, papers.md's block rules), not taken from the code.
"""

from __future__ import annotations

import pytest

from fuseops.block_conv.grid import BLOCKINGS, block_grid, block_out_size, bounds_to_spans, spans_to_bounds
from fuseops.fuse_conv.geometry import FuseGeometry, conv_out_size, fuse_geometry

# ----------------------------------------------------------------------------- FuSe geometry


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "expected"),
    [
        (7, 3, 1, 1, 1, 7),  # (7 + 2 - 2 - 1) // 1 + 1
        (7, 3, 2, 1, 1, 4),  # (7 + 2 - 2 - 1) // 2 + 1 = 3 + 1
        (8, 3, 2, 1, 1, 4),  # (8 + 2 - 2 - 1) // 2 + 1 = 3 + 1 (floor)
        (9, 5, 3, 0, 1, 2),  # (9 - 4 - 1) // 3 + 1 = 1 + 1
        (9, 3, 1, 2, 2, 9),  # dilation 2: span 5, (9 + 4 - 4 - 1) // 1 + 1
        (4, 3, 1, 0, 2, 0),  # span 5 > 4: (4 - 4 - 1) // 1 + 1 = 0
        (5, 1, 2, 0, 1, 3),  # 1-tap kernel: (5 - 1) // 2 + 1
    ],
)
def test_conv_out_size_by_hand(size, kernel, stride, padding, dilation, expected):
    assert conv_out_size(size, kernel, stride, padding, dilation) == expected


def test_fuse_geometry_half_by_hand():
    # x (2, 5, 7, 9), 3 taps, 2 row + 3 column channels, stride 2, padding 1.
    # Row part: H (7 - 1)//2 + 1 = 4 by W (9 + 2 - 3)//2 + 1 = 5; column part: H (7 + 2 - 3)//2 + 1 = 4
    # by W (9 - 1)//2 + 1 = 5.  Half: the column part reads channels [2, 5).
    geo = fuse_geometry((2, 5, 7, 9), 3, 2, 3, False, 2, 1, 1)
    assert geo == FuseGeometry(batch=2, channels=5, height=7, width=9, kernel=3, c_row=2, c_col=3, col_start=2,
                               stride=2, padding=1, dilation=1, out_height=4, out_width=5)
    assert geo.out_channels == 5


def test_fuse_geometry_full_by_hand():
    # Full, 4 channels in both parts, 5 taps dilation 2 padding 4, stride 3 on 10 x 8:
    # row W (8 + 8 - 8 - 1)//3 + 1 = 3, H (10 - 1)//3 + 1 = 4; column H (10 + 8 - 8 - 1)//3 + 1 = 4, W 3.
    geo = fuse_geometry((1, 4, 10, 8), 5, 4, 4, True, 3, 4, 2)
    assert (geo.col_start, geo.out_height, geo.out_width, geo.out_channels) == (0, 4, 3, 8)
    assert (geo.kernel, geo.stride, geo.padding, geo.dilation) == (5, 3, 4, 2)


def test_fuse_geometry_one_part_needs_no_line_up():
    # With no column channels the column part's size does not matter: 3 taps, padding 0 on 6 x 6
    # gives the row part 6 x 4 (the column part would be 4 x 6).
    only_row = fuse_geometry((1, 2, 6, 6), 3, 2, 0, False, 1, 0, 1)
    assert (only_row.out_height, only_row.out_width, only_row.out_channels) == (6, 4, 2)
    only_col = fuse_geometry((1, 2, 6, 6), 3, 0, 2, False, 1, 0, 1)
    assert (only_col.out_height, only_col.out_width, only_col.col_start) == (4, 6, 0)
    # No channels at all: the row part's size stands in.
    empty = fuse_geometry((1, 0, 6, 6), 3, 0, 0, False, 1, 0, 1)
    assert (empty.out_height, empty.out_width, empty.out_channels) == (6, 4, 0)


def test_fuse_geometry_parts_that_do_not_line_up():
    # Padding 0 with 3 taps: row part 6 x 4, column part 4 x 6.
    with pytest.raises(ValueError) as err:
        fuse_geometry((1, 2, 6, 6), 3, 1, 1, False, 1, 0, 1)
    text = str(err.value)
    assert "row part's output (6, 4)" in text and "column part's output (4, 6)" in text
    assert "H=6, W=6, kernel=3, stride=1, padding=0, dilation=1" in text
    assert "2*padding == dilation*(kernel-1)" in text


def test_fuse_geometry_too_small_input():
    # Row part only, 5 taps, no padding on 3 x 3: width (3 - 4 - 1)//1 + 1 = -1.
    with pytest.raises(ValueError, match=r"H=3, W=3 is too small for kernel=5 with padding=0, dilation=1: "
                                         r"the output would be 3x-1"):
        fuse_geometry((1, 2, 3, 3), 5, 2, 0, False, 1, 0, 1)
    # Exactly zero is too small as well: 3 taps on width 2.
    with pytest.raises(ValueError, match="the output would be 2x0"):
        fuse_geometry((1, 2, 2, 2), 3, 2, 0, False, 1, 0, 1)
    # Height: the column part only, 3 taps on height 2.
    with pytest.raises(ValueError, match="the output would be 0x2"):
        fuse_geometry((1, 2, 2, 2), 3, 0, 2, False, 1, 0, 1)


# ----------------------------------------------------------------------------- block grid


def test_fixed_grid_by_hand():
    # 7 x 10 in blocks of 3 x 4: rows 0-3, 3-6, 6-7 (ragged last); cols 0-4, 4-8, 8-10.
    assert block_grid(7, 10, (3, 4)) == (((0, 3), (3, 6), (6, 7)), ((0, 4), (4, 8), (8, 10)))
    # An int is a square block; a block at least the map's size is one block.
    assert block_grid(5, 4, 2, "fixed") == (((0, 2), (2, 4), (4, 5)), ((0, 2), (2, 4)))
    assert block_grid(5, 4, 5) == (((0, 5),), ((0, 4),))
    assert block_grid(5, 4, (9, 4)) == (((0, 5),), ((0, 4),))
    assert block_grid(1, 1, 1) == (((0, 1),), ((0, 1),))


def test_hierarchical_grid_by_hand():
    # 3 blocks over 7 rows: floor(i*7/3) = 0, 2, 4, 7; 4 over 10 cols: 0, 2, 5, 7, 10.
    assert block_grid(7, 10, (3, 4), "hierarchical") == (((0, 2), (2, 4), (4, 7)),
                                                        ((0, 2), (2, 5), (5, 7), (7, 10)))
    # As many blocks as pixels: one pixel each; one block: the whole map.
    assert block_grid(3, 5, (3, 1), "hierarchical") == (((0, 1), (1, 2), (2, 3)), ((0, 5),))
    assert block_grid(4, 4, 2, "hierarchical") == (((0, 2), (2, 4)), ((0, 2), (2, 4)))


def test_hierarchical_grid_with_more_blocks_than_pixels():
    with pytest.raises(ValueError, match="block_size asks for 4 blocks along H, but the map has only 3 pixels"):
        block_grid(3, 8, (4, 2), "hierarchical")
    with pytest.raises(ValueError, match="block_size asks for 9 blocks along W, but the map has only 8 pixels"):
        block_grid(9, 8, (3, 9), "hierarchical")


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0, 4, 2), ValueError, "height must be >= 1, got 0"),
        ((4, 0, 2), ValueError, "width must be >= 1, got 0"),
        ((4.0, 4, 2), TypeError, "height must be an int, got float"),
        ((4, 4, 0), ValueError, r"block_size must be >= 1, got 0"),
        ((4, 4, (2, 0)), ValueError, r"block_size\[1\] must be >= 1, got 0"),
        ((4, 4, 2, 3), TypeError, "blocking must be a str, got int"),
        ((4, 4, 2, "grid"), ValueError, r"blocking must be one of \('fixed', 'hierarchical'\), got 'grid'"),
    ],
)
def test_grid_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        block_grid(*args)


def test_blockings_and_bounds():
    assert BLOCKINGS == ("fixed", "hierarchical")
    spans = ((0, 3), (3, 6), (6, 7))
    assert spans_to_bounds(spans) == [0, 3, 6, 7]
    assert bounds_to_spans([0, 3, 6, 7]) == spans
    assert spans_to_bounds(((0, 5),)) == [0, 5] and bounds_to_spans([0, 5]) == ((0, 5),)
    assert bounds_to_spans([2, 4]) == ((2, 4),)  # the bounds need not start at 0


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "expected"),
    [
        (3, 3, 1, 1, 1, 3),  # (3 + 2 - 2 - 1) // 1 + 1
        (3, 3, 2, 1, 1, 2),  # (3 + 2 - 2 - 1) // 2 + 1
        (1, 3, 2, 1, 1, 1),  # a one-pixel ragged block
        (4, 3, 1, 0, 2, 0),  # span 5 on 4 pixels
        (7, 2, 3, 0, 1, 2),  # (7 - 1 - 1) // 3 + 1
    ],
)
def test_block_out_size_by_hand(size, kernel, stride, padding, dilation, expected):
    assert block_out_size(size, kernel, stride, padding, dilation) == expected


def test_fuse_geometry_one_pixel_outputs_are_valid():
    # Height 1, row part only, 3 taps padding 1: (1 - 1)//1 + 1 = 1 row by 5; width 1, column part only.
    assert fuse_geometry((1, 2, 1, 5), 3, 2, 0, False, 1, 1, 1).out_height == 1
    assert fuse_geometry((1, 2, 5, 1), 3, 0, 2, False, 1, 1, 1).out_width == 1
