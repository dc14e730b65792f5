"""The systolic-array latency model: hand-computed cycles, edge cases, bad input.

Every expected number is worked out in the test from the formulas in
docs/hwmodel-systolic.md (papers.md §1 for convention="fuseconv", SCALE-Sim 3's
formulas for convention="scalesim"), never taken from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hwmodel import Layer, SystolicArray, speedup
from hwmodel.systolic import CATEGORIES


def _one(array: SystolicArray, layer: Layer) -> int:
    est = array.estimate([layer])
    assert est.complete
    return est.total_cycles


# Dense 3x3 conv: N=1, C=2, 5x5 input padded by 1 (7x7), M=3, stride 1.
# E = F = (7 - 3 + 1) // 1 = 5, so P = 25; T = 3*3*2 = 18; M = 3.  Array X=4 rows, Y=2 cols.
DENSE = Layer("dense", "conv", 1, 2, 5, 5, 3, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1)


@pytest.mark.parametrize(
    ("dataflow", "expected"),
    [
        # P=25 = 6*4 + 1, M=3 = 1*2 + 1; fold(r, c) = T + r + c - 1.
        ("os", 6 * 1 * (18 + 4 + 2 - 1) + 1 * (18 + 1 + 2 - 1) + 6 * (18 + 4 + 1 - 1) + (18 + 1 + 1 - 1)),
        # ws (our extension): rows hold T=18 = 4*4 + 2, cols M=3; stream P=25;
        # fold(r, c) = P + 2r + c - 1 (r cycles to preload the weights).
        ("ws", 4 * 1 * (25 + 8 + 2 - 1) + 1 * (25 + 4 + 2 - 1) + 4 * (25 + 8 + 1 - 1) + (25 + 4 + 1 - 1)),
        # is: rows T=18 = 4*4 + 2, cols P=25 = 12*2 + 1, stream M=3; fold = M + 2r + c - 1.
        ("is", 4 * 12 * (3 + 8 + 2 - 1) + 12 * (3 + 4 + 2 - 1) + 4 * (3 + 8 + 1 - 1) + (3 + 4 + 1 - 1)),
    ],
)
def test_dense_conv_fuseconv_convention(dataflow, expected):
    assert _one(SystolicArray(4, 2, dataflow=dataflow), DENSE) == expected


@pytest.mark.parametrize(
    ("dataflow", "expected"),
    [
        ("os", math.ceil(25 / 4) * math.ceil(3 / 2) * (18 + 4 + 2 - 2) - 1),
        ("ws", math.ceil(18 / 4) * math.ceil(3 / 2) * (2 * 4 + 2 + 25 - 2) - 1),
        ("is", math.ceil(18 / 4) * math.ceil(25 / 2) * (2 * 4 + 2 + 3 - 2) - 1),
    ],
)
def test_dense_conv_scalesim_convention(dataflow, expected):
    assert _one(SystolicArray(4, 2, dataflow=dataflow, convention="scalesim"), DENSE) == expected


def test_paper_os_formula_on_a_second_shape():
    # 1x1 conv, C=7, 3x3 map (P=9), M=10 on 2x4: P = 4*2 + 1, M = 2*4 + 2, T = 7.
    layer = Layer("pw", "conv", 1, 7, 3, 3, 10)
    expected = 4 * 2 * (7 + 2 + 4 - 1) + 2 * (7 + 1 + 4 - 1) + 4 * (7 + 2 + 2 - 1) + (7 + 1 + 2 - 1)
    assert _one(SystolicArray(2, 4), layer) == expected


def test_depthwise_is_one_gemm_per_channel():
    # 3x3 depthwise, C=3, 4x4 padded by 1: per channel P=16, T=9, M=1 on 4x2.
    layer = Layer("dw", "depthwise", 1, 3, 4, 4, 3, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, groups=3)
    # fuseconv: P = 4*4 exactly; M = 0*2 + 1, so only the 4 column-partial folds: 4 * (9 + 4 + 1 - 1)
    assert _one(SystolicArray(4, 2), layer) == 3 * (4 * (9 + 4 + 1 - 1))
    assert _one(SystolicArray(4, 2, convention="scalesim"), layer) == 3 * (4 * 1 * (9 + 4 + 2 - 2) - 1)
    # the plain and the FuSe array cost a KxK depthwise conv the same
    assert _one(SystolicArray(4, 2, fuse=True), layer) == 3 * (4 * (9 + 4 + 1 - 1))


def test_depthwise_channel_multiplier():
    # depthwise with 2 filters per channel: per group M=2 on a 4x2 array fills the columns.
    layer = Layer("dw2", "depthwise", 1, 3, 4, 4, 6, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, groups=3)
    assert _one(SystolicArray(4, 2), layer) == 3 * (4 * 1 * (9 + 4 + 2 - 1))


def test_grouped_conv_runs_each_group():
    # groups=2: each group C=2 -> M=3 over a 3x3 map (P=9), T=2 on 4x4.
    layer = Layer("g", "conv", 1, 4, 3, 3, 6, groups=2)
    per_group = 2 * (2 + 4 + 3 - 1) + (2 + 1 + 3 - 1)  # P = 2*4 + 1, M = 0*4 + 3
    assert _one(SystolicArray(4, 4), layer) == 2 * per_group


def test_linear_is_a_gemm_with_batch_rows():
    # batch 3, 10 -> 5 on 2x2: P=3 = 1*2 + 1, M=5 = 2*2 + 1, T=10.
    layer = Layer("fc", "linear", 3, 10, 1, 1, 5)
    expected = 1 * 2 * (10 + 2 + 2 - 1) + 2 * (10 + 1 + 2 - 1) + 1 * (10 + 2 + 1 - 1) + (10 + 1 + 1 - 1)
    assert _one(SystolicArray(2, 2), layer) == expected
    assert _one(SystolicArray(2, 2, convention="scalesim"), layer) == 2 * 3 * (10 + 2 + 2 - 2) - 1


# FuSe 1-D layers: C=4, N=1 on a 4x4 array, stride 2, K=3.
ROW = Layer("row", "fuse_row", 1, 4, 5, 8, 4, kernel_h=1, kernel_w=3, stride_h=2, stride_w=2, pad_w=1,
            groups=4)
COL = Layer("col", "fuse_col", 1, 4, 8, 5, 4, kernel_h=3, kernel_w=1, stride_h=2, stride_w=2, pad_h=1,
            groups=4)


def test_fuse_row_on_the_fuse_array():
    # ceil(ceil(N*H*C / X) / s * (Y + K) * ceil(W / Y)), H=5 unpadded, W = 8 + 2 = 10 padded.
    line_folds = math.ceil(1 * 5 * 4 / 4)  # 5
    expected = math.ceil(line_folds * (4 + 3) * math.ceil(10 / 4) / 2)  # ceil(105 / 2) = 53
    assert expected == 53
    for convention in ("fuseconv", "scalesim"):
        assert _one(SystolicArray(4, 4, fuse=True, convention=convention), ROW) == expected


def test_fuse_col_swaps_height_and_width():
    # W=5 unpadded is the line count; H = 8 + 2 = 10 padded is the length.
    expected = math.ceil(math.ceil(1 * 5 * 4 / 4) * (4 + 3) * math.ceil(10 / 4) / 2)
    assert _one(SystolicArray(4, 4, fuse=True), COL) == expected


def test_fuse_layers_on_the_plain_array_are_depthwise_gemms():
    # Row conv: out = ((5-1)//2 + 1) x ((10-3)//2 + 1) = 3 x 4, so per channel P=12, T=3, M=1.
    # On 4x4: P = 3*4 exactly, M = 0*4 + 1: 3 column-partial folds of (3 + 4 + 1 - 1).
    assert _one(SystolicArray(4, 4, fuse=False), ROW) == 4 * (3 * (3 + 4 + 1 - 1))
    est = SystolicArray(4, 4).estimate([ROW])
    assert est.layers[0].mapping == "per_group_gemm"
    assert SystolicArray(4, 4, fuse=True).estimate([ROW]).layers[0].mapping == "fuse_1d"


def test_batch_multiplies_outputs_and_fuse_lines():
    dense2 = Layer("dense", "conv", 2, 2, 5, 5, 3, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1)
    # P = 2*25 = 50 = 12*4 + 2, M = 3 = 1*2 + 1
    expected = 12 * (18 + 4 + 2 - 1) + (18 + 2 + 2 - 1) + 12 * (18 + 4 + 1 - 1) + (18 + 2 + 1 - 1)
    assert _one(SystolicArray(4, 2), dense2) == expected
    row2 = Layer("row", "fuse_row", 2, 4, 5, 8, 4, kernel_h=1, kernel_w=3, stride_h=2, stride_w=2, pad_w=1,
                 groups=4)
    assert _one(SystolicArray(4, 4, fuse=True), row2) == math.ceil(math.ceil(2 * 5 * 4 / 4) * 7 * 3 / 2)


# -- sizes that divide neither the rows nor the columns ------------------------------------------------
#
# Every layer kind on a 5-row x 4-column array, each GEMM dimension chosen so that it leaves a
# remainder on the side of the array it is laid along and still fills at least one whole fold
# there, so a ceil taken as a floor, a dropped partial fold or swapped rows and columns all
# change the count.  Layout per dataflow (docs/hwmodel-systolic.md): os = (rows P, cols M,
# stream T), ws = (T, M, P), is = (T, P, M).  fuseconv: a fold of r rows and c columns costs
# stream + r + c - 1 (+ r more to preload in ws and is); scalesim: ceil(rows/X) * ceil(cols/Y)
# * (stream + X + Y - 2 (+ X in ws and is)) - 1, once per group.  Worked by hand below.

X5Y4 = (5, 4)
# 3x3, stride 2, padding 1 on 5x4 (H != W), C=3 -> M=7.  PyTorch: (5+2-3)//2+1 = 3 by
# (4+2-3)//2+1 = 2, P = 6; SCALE-Sim: ceil((7-3+2)/2) = 3 by ceil((6-3+2)/2) = 3, P = 9.
# T = 3*3*3 = 27 = 5*5 + 2; M = 7 = 1*4 + 3.
ODD_DENSE = Layer("dense", "conv", 1, 3, 5, 4, 7, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, pad_h=1,
                  pad_w=1)
# 1x1, C=7 -> M=10 on 3x6: P = 18 = 3*5 + 3 = 4*4 + 2, T = 7 = 1*5 + 2, M = 10 = 2*4 + 2.
ODD_POINT = Layer("point", "conv", 1, 7, 3, 6, 10)
# groups=3: per group C=2 -> M=5, 3x3 padding 1 on 3x7: P = 21 = 4*5 + 1 = 5*4 + 1, T = 18 = 3*5 + 3.
ODD_GROUPED = Layer("grouped", "conv", 1, 6, 3, 7, 15, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, groups=3)
# depthwise, channel multiplier 6 (C=2 -> 12), 3x3 dilation 2 padding 2 on 7x9: span 5, out 7x9,
# P = 63 = 12*5 + 3 = 15*4 + 3, T = 9 = 1*5 + 4, M = 6 = 1*4 + 2.
ODD_DEPTHWISE = Layer("dw", "depthwise", 1, 2, 7, 9, 12, kernel_h=3, kernel_w=3, pad_h=2, pad_w=2, dilation_h=2,
                      dilation_w=2, groups=2)
# 1x3 row conv over C=3, stride (2, 1), padding (0, 1) on 4x7.  Per channel on the plain array:
# PyTorch (4-1)//2+1 = 2 by (9-3)//1+1 = 7, P = 14; SCALE-Sim ceil((4-1+2)/2) = 3 by 7, P = 21;
# T = 3, M = 1.
ODD_ROW = Layer("row", "fuse_row", 1, 3, 4, 7, 3, kernel_h=1, kernel_w=3, stride_h=2, stride_w=1, pad_w=1,
                groups=3)
# 3x1 column conv over C=3 with channel multiplier 2, dilation 2, stride (1, 2), padding (2, 0) on 7x4.
# Per group: PyTorch (7+4-5)//1+1 = 7 by (4-1)//2+1 = 2, P = 14; SCALE-Sim 7 by ceil((4-1+2)/2) = 3,
# P = 21; T = 3, M = 2.
ODD_COL = Layer("col", "fuse_col", 1, 3, 7, 4, 6, kernel_h=3, kernel_w=1, stride_h=1, stride_w=2, pad_h=2,
                dilation_h=2, groups=3)
# batch 6, 11 -> 7: P = 6 = 1*5 + 1 = 1*4 + 2, T = 11 = 2*5 + 1, M = 7 = 1*4 + 3.
ODD_LINEAR = Layer("fc", "linear", 6, 11, 1, 1, 7)


@pytest.mark.parametrize(
    ("layer", "dataflow", "fuseconv", "scalesim"),
    [
        # P=6 (1 full + 1), M=7 (1 full + 3), T=27:
        # (27+5+4-1) + 1*(27+1+4-1) + 1*(27+5+3-1) + (27+1+3-1); 2*2*(27+5+4-2) - 1 with P=9.
        (ODD_DENSE, "os", 35 + 31 + 34 + 30, 2 * 2 * 34 - 1),
        # rows T=27 (5 full + 2), cols M=7 (1 + 3), stream P=6; fold = 6 + 2r + c - 1.
        (ODD_DENSE, "ws", 5 * 1 * 19 + 1 * 13 + 5 * 18 + 12, 6 * 2 * (10 + 4 + 9 - 2) - 1),
        # rows T=27 (5 + 2), cols P=6 = 1*4 + 2, stream M=7; fold = 7 + 2r + c - 1.
        # scalesim cols P=9: ceil(9/4) = 3.
        (ODD_DENSE, "is", 5 * 1 * 20 + 1 * 14 + 5 * 18 + 12, 6 * 3 * (10 + 4 + 7 - 2) - 1),
        # P=18 (3 full + 3), M=10 (2 full + 2), T=7.
        (ODD_POINT, "os", 3 * 2 * 15 + 2 * 13 + 3 * 13 + 11, 4 * 3 * (7 + 5 + 4 - 2) - 1),
        # rows T=7 (1 + 2), cols M=10 (2 + 2), stream P=18: fold = 18 + 2r + c - 1.
        (ODD_POINT, "ws", 1 * 2 * 31 + 2 * 25 + 1 * 29 + 23, 2 * 3 * (10 + 4 + 18 - 2) - 1),
        # rows T=7 (1 + 2), cols P=18 = 4*4 + 2, stream M=10.
        (ODD_POINT, "is", 1 * 4 * 23 + 4 * 17 + 1 * 21 + 15, 2 * 5 * (10 + 4 + 10 - 2) - 1),
        # per group P=21 (4 + 1), M=5 (1 + 1), T=18; three groups.
        (ODD_GROUPED, "os", 3 * (4 * 26 + 22 + 4 * 23 + 19), 3 * (5 * 2 * (18 + 5 + 4 - 2) - 1)),
        (ODD_GROUPED, "ws", 3 * (3 * 34 + 30 + 3 * 31 + 27), 3 * (4 * 2 * (10 + 4 + 21 - 2) - 1)),
        (ODD_GROUPED, "is", 3 * (3 * 5 * 18 + 5 * 14 + 3 * 15 + 11), 3 * (4 * 6 * (10 + 4 + 5 - 2) - 1)),
        # per channel P=63 (12 + 3), M=6 (1 + 2), T=9; two channels.
        (ODD_DEPTHWISE, "os", 2 * (12 * 17 + 15 + 12 * 15 + 13), 2 * (13 * 2 * (9 + 5 + 4 - 2) - 1)),
        # rows T=9 (1 + 4), cols M=6 (1 + 2), stream P=63: fold = 63 + 2r + c - 1.
        (ODD_DEPTHWISE, "ws", 2 * (76 + 74 + 74 + 72), 2 * (2 * 2 * (10 + 4 + 63 - 2) - 1)),
        # rows T=9 (1 + 4), cols P=63 (15 + 3), stream M=6.
        (ODD_DEPTHWISE, "is", 2 * (15 * 19 + 15 * 17 + 18 + 16), 2 * (2 * 16 * (10 + 4 + 6 - 2) - 1)),
        # plain array: per channel P=14 (2 + 4) [scalesim 21], M=1 (0 full + 1), T=3 (0 full + 3).
        (ODD_ROW, "os", 3 * (2 * (3 + 5 + 1 - 1) + (3 + 4 + 1 - 1)), 3 * (5 * 1 * (3 + 5 + 4 - 2) - 1)),
        (ODD_ROW, "ws", 3 * (14 + 2 * 3 + 1 - 1), 3 * (1 * 1 * (10 + 4 + 21 - 2) - 1)),
        # is: rows T=3, cols P=14 = 3*4 + 2 [scalesim ceil(21/4) = 6], stream M=1.
        (ODD_ROW, "is", 3 * (3 * (1 + 6 + 4 - 1) + (1 + 6 + 2 - 1)), 3 * (1 * 6 * (10 + 4 + 1 - 2) - 1)),
        # plain array: per group P=14 [scalesim 21], M=2 (0 full + 2), T=3.
        (ODD_COL, "os", 3 * (2 * (3 + 5 + 2 - 1) + (3 + 4 + 2 - 1)), 3 * (5 * 1 * (3 + 5 + 4 - 2) - 1)),
        (ODD_COL, "ws", 3 * (14 + 2 * 3 + 2 - 1), 3 * (1 * 1 * (10 + 4 + 21 - 2) - 1)),
        (ODD_COL, "is", 3 * (3 * (2 + 6 + 4 - 1) + (2 + 6 + 2 - 1)), 3 * (1 * 6 * (10 + 4 + 2 - 2) - 1)),
        # P=6 (1 + 1), M=7 (1 + 3), T=11.
        (ODD_LINEAR, "os", 19 + 15 + 18 + 14, 2 * 2 * (11 + 5 + 4 - 2) - 1),
        # rows T=11 (2 + 1), cols M=7, stream P=6.
        (ODD_LINEAR, "ws", 2 * 19 + 11 + 2 * 18 + 10, 3 * 2 * (10 + 4 + 6 - 2) - 1),
        # rows T=11 (2 + 1), cols P=6 (1 + 2), stream M=7.
        (ODD_LINEAR, "is", 2 * 20 + 12 + 2 * 18 + 10, 3 * 2 * (10 + 4 + 7 - 2) - 1),
    ],
    ids=lambda v: v.name if isinstance(v, Layer) else None,
)
def test_sizes_that_do_not_divide_the_array(layer, dataflow, fuseconv, scalesim):
    rows, cols = X5Y4
    for convention, expected in (("fuseconv", fuseconv), ("scalesim", scalesim)):
        array = SystolicArray(rows, cols, dataflow=dataflow, convention=convention)
        est = array.estimate([layer])
        assert est.complete
        cost = est.layers[0]
        assert cost.cycles == expected, (convention, cost.cycles, expected)
        assert cost.mapping == ("gemm" if layer.groups == 1 else "per_group_gemm")
        assert cost.utilization == pytest.approx(layer.macs / (expected * rows * cols))
        # The FuSe array costs everything but 1-D depthwise layers as the plain array does.
        if layer.kind not in ("fuse_row", "fuse_col"):
            fused = SystolicArray(rows, cols, dataflow=dataflow, convention=convention, fuse=True)
            assert fused.estimate([layer]).total_cycles == expected


def test_macs_of_the_odd_layers_by_hand():
    # MACs use PyTorch's output size in both conventions: N * M_total * E * F * (C/g) * kh * kw.
    assert ODD_DENSE.macs == 7 * 3 * 2 * 27
    assert ODD_POINT.macs == 10 * 18 * 7
    assert ODD_GROUPED.macs == 15 * 21 * 2 * 9
    assert ODD_DEPTHWISE.macs == 12 * 63 * 9
    assert ODD_ROW.macs == 3 * 14 * 3
    assert ODD_COL.macs == 6 * 14 * 3
    assert ODD_LINEAR.macs == 6 * 7 * 11


# The FuSe array: ceil(ceil(N*L*C / X) / s * (Y + K) * ceil(len / Y)), L the lines (rows of a row
# conv, columns of a column conv), len the padded length along the line, s the stride across the
# lines (stride_h of a row conv, stride_w of a column conv), K the dilated span.  Every ceil here
# rounds a non-integer.
@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        # lines 1*4*3 = 12 -> ceil(12/5) = 3 (not 2); len 7 + 2 = 9 -> ceil(9/4) = 3 (not 2);
        # 3 * (4 + 3) * 3 = 63, / stride_h 2 -> ceil(31.5) = 32.
        (ODD_ROW, 32),
        # lines 1*4*3 = 12 -> 3; len 7 + 2*2 = 11 -> ceil(11/4) = 3; span 2*(3-1) + 1 = 5;
        # 3 * (4 + 5) * 3 = 81, / stride_w 2 -> 41; channel multiplier 2 -> twice.
        (ODD_COL, 2 * 41),
        # batch 3 of ODD_ROW: lines 36 -> ceil(36/5) = 8; 8 * 7 * 3 = 168 / 2 = 84.
        (Layer("row3", "fuse_row", 3, 3, 4, 7, 3, kernel_h=1, kernel_w=3, stride_h=2, stride_w=1, pad_w=1,
               groups=3), 84),
    ],
    ids=lambda v: v.name if isinstance(v, Layer) else None,
)
def test_fuse_array_lines_that_do_not_divide_the_array(layer, expected):
    rows, cols = X5Y4
    for dataflow in ("os", "ws", "is"):
        for convention in ("fuseconv", "scalesim"):
            array = SystolicArray(rows, cols, dataflow=dataflow, convention=convention, fuse=True)
            cost = array.estimate([layer]).layers[0]
            assert (cost.cycles, cost.mapping, cost.category) == (expected, "fuse_1d", "fuse_1d")
            assert array.fuse_1d_cycles(layer) * (layer.out_channels // layer.in_channels) == expected


def test_block_conv_with_ragged_blocks_that_do_not_divide_the_array():
    # 11x3 map in fixed blocks of 3: rows (0,3) (3,6) (6,9) (9,11), cols (0,3); 3x3 stride 2 padding 1.
    # PyTorch per block of b rows: (b+2-3)//2 + 1 -> 2, 2, 2, 1 = 7 rows; cols 2: P = 14 = 2*5 + 4.
    # SCALE-Sim per block: ceil((b+2-3+2)/2) -> 2, 2, 2, 2 = 8 rows; cols 2: P = 16.
    layer = Layer("blk", "conv", 1, 2, 11, 3, 5, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, pad_h=1, pad_w=1,
                  block_rows=((0, 3), (3, 6), (6, 9), (9, 11)), block_cols=((0, 3),))
    assert (layer.out_h, layer.out_w) == (7, 2)
    # os, M = 5 = 1*4 + 1, T = 18: 2*1*(18+5+4-1) + 1*(18+4+4-1) + 2*(18+5+1-1) + (18+4+1-1).
    assert _one(SystolicArray(5, 4), layer) == 2 * 26 + 25 + 2 * 23 + 22
    assert _one(SystolicArray(5, 4, convention="scalesim"), layer) == 4 * 2 * (18 + 5 + 4 - 2) - 1


# -- edge cases ------------------------------------------------------------------------------------


def test_array_larger_than_the_problem():
    layer = Layer("fc", "linear", 1, 10, 1, 1, 5)  # P=1, T=10, M=5 on 256x256
    assert _one(SystolicArray(256, 256), layer) == 10 + 1 + 5 - 1  # one partial fold
    assert _one(SystolicArray(256, 256, convention="scalesim"), layer) == (10 + 256 + 256 - 2) - 1
    assert _one(SystolicArray(256, 256, dataflow="ws"), layer) == 1 + 2 * 10 + 5 - 1


def test_one_by_one_array():
    layer = Layer("pw", "conv", 1, 2, 2, 2, 3)  # P=4, T=2, M=3
    assert _one(SystolicArray(1, 1), layer) == 4 * 3 * (2 + 1 + 1 - 1)
    assert _one(SystolicArray(1, 1, convention="scalesim"), layer) == 4 * 3 * (2 + 1 + 1 - 2) - 1
    ws = SystolicArray(1, 1, dataflow="ws", convention="scalesim")
    assert _one(ws, layer) == 2 * 3 * (2 + 1 + 4 - 2) - 1
    is_ = SystolicArray(1, 1, dataflow="is", convention="scalesim")
    assert _one(is_, layer) == 2 * 4 * (2 + 1 + 3 - 2) - 1
    est = SystolicArray(1, 1).estimate([layer])
    assert est.layers[0].utilization == pytest.approx(layer.macs / (4 * 3 * 3))


def test_stride_larger_than_kernel():
    # 2x2 kernel, stride 3, on 7x7: PyTorch gives (7-2)//3 + 1 = 2 per axis (P=4);
    # SCALE-Sim gives ceil((7 - 2 + 3) / 3) = 3 per axis (P=9).  C=1, M=1, T=4 on 2x2.
    layer = Layer("s3", "conv", 1, 1, 7, 7, 1, kernel_h=2, kernel_w=2, stride_h=3, stride_w=3)
    assert layer.out_h == 2
    assert _one(SystolicArray(2, 2), layer) == 2 * (4 + 2 + 1 - 1)
    scalesim = SystolicArray(2, 2, convention="scalesim")
    assert _one(scalesim, layer) == math.ceil(9 / 2) * 1 * (4 + 2 + 2 - 2) - 1


def test_dilation_widens_the_kernel_span_not_the_reduction():
    # 3x3 dilation 2 on 7x7 with no padding: span 5, out 3x3 (P=9); T = 9 taps.
    layer = Layer("dil", "conv", 1, 1, 7, 7, 1, kernel_h=3, kernel_w=3, dilation_h=2, dilation_w=2)
    assert _one(SystolicArray(16, 16), layer) == 9 + 9 + 1 - 1


def test_block_conv_costs_the_blocks_outputs():
    # 8x8 map in 2 fixed blocks of 4 per axis, 3x3 conv padded by 1 per block, stride 2:
    # each block of 4 gives (4 + 2 - 3)//2 + 1 = 2 outputs, so 4 per axis (as unblocked).
    spans = ((0, 4), (4, 8))
    blocked = Layer("b", "conv", 1, 2, 8, 8, 3, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, pad_h=1,
                    pad_w=1, block_rows=spans, block_cols=spans)
    # P = 16 = 4*4, M = 3, T = 18 on 4x4
    assert _one(SystolicArray(4, 4), blocked) == 4 * (18 + 4 + 3 - 1)
    # SCALE-Sim's rule per block: ceil((4 + 2 - 3 + 2) / 2) = 3 outputs per block, 6 per axis
    scalesim = SystolicArray(4, 4, convention="scalesim")
    assert _one(scalesim, blocked) == math.ceil(36 / 4) * (18 + 4 + 4 - 2) - 1


# -- the Estimate ----------------------------------------------------------------------------------


def test_estimate_rows_breakdown_and_utilization():
    layers = [
        Layer("stem", "conv", 1, 3, 8, 8, 4, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1),
        Layer("dw", "depthwise", 1, 4, 8, 8, 4, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, groups=4),
        Layer("pw", "conv", 1, 4, 8, 8, 6),
        ROW,
        COL,
        Layer("fc", "linear", 1, 6, 1, 1, 2),
    ]
    est = SystolicArray(4, 4, fuse=True).estimate(layers)
    assert [c.name for c in est.layers] == ["stem", "dw", "pw", "row", "col", "fc"]
    categories = ["other", "depthwise", "pointwise", "fuse_1d", "fuse_1d", "other"]
    assert [c.category for c in est.layers] == categories
    assert set(est.breakdown) == set(CATEGORIES)
    assert sum(est.breakdown.values()) == est.total_cycles
    assert est.breakdown["fuse_1d"] == 2 * 53  # ROW and COL, computed by hand above
    for cost, layer in zip(est.layers, layers):
        assert cost.macs == layer.macs
        assert cost.utilization == pytest.approx(layer.macs / (cost.cycles * 16))
        assert 0 < cost.utilization <= 1
    assert est.utilization == pytest.approx(sum(layer.macs for layer in layers) / (est.total_cycles * 16))
    text = str(est)
    assert "4x4" in text and f"{est.total_cycles:,}" in text


def test_unsupported_layers_are_listed_not_dropped():
    too_small = Layer("tiny", "conv", 1, 1, 2, 2, 1, kernel_h=5, kernel_w=5)  # no output
    est = SystolicArray(4, 4).estimate([DENSE, too_small])
    assert [c.name for c in est.layers] == ["dense"]
    assert [u.name for u in est.unsupported] == ["tiny"]
    assert not est.complete
    assert "NOT COSTED" in str(est)


class WithConv1d(nn.Module):
    """A Conv2d the model costs, then a Conv1d it cannot."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seq = nn.Conv1d(4, 4, 3)

    def forward(self, x):
        return self.seq(self.conv(x).flatten(2))


def test_traced_unsupported_modules_reach_the_estimate():
    est = SystolicArray(8, 8).estimate(WithConv1d(), (1, 3, 8, 8))
    assert [c.name for c in est.layers] == ["conv"]
    assert [(u.name, u.type_name) for u in est.unsupported] == [("seq", "Conv1d")]
    with pytest.raises(ValueError, match="seq"):
        speedup(WithConv1d(), WithConv1d(), array=(8, 8), input_shape=(1, 3, 8, 8))


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "cols", "name"), [(0, 4, "rows"), (4, 0, "cols"), (-1, 4, "rows"),
                                                    (4, -8, "cols")])
def test_array_dims_must_be_positive(rows, cols, name):
    with pytest.raises(ValueError, match=rf"{name} must be >= 1"):
        SystolicArray(rows, cols)


@pytest.mark.parametrize("bad", [2.5, "64", True, None])
def test_array_dims_must_be_ints(bad):
    with pytest.raises(TypeError, match="rows must be an int"):
        SystolicArray(bad, 4)


def test_unknown_dataflow_and_convention():
    with pytest.raises(ValueError, match=r"dataflow must be one of \('os', 'ws', 'is'\), got 'rs'"):
        SystolicArray(4, 4, dataflow="rs")
    with pytest.raises(ValueError, match=r"convention must be one of .*got 'timeloop'"):
        SystolicArray(4, 4, convention="timeloop")
    with pytest.raises(TypeError, match="fuse must be a bool"):
        SystolicArray(4, 4, fuse="yes")


def test_estimate_bad_arguments():
    array = SystolicArray(4, 4)
    with pytest.raises(TypeError, match=r"model_or_layers\[1\] must be a hwmodel.Layer"):
        array.estimate([DENSE, "conv"])
    with pytest.raises(TypeError, match="nn.Module or a sequence"):
        array.estimate(42)
    with pytest.raises(ValueError, match="input_shape is required"):
        array.estimate(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="array must be a pair"):
        speedup(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), array=64)


def test_speedup_of_models_divides_plain_by_fuse_cycles():
    from fuseops.nn import FuSeConv2d

    base = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 16, 1))
    fuse = nn.Sequential(FuSeConv2d(8, 3, variant="half"), nn.Conv2d(8, 16, 1))
    shape = (1, 8, 12, 12)
    plain = SystolicArray(8, 8).estimate(base, shape).total_cycles
    fused = SystolicArray(8, 8, fuse=True).estimate(fuse, shape).total_cycles
    assert speedup(base, fuse, array=(8, 8), input_shape=shape) == pytest.approx(plain / fused)
    # by hand: dw 3x3 on 8 channels: P = 144 = 18*8, M=1: 8 * 18 * (9 + 8 + 1 - 1);
    # FuSe half: 4 row channels ceil(ceil(12*4/8) * (8+3) * ceil(14/8)) = 6*11*2, same for the cols;
    # the 1x1 conv 8 -> 16: P = 144 = 18*8, M = 16 = 2*8, T = 8: 18*2*(8 + 8 + 8 - 1).
    pw = 18 * 2 * (8 + 8 + 8 - 1)
    assert plain == 8 * 18 * (9 + 8 + 1 - 1) + pw
    assert fused == 2 * (6 * 11 * 2) + pw


_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))  # (t, c, n, s), papers.md


def _paper_mobilenet_v2_cycles(fuse: str | None, rows: int, cols: int) -> dict[str, int]:
    """MobileNetV2 at 224x224, batch 1, costed with papers.md's formulas written out here, on
    its own: the layer shapes come from the (t, c, n, s) table, not from a trace, and nothing
    of hwmodel is called.  Returns cycles by category."""

    def gemm(p, t, m):  # the paper's output-stationary folds
        full_p, rem_p = divmod(p, rows)
        full_m, rem_m = divmod(m, cols)
        cycles = full_p * full_m * (t + rows + cols - 1)
        cycles += full_m * (t + rem_p + cols - 1) if rem_p else 0
        cycles += full_p * (t + rows + rem_m - 1) if rem_m else 0
        return cycles + ((t + rem_p + rem_m - 1) if rem_p and rem_m else 0)

    def one_d(channels, size, stride):  # a 1x3 (or 3x1, same on a square map) conv, padding 1
        return math.ceil(math.ceil(size * channels / rows) / stride * (cols + 3) * math.ceil((size + 2) / cols))

    out = {"pointwise": 0, "depthwise": 0, "fuse_1d": 0, "other": 0}
    out["other"] += gemm(112 * 112, 3 * 9, 32)  # stem 3x3/2: 224 -> 112
    size, cin = 112, 32
    for t, c, n, s in _V2_STAGES:
        for i in range(n):
            stride, hidden = (s if i == 0 else 1), cin * t
            if t != 1:
                out["pointwise"] += gemm(size * size, cin, hidden)
            after = (size - 1) // stride + 1  # 3x3, padding 1
            if fuse is None:
                out["depthwise"] += hidden * gemm(after * after, 9, 1)
                width = hidden
            else:
                parts = hidden // 2 if fuse == "half" else hidden  # every hidden width here is even
                out["fuse_1d"] += 2 * one_d(parts, size, stride)
                width = 2 * parts
            out["pointwise"] += gemm(after * after, width, c)
            size, cin = after, c
    out["pointwise"] += gemm(size * size, cin, 1280)
    out["other"] += gemm(1, 1280, 1000)  # the classifier
    return out


@pytest.fixture(scope="module")
def mobilenet_v2_nets():
    from hwmodel_nets import mobilenet_v2

    return {v: mobilenet_v2(fuse=v) for v in (None, "half", "full")}


@pytest.fixture(scope="module")
def mobilenet_v2_layers(mobilenet_v2_nets):
    from hwmodel import trace

    return {v: trace(net, (1, 3, 224, 224)) for v, net in mobilenet_v2_nets.items()}


def test_mobilenet_v2_cycles_are_the_papers_model(mobilenet_v2_nets):
    # At 64x64 (the paper's array) the paper's formulas give 2,961,936 cycles for the baseline,
    # 411,682 for FuSe-half and 576,542 for FuSe-full (docs/hwmodel-systolic.md), so the speedups
    # are 7.19x and 5.14x (the paper reports 3x-7x at 64x64 across its networks).
    base = _paper_mobilenet_v2_cycles(None, 64, 64)
    half = _paper_mobilenet_v2_cycles("half", 64, 64)
    full = _paper_mobilenet_v2_cycles("full", 64, 64)
    assert (sum(base.values()), sum(half.values()), sum(full.values())) == (2_961_936, 411_682, 576_542)
    assert (half["fuse_1d"], half["pointwise"], half["other"]) == (110_418, 255_872, 45_392)
    results = {v: speedup(mobilenet_v2_nets[None], mobilenet_v2_nets[v]) for v in ("half", "full")}
    assert results == {"half": 2_961_936 / 411_682, "full": 2_961_936 / 576_542}
    assert round(results["half"], 2) == 7.19 and round(results["full"], 2) == 5.14


@pytest.mark.parametrize(("rows", "cols"), [(64, 64), (24, 40), (7, 5)])
@pytest.mark.parametrize("fuse", [None, "half", "full"])
def test_mobilenet_v2_breakdown_matches_the_paper_formulas(mobilenet_v2_layers, fuse, rows, cols):
    # 24x40 and 7x5 divide almost none of the layer sizes, so every partial fold is exercised.
    est = SystolicArray(rows, cols, fuse=fuse is not None).estimate(mobilenet_v2_layers[fuse])
    assert est.complete
    assert est.breakdown == _paper_mobilenet_v2_cycles(fuse, rows, cols)


def test_estimate_does_not_touch_torch_for_layer_lists():
    # Costing a list of Layers must not need a model, an input shape, or a tensor.
    est = SystolicArray(8, 8).estimate((DENSE,))
    assert est.total_cycles > 0
    assert not isinstance(est.total_cycles, torch.Tensor)


def test_estimate_text_and_table_rows_by_hand():
    # DENSE on 4x2 (os, fuseconv) is 309 cycles (test_dense_conv_fuseconv_convention); 3*5*5*18 = 1350
    # MACs; utilisation 1350 / (309 * 8) = 54.6 %.  Two layers with no output are listed as not costed.
    tiny = Layer("tiny", "conv", 1, 1, 2, 2, 1, kernel_h=5, kernel_w=5)
    small = Layer("small", "depthwise", 1, 2, 2, 2, 2, kernel_h=3, kernel_w=3, groups=2)
    est = SystolicArray(4, 2).estimate([DENSE, tiny, small])
    assert est.table_rows() == [("dense", "conv", 1350, 309, "54.6")]
    assert str(est) == ("4x2 array, dataflow=os, convention=fuseconv, fuse=False: 309 cycles, 1,350 MACs, "
                        "utilization 54.6%\n"
                        "  breakdown: pointwise 0, depthwise 0, fuse_1d 0, other 309\n"
                        "  NOT COSTED (2): tiny (conv), small (depthwise)")
    assert str(SystolicArray(4, 2).estimate([DENSE])).count("\n") == 1  # nothing left out: no third line


def test_fuse_lines_count_padding_across_the_lines():
    # A 1x3 row conv padded by (1, 1) makes in_h + 2 output rows, each a line: N*H*C = 1 * (4 + 2) * 3 = 18
    # -> ceil(18/5) = 4 line folds; length 7 + 2 = 9 -> ceil(9/4) = 3; (4 + 3) * 3 * 4 = 84 (stride 1).
    row = Layer("r", "fuse_row", 1, 3, 4, 7, 3, kernel_h=1, kernel_w=3, pad_h=1, pad_w=1, groups=3)
    assert _one(SystolicArray(5, 4, fuse=True), row) == 4 * 7 * 3
    # The column conv the same way across W: lines 1 * (4 + 2) * 3 = 18, length 7 + 2 = 9.
    col = Layer("c", "fuse_col", 1, 3, 7, 4, 3, kernel_h=3, kernel_w=1, pad_h=1, pad_w=1, groups=3)
    assert _one(SystolicArray(5, 4, fuse=True), col) == 4 * 7 * 3


def _small_pair():
    from fuseops.nn import FuSeConv2d

    base = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 16, 1))
    fuse = nn.Sequential(FuSeConv2d(8, 3, variant="half"), nn.Conv2d(8, 16, 1))
    return base, fuse


def test_speedup_passes_array_dataflow_and_convention_on():
    base, fuse = _small_pair()
    shape = (1, 8, 12, 12)
    # ws, scalesim, on 8 rows x 4 columns.  Plain: the 3x3 depthwise per channel has P = 144, T = 9, M = 1:
    # ceil(9/8) * ceil(1/4) * (2*8 + 4 + 144 - 2) - 1 = 323, x 8 channels; the 1x1 8 -> 16: T = 8, M = 16:
    # 1 * 4 * (16 + 4 + 144 - 2) - 1 = 647.  FuSe: 4 row channels, lines 12 * 4 = 48 -> 6 folds,
    # (4 + 3) * ceil(14/4) = 28 -> 168, the column part the same.
    plain, fused = 8 * 323 + 647, 2 * 168 + 647
    got = speedup(base, fuse, array=(8, 4), input_shape=shape, dataflow="ws", convention="scalesim")
    assert got == plain / fused
    # A FuSe network on the plain array pays its 1-D layers as depthwise GEMMs (os, fuseconv, 8x8):
    # per channel P = 144 = 18 * 8, T = 3, M = 1: 18 * (3 + 8 + 1 - 1) = 198, for 4 + 4 channels; the
    # 1x1: 18 * 2 * (8 + 8 + 8 - 1) = 828.  On the FuSe array: 2 * (6 * 11 * 2) + 828.
    assert speedup(fuse, fuse, array=(8, 8), input_shape=shape) == (8 * 198 + 828) / (2 * 132 + 828)


def test_speedup_names_the_network_that_cannot_be_costed():
    class TwoConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.s1 = nn.Conv1d(4, 4, 1)
            self.s2 = nn.Conv1d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x).flatten(2)
            return self.s2(self.s1(y))

    ok = nn.Conv2d(3, 4, 3)
    shape = (1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^baseline_model has layers the systolic model cannot cost: s1 \(.*\), "
                                         r"s2 \(.*\)$"):
        speedup(TwoConv1d(), ok, array=(8, 8), input_shape=shape)
    with pytest.raises(ValueError, match=r"^fuse_model has layers the systolic model cannot cost: s1 \(.*\), s2"):
        speedup(ok, TwoConv1d(), array=(8, 8), input_shape=shape)


def test_layer_records_reject_bad_fields_with_their_names():
    with pytest.raises(ValueError, match=r"^kind must be one of \('conv', 'depthwise', 'fuse_row', 'fuse_col', "
                                         r"'linear'\), got 'pool'$"):
        Layer("p", "pool", 1, 1, 4, 4, 1)
    with pytest.raises(ValueError, match=r"^Layer.stride_w must be >= 1, got 0$"):
        Layer("c", "conv", 1, 1, 4, 4, 1, stride_w=0)
    with pytest.raises(ValueError, match=r"^Layer padding must be >= 0, got \(-1, 0\)$"):
        Layer("c", "conv", 1, 1, 4, 4, 1, pad_h=-1)
    with pytest.raises(ValueError, match=r"^Layer padding must be >= 0, got \(0, -2\)$"):
        Layer("c", "conv", 1, 1, 4, 4, 1, pad_w=-2)


def test_estimate_messages_and_a_traced_layer_list():
    array = SystolicArray(4, 4)
    with pytest.raises(TypeError, match=r"^model_or_layers\[1\] must be a hwmodel.Layer, got str$"):
        array.estimate([DENSE, "conv"])
    with pytest.raises(TypeError, match=r"^model_or_layers must be a torch.nn.Module or a sequence of "
                                        r"hwmodel.Layer, got int$"):
        array.estimate(42)
    with pytest.raises(ValueError, match=r"^input_shape is required to trace an nn.Module, e.g. \(1, 3, 224, 224\)$"):
        array.estimate(nn.Conv2d(3, 3, 1))
    # A traced layer list carries the modules it could not cost into the estimate.
    from hwmodel import trace

    traced = trace(WithConv1d(), (1, 3, 8, 8))
    est = SystolicArray(8, 8).estimate(traced)
    assert [c.name for c in est.layers] == ["conv"] and [u.name for u in est.unsupported] == ["seq"]


def test_cost_checks_and_messages():
    array = SystolicArray(4, 4)
    with pytest.raises(TypeError, match=r"^rows must be an int, got float$"):
        SystolicArray(2.5, 4)
    with pytest.raises(TypeError, match=r"^fuse must be a bool, got str$"):
        SystolicArray(4, 4, fuse="yes")
    for args, name in (((0, 1, 1), "outputs"), ((1, 0, 1), "reduction"), ((1, 1, 0), "filters")):
        with pytest.raises(ValueError, match=rf"^{name} must be >= 1, got 0$"):
            array.gemm_cycles(*args)
    # No output rows (5-row kernel on 2 rows) while the columns are fine: not costed, and why.
    flat = Layer("flat", "conv", 1, 1, 2, 8, 1, kernel_h=5, kernel_w=1)
    est = array.estimate([flat])
    assert est.layers == () and est.unsupported[0].reason == (
        "layer 'flat': the kernel is larger than the padded input (2x8 padded by (0, 0))")
    # Input channels that groups do not divide, output channels that it does.
    odd = Layer("odd", "conv", 1, 6, 4, 4, 4, groups=4)
    est = array.estimate([odd])
    assert est.unsupported[0].reason == "layer 'odd': channels 6->4 are not divisible by groups=4"
    # A channel multiplier repeats the FuSe mapping a whole number of times: an int count.
    assert type(SystolicArray(5, 4, fuse=True).estimate([ODD_COL]).total_cycles) is int


def test_a_layer_list_type_named_module_is_still_a_layer_list():
    class Module(list):  # a list that happens to be called Module, not a torch module
        pass

    assert SystolicArray(4, 2).estimate(Module([DENSE])).total_cycles == 309
