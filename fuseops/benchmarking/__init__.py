"""Benchmark tables shared by ``bench/`` scripts and ``python -m fuseops bench``."""
