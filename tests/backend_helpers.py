"""Shared test helpers for backends.

``require_backend(op, name)`` skips a test when a backend cannot run here, with the
backend's own reason, except under ``CI=true`` for the backends CI must have (the C++
cpu kernels and the Triton interpreter): there a missing backend is a failure, so a
broken build cannot pass as a row of skips.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import strategies as st

from fuseops import backends

#: Draw this in every ``@given`` test and pass it to ``torch.manual_seed`` first: the seed
#: is then part of the example, so hypothesis prints it with a failure and replays it.
TORCH_SEEDS = st.integers(0, 2**32 - 1)

#: Backends that CI builds and runs on its CPU-only machine.
CI_REQUIRED = frozenset({"reference", "cpu", "triton"})


@st.composite
def fuse_configs(draw, activations: tuple, max_channels: int) -> dict:
    """A FuSe call's shapes and options.  With 2*padding != dilation*(K-1) (even K) the two
    parts' outputs differ in size, so only one part is present (half, other part empty)."""
    k = draw(st.sampled_from((1, 2, 3, 4, 5, 7, 11)))
    dilation = draw(st.integers(1, 3))
    padding = dilation * (k - 1) // 2
    same_size = 2 * padding == dilation * (k - 1)
    full = same_size and draw(st.booleans())
    if full:
        c_row = c_col = draw(st.integers(1, max_channels))
    elif same_size:
        c_row = draw(st.integers(0, max_channels))
        c_col = draw(st.integers(0 if c_row else 1, max_channels))
    elif draw(st.booleans()):
        c_row, c_col = draw(st.integers(1, max_channels)), 0
    else:
        c_row, c_col = 0, draw(st.integers(1, max_channels))
    low = max(1, dilation * (k - 1) + 1 - 2 * padding)
    return dict(n=draw(st.integers(1, 3)), c_row=c_row, c_col=c_col, h=draw(st.integers(low, 40)),
                w=draw(st.integers(low, 70)), k=k, full=full, stride=draw(st.integers(1, 3)),
                dilation=dilation, padding=padding, bias=draw(st.booleans()),
                activation=draw(st.sampled_from(activations)))


def poison_cuda_allocator(nbytes: int) -> None:
    """Fill the next blocks the caching allocator hands out with NaN, so an output
    element a kernel forgets to write shows up as NaN instead of a stale value."""
    torch.cuda.synchronize()
    junk = torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")
    del junk


def output_layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format the ops' outputs and grad_x must have for input x, as nn.Conv2d's:
    channels_last when x is stored channels_last (and not also NCHW-contiguous), else NCHW."""
    stored_channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if stored_channels_last else torch.contiguous_format


def poison_triton_outputs(monkeypatch, triton_impl) -> None:
    """Make ``triton_impl._empty`` (where a Triton launcher allocates every output and
    workspace) hand out NaN-filled buffers, so an element a kernel forgets to write shows up."""

    def poisoned(shape, dtype, device, memory_format=torch.contiguous_format):
        return torch.full(shape, float("nan"), dtype=dtype, device=device).contiguous(memory_format=memory_format)

    monkeypatch.setattr(triton_impl, "_empty", poisoned)


def spy_launchers(monkeypatch, definition) -> list[str]:
    """Record the backend name of every launcher ``definition`` (an op's OpDefinition) looks up."""
    calls: list[str] = []
    real = definition.launcher

    def spying(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(definition, "launcher", spying)
    return calls


def in_ci() -> bool:
    """True when CI=true (any case): missing backends and tools then fail instead of skipping."""
    return os.environ.get("CI", "").lower() == "true"


def require_backend(op: str, name: str, device: torch.device | str = "cpu") -> None:
    """Skip (locally) or fail (under CI=true, for CI_REQUIRED backends) if ``name`` can't run ``op``."""
    import fuseops  # noqa: F401  (registers every op)

    avail = backends.availability(op, name, torch.device(device))
    if avail.ok:
        return
    message = f"backend {name!r} cannot run {op}: {avail.reason}"
    if in_ci() and name in CI_REQUIRED:
        pytest.fail(f"{message} (CI=true requires it)")
    pytest.skip(message)


def available_backends(op: str, candidates: tuple[str, ...], device: torch.device | str = "cpu") -> list[str]:
    """The candidates that can run ``op`` here; under CI=true a missing required one fails."""
    found = []
    for name in candidates:
        avail = backends.availability(op, name, torch.device(device))
        if avail.ok:
            found.append(name)
        elif in_ci() and name in CI_REQUIRED:
            pytest.fail(f"backend {name!r} cannot run {op}: {avail.reason} (CI=true requires it)")
    return found


class DispatchRecorder:
    """A TorchDispatchMode that records the name of every op it sees (``.seen``): ops called
    under it must go through the registered custom ops (fuseops._eager)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        seen: list[str] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append(str(func))
                return func(*args, **(kwargs or {}))

        self.seen = seen
        self._mode = Mode()

    def __enter__(self) -> DispatchRecorder:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
