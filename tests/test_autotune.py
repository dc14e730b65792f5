"""The "auto" measurement logic (fuseops.autotune and backends' CUDA hook), on the CPU
with fake timers: which candidate wins, when measuring happens, and the caches."""

from __future__ import annotations

import json

import pytest
import torch

from fuseops import autotune, backends
from fuseops.autotune import Autotuner, TuneRequest, signature


class FakeTimer:
    """Costs per candidate function; counts how often each was timed."""

    def __init__(self, costs: dict):
        self.costs = costs
        self.calls: dict = {}

    def __call__(self, fn):
        self.calls[fn] = self.calls.get(fn, 0) + 1
        return self.costs[fn]


def _fns(*names):
    # Distinct callables, so the fake timer can tell them apart.
    return {name: (lambda name=name: name) for name in names}


def test_picks_the_cheapest_and_measures_once_per_key():
    fns = _fns("cuda", "triton")
    timer = FakeTimer({fns["cuda"]: 2.0, fns["triton"]: 1.5})
    tuner = Autotuner(timer=timer)
    assert tuner.choose(("k", 1), fns) == "triton"
    assert tuner.choose(("k", 1), fns) == "triton"
    assert timer.calls == {fns["cuda"]: 1, fns["triton"]: 1}
    assert tuner.timings(("k", 1)) == {"cuda": 2.0, "triton": 1.5}


def test_each_key_is_measured_separately():
    fns = _fns("cuda", "triton")
    costs = {fns["cuda"]: 1.0, fns["triton"]: 3.0}
    tuner = Autotuner(timer=FakeTimer(costs))
    assert tuner.choose("small", fns) == "cuda"
    costs[fns["cuda"]] = 5.0
    assert tuner.choose("small", fns) == "cuda"  # cached, not re-measured
    assert tuner.choose("large", fns) == "triton"


def test_ties_go_to_the_first_candidate():
    fns = _fns("triton", "cuda")
    tuner = Autotuner(timer=FakeTimer({fns["triton"]: 1.0, fns["cuda"]: 1.0}))
    assert tuner.choose("k", fns) == "triton"


def test_single_candidate_is_not_timed():
    fns = _fns("cuda")
    timer = FakeTimer({})
    assert Autotuner(timer=timer).choose("k", fns) == "cuda"
    assert timer.calls == {}


def test_no_candidate_is_an_error():
    with pytest.raises(ValueError, match="at least one candidate"):
        Autotuner(timer=FakeTimer({})).choose("k", {})


def test_failing_candidate_raises_instead_of_being_skipped():
    def broken():
        raise RuntimeError("kernel bug")

    def timer(fn):
        fn()
        return 1.0

    with pytest.raises(RuntimeError, match="kernel bug"):
        Autotuner(timer=timer).choose("k", {"cuda": broken, "triton": lambda: None})


def test_cached_choice_no_longer_available_is_remeasured():
    fns = _fns("cuda", "triton")
    timer = FakeTimer({fns["cuda"]: 2.0, fns["triton"]: 1.0})
    tuner = Autotuner(timer=timer)
    assert tuner.choose("k", fns) == "triton"
    only_cuda = {"cuda": fns["cuda"], "reference": lambda: None}
    timer.costs[only_cuda["reference"]] = 9.0
    assert tuner.choose("k", only_cuda) == "cuda"


def test_disk_cache_round_trip(tmp_path):
    path = tmp_path / "sub" / "tune.json"
    fns = _fns("cuda", "triton")
    first = Autotuner(timer=FakeTimer({fns["cuda"]: 1.0, fns["triton"]: 2.0}), cache_file=str(path))
    assert first.choose(("op", (1, 2)), fns) == "cuda"
    stored = json.loads(path.read_text())
    assert list(stored.values()) == ["cuda"]
    timer = FakeTimer({})  # would raise KeyError if asked to time anything
    second = Autotuner(timer=timer, cache_file=str(path))
    assert second.lookup(("op", (1, 2))) == "cuda"
    assert second.choose(("op", (1, 2)), fns) == "cuda"
    assert timer.calls == {}


def test_corrupt_disk_cache_is_reported(tmp_path):
    path = tmp_path / "tune.json"
    path.write_text("[1, 2")
    with pytest.raises(RuntimeError, match="FUSEOPS_AUTOTUNE_CACHE"):
        Autotuner(timer=FakeTimer({}), cache_file=str(path)).lookup("k")


def test_signature_distinguishes_what_matters():
    x = torch.randn(2, 3, 8, 8)
    base = signature((x, 3, "relu"))
    assert signature((torch.randn(2, 3, 8, 8), 3, "relu")) == base  # values do not matter
    assert signature((torch.randn(2, 3, 8, 9), 3, "relu")) != base
    assert signature((x.double(), 3, "relu")) != base
    assert signature((x.to(memory_format=torch.channels_last), 3, "relu")) != base
    assert signature((x, 1, "relu")) != base
    assert signature((x, 3, "none")) != base
    assert signature((x, None)) != signature((x, x))
    hash(base)


# ----------------------------------------------------------------------------- backends hook
OP = "autotune_test_op"


def _ok(device):
    return backends.Availability(True)


def _missing(device):
    return backends.Availability(False, "not built")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A registered op with cuda/triton/reference all "available", and a fake tuner."""
    backends.register_op(OP, probes={"reference": _ok, "cuda": _ok, "triton": _ok},
                         auto_order={"cpu": ("reference",), "cuda": ("cuda", "triton", "reference")})
    fns = _fns("cuda", "triton", "reference")
    timer = FakeTimer({fns["cuda"]: 3.0, fns["triton"]: 1.0, fns["reference"]: 0.1})
    tuner = Autotuner(timer=timer)
    monkeypatch.setattr(autotune, "default_autotuner", lambda: tuner)
    monkeypatch.setattr(autotune, "device_key", lambda device: ("fake-gpu", "torch-x"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.delenv(autotune.ENABLE_ENV, raising=False)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    yield fns, timer, tuner
    backends._probes.pop(OP)
    backends._auto_order.pop(OP)


def _request(fns, key="shape-a"):
    return TuneRequest(key=key, run=lambda name: fns[name])


def test_auto_on_cuda_measures_kernels_only(fake_cuda):
    fns, timer, tuner = fake_cuda
    cuda = torch.device("cuda")
    assert backends.resolve(OP, cuda, tune=_request(fns)) == "triton"
    # The reference is never a measured candidate, even though the fake says it is fastest.
    assert fns["reference"] not in timer.calls
    assert tuner.lookup((OP, ("fake-gpu", "torch-x"), "shape-a")) == "triton"


def test_auto_without_a_request_keeps_the_static_order(fake_cuda):
    fns, timer, _ = fake_cuda
    assert backends.resolve(OP, torch.device("cuda")) == "cuda"
    assert timer.calls == {}


def test_explicit_backend_is_not_measured(fake_cuda):
    fns, timer, _ = fake_cuda
    with backends.use_backend("cuda"):
        assert backends.resolve(OP, torch.device("cuda"), tune=_request(fns)) == "cuda"
    assert timer.calls == {}


def test_measuring_can_be_turned_off(fake_cuda, monkeypatch):
    fns, timer, _ = fake_cuda
    monkeypatch.setenv(autotune.ENABLE_ENV, "0")
    assert backends.resolve(OP, torch.device("cuda"), tune=_request(fns)) == "cuda"
    assert timer.calls == {}


def test_one_kernel_available_is_used_without_measuring(fake_cuda):
    fns, timer, _ = fake_cuda
    backends._probes[OP]["triton"] = _missing
    assert backends.resolve(OP, torch.device("cuda"), tune=_request(fns)) == "cuda"
    assert timer.calls == {}


def test_nothing_available_names_every_reason(fake_cuda):
    fns, _, _ = fake_cuda
    for name in ("cuda", "triton", "reference"):
        backends._probes[OP][name] = _missing
    with pytest.raises(backends.BackendUnavailableError, match="cuda: not built; triton: not built"):
        backends.resolve(OP, torch.device("cuda"), tune=_request(fns))


def test_no_measuring_during_graph_capture(fake_cuda, monkeypatch):
    fns, timer, _ = fake_cuda
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert backends.resolve(OP, torch.device("cuda"), tune=_request(fns, "new")) == "cuda"
    assert timer.calls == {}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert backends.resolve(OP, torch.device("cuda"), tune=_request(fns, "new")) == "triton"
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert backends.resolve(OP, torch.device("cuda"), tune=_request(fns, "new")) == "triton"  # cached


def test_cpu_tensors_ignore_the_request(fake_cuda):
    fns, timer, _ = fake_cuda
    assert backends.resolve(OP, torch.device("cpu"), tune=_request(fns)) == "reference"
    assert timer.calls == {}


def test_fuse_conv_builds_requests_for_cuda_tensors_only():
    import types

    from fuseops.fuse_conv import op as fuse_op
    from fuseops.fuse_conv.reference import fuse_conv2d_reference_backward

    cpu_args = (torch.randn(1, 2, 4, 4), torch.randn(1, 1, 1, 3), torch.randn(1, 1, 3, 1), None,
                False, 1, 1, 1, "none")
    assert fuse_op.FUSE_CONV2D.tune_request("forward", cpu_args) is None
    fake_gpu_tensor = types.SimpleNamespace(device=torch.device("cuda"))
    request = fuse_op.FUSE_CONV2D.tune_request("backward", (fake_gpu_tensor, 7, "relu"))
    assert request.key[0] == "backward"
    assert request.run("reference").func is fuse_conv2d_reference_backward
    assert request.run("reference").args == (fake_gpu_tensor, 7, "relu")
