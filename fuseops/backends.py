"""The one place where a backend is chosen for an op.

Backends:

* ``reference``: pure PyTorch (``fuseops.<op>.reference``), the definition.
* ``cpu``: C++ kernels in ``fuseops._C`` (CPU tensors).
* ``cuda``: CUDA kernels in ``fuseops._C`` (CUDA tensors).
* ``triton``: Triton kernels in ``fuseops.kernels`` (CUDA tensors, or CPU tensors
  when ``TRITON_INTERPRET=1`` is set, which is how the tests run them).
* ``auto``: the fastest available backend for the tensor's device.

The choice comes from :func:`use_backend` (a context manager) or, outside one, from
the ``FUSEOPS_BACKEND`` environment variable; the default is ``auto``.

Each op registers, per backend, a function that says whether that backend can run
it (and why not); asking for a backend that cannot run raises
:class:`BackendUnavailableError` with the reason, never a silent fallback.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fuseops import _extension
from fuseops.autotune import TuneRequest


def _env(name: str) -> str | None:
    """``os.environ.get(name)``, read on every op call (tests and users change it at run time)."""
    return os.environ.get(name)


# os.environ.get encodes the key and decodes the value on every call, about 1 us on the
# 2-core CPU here, and resolve() reads two variables per op call: a tenth of a small
# FuSe call.  On POSIX, os.environ keeps its bytes mapping in ``_data`` and updates it
# on every assignment or deletion through os.environ (the only writes os.environ.get
# would see too), so reading it directly gives the same answer without the conversions.
_environ_bytes = getattr(os.environ, "_data", None)
if os.name == "posix" and isinstance(_environ_bytes, dict):
    _encoded_names: dict[str, bytes] = {}

    def _env(name: str) -> str | None:  # noqa: F811 (the fast POSIX variant of the same function)
        key = _encoded_names.get(name)
        if key is None:
            key = _encoded_names[name] = os.fsencode(name)
        value = _environ_bytes.get(key)
        return None if value is None else os.fsdecode(value)

BACKENDS: tuple[str, ...] = ("reference", "cpu", "cuda", "triton")
ENV_VAR = "FUSEOPS_BACKEND"

_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("fuseops_backend", default=None)

# The public ops' C++ kernels, registered at their CPU key, run themselves unless the
# backend is Python's to pick (csrc/common/selection.h): they are told here when a
# use_backend block naming a backend other than "cpu" opens and closes.  Loading the extension at import
# also registers those kernels before the first call.
if _extension.load()[0]:
    from fuseops import _C

    _open_choice, _close_choice = _C.open_python_choice, _C.close_python_choice
else:  # no C++ kernels: every call goes through the Python selection anyway
    _open_choice = _close_choice = None
#: The selections that the C++ kernels at the CPU key serve without asking Python.
_CPP_CHOICES = ("auto", "cpu")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this op on this device; the message says why."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


# op name -> backend -> probe(device or None) -> Availability
_probes: dict[str, dict[str, Callable[[torch.device | None], Availability]]] = {}
# op name -> device type -> backends in order of preference for "auto"
_auto_order: dict[str, dict[str, tuple[str, ...]]] = {}
# Resolutions that succeeded, per (op, selection, device type) and the inputs the probes
# read: the extension (the has_kernel function, so a test's stand-in starts afresh) and
# TRITON_INTERPRET.  Every op call resolves its backend, and with the caches cold (a model
# between calls) the probes took 30-40 us per call on the 2-core CPU (docs/fuse_conv_cpu.md,
# "Python-side cost per call").
_resolved: dict[tuple, str] = {}


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    return name


def register_op(
    op: str,
    probes: dict[str, Callable[[torch.device | None], Availability]],
    auto_order: dict[str, tuple[str, ...]],
) -> None:
    """Declare which backends ``op`` has and the order "auto" tries them per device type."""
    _probes[op] = dict(probes)
    _auto_order[op] = dict(auto_order)
    _resolved.clear()


def registered_ops() -> tuple[str, ...]:
    return tuple(_probes)


class use_backend:  # noqa: N801 (a context manager used like a function: with use_backend("cpu"))
    """Run the ops inside the ``with`` block on backend ``name``.

    ``name`` is one of "auto", "reference", "cpu", "cuda" or "triton".  An unknown name
    raises ``ValueError`` at once; an unavailable one raises
    :class:`BackendUnavailableError` when an op is called.  ``with use_backend(name) as n``
    binds ``n`` to the name.

    A class rather than a ``contextlib.contextmanager`` generator: the op's autograd
    backward enters one per call, and the generator's machinery cost several
    microseconds of a small call's ~10 (docs/fuse_conv_cpu.md, "Python-side cost per call").
    """

    __slots__ = ("name", "_token", "_told_cpp")

    def __init__(self, name: str) -> None:
        self.name = _check_name(name)
        self._token: contextvars.Token | None = None
        # On CPU tensors "auto" and "cpu" both mean the C++ kernels, which then run by
        # themselves; any other name makes them ask.
        self._told_cpp = name not in _CPP_CHOICES and _open_choice is not None

    def __enter__(self) -> str:
        self._token = _selected.set(self.name)
        if self._told_cpp:
            _open_choice()
        return self.name

    def __exit__(self, *exc_info: object) -> None:
        _selected.reset(self._token)
        if self._told_cpp:
            _close_choice()


class python_chooses:  # noqa: N801 (a context manager, as use_backend)
    """Inside the ``with`` block every call of a public op on CPU tensors goes through the
    Python selection (:meth:`fuseops._op_definition.OpDefinition.run`), even under "auto",
    where the C++ kernels would otherwise run directly.  For tests that watch the selection."""

    def __enter__(self) -> None:
        if _open_choice is not None:
            _open_choice()

    def __exit__(self, *exc_info: object) -> None:
        if _close_choice is not None:
            _close_choice()


# The last $FUSEOPS_BACKEND value read and its checked name: the check runs when the value changes.
_env_choice: tuple[str | None, str] = (None, "auto")


def current_backend() -> str:
    """The backend name in force: the innermost ``use_backend``, else $FUSEOPS_BACKEND, else "auto"."""
    global _env_choice
    name = _selected.get()
    if name is None:
        env = _env(ENV_VAR)
        last, name = _env_choice
        if env != last:
            try:
                name = _check_name(env or "auto")
            except ValueError as exc:
                raise ValueError(f"${ENV_VAR}: {exc}") from None
            _env_choice = (env, name)
    return name


def availability(op: str, backend: str, device: torch.device | None = None) -> Availability:
    """Whether ``backend`` can run ``op`` (on ``device`` if given), and why not."""
    probes = _probes[op]
    if backend not in probes:
        return Availability(False, f"{op} has no {backend} backend")
    return probes[backend](device)


def resolve(op: str, device: torch.device, tune: TuneRequest | None = None, name: str | None = None) -> str:
    """The concrete backend that runs ``op`` for a tensor on ``device`` right now.

    ``tune`` (CUDA tensors only) lets "auto" measure the available kernel backends on
    this very call and keep the faster one for its signature; see :mod:`fuseops.autotune`.
    ``name``: the selection to resolve, when the caller has already read
    :func:`current_backend`; None reads it.
    """
    if name is None:
        name = current_backend()
    if name == "auto" and device.type == "cuda" and tune is not None:
        return _auto_measured(op, device, tune)
    key = (op, name, device.type, _env("TRITON_INTERPRET"), _extension.has_kernel)
    hit = _resolved.get(key)
    if hit is None:
        hit = _resolved[key] = _resolve_uncached(op, name, device)  # raises when nothing can run it
    return hit


def _resolve_uncached(op: str, name: str, device: torch.device) -> str:
    if name == "auto":
        reasons = []
        for candidate in _auto_order[op].get(device.type, ()):
            avail = availability(op, candidate, device)
            if avail.ok:
                return candidate
            reasons.append(f"{candidate}: {avail.reason}")
        raise BackendUnavailableError(
            f"no backend can run {op} on {device.type} tensors ({'; '.join(reasons) or 'none registered'})"
        )
    avail = availability(op, name, device)
    if not avail.ok:
        raise BackendUnavailableError(f"backend {name!r} cannot run {op} on {device.type}: {avail.reason}")
    return name


#: Kernel backends that "auto" on CUDA tensors chooses between by measurement.
MEASURED_BACKENDS: tuple[str, ...] = ("cuda", "triton")


def _auto_measured(op: str, device: torch.device, tune: TuneRequest) -> str:
    """"auto" on CUDA: the faster available kernel backend for this call's signature."""
    from fuseops import autotune

    available, reasons = [], []
    for candidate in _auto_order[op].get(device.type, ()):
        avail = availability(op, candidate, device)
        if avail.ok:
            available.append(candidate)
        else:
            reasons.append(f"{candidate}: {avail.reason}")
    if not available:
        raise BackendUnavailableError(
            f"no backend can run {op} on {device.type} tensors ({'; '.join(reasons) or 'none registered'})"
        )
    kernels = [b for b in available if b in MEASURED_BACKENDS]
    if len(kernels) < 2 or not autotune.enabled():
        return available[0]
    tuner = autotune.default_autotuner()
    key = (op, autotune.device_key(device), tune.key)
    if torch.cuda.is_current_stream_capturing():
        # Timing inside CUDA graph capture would record the measurement into the graph.
        return tuner.lookup(key) or available[0]
    return tuner.choose(key, {b: tune.run(b) for b in kernels})


# ----------------------------------------------------------------------------- shared probes
def reference_probe(device: torch.device | None) -> Availability:
    return Availability(True)


def cpu_probe_for(kernel: str) -> Callable[[torch.device | None], Availability]:
    """Probe for a C++ CPU kernel ``torch.ops.fuseops_ext.<kernel>``."""

    def probe(device: torch.device | None) -> Availability:
        if device is not None and device.type != "cpu":
            return Availability(False, f"the cpu backend runs CPU tensors only, got {device.type}")
        ok, reason = _extension.has_kernel(kernel)
        return Availability(ok, reason)

    return probe


def cuda_probe_for(kernel: str) -> Callable[[torch.device | None], Availability]:
    """Probe for a CUDA kernel registered as ``torch.ops.fuseops_ext.<kernel>`` for CUDA."""

    def probe(device: torch.device | None) -> Availability:
        from fuseops._extension import cuda_compiled, has_kernel

        if device is not None and device.type != "cuda":
            return Availability(False, f"the cuda backend runs CUDA tensors only, got {device.type}")
        if not torch.cuda.is_available():
            return Availability(False, "torch.cuda.is_available() is False (no GPU or CPU-only torch)")
        ok, reason = has_kernel(kernel)
        if not ok:
            return Availability(False, reason)
        if not cuda_compiled():
            return Availability(False, "fuseops._C was built without CUDA sources (no nvcc or CPU-only torch)")
        return Availability(True)

    return probe


def triton_probe(device: torch.device | None) -> Availability:
    """Triton runs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return Availability(False, f"triton is not installed ({exc}); pip install 'fuseops[triton]'")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device is None:
        if torch.cuda.is_available() or interpret:
            return Availability(True)
        return Availability(False, "no CUDA device; set TRITON_INTERPRET=1 to run Triton on the CPU")
    if device.type == "cuda":
        if torch.cuda.is_available():
            return Availability(True)
        return Availability(False, "torch.cuda.is_available() is False (no GPU or CPU-only torch)")
    if device.type == "cpu" and interpret:
        return Availability(True)
    return Availability(
        False, f"triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors; got a {device.type} tensor"
    )
