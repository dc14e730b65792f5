"""Choosing between kernel backends by measuring them once per call signature.

"auto" on CUDA tensors may have more than one kernel backend able to run an op (the
CUDA kernels and the Triton kernels).  Which is faster depends on the shape, dtype and
GPU, so rather than guess, the first call with a new signature times each candidate a
few times with CUDA events and remembers the winner; later calls with the same
signature reuse it.  The cache lives in memory, and also on disk when
``$FUSEOPS_AUTOTUNE_CACHE`` names a JSON file (the key then includes the GPU name and
the torch version, so a cache copied to another machine is not misused).

``FUSEOPS_AUTOTUNE=0`` turns measuring off: "auto" then takes the first available
backend in the op's static order.  Measuring never happens during CUDA graph capture.

The selection logic takes the timer as an argument, so it is tested on the CPU with
fake timings (tests/test_autotune.py).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

CACHE_ENV = "FUSEOPS_AUTOTUNE_CACHE"
ENABLE_ENV = "FUSEOPS_AUTOTUNE"

#: timer(fn) -> seconds-like cost of one call of fn (lower is better)
Timer = Callable[[Callable[[], object]], float]


@dataclass(frozen=True)
class TuneRequest:
    """What "auto" needs to measure an op call.

    key: hashable description of the call (op, shapes, dtypes, options).
    run: backend name -> zero-argument callable that runs the call on that backend.
    """

    key: Hashable
    run: Callable[[str], Callable[[], object]]


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") != "0"


def signature(args: tuple) -> tuple:
    """A hashable, printable description of call arguments: tensors by shape, dtype,
    strides and device type; everything else by value."""
    parts = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            parts.append(("T", tuple(arg.shape), str(arg.dtype).replace("torch.", ""), tuple(arg.stride()),
                          arg.device.type))
        else:
            parts.append(arg)
    return tuple(parts)


def cuda_event_timer(repeats: int = 5, warmup: int = 2) -> Timer:
    """Median time of ``fn`` in milliseconds, measured with CUDA events on the current stream."""

    def timer(fn: Callable[[], object]) -> float:
        for _ in range(warmup):  # first calls compile (Triton) or warm caches
            fn()
        times = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    return timer


class Autotuner:
    """Measures candidates once per key and remembers the fastest.

    Ties go to the candidate listed first (the op's static preference).
    """

    def __init__(self, timer: Timer | None = None, cache_file: str | None = None) -> None:
        self._timer = timer
        self._cache_file = cache_file
        self._choices: dict[str, str] = {}
        self._timings: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._loaded = False

    # -- cache -------------------------------------------------------------------------
    @staticmethod
    def _key_text(key: Hashable) -> str:
        return repr(key)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self._cache_file or not os.path.exists(self._cache_file):
            return
        try:
            with open(self._cache_file) as handle:
                stored = json.load(handle)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"${CACHE_ENV}: cannot read the cache {self._cache_file!r}: {exc}") from exc
        if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
            raise RuntimeError(f"${CACHE_ENV}: {self._cache_file!r} is not an autotune cache (JSON object)")
        self._choices.update(stored)

    def _save(self) -> None:
        if not self._cache_file:
            return
        folder = os.path.dirname(os.path.abspath(self._cache_file))
        os.makedirs(folder, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(self._choices, handle, indent=1, sort_keys=True)
        os.replace(tmp, self._cache_file)

    def lookup(self, key: Hashable) -> str | None:
        """The cached choice for ``key``, if any (no measuring)."""
        with self._lock:
            self._load()
            return self._choices.get(self._key_text(key))

    def timings(self, key: Hashable) -> dict[str, float]:
        """The measured cost per candidate for ``key`` (empty if it came from the disk cache)."""
        return dict(self._timings.get(self._key_text(key), {}))

    def clear(self) -> None:
        with self._lock:
            self._choices.clear()
            self._timings.clear()

    # -- choice ------------------------------------------------------------------------
    def choose(self, key: Hashable, candidates: dict[str, Callable[[], object]]) -> str:
        """The fastest candidate for ``key``: cached, or measured now with the timer.

        A candidate whose call raises makes ``choose`` raise: a broken kernel is a bug
        to report, not something to route around silently.
        """
        if not candidates:
            raise ValueError("choose() needs at least one candidate")
        text = self._key_text(key)
        with self._lock:
            self._load()
            cached = self._choices.get(text)
        if cached is not None and cached in candidates:
            return cached
        if len(candidates) == 1:
            return next(iter(candidates))
        timer = self._timer if self._timer is not None else cuda_event_timer()
        costs = {name: float(timer(fn)) for name, fn in candidates.items()}
        best = min(costs, key=lambda name: (costs[name], list(candidates).index(name)))
        with self._lock:
            self._choices[text] = best
            self._timings[text] = costs
            self._save()
        return best


_default: Autotuner | None = None


def default_autotuner() -> Autotuner:
    """The process-wide tuner (disk cache from $FUSEOPS_AUTOTUNE_CACHE, CUDA-event timer)."""
    global _default
    if _default is None:
        _default = Autotuner(cache_file=os.environ.get(CACHE_ENV) or None)
    return _default


def device_key(device: torch.device) -> tuple:
    """What makes a measurement valid: the GPU model and the software that ran it."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (name, torch.__version__)
