"""What the targets that time the C++ kernels directly (``calls``, ``layers``) share: the
set-up, and interleaved timing of plain Python callables."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fuseops import _extension


def set_up(target: str, threads: int | None) -> None:
    """Set torch's thread count (None leaves it) and check that the C++ FuSe kernel is built;
    RuntimeError naming ``target`` and the reason otherwise."""
    if threads:
        torch.set_num_threads(threads)
    ok, reason = _extension.has_kernel("fuse_conv2d_forward")
    if not ok:
        raise RuntimeError(f"bench {target} times the C++ kernels: {reason}")


def best_round_means(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each function: the providers take turns round by round (so drift
    on a shared machine reaches them alike), each round timing ``calls`` calls in a row;
    each result is its best round's mean."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best
