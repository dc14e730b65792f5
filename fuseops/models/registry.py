"""``list_models`` and ``get_model``: the zoo's one entry point."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from fuseops import _checks
from fuseops.models.names import BLOCK_NETWORKS, FUSE_NETWORKS, FUSE_VARIANTS, PLAIN_NETWORKS

# Default block size per network (the Block Convolution paper: F28, F56 for ResNet-50).
BLOCK_DEFAULT_SIZE = {"resnet18": 28, "resnet50": 56, "vgg16": 28, "mobilenet_v1": 28}
BLOCK_OPTIONS = ("block_size", "padding_mode", "blocking", "stride_mode")
# The defaults of fuseops.convert.to_block, written out so a saved spec states every option.
BLOCK_OPTION_DEFAULTS = {"padding_mode": "constant", "blocking": "fixed", "stride_mode": "conv"}


def _fuse_builder(name: str) -> Callable[[str, int], nn.Module]:
    def build(variant: str, num_classes: int) -> nn.Module:
        if name == "mobilenet_v1":
            from fuseops.models.mobilenet_v1 import MobileNetV1
            return MobileNetV1(variant, num_classes)
        if name == "mobilenet_v2":
            from fuseops.models.mobilenet_v2 import MobileNetV2
            return MobileNetV2(variant, num_classes)
        if name == "mnasnet_b1":
            from fuseops.models.mnasnet import MnasNetB1
            return MnasNetB1(variant, num_classes)
        from fuseops.models.mobilenet_v3 import MobileNetV3
        return MobileNetV3(name.rsplit("_", 1)[-1], variant, num_classes)
    return build


def _plain(name: str, num_classes: int) -> nn.Module:
    if name == "vgg16":
        from fuseops.models.vgg import vgg16
        return vgg16(num_classes)
    if name == "mobilenet_v1":
        from fuseops.models.mobilenet_v1 import MobileNetV1
        return MobileNetV1("baseline", num_classes)
    from fuseops.models import resnet
    return getattr(resnet, name)(num_classes)


def _variants(name: str) -> tuple[str, ...]:
    variants: list[str] = []
    if name in FUSE_NETWORKS:
        variants += ("baseline", *FUSE_VARIANTS)
    elif name in PLAIN_NETWORKS:
        variants.append("baseline")
    if name in BLOCK_NETWORKS:
        variants.append("block")
    return tuple(variants)


def list_models() -> dict[str, tuple[str, ...]]:
    """{network name: the variants ``get_model`` accepts for it}, in a stable order."""
    names = dict.fromkeys(FUSE_NETWORKS + PLAIN_NETWORKS + BLOCK_NETWORKS)
    return {name: _variants(name) for name in names}


def get_model(name: str, *, variant: str = "baseline", num_classes: int = 1000,
              weights: str | os.PathLike[str] | Mapping[str, Any] | None = None, ema: bool = False,
              **options) -> nn.Module:
    """A network from the zoo, freshly initialised or loaded from ``weights``.

    Args:
        name: one of :func:`list_models` (e.g. "mobilenet_v2", "resnet50").
        variant: FuSe networks: "baseline", "full", "half", "full_hybrid", "half_hybrid";
            "resnet18"/"resnet50"/"vgg16": "baseline"; "resnet18", "resnet50", "vgg16",
            "mobilenet_v1": "block" (every conv, 1x1 and stem included, a BlockConv2d).
        num_classes: size of the classifier's output.
        weights: a checkpoint file or a dict: a fuseops checkpoint (:func:`save`), a
            checkpoint of the FuSeConv or BlockConv repositories, or a state_dict; bare, or
            under ``'state_dict'``, ``'net'`` or ``'model'``; with or without ``module.``
            prefixes.  Files load with ``torch.load(weights_only=True)``.  The load is
            strict: weights for another network, variant or class count raise ValueError.
            See :mod:`fuseops.models.checkpoints`.
        ema: take the ``'ema'`` weights of a ``{'model': ..., 'ema': ...}`` checkpoint.
        **options: "block" only: ``block_size`` (default 28, 56 for ResNet-50),
            ``padding_mode`` ("constant"), ``blocking`` ("fixed"), ``stride_mode`` ("conv");
            see :class:`fuseops.nn.BlockConv2d`.  BlockConv's checkpoints need
            ``stride_mode="pool"`` and the ``padding_mode`` they were trained with.

    Returns:
        An ``nn.Module`` mapping (N, 3, H, W) to (N, num_classes) logits, in training mode.
        Its ``fuseops_spec`` attribute records name, variant, num_classes and options for
        :func:`fuseops.models.save`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    models = list_models()
    if name not in models:
        raise ValueError(f"unknown model {name!r}; choose one of {tuple(models)}")
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str, got {type(variant).__name__}")
    if variant not in models[name]:
        raise ValueError(f"variant must be one of {models[name]} for {name!r}, got {variant!r}")
    num_classes = _checks.integer("num_classes", num_classes, minimum=1)
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be a bool, got {type(ema).__name__}")
    if variant != "block" and options:
        raise TypeError(f"unexpected options {sorted(options)} for variant={variant!r}; "
                        f'{BLOCK_OPTIONS} apply to variant="block" only')
    if variant == "block":
        unknown = sorted(set(options) - set(BLOCK_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected options {unknown}; variant='block' takes {BLOCK_OPTIONS}")
        options = {"block_size": BLOCK_DEFAULT_SIZE[name], **BLOCK_OPTION_DEFAULTS, **options}
    model = _build(name, variant, num_classes, dict(options))
    model.fuseops_spec = {"name": name, "variant": variant, "num_classes": num_classes, "options": options}
    if weights is not None:
        from fuseops.models.checkpoints import load_weights

        load_weights(model, weights, name=name, variant=variant, ema=ema, spec=model.fuseops_spec)
    return model


def _build(name: str, variant: str, num_classes: int, options: dict) -> nn.Module:
    if variant == "block":
        from fuseops.convert import to_block

        model, _ = to_block(_plain(name, num_classes), options.pop("block_size"), **options)
        return model
    if name in FUSE_NETWORKS:
        return _fuse_builder(name)(variant, num_classes)
    return _plain(name, num_classes)
