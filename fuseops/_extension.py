"""Loading the compiled extension ``fuseops._C`` and explaining its absence."""

from __future__ import annotations

import functools
import os

_NOTE = os.path.join(os.path.dirname(__file__), "_build_note.txt")


def build_note() -> str:
    """What the last build said about the extension (built, skipped or failed)."""
    try:
        with open(_NOTE) as handle:
            return handle.read().strip()
    except OSError:
        return "no build record: fuseops was not installed with `pip install --no-build-isolation -e .`"


@functools.cache
def load() -> tuple[bool, str]:
    """Import ``fuseops._C`` once; return (loaded, reason it is not)."""
    try:
        from fuseops import _C  # noqa: F401  (importing registers the torch.ops.fuseops_ext kernels)
    except ImportError as exc:
        return False, f"fuseops._C is not importable ({exc}); build: {build_note()}"
    return True, ""


_present: set[str] = set()  # kernels found once stay found: every op call asks (see backends.resolve)


def has_kernel(name: str) -> tuple[bool, str]:
    """Whether ``torch.ops.fuseops_ext.<name>`` exists, loading the extension first."""
    if name in _present:
        return True, ""
    loaded, reason = load()
    if not loaded:
        return False, reason
    import torch

    if not hasattr(torch.ops.fuseops_ext, name):
        return False, f"fuseops._C was built without the kernel `{name}`; rebuild the extension"
    _present.add(name)
    return True, ""


def cuda_compiled() -> bool:
    """Whether fuseops._C contains the CUDA kernels."""
    loaded, _ = load()
    if not loaded:
        return False
    from fuseops import _C

    return bool(getattr(_C, "WITH_CUDA", False))
