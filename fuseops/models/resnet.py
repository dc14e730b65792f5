"""ResNet-18 and ResNet-50 (He et al. 2016), torchvision's layout (v1.5: stride in the 3x3 conv)."""

from __future__ import annotations

from torch import nn


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, channels, 3, stride)
        self.conv2, self.bn2 = _conv_bn(channels, channels, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, channels * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, channels, 1)
        self.conv2, self.bn2 = _conv_bn(channels, channels, 3, stride)
        self.conv3, self.bn3 = _conv_bn(channels, channels * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, channels * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))


class ResNet(nn.Module):
    """(N, 3, H, W) -> (N, num_classes) logits."""

    def __init__(self, block: type[BasicBlock | Bottleneck], repeats: tuple[int, int, int, int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 64, 7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        stages = []
        for index, (channels, count) in enumerate(zip((64, 128, 256, 512), repeats)):
            blocks = []
            for i in range(count):
                blocks.append(block(in_channels, channels, 2 if (i == 0 and index > 0) else 1))
                in_channels = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
