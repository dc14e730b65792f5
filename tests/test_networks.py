"""Whole zoo networks built on the ops: channels_last input, torch.compile and the folded
inference form give the answers of the plain eager network.

Every variant that uses the ops runs in float64 (so any difference is a bug, not rounding)
at 32x32, the smallest input every network takes.  torch.compile runs with the
``aot_eager`` backend for every variant: it captures the whole graph (``fullgraph=True``),
runs the ops' fake implementations and their autograd formulas, and checks them against
eager; Inductor's code generation adds minutes per network on a 2-core CI machine, so it
runs on one FuSe and one block network.
"""

from __future__ import annotations

import pytest
import torch

from fuseops.convert import fold_bn
from fuseops.models import get_model, list_models
from fuseops.nn import BlockConv2d, FuSeConv2d

#: Every zoo variant built on the ops (the baselines are plain torch layers).
OP_VARIANTS = [(name, variant) for name, variants in list_models().items() for variant in variants
               if variant != "baseline"]
IDS = [f"{n}-{v}" for n, v in OP_VARIANTS]
FUSE_VARIANTS = [(n, v) for n, v in OP_VARIANTS if v != "block"]


def _model(name: str, variant: str) -> torch.nn.Module:
    model = get_model(name, variant=variant, num_classes=10).double()
    assert any(isinstance(m, (FuSeConv2d, BlockConv2d)) for m in model.modules())
    # Fresh BN statistics, so the eval-mode BatchNorms (and their folding) are not the identity.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


def _train(model: torch.nn.Module) -> torch.nn.Module:
    """Training mode without dropout, whose random masks would differ between the runs compared."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    return model


def _input(n: int) -> torch.Tensor:
    """A batch at 32x32.  Training-mode comparisons use N=8: at N=2 the last BatchNorms
    normalise over two values each (the maps are 1x1 there), which amplifies float64
    rounding differences to 1e-6 relative even in the plain torch baselines."""
    return torch.randn(n, 3, 32, 32, dtype=torch.float64)


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("name", "variant"), OP_VARIANTS, ids=IDS)
def test_channels_last_network_gives_the_nchw_answer(name, variant):
    model = _model(name, variant)
    x = _input(8)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x_cl), model(x), rtol=1e-12, atol=1e-12)
    _train(model)
    loss, grads = _loss_and_grads(model, x)
    loss_cl, grads_cl = _loss_and_grads(model, x_cl)
    torch.testing.assert_close(loss_cl, loss, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_cl, grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("name", "variant"), OP_VARIANTS, ids=IDS)
def test_compiled_network_gives_the_eager_answer(name, variant):
    """Eval forward, then a training forward and backward, through one fullgraph capture each."""
    torch._dynamo.reset()
    model = _model(name, variant)
    x = _input(8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-12, atol=1e-12)
    _train(model)
    # Train-mode BatchNorm updates its running statistics: both runs start from the same ones.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, grads = _loss_and_grads(model, x)
    model.load_state_dict(state)
    loss_c, grads_c = _loss_and_grads(compiled, x)
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_c, grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("name", "variant"), [("mobilenet_v2", "half"), ("resnet18", "block")])
def test_inductor_compiled_network_trains_like_eager(name, variant):
    """The default backend (Inductor) on one FuSe and one block network, forward and backward."""
    torch._dynamo.reset()
    model = _train(_model(name, variant))
    x = _input(8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, grads = _loss_and_grads(model, x)
    model.load_state_dict(state)
    loss_c, grads_c = _loss_and_grads(torch.compile(model, fullgraph=True), x)
    torch.testing.assert_close(loss_c, loss, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads_c, grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("name", "variant"), FUSE_VARIANTS, ids=[f"{n}-{v}" for n, v in FUSE_VARIANTS])
def test_folded_network_gives_the_eval_answer_eager_and_compiled(name, variant):
    """fold_bn: every FuSeConvBNAct becomes one FuSe op with bias and activation, and every
    conv + BN pair one conv; the folded network, eager and compiled, answers as the original."""
    model = _model(name, variant).eval()
    folded, replaced = fold_bn(model)
    assert replaced
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = _input(8)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(folded(x), want, rtol=1e-10, atol=1e-12)
        torch._dynamo.reset()
        compiled = torch.compile(folded, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), want, rtol=1e-10, atol=1e-12)
