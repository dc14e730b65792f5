"""The papers' networks: FuSe MobileNets/MnasNet, block ResNets/VGG/MobileNet, plain baselines.

``get_model(name, variant=..., num_classes=..., **options)`` builds one;
``list_models()`` says which names and variants exist.  Parameter counts equal the papers'
(see :mod:`fuseops.models.paper`).
"""

from fuseops.models.registry import get_model, list_models

__all__ = ["get_model", "list_models"]
