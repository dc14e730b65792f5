"""Speed of the systolic model, and of SCALE-Sim on the same layers.

    pytest bench/test_bench_systolic.py --benchmark-enable -s

* trace + estimate of a whole MobileNetV2 (224x224, built here), target < 1 s;
* the 6-size speedup sweep: over the zoo's 25 FuSe networks when fuseops.models exists
  (target < 30 s), and over 15 MobileNetV2-width stand-ins built here either way;
* SCALE-Sim 3.0.0 against convention="scalesim" on the same layers, in one run: the
  agreement-test layers (3 arrays x 3 dataflows) and the first three layers of
  MobileNetV2 at 224x224 on a 64x64 array.  Needs the SCALE-Sim venv (see
  hwmodel/scalesim.py); writes bench/results/systolic_vs_scalesim.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hwmodel_nets import mobilenet_v2  # noqa: E402

from hwmodel import SystolicArray, read_topology, trace, write_topology  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SIZES = (8, 16, 32, 64, 128, 256)


@pytest.mark.parametrize("fuse", [None, "half"])
def test_trace_and_estimate_mobilenet_v2(benchmark, fuse):
    model = mobilenet_v2(fuse=fuse)
    array = SystolicArray(64, 64, fuse=fuse is not None)

    def run():
        return array.estimate(trace(model, (1, 3, 224, 224)))

    est = benchmark(run)
    assert est.complete and est.total_cycles > 0


def test_estimate_only_mobilenet_v2(benchmark):
    layers = trace(mobilenet_v2(fuse="half"), (1, 3, 224, 224))
    array = SystolicArray(64, 64, fuse=True)
    benchmark(array.estimate, layers)


def _sweep(builders) -> float:
    start = time.perf_counter()
    traced = {key: trace(build(), (1, 3, 224, 224)) for key, build in builders.items()}
    for size in SIZES:
        plain = SystolicArray(size, size)
        fused = SystolicArray(size, size, fuse=True)
        for (_, variant), layers in traced.items():
            (plain if variant == "baseline" else fused).estimate(layers)
    return time.perf_counter() - start


def test_sweep_standins(benchmark):
    def build(width, variant):
        return mobilenet_v2(fuse=None if variant == "baseline" else variant, width=width)

    builders = {(f"mnv2_x{w}", v): (lambda w=w, v=v: build(w, v))
                for w in (0.35, 0.5, 0.75, 1.0, 1.4) for v in ("baseline", "half", "full")}
    seconds = benchmark.pedantic(_sweep, args=(builders,), rounds=1, iterations=1)
    print(f"\n15 stand-in networks x {len(SIZES)} sizes, models built and traced once: {seconds:.2f} s")


def test_sweep_zoo(benchmark):
    try:
        from fuseops import models
    except ImportError:
        pytest.skip("fuseops.models (the zoo) is not in this checkout")
    from fuseops.models.names import FUSE_NETWORKS, FUSE_VARIANTS

    builders = {(n, v): (lambda n=n, v=v: models.get_model(n, variant=v))
                for n in FUSE_NETWORKS for v in ("baseline", *FUSE_VARIANTS)}
    seconds = benchmark.pedantic(_sweep, args=(builders,), rounds=1, iterations=1)
    print(f"\n{len(builders)} zoo networks x {len(SIZES)} sizes: {seconds:.2f} s")


def test_scalesim_versus_ours(tmp_path):
    from hwmodel.scalesim import ensure_scalesim, run_scalesim

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_scalesim_agreement import ARRAYS, DATAFLOWS, LAYERS

    python = ensure_scalesim()
    mnv2_head = list(trace(mobilenet_v2(), (1, 3, 224, 224)))[:3]  # stem, 32-ch depthwise, 1x1 32->16
    suites = {"agreement layers": (list(LAYERS), [(r, c, df) for r, c in ARRAYS for df in DATAFLOWS]),
              "MobileNetV2 first 3 layers": (mnv2_head, [(64, 64, "os")])}
    report = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "torch": torch.__version__, "cpu_count": os.cpu_count(), "suites": {}}
    for label, (layers, configs) in suites.items():
        path = tmp_path / f"{label.replace(' ', '_')}.csv"
        write_topology(layers, path)
        runs = run_scalesim(path, configs, python=python)
        theirs = sum(run.seconds for run in runs)
        topo_layers = read_topology(path)
        start = time.perf_counter()
        repeats = 100
        for _ in range(repeats):
            for rows, cols, df in configs:
                est = SystolicArray(rows, cols, dataflow=df, convention="scalesim").estimate(topo_layers)
        ours = (time.perf_counter() - start) / repeats
        agree = all(SystolicArray(r.rows, r.cols, dataflow=r.dataflow, convention="scalesim")
                    .estimate(topo_layers).total_cycles == sum(r.total_cycles) for r in runs)
        report["suites"][label] = {"configs": configs, "scalesim_s": theirs, "ours_s": ours,
                                   "ratio": theirs / ours, "cycles_agree": agree}
        print(f"\n{label}: SCALE-Sim {theirs:.2f} s, hwmodel {ours * 1e3:.3f} ms "
              f"({theirs / ours:,.0f}x faster), cycles agree: {agree}")
        assert agree and est.total_cycles > 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "systolic_vs_scalesim.json").write_text(json.dumps(report, indent=2))
