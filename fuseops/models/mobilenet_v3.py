"""MobileNetV3 Small and Large (Howard et al. 2019, Tables 1 and 2), with FuSe variants.

As in the FuSeConv reference code (which differs from torchvision's MobileNetV3):

* every bottleneck has a 1x1 expansion conv, even when exp == input channels;
* squeeze-excite: global average pool, Linear(exp, exp // 4, bias=False), ReLU,
  Linear(exp // 4, exp, bias=False), hard-sigmoid;
* stem 3x3/s2 to 16 with h-swish; last stage 1x1 conv to 960 (Large) / 576 (Small) with
  BN and h-swish, average pool, 1x1 conv with bias to 1280, h-swish, dropout 0.2, linear.

A bottleneck runs: expansion, depthwise conv + BN (FuSe: one BN per part), then SE (on
2*exp channels for "full"), then the block's nonlinearity.  SE comes before the
nonlinearity in the baseline too, as in the FuSeConv code (torchvision applies it after),
so that its checkpoints reproduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseops import activations
from fuseops.models._layers import ConvBNAct, depthwise, fuse_mode, init_weights, widen

# (kernel, expansion channels, output channels, squeeze-excite, nonlinearity, stride)
LARGE = (
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1), (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1), (5, 960, 160, True, "hardswish", 1),
)
SMALL = (
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2), (5, 240, 40, True, "hardswish", 1), (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1), (5, 144, 48, True, "hardswish", 1), (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1), (5, 576, 96, True, "hardswish", 1),
)
# 1-based bottleneck numbers that are FuSe in the hybrid ("50%") variants.
HYBRID_LARGE = frozenset(range(2, 9))
HYBRID_SMALL = frozenset((3, 5, 6, 7, 8))


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(W2 relu(W1 avgpool(x))), W1: C -> C//4, W2: C//4 -> C, no biases."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction, bias=False)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, kernel: int, expand: int, out_channels: int, se: bool, nonlinearity: str,
                 stride: int, fuse: str | None) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = ConvBNAct(in_channels, expand, 1, activation=nonlinearity)
        # dw (or FuSe) + BN, SE, then the nonlinearity: the FuSeConv code's order.
        self.depthwise = depthwise(expand, kernel, stride, fuse=fuse, activation=None)
        hidden = widen(expand, fuse)
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.act = activations.module(nonlinearity)
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.project(self.act(self.se(self.depthwise(self.expand(x)))))
        return x + out if self.use_residual else out


class MobileNetV3(nn.Module):
    """(N, 3, H, W) -> (N, num_classes) logits.  ``size`` is "small" or "large"."""

    def __init__(self, size: str = "large", variant: str = "baseline", num_classes: int = 1000,
                 dropout: float = 0.2) -> None:
        super().__init__()
        table, hybrid, last = (LARGE, HYBRID_LARGE, 960) if size == "large" else (SMALL, HYBRID_SMALL, 576)
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, activation="hardswish")]
        channels = 16
        for number, (kernel, expand, out_channels, se, nonlinearity, stride) in enumerate(table, start=1):
            fuse = fuse_mode(variant, number in hybrid)
            layers.append(Bottleneck(channels, kernel, expand, out_channels, se, nonlinearity, stride, fuse))
            channels = out_channels
        layers.append(ConvBNAct(channels, last, 1, activation="hardswish"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Conv2d(last, 1280, 1, bias=True), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout), nn.Linear(1280, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.head(self.pool(self.features(x))))
