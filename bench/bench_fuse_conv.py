"""pytest-benchmark of fuse_conv2d on CPU.

    taskset -c 0,1 python -m pytest bench/bench_fuse_conv.py --benchmark-enable \
        --benchmark-group-by=param:case --benchmark-json=bench/results/bench_fuse_conv.json
    ... -k "forward- and half and K3"          # a subset

Cases, inputs, the reference and the providers come from fuseops.benchmarking.fuse,
which ``python -m fuseops bench fuse`` (the table) also uses, so the two cannot drift.
Providers: the floor ``x.clone()``, the reference (fuseops' one reference),
``torch.compile(reference)``, and every available kernel backend through the public op.
Each provider's output is checked against the reference before it is timed.
torch runs on 2 threads (set FUSEOPS_BENCH_THREADS to change it).
"""

from __future__ import annotations

import os

import pytest
import torch

from fuseops.benchmarking import fuse as fb

torch.set_num_threads(int(os.environ.get("FUSEOPS_BENCH_THREADS", "2")))

PROVIDERS, MISSING = fb.available_providers()
CASES = fb.cases(quick=os.environ.get("FUSEOPS_BENCH_QUICK") == "1")


def _case_id(case: fb.Case) -> str:
    return f"{case.variant}-K{case.kernel}-{case.channels}x{case.height}x{case.width}"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward(benchmark, case, provider):
    fn = fb.provider_fn(case, provider)
    inputs = fb.make_inputs(case)
    fb.check(case, provider, fn, inputs)
    benchmark.extra_info.update(case=case.label, provider=provider, mode="forward")
    with torch.no_grad():
        benchmark(fn, *inputs)


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "clone"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_backward(benchmark, case, provider):
    fn = fb.provider_fn(case, provider)
    leaves = fb.make_inputs(case, requires_grad=True)
    with torch.no_grad():
        grad_out = torch.randn_like(fb.reference(case)(*leaves))
    benchmark.extra_info.update(case=case.label, provider=provider, mode="forward+backward")

    def step():
        torch.autograd.grad(fn(*leaves), leaves, grad_out)

    benchmark(step)
