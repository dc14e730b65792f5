"""pytest-benchmark timings of block_conv2d against the composition and plain F.conv2d.

Run: pytest bench/bench_block_conv.py --benchmark-enable [--benchmark-group-by=param:case]
Providers of one case share a group, so the report shows their ratios side by side.
"""

from __future__ import annotations

import pytest
import torch

from fuseops.benchmarking.block import BLOCKINGS, MODES, PROVIDERS, SHAPES, make_case, providers

CASES = [(s, b, m) for s in SHAPES for b in BLOCKINGS for m in MODES]
_compiled = {}


def _compiled_composition():
    if "fn" not in _compiled:
        from fuseops.block_conv.reference import block_conv2d_composition

        _compiled["fn"] = torch.compile(block_conv2d_composition, dynamic=False)
    return _compiled["fn"]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0].replace(' ', '_')}-{c[1][0]}-{c[2]}")
def test_block_conv(benchmark, case, provider, backward):
    torch.set_num_threads(2)
    made = make_case(*case)
    fn = providers(made, _compiled_composition() if provider == "compiled" else None)[provider]
    if fn is None:
        pytest.skip(f"{provider} cannot run this grid (the map does not divide into equal blocks)")
    benchmark.group = f"{case[0][0]} {case[1][0]} {case[2]} {'fwd+bwd' if backward else 'fwd'}"
    if backward:
        x = made.x.detach().requires_grad_()
        w = made.weight.detach().requires_grad_()
        b = made.bias.detach().requires_grad_()
        benchmark(lambda: fn(x, w, b).sum().backward())
    else:
        with torch.no_grad():
            benchmark(fn, made.x, made.weight, made.bias)
