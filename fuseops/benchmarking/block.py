"""Block convolution timings: the blocked op against the paper code's composition,
``torch.compile`` of that composition, and the floor (plain F.conv2d, unblocked).

One function, :func:`run`, measures every case side by side (providers interleaved
round by round, so a busy machine slows them alike) and returns rows;
``python -m fuseops bench block`` and ``bench/bench_block_conv.py`` share :func:`make_case`.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fuseops
from fuseops.block_conv.grid import block_grid
from fuseops.block_conv.reference import block_conv2d_composition
from fuseops.cli.output import progress_bar, show_results

BATCH = 8
#: (name, channels, map size, groups): 3x3 convs C -> C at stride 1, padding 1.
SHAPES = (
    ("conv 64x56x56", 64, 56, 1),
    ("conv 128x28x28", 128, 28, 1),
    ("conv 256x14x14", 256, 14, 1),
    ("dw 128x56x56", 128, 56, 128),
)
#: (label, block_size, blocking)
BLOCKINGS = (("F14", 14, "fixed"), ("F28", 28, "fixed"), ("H2x2", 2, "hierarchical"), ("H4x4", 4, "hierarchical"))
MODES = ("constant", "replicate", "reflect")
PROVIDERS = ("plain", "block_conv2d", "composition", "compiled")
COMPILE_FAILED = "torch.compile failed"

COLUMNS = ("shape", "blocking", "mode", "pass", "plain ms", "block_conv2d", "composition", "compiled",
           "block vs composition")


@dataclass
class Case:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    groups: int
    block_size: int
    blocking: str
    mode: str
    even_block: tuple[int, int] | None  # the block size when the grid divides the map (composition needs it)


def make_case(shape: tuple, blocking: tuple, mode: str, dtype: torch.dtype = torch.float32) -> Case:
    _, channels, size, groups = shape
    _, block_size, kind = blocking
    x = torch.randn(BATCH, channels, size, size, dtype=dtype)
    weight = torch.randn(channels, channels // groups, 3, 3, dtype=dtype) / 3
    bias = torch.randn(channels, dtype=dtype)
    rows, cols = block_grid(size, size, block_size, kind)
    sizes = {b - a for a, b in rows} | {b - a for a, b in cols}
    even = (sizes.pop(),) * 2 if len(sizes) == 1 else None
    return Case(x, weight, bias, groups, block_size, kind, mode, even)


def providers(case: Case, compiled_composition: Callable | None) -> dict[str, Callable | None]:
    """provider -> function(x, weight, bias) -> out; None when it cannot run the case."""

    def plain(x, w, b):
        return F.conv2d(x, w, b, 1, 1, 1, case.groups)

    def blocked(x, w, b):
        return fuseops.block_conv2d(x, w, b, 1, 1, 1, case.groups, block_size=case.block_size,
                                    padding_mode=case.mode, blocking=case.blocking)

    def composition(x, w, b, fn=block_conv2d_composition):
        bh, bw = case.even_block
        return fn(x, w, b, bh, bw, (1, 1), (1, 1), (1, 1), case.groups, case.mode)

    result = {"plain": plain, "block_conv2d": blocked, "composition": None, "compiled": None}
    if case.even_block is not None:
        result["composition"] = composition
        if compiled_composition is not None:
            result["compiled"] = lambda x, w, b: composition(x, w, b, compiled_composition)
    return result


#: Seconds of calls per provider per round: a single 2 ms call is at the mercy of one
#: scheduler tick, so each round times enough calls to fill this and reports their mean.
ROUND_SECONDS = 0.03


def _timed(fn: Callable, case: Case, backward: bool, repeats: int = 1) -> float:
    """Mean seconds of ``repeats`` calls (forward, or forward + backward)."""
    if backward:
        x = case.x.detach().requires_grad_()
        w = case.weight.detach().requires_grad_()
        b = case.bias.detach().requires_grad_()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x, w, b).sum().backward()
    else:
        x, w, b = case.x, case.weight, case.bias
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(repeats):
                fn(x, w, b)
    return (time.perf_counter() - start) / repeats


def measure(case: Case, fns: dict[str, Callable | None], backward: bool, rounds: int) -> dict[str, float | str | None]:
    """Best-of-``rounds`` mean seconds per provider, providers interleaved in every round."""
    live = {name: fn for name, fn in fns.items() if fn is not None}
    failed = {}
    for name, fn in list(live.items()):  # warm-up (and compilation)
        try:
            _timed(fn, case, backward)
        except Exception as exc:  # noqa: BLE001
            # Only the torch.compile baseline may fail (inductor bugs, e.g. replication_pad2d's
            # backward with channels_last strides in torch 2.13); it is reported, not hidden.
            # A failure of our op or of plain F.conv2d is a real error and propagates.
            if name != "compiled":
                raise
            failed[name] = f"{COMPILE_FAILED} ({type(exc).__name__})"
            del live[name]
    repeats = {name: max(1, int(ROUND_SECONDS / max(_timed(fn, case, backward), 1e-6))) for name, fn in live.items()}
    best = {name: float("inf") for name in live}
    for _ in range(rounds):
        for name, fn in live.items():
            best[name] = min(best[name], _timed(fn, case, backward, repeats[name]))
    return {name: failed.get(name, best.get(name)) for name in fns}


def run(quick: bool = False, rounds: int | None = None, threads: int | None = 2, compile_composition: bool = True,
        progress: bool = True, sweeps: int = 1) -> list[tuple]:
    """Measure the cases; return rows under :data:`COLUMNS` (ratios are times over plain F.conv2d,
    and "block vs composition" is how many times faster the op is than the composition).

    ``quick``: the F14 and H4x4 blockings with constant padding only.  ``sweeps``: how many
    times the whole set of cases is measured, one after the other; each provider's time is
    the median over the sweeps of its best round.  On the shared VM the plain conv's own
    time drifts by 10-20% over minutes, and a single sweep catches each case at one moment.
    """
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
        raise ValueError(f"sweeps must be an int >= 1, got {sweeps!r}")
    if threads:  # None or 0: leave torch's default
        torch.set_num_threads(threads)
    rounds = rounds or (3 if quick else 5)
    blockings = [b for b in BLOCKINGS if b[0] in ("F14", "H4x4")] if quick else list(BLOCKINGS)
    modes = ("constant",) if quick else MODES
    compiled = torch.compile(block_conv2d_composition, dynamic=False) if compile_composition else None
    cases = [(s, b, m, bwd) for s in SHAPES for b in blockings for m in modes for bwd in (False, True)]
    bar = progress_bar(len(cases) * sweeps, "block conv", "case", progress)
    measured: list[list[dict]] = [[] for _ in cases]
    for _ in range(sweeps):
        for index, (shape, blocking, mode, backward) in enumerate(cases):
            case = make_case(shape, blocking, mode)
            measured[index].append(measure(case, providers(case, compiled), backward, rounds))
            bar.update(1)
    bar.close()
    rows = []
    for (shape, blocking, mode, backward), sweep_times in zip(cases, measured):
        times = {name: _median_over_sweeps([t[name] for t in sweep_times]) for name in sweep_times[0]}
        plain = times["plain"]

        def ratio(name, times=times, plain=plain):
            if isinstance(times[name], str):
                return times[name]
            return "n/a" if times[name] is None else f"{times[name] / plain:.2f}x"

        vs = ("n/a" if times["composition"] is None
              else f"{times['composition'] / times['block_conv2d']:.2f}x")
        rows.append((shape[0], blocking[0], mode, "fwd+bwd" if backward else "fwd", f"{plain * 1e3:.1f}",
                     ratio("block_conv2d"), ratio("composition"), ratio("compiled"), vs))
    return rows


def _median_over_sweeps(values: list[float | str | None]) -> float | str | None:
    """The median of a provider's per-sweep times; a failure or absence in any sweep wins."""
    for value in values:
        if value is None or isinstance(value, str):
            return value
    return statistics.median(values)


def environment() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
            f"python {platform.python_version()}, backend {fuseops.current_backend()}")


def main(quick: bool = False, threads: int | None = 2, min_time: float | None = None, out_dir: str | None = None,
         markdown: bool = False, progress: bool = True, rounds: int | None = None,
         compile_composition: bool = True, sweeps: int = 1) -> int:
    """The ``fuseops bench block`` target: measure, print the table (and markdown), return 0.

    ``min_time`` is accepted for the shared bench interface (this target times
    best-of-``rounds``); with ``out_dir`` the rows are also written to ``out_dir/block.csv``.
    """
    rows = run(quick=quick, rounds=rounds, threads=threads, compile_composition=compile_composition,
               progress=progress, sweeps=sweeps)
    show_results(f"block conv, N={BATCH}, 3x3 stride 1 padding 1 ({environment()})", COLUMNS, rows, markdown,
                 out_dir, "block.csv")
    return 0
