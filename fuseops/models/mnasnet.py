"""MnasNet-B1 (Tan et al. 2019; torchvision's ``mnasnet1_0`` layout), with FuSe variants.

Stem 3x3/s2 to 32, then a separable 3x3 (depthwise + BN + ReLU6, 1x1 to 16 + BN); six
inverted-residual stages; 1x1 conv to 1280, dropout 0.5, linear.  Every activation is
ReLU6, as in the FuSeConv code (torchvision's MnasNet uses ReLU), so that its checkpoints
reproduce.  FuSe blocks use one BN per part with ReLU6 after each; the stem's separable
conv is FuSe too in the full/half variants.  Hybrids: FuSe in the first three stages
(c=24, 40, 80) and a baseline stem.
"""

from __future__ import annotations

from torch import nn

from fuseops.models._layers import ConvBNAct, depthwise, fuse_mode, init_weights, widen

# (expansion t, output channels c, repeats n, first stride s, kernel k)
SETTINGS = ((3, 24, 3, 2, 3), (3, 40, 3, 2, 5), (6, 80, 3, 2, 5), (6, 96, 2, 1, 3), (6, 192, 4, 2, 5),
            (6, 320, 1, 1, 3))
HYBRID_FUSE_STAGES = 3


class MnasBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int,
                 fuse: str | None) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.use_residual = stride == 1 and in_channels == out_channels
        self.layers = nn.Sequential(
            ConvBNAct(in_channels, hidden, 1, activation="relu6"),
            depthwise(hidden, kernel, stride, fuse=fuse, activation="relu6"),
            nn.Conv2d(widen(hidden, fuse), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x):
        out = self.layers(x)
        return x + out if self.use_residual else out


class MnasNetB1(nn.Module):
    """(N, 3, H, W) -> (N, num_classes) logits."""

    def __init__(self, variant: str = "baseline", num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        stem_fuse = fuse_mode(variant, False)  # FuSe in full/half only; hybrids keep a baseline stem
        layers: list[nn.Module] = [
            ConvBNAct(3, 32, 3, 2, activation="relu6"),
            depthwise(32, 3, 1, fuse=stem_fuse, activation="relu6"),
            nn.Conv2d(widen(32, stem_fuse), 16, 1, bias=False),
            nn.BatchNorm2d(16),
        ]
        channels = 16
        for stage, (expand, out_channels, repeats, first_stride, kernel) in enumerate(SETTINGS):
            fuse = fuse_mode(variant, stage < HYBRID_FUSE_STAGES)
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                layers.append(MnasBlock(channels, out_channels, kernel, stride, expand, fuse))
                channels = out_channels
        layers.append(ConvBNAct(channels, 1280, 1, activation="relu6"))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout), nn.Linear(1280, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.layers(x)))
