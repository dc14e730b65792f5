"""``list_models`` and ``get_model``: the zoo's one entry point."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fuseops import _checks
from fuseops.models.names import BLOCK_NETWORKS, FUSE_NETWORKS, FUSE_VARIANTS, PLAIN_NETWORKS

# Default block size per network (the Block Convolution paper: F28, F56 for ResNet-50).
BLOCK_DEFAULT_SIZE = {"resnet18": 28, "resnet50": 56, "vgg16": 28, "mobilenet_v1": 28}
BLOCK_OPTIONS = ("block_size", "padding_mode", "blocking", "stride_mode")


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


def get_model(name: str, *, variant: str = "baseline", num_classes: int = 1000, **options) -> nn.Module:
    """A freshly initialised network from the zoo.

    Args:
        name: one of :func:`list_models` (e.g. "mobilenet_v2", "resnet50").
        variant: FuSe networks: "baseline", "full", "half", "full_hybrid", "half_hybrid";
            "resnet18"/"resnet50"/"vgg16": "baseline"; "resnet18", "resnet50", "vgg16",
            "mobilenet_v1": "block" (every conv, 1x1 and stem included, a BlockConv2d).
        num_classes: size of the classifier's output.
        **options: "block" only: ``block_size`` (default 28, 56 for ResNet-50),
            ``padding_mode`` ("constant"), ``blocking`` ("fixed"), ``stride_mode`` ("conv");
            see :class:`fuseops.nn.BlockConv2d`.

    Returns:
        An ``nn.Module`` mapping (N, 3, H, W) to (N, num_classes) logits, in training mode.
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
    if variant != "block" and options:
        raise TypeError(f"unexpected options {sorted(options)} for variant={variant!r}; "
                        f'{BLOCK_OPTIONS} apply to variant="block" only')
    if variant == "block":
        unknown = sorted(set(options) - set(BLOCK_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected options {unknown}; variant='block' takes {BLOCK_OPTIONS}")
        from fuseops.convert import to_block

        options.setdefault("block_size", BLOCK_DEFAULT_SIZE[name])
        model, _ = to_block(_plain(name, num_classes), options.pop("block_size"), **options)
        return model
    if name in FUSE_NETWORKS:
        return _fuse_builder(name)(variant, num_classes)
    return _plain(name, num_classes)
