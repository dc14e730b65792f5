"""The zoo's network and variant names: the one list, imported by the zoo, the paper's
tables, the CLIs and the report.  No imports, so ``--help`` and argument choices stay cheap."""

from __future__ import annotations

#: The networks of the FuSeConv paper; each has a baseline and the FuSe variants below.
FUSE_NETWORKS = ("mobilenet_v1", "mobilenet_v2", "mnasnet_b1", "mobilenet_v3_small", "mobilenet_v3_large")
#: The FuSe variants (papers.md, FuSeConv §1): every depthwise layer (full, half) or the later half of them.
FUSE_VARIANTS = ("full", "half", "full_hybrid", "half_hybrid")
#: Networks the zoo has only as a plain baseline.
PLAIN_NETWORKS = ("resnet18", "resnet50", "vgg16")
#: The networks of the Block Convolution paper, which have a "block" variant.
BLOCK_NETWORKS = ("resnet18", "resnet50", "vgg16", "mobilenet_v1")
