"""The zoo: exact parameter counts (papers.md), forward shapes, training, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fuseops.models import get_model, list_models
from fuseops.nn import BlockConv2d, FuSeConvBNAct

# Parameter counts published by the papers (FuSeConv, DATE 2021, with MobileNetV2's 1088 dead
# parameters removed; Block Convolution, TCAD 2022), typed in here from ../shared/papers.md
# rather than imported from fuseops.models.paper, so that a typo there cannot hide here.
FUSE_PARAMS = {
    "mobilenet_v1": (4_231_976, 7_366_600, 4_202_216, 4_356_296, 4_228_328),
    "mobilenet_v2": (3_504_872, 4_460_936, 3_462_056, 3_611_432, 3_492_200),
    "mnasnet_b1": (4_383_312, 5_666_568, 4_257_840, 4_476_552, 4_351_920),
    "mobilenet_v3_small": (2_938_368, 4_446_056, 2_891_712, 3_188_096, 2_922_960),
    "mobilenet_v3_large": (5_476_416, 10_577_064, 5_405_664, 5_573_704, 5_466_720),
}
VARIANTS = ("baseline", "full", "half", "full_hybrid", "half_hybrid")
FUSE_CASES = [(net, v, counts[i]) for net, counts in FUSE_PARAMS.items() for i, v in enumerate(VARIANTS)]
BLOCK_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "vgg16": 138_357_544, "mobilenet_v1": 4_231_976}
BLOCK_DEFAULT = {"resnet18": 28, "resnet50": 56, "vgg16": 28, "mobilenet_v1": 28}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "variant", "expected"), FUSE_CASES, ids=[f"{n}-{v}" for n, v, _ in FUSE_CASES])
def test_fuse_network_param_count_equals_paper(name, variant, expected):
    model = get_model(name, variant=variant)
    assert n_params(model) == expected
    fuse_layers = [m for m in model.modules() if isinstance(m, FuSeConvBNAct)]
    assert bool(fuse_layers) == (variant != "baseline")
    for layer in fuse_layers:  # one BatchNorm per 1-D part, as in the paper
        assert layer.conv.variant == variant.split("_")[0]
        assert layer.bn_row.num_features == layer.conv.c_row and layer.bn_col.num_features == layer.conv.c_col


@pytest.mark.parametrize(("name", "expected"), BLOCK_PARAMS.items())
def test_block_network_param_count_and_every_conv_blocked(name, expected):
    model = get_model(name, variant="block")
    assert n_params(model) == expected
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, BlockConv2d) for m in convs)
    assert {m.block_size for m in convs} == {(BLOCK_DEFAULT[name],) * 2}
    assert {m.padding_mode for m in convs} == {"constant"}


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_plain_network_param_count(name):
    model = get_model(name)
    assert n_params(model) == BLOCK_PARAMS[name]
    assert not any(isinstance(m, (BlockConv2d, FuSeConvBNAct)) for m in model.modules())


def test_block_options_reach_every_conv():
    model = get_model("resnet18", variant="block", block_size=7, padding_mode="reflect", blocking="hierarchical",
                      stride_mode="pool")
    convs = [m for m in model.modules() if isinstance(m, BlockConv2d)]
    assert len(convs) == 20
    assert all((m.block_size, m.padding_mode, m.blocking, m.stride_mode) == ((7, 7), "reflect", "hierarchical", "pool")
               for m in convs)


def test_num_classes_sets_the_classifier():
    assert get_model("mobilenet_v3_small", variant="half", num_classes=7)(torch.randn(1, 3, 64, 64)).shape == (1, 7)


ALL_MODELS = [(name, variant) for name, variants in list_models().items() for variant in variants]


@pytest.mark.parametrize(("name", "variant"), ALL_MODELS, ids=[f"{n}-{v}" for n, v in ALL_MODELS])
def test_forward_224(name, variant):
    torch.manual_seed(0)
    model = get_model(name, variant=variant, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_list_models_covers_the_issue():
    models = list_models()
    for name in FUSE_PARAMS:
        assert set(VARIANTS) <= set(models[name])
    for name in BLOCK_PARAMS:
        assert "block" in models[name]
    for name in ("resnet18", "resnet50", "vgg16"):
        assert "baseline" in models[name]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "mobilenet_v4"}, ValueError, "unknown model 'mobilenet_v4'"),
        ({"name": 3}, TypeError, "name must be a str"),
        ({"name": "resnet18", "variant": "half"}, ValueError, "variant must be one of"),
        ({"name": "mobilenet_v2", "variant": "block"}, ValueError, "variant must be one of"),
        ({"name": "mobilenet_v2", "variant": None}, TypeError, "variant must be a str"),
        ({"name": "vgg16", "num_classes": 0}, ValueError, "num_classes"),
        ({"name": "vgg16", "num_classes": 2.5}, TypeError, "num_classes"),
        ({"name": "mobilenet_v2", "block_size": 8}, TypeError, "block_size"),
        ({"name": "vgg16", "variant": "block", "blok_size": 8}, TypeError, "blok_size"),
        ({"name": "vgg16", "variant": "block", "padding_mode": "wrap"}, ValueError, "padding_mode"),
        ({"name": "vgg16", "variant": "block", "block_size": 0}, ValueError, "block_size"),
    ],
)
def test_get_model_bad_input(kwargs, error, match):
    name = kwargs.pop("name")
    with pytest.raises(error, match=match):
        get_model(name, **kwargs)


def test_import_fuseops_does_not_import_the_zoo():
    code = ("import sys, fuseops; heavy = [m for m in ('fuseops.models', 'fuseops.convert', 'fuseops.profiling') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(fuseops.models.get_model); "
            "assert callable(fuseops.profile)")
    subprocess.run([sys.executable, "-c", code], check=True)


def _train(model: nn.Module, steps: int = 20) -> list[float]:
    # Small on purpose (the ops run their CPU backends with autograd): 4x3x32x32, 3 classes.
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_fuse_network_trains_on_cpu():
    torch.manual_seed(0)
    model = get_model("mobilenet_v3_small", variant="half", num_classes=3)
    model.classifier[1].p = 0.0  # dropout would make a 20-step loss curve noisy
    assert sum(isinstance(m, FuSeConvBNAct) for m in model.modules()) == 11
    losses = _train(model)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is not None for n, p in model.named_parameters() if "weight_row" in n or "weight_col" in n)


def test_block_network_trains_on_cpu():
    torch.manual_seed(0)
    # 32x32 input with F12: the stem sees ragged 12/12/8 blocks; later maps are one block.
    model = get_model("resnet18", variant="block", num_classes=3, block_size=12)
    losses = _train(model)
    assert losses[-1] < 0.5 * losses[0], losses
