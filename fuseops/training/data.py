"""Image classification datasets read from disk, with nothing downloaded and no torchvision.

* :class:`ImageFolder`: ``DIR/<split>/<class>/*.png|jpg|jpeg``, decoded with Pillow.
* :class:`Cifar`: the python-pickle batches of CIFAR-10 (``cifar-10-batches-py/``) and
  CIFAR-100 (``cifar-100-python/``), read by an unpickler that admits only the numpy
  globals those files hold, so a file cannot run code.

Each item is ``(uint8 tensor (3, H, W), class index)`` passed through a transform
(:mod:`fuseops.training.transforms`) that receives the sample's index, so augmentation
depends on (seed, epoch, index) only, not on the worker count or a resumed RNG.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels",
                "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta", b"fine_label_names"),
}

Transform = Callable[[torch.Tensor, int], torch.Tensor]


class DataError(ValueError):
    """A dataset that cannot be read: a missing folder, an empty split, an unreadable file."""


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>``: classes are the sorted folder names."""

    def __init__(self, root: str | Path, transform: Transform | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"no folder {str(root)!r}; expected DIR/train/<class>/* and DIR/val/<class>/*")
        self.classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
        if not self.classes:
            raise DataError(f"{str(root)!r} has no class folders")
        self.samples = [(path, label) for label, name in enumerate(self.classes)
                        for path in sorted((root / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise DataError(f"{str(root)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = decode(path)
        return (self.transform(image, index) if self.transform else image), label


def decode(path: Path) -> torch.Tensor:
    """An image file as a uint8 (3, H, W) RGB tensor."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {str(path)!r}: not a PNG or JPEG image") from None
    except OSError as error:
        raise DataError(f"cannot read image {str(path)!r}: {error.strerror or error}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class Cifar(torch.utils.data.Dataset):
    """CIFAR-10/100 from its python-pickle batches in ``root``."""

    def __init__(self, root: str | Path, name: str, train: bool, transform: Transform | None = None) -> None:
        folder, train_files, test_files, label_key, meta_file, names_key = CIFAR_LAYOUTS[name]
        base = Path(root) / folder
        if not base.is_dir():
            raise DataError(f"no folder {str(base)!r}; --dataset {name} reads the python batches from DIR/{folder}/")
        images, labels = [], []
        for file in train_files if train else test_files:
            batch = _read_pickle(base / file)
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(label) for label in batch[label_key])
        self.images = torch.from_numpy(np.concatenate(images))
        self.labels = labels
        self.classes = [name.decode() for name in _read_pickle(base / meta_file)[names_key]]
        if len(self.images) == 0:
            raise DataError(f"{str(base)!r} holds no images for the {'train' if train else 'test'} split")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image, index) if self.transform else image), self.labels[index]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    # The CIFAR batches hold dicts of bytes, lists and numpy arrays: nothing else is built.
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays and lists")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR file {str(path)!r}")
    try:
        data = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - any malformed pickle is one bad file
        raise DataError(f"cannot read CIFAR file {str(path)!r}: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"{str(path)!r} is not a CIFAR batch (a dict)")
    return data


def open_splits(data: str | Path, dataset: str | None, train_transform: Transform,
                eval_transform: Transform) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, list[str]]:
    """(train set, val set, class names) for ``--data DIR [--dataset cifar10|cifar100]``."""
    if dataset is None:
        train = ImageFolder(Path(data) / "train", train_transform)
        val = ImageFolder(Path(data) / "val", eval_transform)
        if val.classes != train.classes:
            raise DataError(f"the val classes {val.classes} differ from the train classes {train.classes}")
        return train, val, train.classes
    if dataset not in CIFAR_LAYOUTS:
        raise DataError(f"--dataset must be one of {tuple(CIFAR_LAYOUTS)}, got {dataset!r}")
    train = Cifar(data, dataset, True, train_transform)
    return train, Cifar(data, dataset, False, eval_transform), train.classes
