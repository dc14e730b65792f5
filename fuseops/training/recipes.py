"""The two papers' training recipes (../papers.md §3) as defaults, and the learning-rate schedule.

``--recipe fuseconv``: RMSProp (alpha 0.9, eps 1e-3, momentum 0.9), lr 0.016, weight decay
1e-5, 350 epochs, batch 128 per process, lr x0.97 every 2.4 epochs, label smoothing 0.1,
weight EMA 0.9999, seed 1995, BatchNorm momentum 0.01.

``--recipe blockconv``: SGD with momentum 0.9 and a multi-step schedule (x0.1 at each
milestone), per network and per start (from scratch, or fine-tuning a plain network's
checkpoint); networks outside BlockConv's table take the ResNet row.
"""

from __future__ import annotations

import dataclasses
import math

RECIPES = ("fuseconv", "blockconv")
# BatchNorm epsilon stays at the zoo's 1e-5 under every recipe, so that a saved network
# rebuilds exactly from get_model; the FuSeConv recipe's 1e-3 (a TensorFlow default) is not applied.


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    epochs: int
    batch_size: int  # per process
    lr: float
    weight_decay: float
    momentum: float
    optimizer: str  # "rmsprop" | "sgd"
    schedule: str  # "exponential" | "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    decay_every: float = 1.0  # epochs between exponential decays
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0: no weight EMA
    warmup_epochs: float = 0.0
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1e-3
    bn_momentum: float | None = None  # None: PyTorch's 0.1
    seed: int = 0


FUSECONV = Hyperparameters(epochs=350, batch_size=128, lr=0.016, weight_decay=1e-5, momentum=0.9,
                           optimizer="rmsprop", schedule="exponential", gamma=0.97, decay_every=2.4,
                           label_smoothing=0.1, ema_decay=0.9999, bn_momentum=0.01, seed=1995)

# (network family, fine-tune?) -> (epochs, batch, lr, weight decay, milestones)
_BLOCKCONV_TABLE = {
    ("resnet", False): (90, 128, 0.1, 1e-4, (30, 60)),
    ("vgg", False): (105, 256, 0.01, 5e-4, (30, 60, 90)),
    ("mobilenet", False): (300, 128, 0.0001, 5e-5, ()),
    ("resnet", True): (30, 128, 0.001, 1e-4, (10, 20)),
    ("vgg", True): (20, 256, 0.001, 1e-4, (8, 16)),
    ("mobilenet", True): (50, 128, 0.0001, 5e-5, ()),
}


def _blockconv_family(model: str) -> str:
    if model == "vgg16":
        return "vgg"
    if model == "mobilenet_v1":
        return "mobilenet"
    return "resnet"


def recipe(name: str, model: str, *, finetune: bool) -> Hyperparameters:
    """The recipe's hyperparameters for ``model`` (a zoo name)."""
    if name == "fuseconv":
        return FUSECONV
    if name == "blockconv":
        epochs, batch, lr, decay, milestones = _BLOCKCONV_TABLE[_blockconv_family(model), finetune]
        return Hyperparameters(epochs=epochs, batch_size=batch, lr=lr, weight_decay=decay, momentum=0.9,
                               optimizer="sgd", schedule="multistep", milestones=milestones)
    raise ValueError(f"recipe must be one of {RECIPES}, got {name!r}")


def default_recipe(model: str, variant: str) -> str:
    """The paper a network comes from: block and plain ResNet/VGG -> blockconv, else fuseconv."""
    return "blockconv" if variant == "block" or model in ("resnet18", "resnet50", "vgg16") else "fuseconv"


def lr_at(h: Hyperparameters, epoch: float) -> float:
    """The learning rate at a fractional epoch: linear warm-up, then the recipe's decay."""
    if epoch < h.warmup_epochs:
        return h.lr * epoch / h.warmup_epochs
    if h.schedule == "exponential":
        return h.lr * h.gamma ** math.floor(epoch / h.decay_every)
    return h.lr * h.gamma ** sum(epoch >= milestone for milestone in h.milestones)
