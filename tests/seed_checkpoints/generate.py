"""Write the manifests the checkpoint tests read, from checkouts of the papers' code.

Run once, outside the test suite:

    git clone https://github.com/iitm-sysdl/FuSeConv /tmp/FuSeConv
    git clone https://github.com/CAS-CLab/BlockConv /tmp/BlockConv
    python tests/seed_checkpoints/generate.py --fuseconv /tmp/FuSeConv --blockconv /tmp/BlockConv

For every network of the two repositories it builds the original model, fills its
parameters and BatchNorm statistics by key name (``seed_weights.fill``), runs it in eval
mode and float64 on ``seed_weights.seed_input()`` and writes ``manifests/<stem>.json``: the
keys and shapes in state_dict order and the logits.  Nothing of the original code is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import seed_weights  # noqa: E402

# zoo name -> (FuSeConv constructor stem, MobileNetV3 mode)
FUSECONV_NETWORKS = {
    "mobilenet_v1": ("MobileNetV1", None),
    "mobilenet_v2": ("MobileNetV2", None),
    "mnasnet_b1": ("MnasNet", None),
    "mobilenet_v3_small": ("MobileNetV3", "small"),
    "mobilenet_v3_large": ("MobileNetV3", "large"),
}
FUSECONV_VARIANTS = {"baseline": "", "half": "FuSeHalf", "full": "FuSeFull",
                     "half_hybrid": "FuSeHalfHybrid", "full_hybrid": "FuSeFullHybrid"}
# zoo name -> (BlockConv constructor, block size the constructor uses)
BLOCKCONV_NETWORKS = {
    "resnet18": ("block_resnet18", 28),
    "resnet50": ("block_resnet50", 56),
    "vgg16": ("block_vgg16", 28),
    "mobilenet_v1": ("block_mobilenet", 28),
}


def _run(model: torch.nn.Module) -> tuple[list, torch.Tensor]:
    state = model.state_dict()
    keys = [[key, list(value.shape)] for key, value in state.items()]
    model.load_state_dict(seed_weights.state_dict_from_keys(keys))
    model.eval().double()  # float64: the reference, free of float32 rounding
    with torch.no_grad():
        logits = model(seed_weights.seed_input())
    return keys, logits


def _write(stem: str, record: dict, keys: list, logits: torch.Tensor) -> None:
    record = {**record, "input_shape": list(seed_weights.INPUT_SHAPE), "keys": keys,
              "logits_shape": list(logits.shape), "logits_float64": seed_weights.encode_floats(logits)}
    path = seed_weights.manifest_path(stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"{stem}: {len(keys)} tensors, |logits|max {logits.abs().max():.3g}")


def fuseconv(root: Path) -> None:
    sys.path.insert(0, str(root))
    import models  # the repository's models/ package

    for network, (stem, mode) in FUSECONV_NETWORKS.items():
        for variant, suffix in FUSECONV_VARIANTS.items():
            constructor = getattr(models, stem + suffix)
            model = constructor(mode) if mode else constructor()
            keys, logits = _run(model)
            record = {"repository": "iitm-sysdl/FuSeConv", "constructor": stem + suffix,
                      "network": network, "variant": variant, "options": {}}
            _write(f"fuseconv-{network}-{variant}", record, keys, logits)
    sys.path.remove(str(root))
    sys.modules.pop("models", None)


def blockconv(root: Path, padding_modes: list[str]) -> None:
    # block_models/__init__ imports torchvision only for names it never uses here.
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    sys.modules.setdefault("torchvision.models", types.ModuleType("torchvision.models"))
    sys.path.insert(0, str(root))
    from block_models import imagenet_block_models
    from block_models.utils import BlockConv2d

    for network, (constructor, block_size) in BLOCKCONV_NETWORKS.items():
        for padding_mode in padding_modes:
            model = getattr(imagenet_block_models, constructor)()
            for module in model.modules():
                if isinstance(module, BlockConv2d):
                    module.padding_mode = padding_mode  # as classification.py's --padding_mode does
            keys, logits = _run(model)
            options = {"block_size": block_size, "padding_mode": padding_mode, "blocking": "fixed",
                       "stride_mode": "pool"}
            record = {"repository": "CAS-CLab/BlockConv", "constructor": constructor,
                      "network": network, "variant": "block", "options": options}
            _write(f"blockconv-{network}-{padding_mode}", record, keys, logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuseconv", type=Path, required=True, help="checkout of iitm-sysdl/FuSeConv")
    parser.add_argument("--blockconv", type=Path, required=True, help="checkout of CAS-CLab/BlockConv")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    fuseconv(args.fuseconv)
    blockconv(args.blockconv, ["constant", "replicate", "reflect"])


if __name__ == "__main__":
    main()
