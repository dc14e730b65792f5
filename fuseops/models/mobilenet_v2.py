"""MobileNetV2 (Sandler et al. 2018), with FuSe variants.

torchvision's layout.  In FuSe blocks the 3x3 depthwise conv becomes a FuSe conv with
one BN per part and ReLU6 after each part; with "full" the projection takes 2*hidden
inputs.  The t=1 block has no expansion conv (the FuSeConv reference code builds an
unused one, 1088 dead parameters; this one does not).  Hybrids: FuSe in the c=24, 32
and 64 stages only.
"""

from __future__ import annotations

from torch import nn

from fuseops.models._layers import ConvBNAct, depthwise, fuse_mode, init_weights, widen

# (expansion t, output channels c, repeats n, first stride s)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
HYBRID_FUSE_CHANNELS = (24, 32, 64)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int, fuse: str | None) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation="relu6"))
        layers += [
            depthwise(hidden, 3, stride, fuse=fuse, activation="relu6"),
            nn.Conv2d(widen(hidden, fuse), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """(N, 3, H, W) -> (N, num_classes) logits."""

    def __init__(self, variant: str = "baseline", num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, activation="relu6")]
        channels = 32
        for expand, out_channels, repeats, first_stride in SETTINGS:
            fuse = fuse_mode(variant, out_channels in HYBRID_FUSE_CHANNELS)
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out_channels, first_stride if i == 0 else 1, expand, fuse))
                channels = out_channels
        layers.append(ConvBNAct(channels, 1280, 1, activation="relu6"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout), nn.Linear(1280, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
