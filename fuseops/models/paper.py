"""Numbers published in the two papers (FuSeConv, DATE 2021; Block Convolution, TCAD 2022).

Transcribed from the papers' tables as restated in the project's notes; they are data to
compare against, not outputs of this code.  Keys: (network, variant).
"""

from __future__ import annotations

# FuSeConv paper, one row per (network, variant): (parameters, MFLOPs, ImageNet top-1 %).
# Parameters: MobileNetV2 full/half without the reference code's 1088 dead parameters.
# MFLOPs: multiply-accumulates plus some BN/activation overhead.  "full_hybrid" is the
# paper's "50% full".
_FUSE_TABLE = {
    ("mobilenet_v1", "baseline"): (4_231_976, 589, 70.60),
    ("mobilenet_v1", "full"): (7_366_600, 1122, 72.86),
    ("mobilenet_v1", "half"): (4_202_216, 573, 72.00),
    ("mobilenet_v1", "full_hybrid"): (4_356_296, 764, 72.42),
    ("mobilenet_v1", "half_hybrid"): (4_228_328, 578, 71.77),
    ("mobilenet_v2", "baseline"): (3_504_872, 315, 72.00),
    ("mobilenet_v2", "full"): (4_460_936, 430, 72.49),
    ("mobilenet_v2", "half"): (3_462_056, 300, 70.80),
    ("mobilenet_v2", "full_hybrid"): (3_611_432, 361, 72.11),
    ("mobilenet_v2", "half_hybrid"): (3_492_200, 305, 71.98),
    ("mnasnet_b1", "baseline"): (4_383_312, 325, 73.50),
    ("mnasnet_b1", "full"): (5_666_568, 440, 73.16),
    ("mnasnet_b1", "half"): (4_257_840, 305, 71.48),
    ("mnasnet_b1", "full_hybrid"): (4_476_552, 361, 73.52),
    ("mnasnet_b1", "half_hybrid"): (4_351_920, 312, 72.61),
    ("mobilenet_v3_small", "baseline"): (2_938_368, 66, 67.40),
    ("mobilenet_v3_small", "full"): (4_446_056, 84, 67.17),
    ("mobilenet_v3_small", "half"): (2_891_712, 61, 64.55),
    ("mobilenet_v3_small", "full_hybrid"): (3_188_096, 73, 67.91),
    ("mobilenet_v3_small", "half_hybrid"): (2_922_960, 63, 66.90),
    ("mobilenet_v3_large", "baseline"): (5_476_416, 238, 75.20),
    ("mobilenet_v3_large", "full"): (10_577_064, 322, 74.40),
    ("mobilenet_v3_large", "half"): (5_405_664, 225, 73.02),
    ("mobilenet_v3_large", "full_hybrid"): (5_573_704, 264, 74.50),
    ("mobilenet_v3_large", "half_hybrid"): (5_466_720, 230, 73.80),
}

FUSE_PARAMS = {key: params for key, (params, _, _) in _FUSE_TABLE.items()}
FUSE_MFLOPS = {key: mflops for key, (_, mflops, _) in _FUSE_TABLE.items()}
FUSE_TOP1 = {key: top1 for key, (_, _, top1) in _FUSE_TABLE.items()}

# Block Convolution paper: the block networks have the standard models' parameter counts.
BLOCK_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "vgg16": 138_357_544, "mobilenet_v1": 4_231_976}
