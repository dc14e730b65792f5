"""Reading a checkpoint safely, and finding the state_dict inside it.

Loading never runs code from the file: ``torch.load(weights_only=True)`` unpickles only
tensors and plain Python values, plus the one class BlockConv's ``classification.py``
pickles (``optimizer_type``, the optimizer's class).  Anything else is refused by name.

Layouts understood (the two papers' training scripts, DataParallel/DDP, fuseops itself):
a bare state_dict; ``{'state_dict': ...}`` (BlockConv, FuSeConv ImageNet);
``{'net': ...}`` (FuSeConv CIFAR); ``{'model': ..., 'ema': ...}``; and fuseops' own
format (:data:`FORMAT`).  Prefixes added by wrappers are removed: ``module.``
(DataParallel/DDP, also inside a key as in ``features.module.0.weight``) and
``_orig_mod.`` (a ``torch.compile``'d model).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch

#: The marker fuseops writes in its own checkpoints (see :func:`fuseops.models.save`).
FORMAT = "fuseops.checkpoint"
FORMAT_VERSION = 1

# BlockConv's utils.save_checkpoint stores type(optimizer); its classification.py uses SGD.
ALLOWED_GLOBALS = (torch.optim.SGD,)
# Entries that hold a state_dict, in the order they are tried.
STATE_DICT_ENTRIES = ("state_dict", "net", "model")
# Module names that wrappers insert into keys, never part of a zoo network's own names.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _allowed_names() -> list[str]:
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in ALLOWED_GLOBALS]


def load_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` onto the CPU with ``weights_only=True`` and :data:`ALLOWED_GLOBALS`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds an object other than tensors, plain values and the
            allowed globals (named in the message), or is not a torch checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive; files from torch < 1.6 are a pickle (protocol >= 2).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(f"weights file {path!r} is not a torch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        held = _unsafe_globals(path) or sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))
        what = f"objects of {held}" if held else "an object the safe loader refuses"
        raise ValueError(
            f"weights file {path!r} holds {what}; fuseops loads only tensors, plain Python values "
            f"and {_allowed_names()}, so that loading never runs code from the file") from None
    except Exception as error:  # noqa: BLE001 - a truncated or corrupt file, whatever torch raises
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"weights file {path!r} is not a readable torch checkpoint: {first}") from None


def _unsafe_globals(path: str) -> list[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be listed; the caller says so
        return []
    allowed = set(_allowed_names())
    return [name for name in found if name not in allowed]


def unwrap(checkpoint: Any, *, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict with wrapper prefixes removed, fuseops model spec or None).

    Args:
        checkpoint: what :func:`load_file` returned, or a dict the caller holds.
        ema: take the ``'ema'`` weights of a ``{'model': ..., 'ema': ...}`` checkpoint.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"weights must hold a dict (a state_dict or a checkpoint), got {type(checkpoint).__name__}")
    spec = None
    if checkpoint.get("format") == FORMAT:
        if ema:
            raise ValueError("ema=True applies to {'model': ..., 'ema': ...} checkpoints; a fuseops checkpoint "
                             "holds one set of weights (from fuseops train: the evaluated ones, the EMA's if kept)")
        spec = checkpoint["model"]
        state = checkpoint["state_dict"]
    elif ema:
        if "ema" not in checkpoint:
            raise ValueError("ema=True but the checkpoint has no 'ema' entry; its entries: "
                             f"{sorted(map(str, checkpoint))}")
        state = checkpoint["ema"]
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
    elif _is_state_dict(checkpoint):
        state = checkpoint
    else:
        entry = next((name for name in STATE_DICT_ENTRIES if name in checkpoint), None)
        if entry is None:
            raise ValueError(
                f"cannot find the weights in a checkpoint with entries {sorted(map(str, checkpoint))}; "
                f"expected a state_dict or one of the entries {STATE_DICT_ENTRIES}")
        state = checkpoint[entry]
    if not _is_state_dict(state):
        raise ValueError("the checkpoint's weights entry is not a state_dict of tensors")
    return {_strip_wrappers(key): value for key, value in state.items()}, spec


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _strip_wrappers(key: str) -> str:
    parts = [part for part in key.split(".") if f"{part}." not in WRAPPER_PREFIXES]
    return ".".join(parts)
