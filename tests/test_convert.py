"""to_fuse, to_block and fold_bn on zoo models and on a torchvision-style MobileNetV2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fuseops.convert import fold_bn, to_block, to_fuse
from fuseops.models import get_model
from fuseops.nn import BlockConv2d, FuSeConv2d, FuSeConvBNAct

# -- a torchvision-style MobileNetV2, written here (no torchvision on the test machines) --------

class Conv2dNormActivation(nn.Sequential):
    def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [Conv2dNormActivation(cin, hidden, 1)] if expand != 1 else []
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchvisionMobileNetV2(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                    [6, 320, 1, 1]]
        features = [Conv2dNormActivation(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(Conv2dNormActivation(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding has something to fold."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


# -- to_fuse ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "zoo_params"), [("half", 3_462_056), ("full", 4_460_936)])
def test_to_fuse_torchvision_mobilenet_v2_matches_zoo_params(variant, zoo_params):
    model = TorchvisionMobileNetV2()
    assert n_params(model) == 3_504_872
    converted, names = to_fuse(model, variant)
    assert n_params(converted) == zoo_params == n_params(get_model("mobilenet_v2", variant=variant))
    assert len(names) == 17 and names[0] == "features.1.conv.0.0"
    fuse = [m for m in converted.modules() if isinstance(m, FuSeConvBNAct)]
    assert len(fuse) == 17 and {m.activation for m in fuse} == {"relu6"}
    assert n_params(model) == 3_504_872  # the original is untouched
    converted.eval()
    with torch.no_grad():
        assert converted(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize(("name", "variant", "expected"), [("mobilenet_v1", "full", 7_366_600),
                                                           ("mnasnet_b1", "half", 4_257_840),
                                                           ("mobilenet_v3_large", "half", 5_405_664)])
def test_to_fuse_zoo_baseline_gives_the_zoo_variant_param_count(name, variant, expected):
    converted, names = to_fuse(get_model(name), variant)
    assert n_params(converted) == expected  # the paper's count (papers.md)
    assert len(names) == sum(isinstance(m, FuSeConvBNAct) for m in converted.modules())


def test_to_fuse_initialises_from_centre_row_and_column_and_bn():
    torch.manual_seed(0)
    block = randomize_bn(nn.Sequential(nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False), nn.BatchNorm2d(5),
                                       nn.ReLU()))
    converted, names = to_fuse(block, "half")
    assert names == ["0"]
    fuse = converted[0]
    assert isinstance(fuse, FuSeConvBNAct) and fuse.activation == "relu"
    assert isinstance(converted[1], nn.Identity) and isinstance(converted[2], nn.Identity)
    weight = block[0].weight
    assert torch.equal(fuse.conv.weight_row, weight[:3, :, 1:2, :])
    assert torch.equal(fuse.conv.weight_col, weight[3:, :, :, 1:2])
    assert torch.equal(fuse.bn_col.running_mean, block[1].running_mean[3:])
    # Reference: the FuSe op written out with plain convs and the copied BN.
    x = torch.randn(2, 5, 9, 9)
    converted.eval()
    block.eval()
    rows = nn.functional.conv2d(x[:, :3], fuse.conv.weight_row, padding=(0, 1), groups=3)
    cols = nn.functional.conv2d(x[:, 3:], fuse.conv.weight_col, padding=(1, 0), groups=2)
    expected = torch.relu(block[1](torch.cat([rows, cols], 1)))
    torch.testing.assert_close(converted(x), expected)


def test_to_fuse_full_widens_the_consumer_to_the_same_function_on_duplicated_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 6, 1))
    converted, names = to_fuse(model, "full")
    assert names == ["0"]
    wide = converted[2]
    assert wide.in_channels == 8
    y = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(wide(torch.cat([y, y], 1)), model[2](y))


def test_to_fuse_filter_and_zoo_model():
    model = get_model("mobilenet_v1")
    converted, names = to_fuse(model, "half", filter=lambda name, conv: conv.stride == (2, 2))
    assert len(names) == 4  # the four stride-2 depthwise blocks
    assert sum(isinstance(m, FuSeConvBNAct) for m in converted.modules()) == 4


def test_to_fuse_full_without_consumer_errors():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(ValueError, match="doubles the channels of '0'"):
        to_fuse(model, "full")


def test_to_fuse_leaves_non_depthwise_and_non_same_padding_alone():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=0, groups=8),
                          nn.Conv2d(8, 8, 1, groups=8))
    converted, names = to_fuse(model)
    assert names == []
    assert all(type(m) is nn.Conv2d for m in converted)


# -- to_block ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_to_block_with_one_block_equals_original(name):
    torch.manual_seed(0)
    model = randomize_bn(get_model(name, num_classes=10)).eval()
    converted, names = to_block(model, 1, blocking="hierarchical")
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    assert names == convs
    assert all(isinstance(converted.get_submodule(n), BlockConv2d) for n in names)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


def test_to_block_keeps_weights_and_blocks_change_3x3_but_not_1x1():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    converted, names = to_block(model, 4)
    assert names == ["0", "1"]
    assert torch.equal(converted[0].weight, model[0].weight) and torch.equal(converted[1].bias, model[1].bias)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(converted[1](x), model[1](x))  # 1x1, no padding: blocking changes nothing
    y = torch.randn(1, 3, 8, 8)
    assert not torch.allclose(converted[0](y), model[0](y))  # block borders see zeros, not neighbours


def test_to_block_on_a_bare_conv_and_filter():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    converted, names = to_block(conv, 8)
    assert isinstance(converted, BlockConv2d) and names == [""]
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 1))
    _, names = to_block(model, 8, filter=lambda name, m: m.kernel_size != (1, 1))
    assert names == ["0"]


def test_to_block_refuses_a_padding_mode_that_would_change_the_conv():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="'0' pads with padding_mode='reflect'"):
        to_block(model, 4)
    converted, _ = to_block(model, 1, padding_mode="reflect", blocking="hierarchical")
    x = torch.randn(1, 2, 6, 6)
    torch.testing.assert_close(converted(x), model(x))


# -- fold_bn ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "variant"), [("mobilenet_v2", "half"), ("mobilenet_v3_small", "full"),
                                               ("mnasnet_b1", "full_hybrid"), ("resnet18", "baseline"),
                                               ("mobilenet_v1", "block")])
def test_fold_bn_keeps_eval_outputs(name, variant):
    torch.manual_seed(0)
    options = {"block_size": 16} if variant == "block" else {}
    model = randomize_bn(get_model(name, variant=variant, num_classes=10, **options)).eval()
    folded, names = fold_bn(model)
    assert names
    assert not any(isinstance(m, (nn.BatchNorm2d, FuSeConvBNAct)) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0  # original untouched
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fold_bn_into_a_plain_fuse_conv_with_bias():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(FuSeConv2d(6, 3, variant="full", bias=True), nn.BatchNorm2d(12))).eval()
    folded, names = fold_bn(model)
    assert names == ["0"] and isinstance(folded[1], nn.Identity)
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: to_fuse("model"), TypeError, "model must be an nn.Module"),
        (lambda: to_fuse(nn.Identity(), "quarter"), ValueError, "variant"),
        (lambda: to_fuse(nn.Identity(), filter="3x3"), TypeError, "filter"),
        (lambda: to_block(None, 8), TypeError, "model must be an nn.Module"),
        (lambda: to_block(nn.Identity(), 0), ValueError, "block_size"),
        (lambda: to_block(nn.Identity(), 8, padding_mode="zeros"), ValueError, "padding_mode"),
        (lambda: to_block(nn.Identity(), 8, blocking="fixd"), ValueError, "blocking"),
        (lambda: to_block(nn.Identity(), 8, stride_mode=2), TypeError, "stride_mode"),
        (lambda: fold_bn([nn.Conv2d(1, 1, 1)]), TypeError, "model must be an nn.Module"),
    ],
)
def test_converters_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
