"""The memory format of the ops' outputs: the input's, as with ``nn.Conv2d``."""

from __future__ import annotations

import torch


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format of an op's output and grad_x for input x, as with ``nn.Conv2d``:
    channels_last when x is stored channels_last (and not also NCHW-contiguous, as when
    C == 1 or H == W == 1), else contiguous NCHW (also for sliced or otherwise strided x)."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last

