"""Hand-built layer lists of standard networks: the FPGA model's anchors and validation designs.

Built from the published architectures, not from the model zoo, so the anchors hold on
their own.  ``block_size`` gives every conv a fixed block grid (block conv "F<size>").
"""

from __future__ import annotations

from hwmodel.layers import Layer


def _conv(name, cin, cout, size, k, s=1, p=0, groups=1, block_size=None, blocking="fixed"):
    rows = cols = None
    if block_size is not None:
        from hwmodel.trace import block_spans  # the grid is fuseops'; trace is hwmodel's one way in

        rows, cols = block_spans(size, size, block_size, blocking)
    return Layer(name, "conv", 1, cin, size, size, cout, k, k, s, s, p, p, 1, 1, groups,
                 block_rows=rows, block_cols=cols)


def _linear(name, fin, fout):
    return Layer(name, "linear", 1, fin, 1, 1, fout)


def alexnet_two_group(classifier: bool = False) -> list[Layer]:
    """The original two-GPU AlexNet (Krizhevsky et al. 2012) at 227x227, as in Zhang et al. 2015 and Caffe.

    conv2, conv4 and conv5 are grouped (2 groups); conv1 and conv3 see all inputs.
    Max-pooling (3x3/2) follows conv1 (55 -> 27), conv2 (27 -> 13) and conv5 (13 -> 6).
    ``classifier`` adds fc6-fc8 (9216 -> 4096 -> 4096 -> 1000); the default is the 5 convs.
    """
    layers = [
        _conv("conv1", 3, 96, 227, 11, 4, 0),
        _conv("conv2", 96, 256, 27, 5, 1, 2, groups=2),
        _conv("conv3", 256, 384, 13, 3, 1, 1),
        _conv("conv4", 384, 384, 13, 3, 1, 1, groups=2),
        _conv("conv5", 384, 256, 13, 3, 1, 1, groups=2),
    ]
    if classifier:
        layers += [_linear("fc6", 256 * 6 * 6, 4096), _linear("fc7", 4096, 4096), _linear("fc8", 4096, 1000)]
    return layers


def vgg16(block_size: int | None = None, blocking: str = "fixed", classifier: bool = True,
          svd_rank: int | None = None) -> list[Layer]:
    """VGG-16 (Simonyan and Zisserman 2015, configuration D) at 224x224: 13 convs, 3 FCs.

    ``svd_rank`` factors fc6 into 25088 -> rank -> 4096, as VGG16-SVD (Qiu et al., FPGA 2016,
    rank 500) does.
    """
    stages = [(64, 2, 224), (128, 2, 112), (256, 3, 56), (512, 3, 28), (512, 3, 14)]
    layers, cin = [], 3
    for s, (width, count, size) in enumerate(stages, start=1):
        for j in range(1, count + 1):
            layers.append(_conv(f"conv{s}_{j}", cin, width, size, 3, 1, 1, block_size=block_size, blocking=blocking))
            cin = width
    if classifier:
        if svd_rank is None:
            layers.append(_linear("fc6", 512 * 7 * 7, 4096))
        else:
            layers += [_linear("fc6_u", 512 * 7 * 7, svd_rank), _linear("fc6_v", svd_rank, 4096)]
        layers += [_linear("fc7", 4096, 4096), _linear("fc8", 4096, 1000)]
    return layers


def resnet18(block_size: int | None = None, blocking: str = "fixed") -> list[Layer]:
    """ResNet-18 (He et al. 2016) at 224x224, convs in torchvision's execution order (downsample last)."""
    b = {"block_size": block_size, "blocking": blocking}
    layers = [_conv("conv1", 3, 64, 224, 7, 2, 3, **b)]  # then 3x3/2 max-pool: 112 -> 56
    cin, size = 64, 56
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for unit in range(2):
            stride = 2 if stage > 1 and unit == 0 else 1
            prefix = f"layer{stage}.{unit}"
            layers.append(_conv(f"{prefix}.conv1", cin, width, size, 3, stride, 1, **b))
            out = layers[-1].out_h  # a strided block conv on odd blocks can give more than size // 2
            layers.append(_conv(f"{prefix}.conv2", width, width, out, 3, 1, 1, **b))
            if stride != 1 or cin != width:
                layers.append(_conv(f"{prefix}.downsample", cin, width, size, 1, stride, 0, **b))
            cin, size = width, out
    layers.append(_linear("fc", 512, 1000))
    return layers
