"""matplotlib for the CLIs and the report: imported on first use (it is an optional
dependency, and slow to import) with the non-interactive Agg backend, which writes PNGs
on machines without a display."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot``, on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
