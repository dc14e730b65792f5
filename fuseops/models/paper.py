"""Numbers published in the two papers (FuSeConv, DATE 2021; Block Convolution, TCAD 2022).

Transcribed from the papers' tables as restated in the project's notes; they are data to
compare against, not outputs of this code.  Keys: (network, variant).
"""

from __future__ import annotations

from fuseops.models.names import FUSE_VARIANTS

_ROW = ("baseline", *FUSE_VARIANTS)  # the order of each row below

# Parameter counts (FuSeConv paper; MobileNetV2 full/half without the reference code's 1088 dead
# parameters).  Order of each row: baseline, full, half, full_hybrid ("50% full"), half_hybrid.
_PARAMS = {
    "mobilenet_v1": (4_231_976, 7_366_600, 4_202_216, 4_356_296, 4_228_328),
    "mobilenet_v2": (3_504_872, 4_460_936, 3_462_056, 3_611_432, 3_492_200),
    "mnasnet_b1": (4_383_312, 5_666_568, 4_257_840, 4_476_552, 4_351_920),
    "mobilenet_v3_small": (2_938_368, 4_446_056, 2_891_712, 3_188_096, 2_922_960),
    "mobilenet_v3_large": (5_476_416, 10_577_064, 5_405_664, 5_573_704, 5_466_720),
}
# FLOPs in millions (FuSeConv paper): multiply-accumulates plus some BN/activation overhead.
_MFLOPS = {
    "mobilenet_v1": (589, 1122, 573, 764, 578),
    "mobilenet_v2": (315, 430, 300, 361, 305),
    "mnasnet_b1": (325, 440, 305, 361, 312),
    "mobilenet_v3_small": (66, 84, 61, 73, 63),
    "mobilenet_v3_large": (238, 322, 225, 264, 230),
}
# ImageNet top-1 (%), FuSeConv paper.
_TOP1 = {
    "mobilenet_v1": (70.60, 72.86, 72.00, 72.42, 71.77),
    "mobilenet_v2": (72.00, 72.49, 70.80, 72.11, 71.98),
    "mnasnet_b1": (73.50, 73.16, 71.48, 73.52, 72.61),
    "mobilenet_v3_small": (67.40, 67.17, 64.55, 67.91, 66.90),
    "mobilenet_v3_large": (75.20, 74.40, 73.02, 74.50, 73.80),
}

FUSE_PARAMS = {(net, v): row[i] for net, row in _PARAMS.items() for i, v in enumerate(_ROW)}
FUSE_MFLOPS = {(net, v): row[i] for net, row in _MFLOPS.items() for i, v in enumerate(_ROW)}
FUSE_TOP1 = {(net, v): row[i] for net, row in _TOP1.items() for i, v in enumerate(_ROW)}

# Block Convolution paper: the block networks have the standard models' parameter counts.
BLOCK_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "vgg16": 138_357_544, "mobilenet_v1": 4_231_976}
