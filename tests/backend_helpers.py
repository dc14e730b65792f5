"""Minimal test helper for backends (the lead unifies it with the FuSe CPU engineer's copy).

``require_backend(op, name)`` skips a test when a backend cannot run here, with the
backend's own reason, except under ``CI=true`` for the backends CI must have (the C++
cpu kernels and the Triton interpreter): there a missing backend is a failure.
"""

from __future__ import annotations

import os

import pytest
import torch

from fuseops import backends

CI_REQUIRED = frozenset({"reference", "cpu", "triton"})


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_backend(op: str, name: str, device: torch.device | str = "cpu") -> None:
    import fuseops  # noqa: F401  (registers every op)

    avail = backends.availability(op, name, torch.device(device))
    if avail.ok:
        return
    message = f"backend {name!r} cannot run {op}: {avail.reason}"
    if in_ci() and name in CI_REQUIRED:
        pytest.fail(f"{message} (CI=true requires it)")
    pytest.skip(message)
