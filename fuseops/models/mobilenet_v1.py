"""MobileNetV1 (Howard et al. 2017), with FuSe variants and the block-convolution variant.

Stem 3x3/s2 to 32 channels; 13 depthwise-separable blocks; average pool, dropout 0.2,
linear.  FuSe blocks replace the 3x3 depthwise conv by a FuSe conv with one BN per part
and *no* activation (the ReLU comes after the pointwise conv, as in the FuSeConv code);
the hybrid variants use FuSe in the first five blocks only.
"""

from __future__ import annotations

from torch import nn

from fuseops.models._layers import ConvBNAct, depthwise, fuse_mode, init_weights, widen

# (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
HYBRID_FUSE_BLOCKS = 5  # blocks 64 .. the second 256


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int, fuse: str | None) -> None:
        # Baseline: dw + BN + ReLU; FuSe: FuSe + BN per part, no activation (as the paper's code).
        dw = depthwise(in_channels, 3, stride, fuse=fuse, activation="relu" if fuse is None else None)
        pw = ConvBNAct(widen(in_channels, fuse), out_channels, 1, activation="relu")
        super().__init__(dw, pw)


class MobileNetV1(nn.Module):
    """(N, 3, H, W) -> (N, num_classes) logits."""

    def __init__(self, variant: str = "baseline", num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, activation="relu")]
        channels = 32
        for index, (out_channels, stride) in enumerate(BLOCKS):
            fuse = fuse_mode(variant, index < HYBRID_FUSE_BLOCKS)
            layers.append(DepthwiseSeparable(channels, out_channels, stride, fuse))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout), nn.Linear(channels, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
