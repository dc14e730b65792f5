"""Argument checks shared by the public API.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
bad value) with the argument's name and what was expected, so the message is
actionable.  They run once, at the public function; kernels assume valid input.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

#: dtypes each device type's kernels support.
SUPPORTED_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    # Shape-only runs (tracing, hwmodel): the fake implementations handle every float dtype.
    "meta": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


def tensor(name: str, value: object, *, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {value.dim()}-D with shape {tuple(value.shape)}")
    return value


def floating_input(name: str, value: torch.Tensor) -> None:
    """The main input's dtype must be one the kernels of its device support."""
    allowed = SUPPORTED_DTYPES.get(value.device.type)
    if allowed is None:
        raise ValueError(f"{name} is on an unsupported device {value.device}; expected cpu, cuda or meta")
    if value.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} has dtype {value.dtype}; on {value.device.type} expected one of {names}")


def same_dtype_device(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {ref_name} has {ref.dtype}; they must match")
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}; they must match")


def integer(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def pair(name: str, value: object, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a tuple (h, w)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {tuple(value)!r}")
        return integer(f"{name}[0]", value[0], minimum=minimum), integer(f"{name}[1]", value[1], minimum=minimum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__}")
    v = integer(name, value, minimum=minimum)
    return v, v


def choice(name: str, value: object, choices: Iterable[object]) -> object:
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


_METADATA = operator.attrgetter("shape", "dtype", "device")


class ValidatedCalls:
    """One op's argument checks, run once per distinct call signature.

    The checks depend only on metadata: the tensors' types, shapes, dtypes and devices,
    and the options.  On small maps they cost about as much as the kernel
    (docs/fuse_conv_cpu.md, "Python-side cost per call"), so a signature seen before
    returns the earlier result without running them.  The key holds every option's type
    and repr as well as its value, because ``True == 1``, ``1.0 == 1`` and
    ``(True, 1) == (1, 1)`` hash alike.  Arguments
    that cannot form a key (not tensors, unhashable options) run the checks, which then
    say what is wrong.  Under ``torch.compile`` the checks run while tracing, once per
    graph, since a global cache would only add guards.

    ``validate(*tensors, optional, *options)`` raises on bad input and returns what the
    op needs; it must return immutable values, as they are shared between calls.
    """

    def __init__(self, validate: Callable[..., Any], max_entries: int = 4096) -> None:
        self.validate = validate
        self.max_entries = max_entries
        self._results: dict[tuple, Any] = {}

    def __call__(self, tensors: tuple, optional: torch.Tensor | None, options: tuple) -> Any:
        """``tensors``: the required tensor arguments; ``optional``: the one optional tensor
        (a bias) or None; ``options``: every other argument, in ``validate``'s order."""
        if torch.compiler.is_compiling():
            return self.validate(*tensors, optional, *options)
        try:
            key = (tuple(map(type, tensors)), tuple(map(_METADATA, tensors)),
                   None if optional is None else (type(optional), _METADATA(optional)),
                   options, tuple(map(type, options)), tuple(map(repr, options)))
            result = self._results.get(key)
        except (AttributeError, TypeError):
            key, result = None, None
        if result is None:
            result = self.validate(*tensors, optional, *options)
            if key is not None and len(self._results) < self.max_entries:
                self._results[key] = result
        return result
