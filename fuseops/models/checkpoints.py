"""Putting a checkpoint's weights into a zoo network; fuseops' own save and load.

Three kinds of weights fit a zoo network:

* **fuseops' own**, written by :func:`save` or named as the zoo names its modules: loaded
  by key.
* **The BlockConv repository's** block ResNets and VGG: its names are torchvision's, which
  the zoo shares; loaded by key once wrapper prefixes are gone.
* **The FuSeConv repository's 25 networks and BlockConv's block_mobilenet**: their module
  names differ from the zoo's (``conv2_h``/``bn2_h``/``conv2_v``/``bn2_v`` where the zoo
  has one ``FuSeConvBNAct``), but both build the same layers in the same order.  Their
  tensors are matched in state_dict order, each pair checked for the same kind (weight,
  bias, running statistic) and the same shape.  A FuSe block's tensors are taken in the
  original's order: row conv, row BatchNorm, column conv, column BatchNorm.

Every load is strict: a tensor too many, too few, or of another shape stops it with an
error that names the first keys that disagree.  Nothing loads partially.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fuseops.models.checkpoint_file import FORMAT, FORMAT_VERSION, load_file, unwrap

# Tensors the original code builds but never uses, dropped before matching:
# FuSeConv's MobileNetV2 FuSe blocks build a 1x1 expansion conv + BN even when t = 1.
_DEAD_ORIGINAL = {
    ("mobilenet_v2", "half"): re.compile(r"^features\.1\.(conv1|bn1)\."),
    ("mobilenet_v2", "full"): re.compile(r"^features\.1\.(conv1|bn1)\."),
}
# The kind of a tensor, from its key's last part; the zoo's FuSe weights are conv weights.
_KIND = {"weight_row": "weight", "weight_col": "weight"}


def load_weights(model: nn.Module, weights: Any, *, name: str, variant: str, ema: bool = False,
                 spec: Mapping[str, Any] | None = None) -> None:
    """Fill ``model`` (built as ``name``/``variant``) from ``weights``, strictly.

    Args:
        weights: a path to a checkpoint file, or a dict (a state_dict or a checkpoint).
        ema: take the ``'ema'`` weights of a ``{'model': ..., 'ema': ...}`` checkpoint.
        spec: the model's own spec (name, variant, num_classes, options), compared with a
            fuseops checkpoint's.

    Raises:
        ValueError: the weights are for another network or variant, or unsafe to load.
    """
    if isinstance(weights, (str, os.PathLike)):
        weights = load_file(weights)
    elif not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a path or a dict, got {type(weights).__name__}")
    state, saved_spec = unwrap(weights, ema=ema)
    if saved_spec is not None and spec is not None and dict(saved_spec) != dict(spec):
        raise ValueError(f"the checkpoint holds {_describe(saved_spec)}, but the model asked for is "
                         f"{_describe(spec)}; fuseops.models.load(path) rebuilds the saved model")
    ours = model.state_dict()
    if set(state) == set(ours):
        _check_by_key(state, ours, name, variant)
        model.load_state_dict(state, strict=True)
        return
    try:
        matched = _match_in_order(state, model, name, variant)
    except ValueError:
        if _named_like(state, ours):  # mostly the zoo's own names: say which keys differ
            _check_by_key(state, ours, name, variant)
        raise
    model.load_state_dict(matched, strict=True)


def _describe(spec: Mapping[str, Any]) -> str:
    options = dict(spec.get("options") or {})
    extra = f" with {options}" if options else ""
    return f"{spec.get('name')!r} variant {spec.get('variant')!r} ({spec.get('num_classes')} classes){extra}"


def _named_like(state: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor]) -> bool:
    # Mostly the zoo's own names: report missing and unexpected keys by name.
    return len(set(state) & set(ours)) >= len(ours) // 2


def _check_by_key(state, ours, name: str, variant: str) -> None:
    missing = [key for key in ours if key not in state]
    unexpected = [key for key in state if key not in ours]
    if missing or unexpected:
        raise ValueError(f"weights do not fit {name!r} variant {variant!r}: missing keys {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    for key, value in ours.items():
        if state[key].shape != value.shape:
            raise ValueError(f"weights do not fit {name!r} variant {variant!r}: {key!r} has shape "
                             f"{tuple(state[key].shape)} in the checkpoint, {tuple(value.shape)} in the model")


def _model_order(model: nn.Module) -> list[str]:
    """The model's state_dict keys, each FuSe block's in the original code's order."""
    from fuseops.nn import FuSeConvBNAct

    keys = list(model.state_dict())
    for prefix, module in model.named_modules():
        if not isinstance(module, FuSeConvBNAct):
            continue
        group = [key for key in keys if key.startswith(prefix + ".")]
        row = [f"{prefix}.conv.weight_row"] + [k for k in group if k.startswith(f"{prefix}.bn_row.")]
        col = [f"{prefix}.conv.weight_col"] + [k for k in group if k.startswith(f"{prefix}.bn_col.")]
        rest = [key for key in group if key not in row and key not in col]
        start = keys.index(group[0])
        keys[start:start + len(group)] = row + col + rest
    return keys


def _kind(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return _KIND.get(leaf, leaf)


def _match_in_order(state: Mapping[str, torch.Tensor], model: nn.Module, name: str,
                    variant: str) -> dict[str, torch.Tensor]:
    dead = _DEAD_ORIGINAL.get((name, variant))
    theirs = [key for key in state if dead is None or not dead.match(key)]
    ours = model.state_dict()
    order = _model_order(model)
    where = f"weights do not fit {name!r} variant {variant!r}"
    for index, (their_key, our_key) in enumerate(zip(theirs, order)):
        their, our = state[their_key], ours[our_key]
        if _kind(their_key) != _kind(our_key) or their.shape != our.shape:
            raise ValueError(
                f"{where}: tensor {index} of the checkpoint, {their_key!r} {tuple(their.shape)}, does not "
                f"match the model's {our_key!r} {tuple(our.shape)} (matched in state_dict order)")
    if len(theirs) != len(order):
        longer, extra = ("checkpoint", theirs) if len(theirs) > len(order) else ("model", order)
        raise ValueError(f"{where}: the checkpoint has {len(theirs)} tensors, the model {len(order)}; "
                         f"the {longer}'s first unmatched key is {extra[min(len(theirs), len(order))]!r}")
    return {our_key: state[their_key] for their_key, our_key in zip(theirs, order)}


def save(model: nn.Module, path: str | os.PathLike[str], **meta: Any) -> None:
    """Write ``model``'s weights with what :func:`load` needs to rebuild it.

    The file holds the zoo name, variant, number of classes and block options, the
    fuseops version, ``meta`` (plain values and tensors only) and the state_dict; it loads
    with ``torch.load(weights_only=True)``.

    Args:
        model: a network from :func:`fuseops.models.get_model` (also wrapped in
            DataParallel/DDP or ``torch.compile``).
        path: the file to write.
        **meta: anything worth keeping beside the weights (epoch, accuracy, ...).
    """
    import fuseops

    model = unwrap_model(model)
    spec = getattr(model, "fuseops_spec", None)
    if spec is None:
        raise TypeError("model was not built by fuseops.models.get_model, so its name and options are "
                        "unknown; save its state_dict with torch.save instead")
    for key, value in meta.items():
        _check_plain(f"meta[{key!r}]", value)
    checkpoint = {"format": FORMAT, "format_version": FORMAT_VERSION, "fuseops_version": fuseops.__version__,
                  "model": dict(spec), "meta": dict(meta), "state_dict": model.state_dict()}
    torch.save(checkpoint, os.fspath(path))


def load(path: str | os.PathLike[str]) -> nn.Module:
    """The model :func:`save` wrote, rebuilt from its name, variant and options, in training mode."""
    from fuseops.models.registry import get_model

    checkpoint = load_file(path)
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a fuseops checkpoint; load another network's weights "
                         "with fuseops.models.get_model(name, variant=..., weights=path)")
    spec = checkpoint["model"]
    return get_model(spec["name"], variant=spec["variant"], num_classes=spec["num_classes"],
                     weights=checkpoint, **dict(spec["options"]))


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A fuseops checkpoint's model spec, fuseops version and meta, without building the model."""
    checkpoint = load_file(path)
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a fuseops checkpoint")
    return {key: checkpoint[key] for key in ("model", "fuseops_version", "meta")}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside DataParallel/DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


_PLAIN = (type(None), bool, int, float, str)


def _check_plain(where: str, value: Any) -> None:
    # Only what weights_only=True reads back: exact types, since a subclass (an IntEnum, a
    # namedtuple, a defaultdict) pickles by its class and would not load without running code.
    if type(value) in _PLAIN or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple, torch.Size):
        for index, item in enumerate(value):
            _check_plain(f"{where}[{index}]", item)
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; keys must be str or int")
            _check_plain(f"{where}[{key!r}]", item)
        return
    raise TypeError(f"{where} is a {type(value).__name__}; meta holds only None, bool, int, float, str, "
                    "tensors, and lists, tuples and dicts of them")
