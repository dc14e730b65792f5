"""Small networks built in the tests, independent of the model zoo.

``mobilenet_v2(fuse=None|"half"|"full")`` follows the standard MobileNetV2 layout
(papers.md §1); with ``fuse`` set, every 3x3 depthwise conv becomes a FuSe layer with one
BatchNorm per part (fuseops.nn.FuSeConvBNAct).
"""

from __future__ import annotations

from torch import nn

from fuseops.nn import FuSeConvBNAct

_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


def _conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, fuse: str | None) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1))
        if fuse is None:
            layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden))
            dw_out = hidden
        else:
            block = FuSeConvBNAct(hidden, 3, stride, variant=fuse, activation="relu6")
            layers.append(block)
            dw_out = block.out_channels
        layers.append(_conv_bn(dw_out, cout, 1, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


def mobilenet_v2(fuse: str | None = None, num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    cin = int(32 * width)
    layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2)]
    for t, c, n, s in _V2_STAGES:
        cout = int(c * width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, fuse))
            cin = cout
    layers.append(_conv_bn(cin, 1280, 1, 1))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(1280, num_classes))
