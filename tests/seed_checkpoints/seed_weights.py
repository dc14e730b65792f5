"""Weights that depend only on a parameter's key name, and the manifests built from them.

The checkpoint tests compare fuseops with the networks of the two papers' repositories
without shipping their code.  ``generate.py`` (run once, outside the test suite, against a
checkout of the original code) fills every original parameter with :func:`fill`, runs the
network on :func:`seed_input` and writes a manifest: the state_dict's keys and shapes in
file order, and the logits the original computes in float64.  The tests rebuild the same
state_dict from the manifest alone, load it through fuseops and compare outputs.  Only
facts are committed: names, shapes, numbers.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from pathlib import Path

import torch

MANIFEST_DIR = Path(__file__).parent / "manifests"
INPUT_SHAPE = (1, 3, 224, 224)


def fill(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 (int64 for ``num_batches_tracked``) tensor determined by ``key`` alone.

    Scales keep a deep network's activations finite and non-trivial: convolution and
    linear weights are He-scaled, BatchNorm affine terms sit near (0.9, 0), running
    variances in [0.5, 1.5].  (Scales near 1 let the deep MobileNetV3s' logits grow to
    ~1e3, where float32 rounding alone reaches 4e-5 of them; 0.9 keeps them near 10.)
    """
    seed = zlib.crc32(key.encode())
    generator = torch.Generator().manual_seed(seed)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.tensor(seed % 1000, dtype=torch.int64)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=generator, dtype=torch.float64).float()
    normal = torch.randn(shape, generator=generator, dtype=torch.float64)
    if leaf == "running_mean":
        return (0.1 * normal).float()
    if len(shape) == 1:
        return (0.9 + 0.1 * normal).float() if leaf == "weight" else (0.1 * normal).float()
    fan_in = math.prod(shape[1:])
    return (normal * math.sqrt(2.0 / fan_in)).float()


def seed_input() -> torch.Tensor:
    """The fixed (1, 3, 224, 224) float64 input every manifest's logits were computed on."""
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def state_dict_from_keys(keys: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The original network's state_dict, in the original key order."""
    return {key: fill(key, tuple(shape)) for key, shape in keys}


def encode_floats(values: torch.Tensor) -> str:
    return base64.b64encode(values.detach().double().contiguous().numpy().tobytes()).decode()


def decode_floats(text: str, shape: list[int]) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.float64).reshape(shape)


def manifest_path(stem: str) -> Path:
    return MANIFEST_DIR / f"{stem}.json"


def read_manifest(stem: str) -> dict:
    return json.loads(manifest_path(stem).read_text())


def list_manifests() -> list[str]:
    return sorted(path.stem for path in MANIFEST_DIR.glob("*.json"))
