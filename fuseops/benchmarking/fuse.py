"""Benchmark of fuse_conv2d on CPU: every available CPU backend against the reference,
``torch.compile(reference)`` and the floor ``x.clone()``.

Used by ``python -m fuseops bench fuse`` and (for the case definitions)
``bench/bench_fuse_conv.py``.  Every provider of one case is timed side by side in the
same process, so the ratios stay meaningful on a busy machine even when the absolute
times do not.  Before timing, each backend's output is checked against the
reference, so a wrong kernel is never timed.

Kernel providers: each backend on NCHW input, and ``cpu-cl``, the cpu backend on
channels_last input (its NHWC kernels).

Modes: ``forward``, and ``forward+backward`` (one forward and the backward of all of
x, both weights and the bias, with autograd).  Each case uses relu6, bias, stride 1 and
"same" padding, as in MobileNetV2's FuSe blocks.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from fuseops import backends
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference

OP = "fuse_conv2d"
#: MobileNetV2's depthwise layers (C, H, W).
SHAPES: tuple[tuple[int, int, int], ...] = ((144, 56, 56), (192, 28, 28), (384, 14, 14), (576, 14, 14),
                                            (960, 7, 7))
QUICK_SHAPES = ((144, 56, 56), (960, 7, 7))
BATCH = 8
VARIANTS = ("half", "full")
KERNELS = (3, 5)
MODES = ("forward", "forward+backward")
ACTIVATION = "relu6"
#: The floor and the baselines; kernel backends follow.
BASELINES = ("clone", "reference", "compile(reference)")
KERNEL_BACKENDS = ("cpu", "triton")
#: Kernel providers that run a backend on channels_last input (its output is channels_last
#: too): "cpu-cl" times the NHWC kernels next to the NCHW ones ("cpu").
CHANNELS_LAST_PROVIDERS = {"cpu-cl": "cpu"}
# Targets for the C++ kernels on the 2-core CPU (docs/benchmarks.md).
TARGET_SPEEDUP = 3.0  # >= 3x faster than the reference, forward and forward+backward
TARGET_CLONE_RATIO = 2.5  # forward <= 2.5x the time of x.clone()


@dataclass(frozen=True)
class Case:
    variant: str
    kernel: int
    channels: int
    height: int
    width: int
    batch: int = BATCH
    dtype: str = "float32"

    @property
    def label(self) -> str:
        return f"{self.variant} K{self.kernel} {self.channels}x{self.height}x{self.width}"


@dataclass
class Result:
    case: Case
    provider: str
    mode: str
    best_ms: float  # the best of the interleaved rounds (what the tables and ratios use)
    median_ms: float  # the median round, to show how noisy the machine was


def cases(quick: bool = False) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    kernels = (3,) if quick else KERNELS
    return [Case(v, k, *s) for v in VARIANTS for k in kernels for s in shapes]


def make_inputs(case: Case, requires_grad: bool = False, seed: int = 0, channels_last: bool = False):
    """(x, weight_row, weight_col, bias) for a case; weights scaled like nn.Conv2d's init;
    x stored channels_last if asked."""
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    c = case.channels
    c_row = c if case.variant == "full" else (c + 1) // 2
    c_col = c if case.variant == "full" else c - c_row
    scale = case.kernel ** -0.5
    tensors = (
        torch.randn(case.batch, c, case.height, case.width, generator=gen, dtype=dtype).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format),
        torch.randn(c_row, 1, 1, case.kernel, generator=gen, dtype=dtype) * scale,
        torch.randn(c_col, 1, case.kernel, 1, generator=gen, dtype=dtype) * scale,
        torch.randn(c_row + c_col, generator=gen, dtype=dtype),
    )
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


def reference(case: Case) -> Callable:
    """The one reference (fuseops.fuse_conv.reference), with this case's options."""
    full, pad = case.variant == "full", (case.kernel - 1) // 2

    def run(x, weight_row, weight_col, bias):
        return fuse_conv2d_reference(x, weight_row, weight_col, bias, full, 1, pad, 1, ACTIVATION)

    return run


def through_backend(case: Case, backend: str) -> Callable:
    """The public op on one backend (validation and dispatch included, as users call it)."""

    def run(x, weight_row, weight_col, bias):
        with backends.use_backend(backend):
            return fuse_conv2d(x, weight_row, weight_col, bias, variant=case.variant, activation=ACTIVATION)

    return run


def _compiled(case: Case) -> Callable:
    torch._dynamo.reset()  # a fresh graph per case: no recompile limit, no stale shapes
    return torch.compile(reference(case), dynamic=False)


def available_providers(device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """Providers that can run here, and why each kernel backend that can't, can't."""
    import fuseops  # noqa: F401  (registers the op)

    providers, missing = list(BASELINES), {}
    for name in KERNEL_BACKENDS:
        if name == "triton" and device == "cpu":
            missing[name] = "on CPU tensors Triton only runs in its interpreter (a correctness tool, not timed)"
            continue
        avail = backends.availability(OP, name, torch.device(device))
        if avail.ok:
            providers.append(name)
        else:
            missing[name] = avail.reason
    providers += [name for name, backend in CHANNELS_LAST_PROVIDERS.items() if backend in providers]
    return providers, missing


def provider_fn(case: Case, provider: str) -> Callable:
    if provider == "clone":
        return lambda x, weight_row, weight_col, bias: x.clone()
    if provider == "reference":
        return reference(case)
    if provider == "compile(reference)":
        return _compiled(case)
    return through_backend(case, CHANNELS_LAST_PROVIDERS.get(provider, provider))


def check(case: Case, provider: str, fn: Callable, inputs) -> None:
    if provider == "clone":
        return
    with torch.no_grad():
        want = reference(case)(*(t.double() for t in inputs))
        got = fn(*inputs)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"{provider} is wrong on {case.label}: {m}")


ROUNDS = 5


def _interleaved(stmts: dict[str, Callable[[], object]], min_time: float, rounds: int = ROUNDS
                 ) -> dict[str, tuple[float, float]]:
    """Time each statement in ``rounds`` interleaved rounds (A, B, C, A, B, C, ...).

    Returns per statement (best round's mean ms, median round's mean ms).  On a shared
    machine contention only ever adds time, and interleaving spreads it over every
    provider instead of whichever happened to run during a burst; the best round
    estimates the uncontended time, and the tables' ratios are taken from it.
    """
    from torch.utils.benchmark import Timer

    timers, numbers = {}, {}
    for name, stmt in stmts.items():
        stmt()  # warm-up (first-call allocation, compilation)
        # Timer runs its statement with num_threads=1 unless told otherwise: pass the
        # thread count the run was set to, or every provider is timed single-threaded.
        timers[name] = Timer("stmt()", globals={"stmt": stmt}, num_threads=torch.get_num_threads())
        once = max(timers[name].timeit(1).mean, 1e-6)
        numbers[name] = max(1, int(min_time / rounds / once))  # ~min_time/rounds seconds per round
    samples: dict[str, list[float]] = {name: [] for name in stmts}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(numbers[name]).mean * 1e3)
    return {name: (min(v), sorted(v)[len(v) // 2]) for name, v in samples.items()}


def time_case(case: Case, providers: Iterable[str], min_time: float) -> list[Result]:
    """Time every provider on one case, forward and forward+backward, interleaved."""
    forward, both = {}, {}
    for provider in providers:
        fn = provider_fn(case, provider)
        channels_last = provider in CHANNELS_LAST_PROVIDERS
        inputs = make_inputs(case, channels_last=channels_last)
        check(case, provider, fn, inputs)

        def fwd(fn=fn, inputs=inputs):
            with torch.no_grad():
                fn(*inputs)

        forward[provider] = fwd
        if provider == "clone":
            continue
        leaves = make_inputs(case, requires_grad=True, channels_last=channels_last)
        with torch.no_grad():
            grad_out = torch.randn_like(reference(case)(*leaves))

        def step(fn=fn, leaves=leaves, grad_out=grad_out):
            torch.autograd.grad(fn(*leaves), leaves, grad_out)

        both[provider] = step
    results = []
    for mode, stmts in (("forward", forward), ("forward+backward", both)):
        for provider, (best, median) in _interleaved(stmts, min_time).items():
            results.append(Result(case, provider, mode, best, median))
    return results


def run(quick: bool = False, threads: int | None = 2, min_time: float = 0.5,
        providers: list[str] | None = None, progress: bool = True) -> list[Result]:
    """Time every case; ``threads`` pins torch's intra-op threads (None: leave as is)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if providers is None:
        providers, _ = available_providers()
    all_cases = cases(quick)
    iterator = all_cases
    if progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(all_cases, desc="fuse_conv2d", unit="case")
        except ImportError:
            pass
    results = []
    for case in iterator:
        if progress and hasattr(iterator, "set_postfix_str"):
            iterator.set_postfix_str(case.label)
        results += time_case(case, providers, min_time)
    return results


# ----------------------------------------------------------------------------- reporting
def summary_rows(results: list[Result]) -> tuple[list[str], list[list[object]]]:
    """One row per (case, mode): each provider's median ms, then the kernels' ratios."""
    providers = list(dict.fromkeys(r.provider for r in results))
    kernels = [p for p in providers if p not in BASELINES]
    table: dict[tuple[Case, str], dict[str, float]] = {}
    for r in results:
        table.setdefault((r.case, r.mode), {})[r.provider] = r.best_ms
    short = {"reference": "ref", "compile(reference)": "compiled"}
    columns = ["case", "mode"] + [short.get(p, p) for p in providers]
    for k in kernels:
        columns += [f"ref/{k}", f"comp/{k}", f"{k}/clone"]
    rows = []
    for (case, mode), times in table.items():
        row: list[object] = [case.label, "fwd" if mode == "forward" else "fwd+bwd"]
        row += [f"{times[p]:.2f}" if p in times else "-" for p in providers]
        clone = table.get((case, "forward"), {}).get("clone")
        for k in kernels:
            t = times.get(k)
            ref, comp = times.get("reference"), times.get("compile(reference)")
            row.append(f"{ref / t:.2f}x" if t and ref else "-")
            row.append(f"{comp / t:.2f}x" if t and comp else "-")
            row.append(f"{t / clone:.2f}" if t and clone and mode == "forward" else "-")
        rows.append(row)
    return columns, rows


def target_rows(results: list[Result], kernel: str = "cpu") -> list[list[object]]:
    """Per case: which of the targets the C++ kernels reach."""
    table: dict[Case, dict[tuple[str, str], float]] = {}
    for r in results:
        table.setdefault(r.case, {})[(r.provider, r.mode)] = r.best_ms
    rows = []
    for case, t in table.items():
        if (kernel, "forward") not in t:
            continue
        fwd = t[("reference", "forward")] / t[(kernel, "forward")]
        clone = t[(kernel, "forward")] / t[("clone", "forward")]
        both = t[("reference", "forward+backward")] / t[(kernel, "forward+backward")]
        rows.append([case.label,
                     f"{fwd:.2f}x " + ("ok" if fwd >= TARGET_SPEEDUP else "MISS"),
                     f"{clone:.2f} " + ("ok" if clone <= TARGET_CLONE_RATIO else "MISS"),
                     f"{both:.2f}x " + ("ok" if both >= TARGET_SPEEDUP else "MISS")])
    return rows


def environment() -> dict[str, str]:
    import fuseops

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
        "torch": torch.__version__, "fuseops": fuseops.__version__, "python": platform.python_version(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def write_results(results: list[Result], out_dir: str, stem: str = "fuse_cpu") -> tuple[str, str]:
    """bench/results/<stem>.json (environment + every measurement) and <stem>.csv."""
    os.makedirs(out_dir, exist_ok=True)
    records = [dict(asdict(r.case), label=r.case.label, provider=r.provider, mode=r.mode,
                    best_ms=r.best_ms, median_ms=r.median_ms) for r in results]
    json_path, csv_path = os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.csv")
    with open(json_path, "w") as handle:
        json.dump({"environment": environment(), "results": records}, handle, indent=1)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else ["label"])
        writer.writeheader()
        writer.writerows(records)
    return json_path, csv_path


def report(results: list[Result], out_dir: str | None, markdown: bool = False) -> None:
    """Print the tables (rich) and, if out_dir, write JSON/CSV there."""
    from fuseops.cli.table import markdown_table, print_table

    columns, rows = summary_rows(results)
    print_table(f"fuse_conv2d on CPU, N={BATCH}, float32, {ACTIVATION}: best-round ms; ratios > 1x: kernel faster",
                columns, rows)
    targets = target_rows(results)
    target_cols = ["case", f"fwd ref/cpu >={TARGET_SPEEDUP}", f"fwd cpu/clone <={TARGET_CLONE_RATIO}",
                   f"fwd+bwd ref/cpu >={TARGET_SPEEDUP}"]
    if targets:
        print_table("targets for the C++ kernels", target_cols, targets)
    if markdown:
        print(markdown_table(columns, rows))
        if targets:
            print(markdown_table(target_cols, targets))
    if out_dir:
        paths = write_results(results, out_dir)
        print("wrote " + ", ".join(paths))


def main(quick: bool = False, threads: int | None = 2, min_time: float | None = None,
         out_dir: str | None = "bench/results", markdown: bool = False, progress: bool = True) -> int:
    providers, missing = available_providers()
    for name, reason in missing.items():
        print(f"skipping backend {name}: {reason}")
    if min_time is None:
        min_time = 0.1 if quick else 0.5
    results = run(quick=quick, threads=threads, min_time=min_time, providers=providers, progress=progress)
    report(results, out_dir, markdown=markdown)
    return 0
