"""The systolic-array latency model: hand-computed cycles, edge cases, bad input.

Every expected number is worked out in the test from the formulas in
docs/hwmodel-systolic.md (papers.md §1 for convention="fuseconv", the issue's SCALE-Sim
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


def test_traced_unsupported_modules_reach_the_estimate():
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.seq = nn.Conv1d(4, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return self.seq(y.flatten(2))

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


def test_speedup_of_a_mobilenet_v2_is_in_the_papers_range():
    from hwmodel_nets import mobilenet_v2

    base = mobilenet_v2()
    results = {v: speedup(base, mobilenet_v2(fuse=v)) for v in ("half", "full")}
    # The paper reports 3x-7x at 64x64 across its networks; the model gives MobileNetV2
    # about 7.2x (half) and 5.1x (full).
    for variant, value in results.items():
        assert 3.0 < value < 8.0, (variant, value)
    assert results["half"] > results["full"]  # the full variant does twice the 1-D work


def test_estimate_does_not_touch_torch_for_layer_lists():
    # Costing a list of Layers must not need a model, an input shape, or a tensor.
    est = SystolicArray(8, 8).estimate((DENSE,))
    assert est.total_cycles > 0
    assert not isinstance(est.total_cycles, torch.Tensor)
