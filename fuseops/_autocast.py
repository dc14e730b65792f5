"""Autocast for the public ops, as ``nn.Conv2d`` takes part in it.

Convolutions are on autocast's lower-precision list: under ``torch.autocast`` their
floating inputs (float64 excepted, as autocast leaves it) are cast to the autocast dtype
of the input's device type, and the kernels accumulate in float32.  The custom ops have no
autocast kernel of their own, so the public functions cast here, before the argument
checks (which ask for one dtype across x, weights and bias), when
``torch.is_autocast_enabled(x.device.type)``.  Under ``torch.compile`` the cast is traced
like any other tensor op.
"""

from __future__ import annotations

import torch


def autocast_inputs(x: torch.Tensor, *others: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """(x, *others), each floating tensor other than float64 cast to the autocast dtype of
    x's device type."""
    dtype = torch.get_autocast_dtype(x.device.type)
    return tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in (x, *others)
    )
