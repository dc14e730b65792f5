"""profile(): hand-computed MACs, FuSe and block conventions, and a cross-check against ptflops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fuseops
from fuseops.models import get_model
from fuseops.nn import BlockConv2d, FuSeConv2d, FuSeConvBNAct
from fuseops.profiling import profile


def test_hand_computed_conv_and_linear():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5))
    result = profile(model, (2, 3, 8, 8))
    conv1 = 2 * 8 * 4 * 4 * (3 * 9)  # N * C_out * H_out * W_out * C_in * k * k
    grouped = 2 * 8 * 4 * 4 * (2 * 9)  # C_in / groups = 2
    linear = 2 * 8 * 5
    assert result.macs == conv1 + grouped + linear
    assert result.params == sum(p.numel() for p in model.parameters())
    assert [(r.name, r.kind, r.output_shape, r.macs) for r in result.layers] == [
        ("0", "Conv2d", (2, 8, 4, 4), conv1), ("1", "BatchNorm2d", (2, 8, 4, 4), 0),
        ("3", "Conv2d", (2, 8, 4, 4), grouped), ("6", "Linear", (2, 5), linear)]
    text = str(result)
    assert "total" in text and f"{conv1 + grouped + linear:,}" in text and "MACs" in text


def test_profile_is_exported_lazily_and_restores_mode():
    model = nn.Sequential(nn.Conv2d(1, 1, 1)).train()
    assert fuseops.profile(model, (1, 1, 2, 2)).macs == 4
    assert model.training


@pytest.mark.parametrize(("variant", "split"), [("half", None), ("half", 2), ("full", None)])
def test_fuse_layer_counts_its_two_1d_convs(variant, split):
    layer = FuSeConv2d(7, 5, 2, variant=variant, split=split)
    c_row, c_col = (7, 7) if variant == "full" else ((4, 3) if split is None else (2, 5))
    # 15x15 input, stride 2, "same" padding -> 8x8 output for both parts.
    assert profile(layer, (1, 7, 15, 15)).macs == (c_row + c_col) * 8 * 8 * 5
    block = FuSeConvBNAct(7, 5, 2, variant=variant, split=split)
    rows = profile(block, (1, 7, 15, 15)).layers
    assert len(rows) == 1 and rows[0].macs == (c_row + c_col) * 8 * 8 * 5


def test_block_conv_counts_per_block_outputs():
    # 16x16 map, blocks of 8, 3x3 with no padding: each block gives 6 outputs per side -> 12x12.
    conv = BlockConv2d(2, 3, 3, block_size=8)
    assert profile(conv, (1, 2, 16, 16)).macs == 3 * 12 * 12 * (2 * 9)
    # stride_mode="pool": a stride-1 block conv (16x16 with padding 1) and then a 2x2 max-pool.
    pooled = BlockConv2d(2, 3, 3, stride=2, padding=1, block_size=8, stride_mode="pool")
    result = profile(pooled, (1, 2, 16, 16))
    assert result.layers[0].output_shape == (1, 3, 8, 8)
    assert result.macs == 3 * 16 * 16 * (2 * 9)


def _ptflops_macs(model: nn.Module, size: tuple[int, int, int]) -> int:
    ptflops = pytest.importorskip("ptflops")
    # BN, activations and pooling are left out to match profile()'s convention; functional
    # counting (torch.mean, tensor ops) is off for the same reason.
    ignore = [nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.Dropout]
    macs, _ = ptflops.get_model_complexity_info(model, size, as_strings=False, print_per_layer_stat=False,
                                                backend="pytorch", ignore_modules=ignore,
                                                backend_specific_config={"count_functional": False})
    return int(macs)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_macs_match_ptflops_up_to_bias_adds(name):
    model = get_model(name).eval()
    ours = profile(model, (1, 3, 224, 224)).macs
    theirs = _ptflops_macs(model, (3, 224, 224))
    # ptflops adds one op per bias element of every conv/linear output; profile() counts MACs
    # only.  These models' only bias is the 1000-way classifier's: exactly 1000 more for ptflops.
    assert theirs == ours + 1000
    assert 300e6 < ours < 2e9  # and the numbers are the right size (MobileNetV2 ~301M, ResNet-18 ~1.8G)


class TwoDepthwiseConvs(nn.Module):
    """The half FuSe layer written with two plain nn.Conv2d, which ptflops knows how to count."""

    def __init__(self, c_row, c_col, k, stride):
        super().__init__()
        self.c_row = c_row
        self.row = nn.Conv2d(c_row, c_row, (1, k), stride, (0, k // 2), groups=c_row, bias=False)
        self.col = nn.Conv2d(c_col, c_col, (k, 1), stride, (k // 2, 0), groups=c_col, bias=False)

    def forward(self, x):
        return torch.cat([self.row(x[:, : self.c_row]), self.col(x[:, self.c_row :])], 1)


def test_fuse_macs_match_ptflops_on_the_equivalent_plain_convs():
    layer = FuSeConv2d(9, 3, 2, variant="half")  # split 5 / 4
    assert profile(layer, (1, 9, 21, 21)).macs == _ptflops_macs(TwoDepthwiseConvs(5, 4, 3, 2), (9, 21, 21))


def test_zoo_fuse_network_macs_against_the_paper():
    # The paper's FLOPs add BN/activation overhead to the MACs: ours must be a few percent lower.
    result = profile(get_model("mobilenet_v2", variant="half"))
    assert 0.9 * 300e6 < result.macs < 300e6


@pytest.mark.parametrize(("args", "error"), [(("model",), TypeError), ((nn.Identity(), 224), TypeError),
                                             ((nn.Identity(), (1, 0, 4)), ValueError)])
def test_profile_bad_input(args, error):
    with pytest.raises(error):
        profile(*args)


def test_zoo_cli_writes_the_paper_comparison(tmp_path, capsys):
    import csv

    from fuseops.cli import main

    path = tmp_path / "zoo.csv"
    assert main(["zoo", "--network", "mobilenet_v3_small", "--no-progress", "--csv", str(path)]) == 0
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == ["baseline", "full", "half", "full_hybrid", "half_hybrid"]
    assert [int(r["params"]) for r in rows] == [2_938_368, 4_446_056, 2_891_712, 3_188_096, 2_922_960]
    assert all(int(r["params diff"]) == 0 for r in rows)
    assert [int(r["paper MFLOPs"]) for r in rows] == [66, 84, 61, 73, 63]
    assert all(-15 < float(r["MACs diff %"]) < 0 for r in rows)  # MACs < the paper's FLOPs (BN/act overhead)
    assert "equal the paper" in capsys.readouterr().out


# -- exact rows, the table, and what the profiler runs -------------------------------------------


def test_table_text_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    result = profile(model, (1, 1, 4, 4))
    # conv 2 * 4*4 * 9 = 288 MACs, 18 weights; BN 4 parameters; linear 32 * 3 = 96 MACs, 99 parameters.
    assert (result.params, result.macs, result.input_size) == (121, 384, (1, 1, 4, 4))
    from fuseops.profiling import CONVENTION

    assert str(result).splitlines() == [
        f"input 1x1x4x4; {CONVENTION}",
        "layer  kind         output   params  MACs",
        "-----  -----------  -------  ------  ----",
        "0      Conv2d       1x2x4x4      18   288",
        "1      BatchNorm2d  1x2x4x4       4     0",
        "3      Linear       1x3          99    96",
        "-----  -----------  -------  ------  ----",
        "total                           121   384",
    ]


def test_root_module_row_is_named_model():
    text = str(profile(nn.Conv2d(1, 1, 1), (1, 1, 2, 2)))
    assert text.splitlines()[3].startswith("(model)  Conv2d")


def test_block_conv_macs_by_hand():
    # (3, 1) kernel, stride (2, 1), padding (1, 0), blocks of 3 x 4 on 7 x 9:
    # rows (0,3) (3,6) (6,7): (b + 2 - 3)//2 + 1 = 2, 2, 1 -> 5; cols (0,4) (4,8) (8,9): b -> 4 + 4 + 1 = 9.
    conv = BlockConv2d(2, 3, (3, 1), stride=(2, 1), padding=(1, 0), block_size=(3, 4))
    assert profile(conv, (2, 2, 7, 9)).macs == 2 * 3 * 5 * 9 * (2 * 3)
    # The unblocked conv would give (7 + 2 - 3)//2 + 1 = 4 rows: blocking changes the count.
    assert profile(nn.Conv2d(2, 3, (3, 1), (2, 1), (1, 0)), (2, 2, 7, 9)).macs == 2 * 3 * 4 * 9 * 6
    # Hierarchical 3 x 2 blocks on 8 x 9, groups 2 (C/g = 1), dilation (1, 2) with a (1, 3) kernel:
    # rows (0,2) (2,5) (5,8), no padding, kernel 1 -> 8 rows; cols (0,4) (4,9), span 5, padding 2:
    # (4 + 4 - 5)//1 + 1 = 4 and (5 + 4 - 5) + 1 = 5 -> 9.
    hier = BlockConv2d(2, 4, (1, 3), padding=(0, 2), dilation=(1, 2), groups=2, block_size=(3, 2),
                       blocking="hierarchical")
    assert profile(hier, (1, 2, 8, 9)).macs == 4 * 8 * 9 * (1 * 3)
    # Hierarchical 2 x 3 blocks of a 3x3 conv, no padding, on 8 x 9: rows (0,4) (4,8) -> 2 + 2;
    # cols (0,3) (3,6) (6,9) -> 1 each.  (Fixed blocks of 2 x 3 would leave no output rows.)
    few = BlockConv2d(1, 1, 3, block_size=(2, 3), blocking="hierarchical")
    assert profile(few, (1, 1, 8, 9)).macs == 4 * 3 * 9
    # Dilation (2, 1), padding (2, 1), blocks of 4 on 8 x 8: rows span 5, (4 + 4 - 5) + 1 = 4 per block;
    # cols span 3, (4 + 2 - 3) + 1 = 4 per block: 8 x 8 outputs.
    dil = BlockConv2d(1, 1, 3, padding=(2, 1), dilation=(2, 1), block_size=4)
    assert profile(dil, (1, 1, 8, 8)).macs == 8 * 8 * 9
    # stride_mode="pool": the conv runs at stride 1 ((3 + 2 - 3) + 1 = 3 per block of 3, 7 rows in all),
    # then a 2x2 max-pool.
    pooled = BlockConv2d(1, 1, 3, stride=2, padding=1, block_size=3, stride_mode="pool")
    assert profile(pooled, (1, 1, 7, 7)).macs == 7 * 7 * 9


def test_linear_on_tokens_and_fuse_with_bias():
    # Every leading dimension is batch: (2, 5, 4) through Linear(4, 3) is 10 rows of 4 x 3.
    assert profile(nn.Linear(4, 3), (2, 5, 4)).macs == 10 * 4 * 3
    # FuSe with bias, stride 1: (C_r + C_c) * H * W * K = (3 + 2) * 6*6 * 3; bias adds are not MACs.
    layer = FuSeConv2d(5, 3, 1, variant="half", bias=True)
    result = profile(layer, (1, 5, 6, 6))
    assert result.macs == 5 * 36 * 3
    assert [(r.kind, r.params) for r in result.layers] == [("FuSeConv2d", 3 * 3 + 2 * 3 + 5)]


class _Spy(nn.Module):
    """A leaf with a parameter that records how the profiler ran it."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, dtype=dtype))
        self.seen = []

    def forward(self, x):
        self.seen.append((x.dtype, x.shape, self.training, torch.is_grad_enabled()))
        return x * self.scale


def test_profiler_runs_in_eval_without_grad_in_the_model_dtype():
    spy = _Spy(torch.float64).train()
    result = profile(spy, [1, 2, 3])
    assert spy.seen == [(torch.float64, (1, 2, 3), False, False)]
    assert spy.training  # restored
    # A leaf that owns parameters but is not counted gets a row with 0 MACs.
    assert [(r.name, r.kind, r.output_shape, r.params, r.macs) for r in result.layers] == [
        ("", "_Spy", (1, 2, 3), 1, 0)]
    # A model with no parameters, or only integer ones, runs in float32.
    quiet = nn.Sequential(nn.ReLU())
    assert profile(quiet, (1, 2)).layers == [] and profile(quiet, (1, 2)).params == 0
    spy_int = _Spy()
    spy_int.scale = nn.Parameter(torch.ones(1, dtype=torch.int64), requires_grad=False)
    profile(spy_int, (2,))
    assert spy_int.seen[0][0] == torch.float32


def test_profiler_rows_follow_calls_and_skip_non_tensor_outputs():
    shared = nn.Conv2d(2, 2, 1, bias=False)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = shared
            self.rnn = nn.GRU(2, 2, batch_first=True)  # returns a tuple: no row

        def forward(self, x):
            y = self.conv(self.conv(x))
            self.rnn(y.flatten(2).transpose(1, 2))
            return y

    result = profile(Twice(), (1, 2, 3, 3))
    assert [(r.name, r.macs) for r in result.layers] == [("conv", 2 * 9 * 2), ("conv", 2 * 9 * 2)]
    assert result.macs == 72
    assert result.params == 4 + sum(p.numel() for p in nn.GRU(2, 2).parameters())


def test_profiler_cleans_up_after_a_failing_forward():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        profile(model, (1, 1, 2, 2))
    assert model.training and not model.conv._forward_hooks


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [(("model",), TypeError, "model must be an nn.Module, got str"),
     ((nn.Identity(), ()), TypeError, r"input_size must be a non-empty tuple of ints, got \(\)"),
     ((nn.Identity(), (1, 0, 4)), ValueError, "input_size must be >= 1, got 0")],
)
def test_profile_bad_input_messages(args, error, match):
    with pytest.raises(error, match=match):
        profile(*args)


def test_profiler_input_follows_the_model_device():
    # Parameters on the meta device: the random input must be made there too (a CPU input would not
    # run).  conv 2 * 4*4 * 9 = 288 MACs; the linear layer sees 2*4 rows of 4: 8 * 4 * 3 = 96.
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Linear(4, 3)).to("meta")
    assert profile(model, (1, 1, 4, 4)).macs == 288 + 96


def test_layers_called_with_keywords_are_counted():
    # fc(input=x) and conv(input=x): the input comes by keyword, and the MACs are still counted:
    # the linear layer 3 rows x 4 x 2 = 24, the 1x1 conv 2 -> 3 on a 3 x 1 map: 3 * 3 * 2 = 18.
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.conv = nn.Conv2d(2, 3, 1)

        def forward(self, x):
            y = self.fc(input=x)
            return self.conv(input=y.t().reshape(1, 2, 3, 1))

    result = profile(Keyword(), (3, 4))
    assert [(r.name, r.kind, r.params, r.macs) for r in result.layers] == [("fc", "Linear", 10, 24),
                                                                              ("conv", "Conv2d", 9, 18)]


def test_a_leaf_whose_first_argument_is_not_a_tensor_is_listed_without_macs():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, factor, x):
            return x * self.w * factor

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = Scale()

        def forward(self, x):
            return self.scale(2.0, x)

    assert [(r.name, r.params, r.macs) for r in profile(Model(), (2, 2)).layers] == [("scale", 1, 0)]


def test_a_leaf_called_without_any_tensor_is_listed_without_macs():
    # A learned bias called with no arguments, and once with only a float keyword: there is no
    # input tensor (no positional argument, no tensor keyword), so no MACs; it holds 3 parameters,
    # so each call still gets a row with its (3,) output.
    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(3))

        def forward(self, scale=1.0):
            return self.b * scale

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = Bias()
            self.scaled = Bias()

        def forward(self, x):
            return x + self.bias() + self.scaled(scale=2.0)

    result = profile(Model(), (2, 3))
    assert [(r.name, r.kind, r.output_shape, r.params, r.macs) for r in result.layers] == [
        ("bias", "Bias", (3,), 3, 0), ("scaled", "Bias", (3,), 3, 0)]
    assert (result.params, result.macs) == (6, 0)


def test_a_linear_layer_whose_first_argument_is_not_a_tensor_is_listed_without_macs():
    # A Linear(4, 2) subclass taking a list of tensors: its first argument is no tensor, so its MACs
    # are not counted (0), not guessed from the list; its 4*2 + 2 = 10 parameters still get a row.
    class Pick(nn.Linear):
        def forward(self, xs):
            return super().forward(xs[0])

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.pick = Pick(4, 2)

        def forward(self, x):
            return self.pick([x, x])

    result = profile(Model(), (3, 4))
    assert [(r.name, r.kind, r.output_shape, r.params, r.macs) for r in result.layers] == [
        ("pick", "Pick", (3, 2), 10, 0)]
