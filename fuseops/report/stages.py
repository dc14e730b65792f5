"""The stages of ``fuseops report``, each returning a :class:`Section`.

Every stage imports what it needs lazily, so ``import fuseops`` stays light, and
raises rather than skipping silently when a piece it relies on fails.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from fuseops.cli.table import markdown_table
from fuseops.models.names import BLOCK_NETWORKS, FUSE_NETWORKS, FUSE_VARIANTS
from fuseops.report.document import Section

#: The square systolic-array sizes of the FuSe speedup sweep.
ARRAY_SIZES = (8, 16, 32, 64, 128, 256)


@dataclass
class Settings:
    out_dir: str
    quick: bool
    device: str
    progress: bool = True
    #: Tests only: one network per table, small inputs, so each stage runs in seconds.
    tiny: bool = False


def _bar(iterable, settings: Settings, desc: str, total: int | None = None):
    if not settings.progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="step", leave=False)


# ----------------------------------------------------------------------------- 1. validation
def validation(settings: Settings) -> Section:
    from fuseops.validate import COLUMNS, default_cases, validate

    cases = default_cases()
    if settings.tiny:
        cases = [next(c for c in cases if c.op == op) for op in ("fuse_conv2d", "block_conv2d")]
    results = list(_bar(validate(settings.device, cases), settings, "validate"))
    rows = [(*r.row()[:-1], r.detail.replace("|", "/")[:90]) for r in results]
    passed = sum(r.status == "pass" for r in results)
    failed = [r for r in results if r.status == "FAIL"]
    body = (f"Every backend that can run on `{settings.device}` against the pure-PyTorch reference, float64, "
            "forward and backward (x, weights and bias), on fresh random inputs.  Tolerance: relative 1e-9.\n\n"
            + markdown_table(COLUMNS, rows))
    summary = [f"validation: {passed} pass, {len(failed)} fail (backend x case)"]
    return Section("Kernel validation", body, summary=summary)


# ----------------------------------------------------------------------------- 2. benchmarks
def benchmarks(settings: Settings) -> Section:
    from fuseops.benchmarking import block as block_bench
    from fuseops.benchmarking import fuse as fuse_bench

    if settings.device != "cpu":
        raise NotImplementedError("the report's microbenchmarks run on the CPU; GPU timing scripts are in bench/")
    fuse_providers, _ = fuse_bench.available_providers()
    # Triton on the CPU is the interpreter: never timed.  torch.compile takes tens of seconds
    # per case on 2 cores, so the quick report leaves it to the full run and says so.
    drop = ("triton", "compile(reference)") if settings.quick else ("triton",)
    fuse_providers = [p for p in fuse_providers if p not in drop]
    fuse_results = fuse_bench.run(quick=settings.quick, providers=fuse_providers, progress=settings.progress,
                                  min_time=0.05 if settings.quick else 0.5)
    columns, rows = fuse_bench.summary_rows(fuse_results)
    body = ("### FuSe convolution (fuse_conv2d)\n\nMilliseconds per call, measured side by side in one "
            "process; `ref/cpu` is the reference's time over the C++ kernel's, `cpu/clone` the kernel's time over "
            "`x.clone()` (the memory floor).\n\n" + markdown_table(columns, rows))
    block_rows = block_bench.run(quick=settings.quick, compile_composition=not settings.quick,
                                 progress=settings.progress)
    body += ("\n### Block convolution (block_conv2d)\n\nTimes over plain `F.conv2d` on the same unblocked tensor "
             "(the floor); the last column is how many times faster `block_conv2d` is than the paper code's "
             "composition (view, permute, pad, conv, permute).\n\n" + markdown_table(block_bench.COLUMNS, block_rows))
    if settings.quick:
        body += "\n*Quick run: fewer shapes; the `torch.compile` baselines are timed in the full run only.*\n"
    summary = [f"benchmarks: {len(rows)} FuSe rows, {len(block_rows)} block rows (tables in the report)"]
    return Section("Microbenchmarks", body, summary=summary)


# ----------------------------------------------------------------------------- whole networks
def networks(settings: Settings) -> Section:
    """`fuseops bench network` on one FuSe and one block network with their baselines: eager
    only in the quick report, eager and compiled in the full one."""
    from fuseops.benchmarking import network as nb
    from fuseops.cli.output import write_csv

    if settings.device != "cpu":
        raise NotImplementedError("the report's network benchmark runs on the CPU")
    chosen = {"mobilenet_v2": ("baseline", "half")} if settings.tiny else nb.QUICK_NETWORKS
    compiled = not (settings.quick or settings.tiny)
    rows = nb.run(networks=chosen, size=32 if settings.tiny else 224, rounds=1 if settings.tiny else 3,
                  compile_=compiled, progress=settings.progress)
    cells = nb.table_rows(rows)
    write_csv(settings.out_dir, "network.csv", nb.COLUMNS, cells)
    body = ("Milliseconds per call: eval at N=1 and N=8, and one training step (forward, backward, SGD) at "
            "N=8, 224x224 (32x32 in a test run), each setting side by side in one process. `ref` runs the "
            "ops' pure-PyTorch reference (what the papers' code does); the last columns divide each variant's "
            "time by its baseline network's in the same setting. CSV: `network.csv`.\n\n"
            + markdown_table(nb.COLUMNS, cells))
    if not compiled:
        body += "\n*Quick run: eager only; the `torch.compile` settings are timed in the full run.*\n"
    by_key = {(c[0], c[1], c[2]): c for c in cells}
    summary = [f"networks: {net} {var} eval N=8 {by_key[(net, var, 'eval N=8')][-2]} of the baseline eager"
               + (f", {by_key[(net, var, 'eval N=8')][-1]} compiled" if compiled else "")
               for net, variants in chosen.items() for var in variants[1:]]
    return Section("Whole networks", body, summary=summary)


# ----------------------------------------------------------------------------- 3. zoo tables
def zoo(settings: Settings) -> Section:
    from fuseops.cli.zoo import COLUMNS, write_csv, zoo_rows

    rows = zoo_rows(progress=settings.progress, networks=["mobilenet_v3_small"] if settings.tiny else None)
    mismatched = [f"{r[0]}/{r[1]}" for r in rows if r[4] != 0]
    write_csv(rows, os.path.join(settings.out_dir, "zoo.csv"))
    body = ("Parameters and conv+linear multiply-accumulates at 1x3x224x224, beside the FuSeConv paper's "
            "columns (its FLOPs add BN/activation overhead, so ours are a few percent lower).  CSV: `zoo.csv`.\n\n"
            + markdown_table(COLUMNS, rows))
    summary = [f"zoo: all {len(rows)} parameter counts equal the paper" if not mismatched
               else f"zoo: parameter counts differ for {', '.join(mismatched)}"]
    return Section("Model zoo: parameters and MACs", body, summary=summary)


# ----------------------------------------------------------------------------- 4. systolic
def systolic(settings: Settings) -> Section:
    from fuseops.cli.hwmodel.systolic import plot_speedup, sweep, write_csv

    sizes = (16, 64, 256) if settings.quick else ARRAY_SIZES
    networks = ("mobilenet_v3_small",) if settings.tiny else FUSE_NETWORKS
    # hwmodel's own sweep (as `hwmodel speedup`): raises if any layer cannot be costed, since
    # a ratio over a partly costed network would be wrong.
    rows = sweep(networks, FUSE_VARIANTS, sizes, progress=settings.progress)
    speedups = {(r["network"], r["variant"]): {} for r in rows}
    for r in rows:
        speedups[r["network"], r["variant"]][r["array"]] = r["speedup"]
    rows64 = [(r["network"], r["variant"], f"{r['baseline_cycles']:,}", f"{r['fuse_cycles']:,}",
               f"{r['speedup']:.2f}x", f"{100 * r['fuse_utilization']:.1f}%") for r in rows if r["array"] == 64]
    sweep_columns = ("network", "variant") + tuple(f"{s}x{s}" for s in sizes)
    sweep_rows = [(net, variant) + tuple(f"{by_size[s]:.2f}" for s in sizes)
                  for (net, variant), by_size in speedups.items()]
    write_csv(rows, os.path.join(settings.out_dir, "systolic_speedup.csv"))
    plot = "systolic_speedup.png"
    plot_speedup(rows, networks, FUSE_VARIANTS, os.path.join(settings.out_dir, plot))
    best = max(v[64] for v in speedups.values())
    worst = min(v[64] for v in speedups.values())
    body = ("Cycles from the FuSeConv paper's analytical model (output-stationary): the baseline network on a "
            "plain array against the FuSe network on the FuSe array.\n\n### 64x64 array\n\n"
            + markdown_table(("network", "variant", "baseline cycles", "FuSe cycles", "speedup", "FuSe util."),
                             rows64)
            + "\n### Speedup against array size\n\nCSV: `systolic_speedup.csv`.\n\n"
            + markdown_table(sweep_columns, sweep_rows))
    return Section("Systolic array (FuSeConv)", body, images=[(plot, "FuSe speedup against array size")],
                   summary=[f"systolic: FuSe speedup at 64x64 from {worst:.2f}x to {best:.2f}x"])


# ----------------------------------------------------------------------------- 5. FPGA
def fpga(settings: Settings) -> Section:
    from fuseops.cli.hwmodel.fpga import plot_traffic
    from fuseops.models import get_model
    from hwmodel.fpga import estimate
    from hwmodel.trace import trace

    networks = ("resnet18", "vgg16") if settings.quick else BLOCK_NETWORKS
    shape = (1, 3, 224, 224)
    if settings.tiny:
        networks, shape = ("resnet18",), (1, 3, 64, 64)
    schedules = ("layer", "block-fused", "tiled-fused")
    rows, traffic, estimates = [], {}, {}
    for net in _bar(networks, settings, "fpga"):
        layers = trace(get_model(net, variant="block"), shape)
        for schedule in schedules:
            est = estimate(layers, device="zc706", bits=16, schedule=schedule)
            estimates.setdefault(net, {})[schedule] = est
            mb = {k: v / 1e6 for k, v in est.dram_bytes.items()}
            traffic[net, schedule] = mb
            rows.append((net, schedule, f"{est.latency_s * 1e3:.1f}", f"{est.fps:.2f}", f"{est.gops:.1f}",
                         f"{mb['input']:.2f}", f"{mb['weights']:.2f}", f"{mb['output']:.3f}",
                         f"{mb['intermediate']:.2f}", f"{est.buffer_bytes / 1e6:.2f}", "yes" if est.fits else "NO"))
    plot = "fpga_traffic.png"
    plot_traffic(estimates, os.path.join(settings.out_dir, plot))
    body = (f"Block networks (F28; ResNet-50 F56) at input {shape} on a ZC706, 16-bit fixed point, engine chosen "
            "for the DSP budget. "
            "`layer` sends every intermediate map through DRAM; `block-fused` runs groups of layers block by block "
            "on chip; `tiled-fused` fuses ordinary spatial tiles with halo recompute.\n\n"
            + markdown_table(("network", "schedule", "latency ms", "fps", "GOPS", "input MB", "weights MB",
                              "output MB", "intermediate MB", "buffer MB", "fits"), rows))
    saved = [f"{net}: block-fused moves {sum(traffic[net, 'layer'].values()) / max(sum(traffic[net, 'block-fused'].values()), 1e-9):.1f}x less DRAM traffic than layer-by-layer"  # noqa: E501
             for net in networks]
    checked, summary = _fpga_validation()
    return Section("FPGA (block convolution)", body + "\n\n" + checked,
                   images=[(plot, "DRAM traffic per schedule, by kind")], summary=saved + [summary])


def _fpga_validation() -> tuple[str, str]:
    """The FPGA model against published accelerators: a markdown section and a one-line summary."""
    from hwmodel.fpga import validation

    comparisons = validation.run()
    rows = validation.table_rows(comparisons)
    measured = [c for c in comparisons if not c.design.calibrated]
    inside = sum(c.within_goal for c in measured)
    body = ("### The model against published accelerators\n\n"
            "Each design's board, precision, clock, DSP budget and (where published) engine; ratio = model / "
            f"measured throughput. Goal: convolution layers within {validation.GOAL_CONV:.0%}, end to end within "
            f"{validation.GOAL_END_TO_END:.0%}. Sources and assumptions: `hwmodel fpga-validate --sources`.\n\n"
            + markdown_table(list(rows[0]), [list(r.values()) for r in rows])
            + "\n\nNot expressible by the model:\n\n"
            + markdown_table(("design", "what is missing"), list(validation.NOT_EXPRESSIBLE.items())))
    return body, f"fpga model: {inside} of {len(measured)} published designs within the goal (uncalibrated)"


# ----------------------------------------------------------------------------- 6. measured vs predicted
def measured_vs_predicted(settings: Settings) -> Section:
    import numpy as np

    from fuseops.models import get_model
    from fuseops.report.latency import measure_layers
    from hwmodel.fpga import estimate
    from hwmodel.systolic import SystolicArray
    from hwmodel.trace import trace

    size = 32 if settings.tiny else 112 if settings.quick else 224
    shape = (1, 3, size, size)
    cases = (("mobilenet_v2", "half", "systolic 64x64 FuSe array, cycles"),
             ("resnet18", "block", "FPGA ZC706 layer schedule, seconds"))
    images, body, summary = [], [], []
    for net, variant, predictor in cases:
        model = get_model(net, variant=variant).eval()
        timings = measure_layers(model, shape, repeats=5 if settings.quick else 9, device=settings.device)
        layers = trace(model, shape)
        if predictor.startswith("systolic"):
            est = SystolicArray(64, 64, fuse=True).estimate(layers)
            predicted = {c.name: float(c.cycles) for c in est.layers}
        else:
            est = estimate(layers, device="zc706", bits=16, schedule="layer")
            # The layer schedule runs one layer per group; its time is the group's phase time.
            predicted = {g["layers"]: g["ms"] / 1e3 for g in est.groups if g["n"] == 1}
        pairs = [(t.name, t.seconds, total) for t in timings
                 if (total := _predicted_for(t.name, predicted)) is not None]
        measured = np.array([p[1] for p in pairs])
        model_values = np.array([p[2] for p in pairs], dtype=float)
        r = float(np.corrcoef(np.log(measured), np.log(model_values))[0, 1]) if len(pairs) > 2 else math.nan
        plot = f"latency_{net}_{variant}.png"
        _plot_scatter(measured, model_values, f"{net} ({variant}): r(log) = {r:.2f}", predictor,
                      os.path.join(settings.out_dir, plot))
        images.append((plot, f"{net} {variant}: measured per-layer time on {settings.device} vs {predictor}"))
        rows = [(name, f"{sec * 1e3:.3f}", f"{pred:.4g}") for name, sec, pred in pairs]
        body.append(f"### {net} ({variant}) at {shape}\n\nPearson correlation of log(measured) and "
                    f"log(predicted) over {len(pairs)} layers: **{r:.2f}**.\n\n"
                    + markdown_table(("layer", f"measured ms ({settings.device})", predictor), rows))
        summary.append(f"{net} {variant}: measured vs {predictor.split(',')[0]} r(log) = {r:.2f}")
    return Section("Measured per-layer latency vs the analytical models", "\n".join(body), images, summary)


def _predicted_for(module: str, predicted: dict[str, float]) -> float | None:
    """The prediction for a timed module: its own row, or the sum of the rows hwmodel
    splits it into ('<module>.row' / '<module>.conv.col' for FuSe layers)."""
    if module in predicted:
        return predicted[module]
    parts = [v for name, v in predicted.items() if name.startswith(module + ".")]
    return sum(parts) if parts else None


def _plot_scatter(measured, predicted, title: str, predictor: str, path: str) -> None:
    from fuseops.cli.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(predicted, measured * 1e3, s=14)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(predictor)
    ax.set_ylabel("measured ms")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STAGES = (
    ("validation", validation),
    ("benchmarks", benchmarks),
    ("networks", networks),
    ("zoo", zoo),
    ("systolic", systolic),
    ("fpga", fpga),
    ("latency", measured_vs_predicted),
)

#: Seconds per stage (quick, full) measured on the quiet 2-core CPU (2026-11-22), rounded up
#: for a cold start; printed before a run as its expected duration.
EXPECTED_SECONDS = {
    "validation": (3, 3),
    "benchmarks": (20, 200),
    "networks": (75, 600),
    "zoo": (5, 5),
    "systolic": (5, 10),
    "fpga": (5, 15),
    "latency": (5, 15),
}


def device_available(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())
