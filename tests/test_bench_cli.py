"""`fuseops bench`: the parser, and the table logic on hand-made measurements (no timing)."""

from __future__ import annotations

import json

import pytest
import torch

from fuseops.benchmarking import TARGETS
from fuseops.benchmarking import fuse as fb
from fuseops.cli import build_parser, main


def test_bench_help_lists_targets(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "fuse" in capsys.readouterr().out
    assert "fuse" in TARGETS


def test_bench_rejects_unknown_target(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "nope"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_quick_cases_are_a_subset():
    quick, full = fb.cases(quick=True), fb.cases()
    assert set(quick) < set(full)
    assert len(full) == len(fb.SHAPES) * len(fb.VARIANTS) * len(fb.KERNELS) == 20


def _results():
    case = fb.Case("half", 3, 144, 56, 56)
    times = {("clone", "forward"): 1.0, ("reference", "forward"): 12.0, ("compile(reference)", "forward"): 6.0,
             ("cpu", "forward"): 2.0, ("reference", "forward+backward"): 30.0,
             ("compile(reference)", "forward+backward"): 20.0, ("cpu", "forward+backward"): 12.0}
    return [fb.Result(case, p, m, t, 0.0) for (p, m), t in times.items()]


def test_summary_and_target_rows():
    columns, rows = fb.summary_rows(_results())
    assert columns[:6] == ["case", "mode", "clone", "ref", "compiled", "cpu"]
    forward = next(r for r in rows if r[1] == "fwd")
    assert forward[-3:] == ["6.00x", "3.00x", "2.00"]  # ref/cpu, compiled/cpu, cpu/clone
    backward = next(r for r in rows if r[1] == "fwd+bwd")
    assert backward[-3:] == ["2.50x", "1.67x", "-"]
    (target,) = fb.target_rows(_results())
    assert target[1] == "6.00x ok" and target[2] == "2.00 ok" and target[3] == "2.50x MISS"


def test_write_results(tmp_path):
    json_path, csv_path = fb.write_results(_results(), str(tmp_path))
    data = json.load(open(json_path))
    assert data["environment"]["torch"] and len(data["results"]) == 7
    assert open(csv_path).read().count("\n") == 8  # header + 7 rows


def test_block_bench_reports_the_median_over_sweeps(monkeypatch):
    """`bench block --sweeps N`: each provider's time is the median of its per-sweep best rounds
    (hand-made measurements, no timing); a provider that failed in a sweep stays failed."""
    from fuseops.benchmarking import block as bb

    plain_by_sweep = iter([1.0, 4.0, 2.0] * 1000)

    def fake_measure(case, fns, backward, rounds):
        plain = next(plain_by_sweep)
        return {"plain": plain, "block_conv2d": 2 * plain, "composition": None,
                "compiled": "torch.compile failed (AssertionError)"}

    monkeypatch.setattr(bb, "measure", fake_measure)
    rows = bb.run(quick=True, compile_composition=False, progress=False, sweeps=3)
    assert len(rows) == 4 * 2 * 2  # shapes x (F14, H4x4) x (fwd, fwd+bwd), constant padding
    for row in rows:
        row = dict(zip(bb.COLUMNS, row))
        assert row["plain ms"] == "2000.0"  # the median of 1, 4 and 2 seconds
        assert row["block_conv2d"] == "2.00x"
        assert row["composition"] == "n/a"
        assert row["compiled"].startswith("torch.compile failed")


def test_block_bench_rejects_fewer_than_one_sweep(capsys):
    from fuseops.benchmarking import block as bb

    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="sweeps must be an int >= 1"):
            bb.run(quick=True, compile_composition=False, progress=False, sweeps=bad)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "block", "--sweeps", "0"])
    assert exc.value.code == 2
    assert "--sweeps: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("target, argv, expected", [
    ("block", ["--sweeps", "3", "--rounds", "2", "--no-compile"],
     dict(sweeps=3, rounds=2, compile_composition=False)),
    ("block", [], dict(sweeps=1, rounds=None, compile_composition=True)),
    ("network", ["--size", "64", "--no-compile", "--rounds", "3"], dict(compile_=False, size=64, rounds=3)),
    ("network", [], dict(compile_=True, rounds=None)),
    ("fuse", [], {}),
])
def test_bench_passes_target_options_to_the_target(monkeypatch, target, argv, expected):
    import importlib

    module = importlib.import_module(TARGETS[target])
    seen = {}
    monkeypatch.setattr(module, "main", lambda **kwargs: seen.update(kwargs) or 0)
    assert main(["bench", target, "--quick", "--no-write", "--threads", "1", *argv]) == 0
    common = dict(quick=True, threads=1, min_time=None, out_dir=None, markdown=False, progress=True)
    assert seen == {**common, **expected}


@pytest.mark.parametrize("target, argv, flag", [
    ("fuse", ["--sweeps", "2"], "--sweeps"),
    ("network", ["--sweeps", "3"], "--sweeps"),
    ("fuse", ["--no-compile"], "--no-compile"),
    ("block", ["--size", "64"], "--size"),
])
def test_bench_rejects_an_option_the_target_lacks(monkeypatch, capsys, target, argv, flag):
    import importlib

    module = importlib.import_module(TARGETS[target])
    monkeypatch.setattr(module, "main", lambda **kwargs: pytest.fail("the target must not run"))
    assert main(["bench", target, *argv]) == 2
    err = capsys.readouterr().err
    assert flag in err and f"not {target}" in err


def test_fuse_bench_times_with_the_threads_it_was_given():
    """The interleaved timer must run each statement under the caller's thread count
    (torch.utils.benchmark.Timer defaults to one thread)."""
    from fuseops.benchmarking.fuse import _interleaved

    seen = []
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _interleaved({"probe": lambda: seen.append(torch.get_num_threads())}, min_time=0.001, rounds=2)
    finally:
        torch.set_num_threads(previous)
    assert seen and set(seen) == {2}


def test_network_table_compares_each_variant_with_its_baseline():
    from fuseops.benchmarking import network as nb

    rows = [nb.Row("resnet18", "baseline", "eval N=1", {"eager": 0.010, "eager ref": 0.010, "compiled": 0.008,
                                                         "compiled ref": 0.008}),
            nb.Row("resnet18", "block", "eval N=1", {"eager": 0.012, "eager ref": 0.030, "compiled": 0.010,
                                                      "compiled ref": "compile failed (RuntimeError)"})]
    cells = nb.table_rows(rows)
    assert cells[0][3:] == ("10.0", "10.0", "8.0", "8.0", "1.00x", "1.00x")
    assert cells[1][3:] == ("12.0", "30.0", "10.0", "compile failed (RuntimeError)", "1.20x", "1.25x")
    assert len(nb.COLUMNS) == len(cells[0])


def test_network_smoke_run_eager(monkeypatch):
    """One FuSe network and its baseline, tiny input, eager settings, one short round."""
    from fuseops.benchmarking import network as nb

    monkeypatch.setattr(nb, "ROUND_SECONDS", 0.001)
    rows = nb.run(networks={"mobilenet_v2": ("baseline", "half")}, size=32, rounds=1, threads=None, compile_=False,
                  progress=False)
    assert [(r.variant, r.measure) for r in rows] == [(v, m[0]) for m in nb.MEASURES for v in ("baseline", "half")]
    for row in rows:
        assert set(row.times) == {"eager", "eager ref"}
        assert all(isinstance(t, float) and t > 0 for t in row.times.values())


def test_network_bench_interleaves_every_variant_and_setting_per_round(monkeypatch):
    """The ratio to the baseline divides times from the same rounds: each round times every
    (variant, setting) of the network once, in the same order (no timing: a fake clock)."""
    from fuseops.benchmarking import network as nb

    order = []
    monkeypatch.setattr(nb, "build", lambda network, variant, mode: variant)
    monkeypatch.setattr(nb, "step_function", lambda model, mode, compiled: (model, compiled))
    monkeypatch.setattr(nb, "_mean_seconds",
                        lambda fn, x, backend, calls: order.append((fn[0], fn[1], backend)) or 0.01)
    rows = nb.run(networks={"mobilenet_v2": ("baseline", "half")}, size=8, rounds=3, threads=None,
                  progress=False)
    keys = [(variant, compiled, backend) for variant in ("baseline", "half") for _, compiled, backend in nb.SETTINGS]
    per_measure = len(keys) * (1 + 1 + 3)  # warm-up, calibration, 3 rounds
    assert len(order) == per_measure * len(nb.MEASURES)
    for m in range(len(nb.MEASURES)):
        calls = order[m * per_measure:(m + 1) * per_measure]
        assert calls[:len(keys)] == keys  # the warm-ups, then calibration and every round in the same order
        for r in range(1, 5):
            assert calls[r * len(keys):(r + 1) * len(keys)] == keys
    assert [row.variant for row in rows] == ["baseline", "half"] * len(nb.MEASURES)
    assert all(t == 0.01 for row in rows for t in row.times.values())


def test_calls_bench_times_every_entry_of_both_ops_against_the_kernel(capsys):
    from backend_helpers import require_backend

    from fuseops.benchmarking import calls

    require_backend("fuse_conv2d", "cpu")
    assert main(["bench", "calls", "--quick", "--no-write", "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = calls.run(quick=True, threads=1, progress=False)
    entries = ("C++ kernel", "torch.ops", "torch.ops, Python selection", "public", "C++ kernels, fwd+bwd",
               "public, fwd+bwd")
    assert [(op, entry) for op, entry, _, _ in rows] == [(op, e) for op in ("fuse_conv2d", "block_conv2d")
                                                         for e in entries]
    for _, entry, us, ratio in rows:
        assert float(us) > 0
        if entry in ("C++ kernel", "C++ kernels, fwd+bwd"):
            assert ratio == "1.00x"
    assert "Python selection" in out


def test_layers_bench_records_mobilenet_v2s_fuse_layers_and_times_both_layouts(capsys):
    from backend_helpers import require_backend

    from fuseops.benchmarking import layers

    require_backend("fuse_conv2d", "cpu")
    # MobileNetV2 has 17 inverted residual blocks, one depthwise (here FuSe) conv each; four
    # of them have stride 2, and the first reads the stem's 32 channels at half the input size.
    found = layers.network_layers("mobilenet_v2", "half", batch=1, size=64)
    assert sum(count for _, count in found) == 17
    assert sum(count for args, count in found if args[5] == 2) == 4
    first, _ = found[0]
    assert tuple(first[0].shape) == (1, 32, 32, 32) and first[5] == 1
    assert main(["bench", "layers", "--quick", "--no-write", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "all layers" in out and "NHWC / NCHW" in out
