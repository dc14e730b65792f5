"""Small datasets for the training tests, written to a temporary folder.

The task is easy on purpose (each class has its own colour, under noise and a random
patch), so a network learns it in a few epochs at 32x32.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40]], dtype=np.float64)


def images(count: int, classes: int, seed: int, size: int = 32) -> tuple[np.ndarray, list[int]]:
    """(count, size, size, 3) uint8 images and their labels, balanced over ``classes``."""
    rng = np.random.default_rng(seed)
    labels = [i % classes for i in range(count)]
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        picture = COLOURS[label] + rng.normal(0, 40, (size, size, 3))
        top, left = rng.integers(0, size - 8, 2)
        picture[top:top + 8, left:left + 8] = rng.uniform(0, 255, 3)  # a distracting patch
        out[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return out, labels


def image_folder(root: Path, *, classes: int = 3, train: int = 96, val: int = 30, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png (half PNG, half JPEG in val)."""
    from PIL import Image

    for split, count, offset in (("train", train, 0), ("val", val, 1)):
        pixels, labels = images(count, classes, seed + offset)
        for i, (picture, label) in enumerate(zip(pixels, labels)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            suffix = ".jpg" if split == "val" and i % 2 else ".png"
            Image.fromarray(picture).save(folder / f"{i:04d}{suffix}")
    return root


def cifar(root: Path, name: str = "cifar10", *, train: int = 100, test: int = 30, seed: int = 0) -> Path:
    """The python-pickle layout of CIFAR-10 (5 data batches) or CIFAR-100, with 3 used classes."""
    def batch(count: int, seed: int, label_key: bytes) -> dict:
        pixels, labels = images(count, 3, seed)
        return {b"data": pixels.transpose(0, 3, 1, 2).reshape(count, -1), label_key: labels}

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            _dump(folder / f"data_batch_{i}", batch(train // 5, seed + i, b"labels"))
        _dump(folder / "test_batch", batch(test, seed + 10, b"labels"))
        _dump(folder / "batches.meta", {b"label_names": [b"red", b"green", b"blue"]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        _dump(folder / "train", batch(train, seed + 1, b"fine_labels"))
        _dump(folder / "test", batch(test, seed + 10, b"fine_labels"))
        _dump(folder / "meta", {b"fine_label_names": [b"red", b"green", b"blue"]})
    return root


def _dump(path: Path, value) -> None:
    with open(path, "wb") as handle:
        pickle.dump(value, handle)
