"""The papers' networks: FuSe MobileNets/MnasNet, block ResNets/VGG/MobileNet, plain baselines.

``get_model(name, variant=..., num_classes=..., weights=..., **options)`` builds one,
optionally from a checkpoint (ours or the papers' repositories'); ``save`` and ``load``
keep a network with its name and options; ``list_models()`` says which names and
variants exist.  Parameter counts equal the papers'
(see :mod:`fuseops.models.paper`).
"""

from fuseops.models.checkpoints import checkpoint_info, load, save
from fuseops.models.registry import get_model, list_models

__all__ = ["checkpoint_info", "get_model", "list_models", "load", "save"]
