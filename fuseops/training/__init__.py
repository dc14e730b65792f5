"""Training and evaluation of the zoo's networks: datasets, the papers' recipes, the loop,
torchrun/DistributedDataParallel.  ``python -m fuseops train`` and ``eval`` drive it."""
