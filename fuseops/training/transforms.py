"""Augmentation with torch ops: random-resized crop, flip, normalize, CIFAR's crop and resize.

A train transform draws its randomness from a generator seeded by (seed, epoch, sample
index), so a sample is augmented the same way however many loader workers run and whether
or not the run was resumed.  Call :meth:`TrainTransform.set_epoch` before each epoch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# ImageNet evaluation resizes the short side to img_size / 0.875, then crops the centre.
EVAL_CROP_FRACTION = 0.875


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _normalize(image: torch.Tensor) -> torch.Tensor:
    return (image - MEAN) / STD


class TrainTransform:
    """uint8 (3, H, W) -> float32 (3, img_size, img_size), randomly cropped and flipped.

    ``cifar=True``: pad by 4 and crop 32x32 at random, flip, then resize to img_size.
    Otherwise random-resized crop (area 8-100%, aspect 3/4-4/3), resize, flip.
    """

    def __init__(self, img_size: int, seed: int, *, cifar: bool) -> None:
        self.img_size, self.seed, self.cifar, self.epoch = img_size, seed, cifar, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state) & (2**63 - 1))

    def __call__(self, image: torch.Tensor, index: int) -> torch.Tensor:
        g = self._generator(index)
        image = image.float() / 255
        if self.cifar:
            padded = F.pad(image, (4, 4, 4, 4))
            top, left = (int(v) for v in torch.randint(0, 9, (2,), generator=g))
            image = _resize(padded[:, top:top + 32, left:left + 32], (self.img_size, self.img_size))
        else:
            top, left, height, width = self._crop_box(image.shape[1], image.shape[2], g)
            image = _resize(image[:, top:top + height, left:left + width], (self.img_size, self.img_size))
        if torch.rand((), generator=g) < 0.5:
            image = image.flip(-1)
        return _normalize(image)

    @staticmethod
    def _crop_box(height: int, width: int, g: torch.Generator) -> tuple[int, int, int, int]:
        area = height * width
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(0.08, 1.0, generator=g))
            log_ratio = float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
            ratio = math.exp(log_ratio)
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        side = min(height, width)  # fall back to the central square
        return (height - side) // 2, (width - side) // 2, side, side


class EvalTransform:
    """uint8 (3, H, W) -> float32 (3, img_size, img_size), deterministic.

    ``cifar=True``: resize to img_size.  Otherwise resize the short side to
    img_size / 0.875 and crop the centre.
    """

    def __init__(self, img_size: int, *, cifar: bool) -> None:
        self.img_size, self.cifar = img_size, cifar

    def __call__(self, image: torch.Tensor, index: int) -> torch.Tensor:
        image = image.float() / 255
        size = self.img_size
        if self.cifar:
            return _normalize(_resize(image, (size, size)))
        height, width = image.shape[1:]
        short = round(size / EVAL_CROP_FRACTION)
        scale = short / min(height, width)
        image = _resize(image, (max(size, round(height * scale)), max(size, round(width * scale))))
        top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
        return _normalize(image[:, top:top + size, left:left + size])
