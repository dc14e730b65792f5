"""Whole-network timings: the zoo's FuSe and block networks against their baselines.

Each network's variants are timed in four settings, side by side in one process (every
variant and setting interleaved round by round, so a busy machine slows them alike and the
ratios to the baseline divide times from the same rounds):

* ``eager``, ``compiled`` (``torch.compile``): with the fuseops backends ("auto");
* ``eager ref``, ``compiled ref``: with the reference backend, the pure-PyTorch composition
  the papers' code runs.

Measurements: eval latency at N=1 and N=8, and one training step (forward, backward and an
SGD step) at N=8.  Each time is the median of the rounds' means; each round runs enough
calls to fill :data:`ROUND_SECONDS`.  A compile failure is reported in its cell, not hidden.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fuseops import backends
from fuseops.cli.output import progress_bar
from fuseops.models import get_model

#: network -> variants; the first is the baseline the others are compared with.
NETWORKS: dict[str, tuple[str, ...]] = {
    "mobilenet_v2": ("baseline", "half", "full"),
    "mobilenet_v3_large": ("baseline", "half", "full"),
    "mnasnet_b1": ("baseline", "half", "full"),
    "resnet18": ("baseline", "block"),
    "vgg16": ("baseline", "block"),
}
#: The quick run: one FuSe and one block network, each with its baseline.
QUICK_NETWORKS: dict[str, tuple[str, ...]] = {"mobilenet_v2": ("baseline", "half"), "resnet18": ("baseline", "block")}
#: (label, mode, batch)
MEASURES = (("eval N=1", "eval", 1), ("eval N=8", "eval", 8), ("train N=8", "train", 8))
#: (label, compiled, backend)
SETTINGS = (("eager", False, "auto"), ("eager ref", False, "reference"), ("compiled", True, "auto"),
            ("compiled ref", True, "reference"))
#: Block networks are built with 28-pixel fixed blocks (the paper's F28).
BLOCK_OPTIONS = {"block_size": 28, "blocking": "fixed"}
ROUND_SECONDS = 0.5
COMPILE_FAILED = "compile failed"

COLUMNS = ("network", "variant", "measure", *(label + " ms" for label, _, _ in SETTINGS),
           "eager / baseline", "compiled / baseline")


@dataclass(frozen=True)
class Row:
    network: str
    variant: str
    measure: str
    #: setting label -> seconds per call, or a failure message
    times: dict[str, float | str]


def build(network: str, variant: str, mode: str) -> nn.Module:
    options = BLOCK_OPTIONS if variant == "block" else {}
    model = get_model(network, variant=variant, **options)
    return model.train() if mode == "train" else model.eval()


def step_function(model: nn.Module, mode: str, compiled: bool) -> Callable[[torch.Tensor], object]:
    """One eval forward (no grad), or one training step: forward, cross-entropy, backward, SGD."""
    forward = torch.compile(model) if compiled else model
    if mode == "eval":
        def infer(x: torch.Tensor) -> object:
            with torch.no_grad():
                return forward(x)
        return infer
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # A fixed batch of labels: the step's cost does not depend on their values.
    labels: dict[int, torch.Tensor] = {}

    def train_step(x: torch.Tensor) -> object:
        target = labels.setdefault(x.shape[0], torch.randint(0, 1000, (x.shape[0],)))
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(x), target)
        loss.backward()
        optimizer.step()
        return loss
    return train_step


def _mean_seconds(fn: Callable[[torch.Tensor], object], x: torch.Tensor, backend: str, calls: int) -> float:
    with backends.use_backend(backend):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        return (time.perf_counter() - start) / calls


def measure(network: str, variants: tuple[str, ...], measure_: tuple[str, str, int], size: int, rounds: int,
            settings=SETTINGS) -> list[Row]:
    """Times of a network's variants in every setting, all interleaved round by round: the
    ratios to the baseline divide times taken in the same rounds, so drift on a shared machine
    cancels in them."""
    label, mode, batch = measure_
    x = torch.randn(batch, 3, size, size)
    live: dict[tuple[str, str], tuple[Callable, str]] = {}
    times: dict[str, dict[str, float | str]] = {variant: {} for variant in variants}
    for variant in variants:
        for name, compiled, backend in settings:
            fn = step_function(build(network, variant, mode), mode, compiled)
            try:
                _mean_seconds(fn, x, backend, 2)  # warm-up; compilation for the compiled settings
            except Exception as exc:  # noqa: BLE001 - a compile failure is a result, reported in the table
                if not compiled:
                    raise
                times[variant][name] = f"{COMPILE_FAILED} ({type(exc).__name__})"
                # The table cell names the error; the message says why (torch's, or the cache's).
                print(f"{network} {variant} {label} {name}: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:300]}", file=sys.stderr)
                continue
            live[(variant, name)] = (fn, backend)
    calls = {key: max(1, round(ROUND_SECONDS / max(_mean_seconds(fn, x, backend, 1), 1e-6)))
             for key, (fn, backend) in live.items()}
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in live}
    for _ in range(rounds):
        for key, (fn, backend) in live.items():
            samples[key].append(_mean_seconds(fn, x, backend, calls[key]))
    for (variant, name), values in samples.items():
        times[variant][name] = statistics.median(values)
    return [Row(network, variant, label, {name: times[variant][name] for name, _, _ in settings})
            for variant in variants]


def _ms(value: float | str | None) -> str:
    return value if isinstance(value, str) else "-" if value is None else f"{value * 1e3:.1f}"


def _ratio(value: float | str | None, base: float | str | None) -> str:
    if not isinstance(value, float) or not isinstance(base, float):
        return "-"
    return f"{value / base:.2f}x"


def table_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    """Rows under :data:`COLUMNS`; the ratios compare each variant with its network's
    baseline (the first variant measured) in the same setting and measure."""
    baseline: dict[tuple[str, str], Row] = {}
    out = []
    for row in rows:
        base = baseline.setdefault((row.network, row.measure), row)
        out.append((row.network, row.variant, row.measure, *(_ms(row.times.get(n)) for n, _, _ in SETTINGS),
                    _ratio(row.times.get("eager"), base.times.get("eager")),
                    _ratio(row.times.get("compiled"), base.times.get("compiled"))))
    return out


def run(quick: bool = False, networks: dict[str, tuple[str, ...]] | None = None, size: int = 224,
        rounds: int | None = None, threads: int | None = 2, compile_: bool = True,
        progress: bool = True) -> list[Row]:
    if threads:
        torch.set_num_threads(threads)
    if compile_:
        # Compile afresh: a graph cached on disk by an earlier fuseops or torch keeps the
        # layouts Inductor chose then (fuseops/_inductor.py), which this run is to measure.
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
    networks = networks or (QUICK_NETWORKS if quick else NETWORKS)
    rounds = rounds or (2 if quick else 5)
    settings = SETTINGS if compile_ else tuple(s for s in SETTINGS if not s[1])
    jobs = [(net, variants, m) for net, variants in networks.items() for m in MEASURES]
    bar = progress_bar(len(jobs), "networks", "case", progress)
    rows = []
    for net, variants, m in jobs:
        bar.set_postfix_str(f"{net} {m[0]}")
        rows += measure(net, variants, m, size, rounds, settings)
        bar.update(1)
    bar.close()
    return rows


def main(quick: bool = False, threads: int | None = 2, min_time: float | None = None, out_dir: str | None = None,
         markdown: bool = False, progress: bool = True, size: int = 224, compile_: bool = True,
         networks: dict[str, tuple[str, ...]] | None = None, rounds: int | None = None) -> int:
    """The ``fuseops bench network`` target: measure, print the table, write network.csv."""
    global ROUND_SECONDS
    if min_time is not None:
        ROUND_SECONDS = min_time
    rows = run(quick=quick, networks=networks, size=size, rounds=rounds, threads=threads, compile_=compile_,
               progress=progress)
    from fuseops.cli.output import write_csv
    from fuseops.cli.table import markdown_table, print_table

    cells = table_rows(rows)
    title = (f"whole networks, {size}x{size}, float32, {torch.get_num_threads()} threads, torch {torch.__version__}: "
             "ms per call (eval) or per step (train)")
    print_table(title, COLUMNS, cells)
    if markdown:
        print(markdown_table(COLUMNS, cells))
    if out_dir:
        print(f"wrote {write_csv(out_dir, 'network.csv', COLUMNS, cells)}")
    return 0
