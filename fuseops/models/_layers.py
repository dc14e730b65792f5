"""Building blocks shared by the zoo's networks."""

from __future__ import annotations

from torch import nn

from fuseops import activations
from fuseops.nn import FuSeConvBNAct


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, as one Sequential (so fold_bn/to_fuse see it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, *,
                 groups: int = 1, activation: str | None = "relu") -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activations.module(activation))
        super().__init__(*layers)
        self.out_channels = out_channels


def depthwise(channels: int, kernel_size: int, stride: int, *, fuse: str | None,
              activation: str | None) -> nn.Module:
    """A KxK depthwise conv + BN + activation, or its FuSe form (``fuse`` = "full"/"half"/None).

    The FuSe form has one BatchNorm per 1-D part; its output has 2*channels for "full".
    """
    if fuse is None:
        return ConvBNAct(channels, channels, kernel_size, stride, groups=channels, activation=activation)
    return FuSeConvBNAct(channels, kernel_size, stride, variant=fuse, activation=activation)


def fuse_mode(variant: str, in_fuse_part: bool) -> str | None:
    """The FuSe variant ("full"/"half") a depthwise layer takes, or None for baseline.

    Hybrid variants use FuSe only where ``in_fuse_part`` (the stages the paper names).
    """
    if variant == "baseline":
        return None
    base, _, hybrid = variant.partition("_")
    if hybrid and not in_fuse_part:
        return None
    return base


def widen(channels: int, fuse: str | None) -> int:
    """Channels out of a depthwise layer: doubled by the full FuSe variant."""
    return 2 * channels if fuse == "full" else channels


def init_weights(model: nn.Module) -> None:
    """torchvision's initialisation for the MobileNet family."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
