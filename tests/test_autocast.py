"""Autocast: both ops take part in it as nn.Conv2d does (fuseops/_autocast.py).

Under torch.autocast the floating inputs (float64 excepted) are cast to the autocast dtype,
so the op under autocast must equal the op called on explicitly cast inputs; the gradients
flow back to the float32 leaves in float32.  Every zoo variant built on the ops runs
forward and backward under CPU bfloat16 autocast.
"""

from __future__ import annotations

import pytest
import torch
from backend_helpers import require_backend
from torch import nn

import fuseops
from fuseops import use_backend
from fuseops.models import get_model, list_models
from fuseops.nn import BlockConv2d, FuSeConv2d

BF16 = torch.bfloat16


def _fuse_args():
    x = torch.randn(2, 6, 9, 11)
    return x, torch.randn(3, 1, 1, 3), torch.randn(3, 1, 3, 1), torch.randn(6)


def _block_args():
    return torch.randn(2, 4, 10, 9), torch.randn(6, 4, 3, 3), torch.randn(6)


OPS = {
    "fuse": (_fuse_args, lambda *a: fuseops.fuse_conv2d(*a, activation="relu6")),
    "block": (_block_args, lambda *a: fuseops.block_conv2d(*a, padding=1, block_size=(4, 5),
                                                           padding_mode="reflect")),
}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_op_under_autocast_equals_op_on_cast_inputs(op, backend):
    require_backend("fuse_conv2d" if op == "fuse" else "block_conv2d", backend)
    make, call = OPS[op]
    leaves = [t.requires_grad_(True) for t in make()]
    with use_backend(backend):
        with torch.autocast("cpu", dtype=BF16):
            out = call(*leaves)
        assert out.dtype == BF16
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, grad_out)
        cast = [t.detach().to(BF16).requires_grad_(True) for t in leaves]
        want = call(*cast)  # outside autocast, on inputs cast by hand
        want_grads = torch.autograd.grad(want, cast, grad_out)
    assert torch.equal(out, want)
    for got, expected in zip(grads, want_grads):
        assert got.dtype == torch.float32  # autograd casts back to the leaf's dtype
        torch.testing.assert_close(got, expected.float(), rtol=0, atol=0)


@pytest.mark.parametrize("op", sorted(OPS))
def test_float64_inputs_stay_float64_under_autocast(op):
    make, call = OPS[op]
    args = [t.double() for t in make()]
    with torch.autocast("cpu", dtype=BF16):
        out = call(*args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, call(*args))


def test_mixed_dtypes_outside_autocast_are_still_an_error():
    x, w_row, w_col, bias = _fuse_args()
    with pytest.raises(TypeError, match="weight_row has dtype torch.float32 but x has torch.bfloat16"):
        fuseops.fuse_conv2d(x.to(BF16), w_row, w_col)


def test_layers_take_a_bf16_activation_with_float32_weights():
    # The failure autocast used to cause: a bf16 activation from an earlier layer reaching
    # a layer whose parameters are float32.
    layers = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), FuSeConv2d(8, 8, 3, variant="half"),
                           BlockConv2d(8, 4, 3, padding=1, block_size=4))
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=BF16):
        out = layers(x)
    assert out.dtype == BF16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layers.parameters())


@pytest.mark.parametrize("op", sorted(OPS))
def test_torch_compile_fullgraph_under_autocast(op):
    make, call = OPS[op]
    args = make()
    with torch.autocast("cpu", dtype=BF16):
        eager = call(*args)
        compiled = torch.compile(call, fullgraph=True, backend="aot_eager")(*args)
    assert compiled.dtype == BF16
    torch.testing.assert_close(compiled, eager)


# Every zoo variant built on the ops (the baselines are plain torch layers).
OP_VARIANTS = [(name, variant) for name, variants in list_models().items() for variant in variants
               if variant != "baseline"]


@pytest.mark.parametrize(("name", "variant"), OP_VARIANTS, ids=[f"{n}-{v}" for n, v in OP_VARIANTS])
def test_zoo_variant_trains_under_bf16_autocast(name, variant):
    model = get_model(name, variant=variant, num_classes=10)
    assert any(isinstance(m, (FuSeConv2d, BlockConv2d)) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=BF16):
        out = model(x)
    assert out.dtype == BF16 and out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all(), pname
