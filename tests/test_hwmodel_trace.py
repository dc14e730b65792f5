"""hwmodel.trace: live modules to Layer records, with the shapes seen in the forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fuseops.nn as fnn
from fuseops.nn import FuSeConv2d, FuSeConvBNAct
from hwmodel import Layer, trace


def _by_name(layers):
    return {layer.name: layer for layer in layers}


class Mixed(nn.Module):
    """Every kind of layer trace knows, at odd sizes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(6, 4, 3, padding=1, groups=2, bias=False)
        self.dw = nn.Conv2d(4, 4, 5, padding=2, groups=4)
        self.row = nn.Conv2d(4, 4, (1, 3), padding=(0, 1), groups=4)
        self.col = nn.Conv2d(4, 8, (3, 1), padding=(1, 0), groups=4)  # channel multiplier 2
        self.same = nn.Conv2d(8, 8, 4, padding="same")  # even kernel: asymmetric "same" padding
        self.fuse = FuSeConv2d(8, 3, stride=2, variant="half", split=3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.col(self.row(self.dw(self.grouped(self.stem(x)))))
        x = self.fuse(self.same(x))
        return self.fc(x.flatten(2).transpose(1, 2))  # a Linear over (N, HW, C)


def test_mixed_model_layers():
    layers = trace(Mixed(), (2, 3, 15, 13))
    assert [layer.name for layer in layers] == ["stem", "grouped", "dw", "row", "col", "same", "fuse.row",
                                                "fuse.col", "fc"]
    by = _by_name(layers)
    assert by["stem"] == Layer("stem", "conv", 2, 3, 15, 13, 6, kernel_h=3, kernel_w=3, stride_h=2,
                               stride_w=2, pad_h=1, pad_w=1)
    # stem output: (15 + 2 - 3)//2 + 1 = 8, (13 + 2 - 3)//2 + 1 = 7
    grouped = by["grouped"]
    assert (grouped.in_h, grouped.in_w, grouped.groups, grouped.kind) == (8, 7, 2, "conv")
    assert (by["dw"].kind, by["dw"].groups, by["dw"].kernel_h) == ("depthwise", 4, 5)
    assert (by["row"].kind, by["row"].pad_h, by["row"].pad_w) == ("fuse_row", 0, 1)
    assert (by["col"].kind, by["col"].out_channels, by["col"].groups) == ("fuse_col", 8, 4)
    # "same" with a 4x4 kernel pads 1 before and 2 after: kept as pad 1 and one more input row/col
    assert (by["same"].pad_h, by["same"].in_h, by["same"].out_h) == (1, 9, 8)
    assert (by["same"].pad_w, by["same"].in_w, by["same"].out_w) == (1, 8, 7)
    row, col = by["fuse.row"], by["fuse.col"]
    assert row == Layer("fuse.row", "fuse_row", 2, 3, 8, 7, 3, kernel_h=1, kernel_w=3, stride_h=2, stride_w=2,
                        pad_h=0, pad_w=1, groups=3)
    assert col == Layer("fuse.col", "fuse_col", 2, 5, 8, 7, 5, kernel_h=3, kernel_w=1, stride_h=2, stride_w=2,
                        pad_h=1, pad_w=0, groups=5)
    assert row.meta["variant"] == "half"
    # fc runs on every one of the 4*4 positions of both images
    assert by["fc"] == Layer("fc", "linear", 2 * 4 * 4, 8, 1, 1, 5)
    assert layers.unsupported == []


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_macs_match_the_forward_pass_shapes():
    model = Mixed()
    layers = _by_name(trace(model, (1, 3, 15, 13)))
    outs = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o.shape))
             for n in ("stem", "grouped", "dw", "row", "col", "same")]
    model(torch.randn(1, 3, 15, 13))
    for h in hooks:
        h.remove()
    for name, shape in outs.items():
        layer = layers[name]
        assert (layer.out_channels, layer.out_h, layer.out_w) == tuple(shape[1:]), name
        conv = getattr(model, name)
        assert layer.macs == shape.numel() * conv.weight[0].numel()


@pytest.mark.parametrize("variant", ["half", "full"])
@pytest.mark.parametrize("training", [True, False])
def test_fuse_block_is_traced_once_in_train_and_eval(variant, training):
    block = FuSeConvBNAct(6, 3, 1, variant=variant)
    block.train(training)
    layers = trace(nn.Sequential(block), (1, 6, 7, 9))
    c = 6 if variant == "full" else 3
    assert [(la.name, la.kind, la.in_channels) for la in layers] == [("0.row", "fuse_row", c),
                                                                    ("0.col", "fuse_col", c)]
    assert block.training is training  # the training flag is restored
    assert "forward" not in vars(block) and "forward" not in vars(block.conv)  # stand-ins removed


def test_compute_and_shape_only_traces_agree():
    from hwmodel_nets import mobilenet_v2

    model = mobilenet_v2(fuse="half", width=0.5, num_classes=10)
    shape = (1, 3, 64, 64)
    fast, real = trace(model, shape), trace(model, shape, compute=True)
    assert list(fast) == list(real)
    assert len(fast) == 1 + 17 * 3 - 1 + 17 + 1 + 1  # stem, 17 blocks (first without expansion), head, fc


def test_module_called_twice_gets_two_layers():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    layers = trace(model, (1, 3, 5, 5))
    assert [layer.name for layer in layers] == ["0", "0#2"]


def test_unbatched_input_and_root_module():
    layers = trace(nn.Conv2d(3, 4, 3), (3, 6, 6))
    assert [(la.name, la.batch, la.in_h) for la in layers] == [("<root>", 1, 6)]


def test_unsupported_modules_are_listed():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 1)
            self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
            self.norm = nn.GroupNorm(2, 2)  # owns weights but costs nothing
            self.scale = nn.Parameter(torch.ones(1))  # the root owns a parameter: not costed

        def forward(self, x):
            return self.norm(self.up(self.conv(x))) * self.scale

    layers = trace(Odd(), (1, 2, 4, 4))
    assert [la.name for la in layers] == ["conv"]
    listed = [(u.name, u.type_name) for u in layers.unsupported]
    assert listed == [("up", "ConvTranspose2d"), ("<root>", "Odd")]


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        trace("mobilenet", (1, 3, 8, 8))
    with pytest.raises(TypeError, match="input_shape must be a non-empty sequence"):
        trace(nn.Conv2d(3, 3, 1), 224)
    with pytest.raises(ValueError, match=r"input_shape\[2\] must be an int >= 1"):
        trace(nn.Conv2d(3, 3, 1), (1, 3, 0, 8))
    with pytest.raises(RuntimeError):  # the model's own error: 4 channels expected
        trace(nn.Conv2d(4, 3, 1), (1, 3, 8, 8), compute=True)


def test_the_test_mobilenet_v2_has_the_papers_parameter_counts():
    # papers.md §1: baseline, full and half (with the dead 1088 parameters removed)
    from hwmodel_nets import mobilenet_v2

    counts = {v: sum(p.numel() for p in mobilenet_v2(fuse=v).parameters()) for v in (None, "full", "half")}
    assert counts == {None: 3_504_872, "full": 4_460_936, "half": 3_462_056}
    layers = trace(mobilenet_v2(), (1, 3, 224, 224))
    assert sum(layer.macs for layer in layers) == 300_774_272  # the MobileNetV2 paper: 300 M multiply-adds


def test_conv_subclass_that_pads_in_forward_is_not_costed_wrongly():
    class PadInForward(nn.Conv2d):  # as "same"-padding convs of some libraries do
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    model = nn.Sequential(nn.Conv2d(3, 4, 1), PadInForward(4, 4, 3))
    for compute in (False, True):
        layers = trace(model, (1, 3, 6, 6), compute=compute)
        assert [la.name for la in layers] == ["0"]
        assert [(u.name, u.type_name) for u in layers.unsupported] == [("1", "PadInForward")]
        assert "differs" in layers.unsupported[0].reason



@pytest.mark.parametrize(("blocking", "block_size", "stride", "stride_mode", "padding_mode"),
                         [("fixed", 4, 1, "conv", "constant"), ("fixed", 3, 2, "conv", "replicate"),
                          ("hierarchical", 2, 2, "conv", "reflect"), ("fixed", 4, 2, "pool", "constant")])
def test_block_conv2d_is_traced_with_its_grid(blocking, block_size, stride, stride_mode, padding_mode):
    import fuseops

    conv = fnn.BlockConv2d(3, 4, 3, stride=stride, padding=1, block_size=block_size, blocking=blocking,
                           stride_mode=stride_mode, padding_mode=padding_mode)
    model = nn.Sequential(conv, nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 11, 10)
    out = conv(x)
    fast, real = trace(model, tuple(x.shape)), trace(model, tuple(x.shape), compute=True)
    assert list(fast) == list(real) and not fast.unsupported and not real.unsupported
    layer = fast[0]
    assert (layer.block_rows, layer.block_cols) == fuseops.block_grid(11, 10, block_size, blocking)
    assert layer.meta["stride_mode"] == stride_mode and layer.meta["padding_mode"] == padding_mode
    if stride_mode == "pool":
        assert layer.stride_h == 1  # the conv runs at stride 1; the max-pool is free
        assert (layer.out_h // stride, layer.out_w // stride) == tuple(out.shape[2:])
        assert layer.macs == 4 * 11 * 10 * 27  # stride 1, padded per block: the full-size map
    else:
        assert (layer.out_h, layer.out_w) == tuple(out.shape[2:])
        assert layer.macs == out.numel() * 27
    assert fast[1].in_h == out.shape[2]  # the next layer saw the stitched output
