"""The activations the kernels fuse into their epilogue, in plain PyTorch.

Names: ``None`` (identity), "relu", "relu6", "hardswish".  Internally the identity is
spelt "none" because op schemas take a string.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS: tuple[str | None, ...] = (None, "relu", "relu6", "hardswish")


def canonical(activation: str | None) -> str:
    """Map the public name (None allowed) to the schema's string."""
    if activation is None:
        return "none"
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or a str, got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def apply(pre: torch.Tensor, activation: str) -> torch.Tensor:
    """activation(pre) for a canonical name."""
    if activation == "none":
        return pre
    if activation == "relu":
        return F.relu(pre)
    if activation == "relu6":
        return F.relu6(pre)
    if activation == "hardswish":
        return F.hardswish(pre)
    raise ValueError(f"unknown activation {activation!r}")


def module(activation: str | None) -> torch.nn.Module:
    """The nn.Module equivalent, for layers that run unfused (e.g. training-mode BN)."""
    name = canonical(activation)
    return {
        "none": torch.nn.Identity,
        "relu": torch.nn.ReLU,
        "relu6": torch.nn.ReLU6,
        "hardswish": torch.nn.Hardswish,
    }[name]()


def backward(grad_out: torch.Tensor, pre: torch.Tensor, activation: str) -> torch.Tensor:
    """d activation(pre) / d pre, applied to grad_out (no autograd needed).

    The derivative at the kinks follows PyTorch: relu'(0) = 0, relu6'(0) = relu6'(6) = 0,
    hardswish' from ``aten.hardswish_backward``.
    """
    if activation == "none":
        return grad_out
    if activation == "relu":
        return torch.where(pre > 0, grad_out, torch.zeros_like(grad_out))
    if activation == "relu6":
        return torch.where((pre > 0) & (pre < 6), grad_out, torch.zeros_like(grad_out))
    if activation == "hardswish":
        return torch.ops.aten.hardswish_backward(grad_out, pre)
    raise ValueError(f"unknown activation {activation!r}")
