"""Parameter and multiply-accumulate counts of a model, layer by layer.

Convention (stated once, used everywhere):

* **MACs, not FLOPs**: one multiply-accumulate counts 1 (FLOPs would be about 2x).
* Counted: convolutions and linear layers only, exactly: a conv producing an
  (N, C_out, H_out, W_out) map costs N*C_out*H_out*W_out * (C_in/groups)*kh*kw; a linear layer
  costs (input elements / in_features) * in_features * out_features.  Bias additions are not
  MACs and are not counted.
* Not counted: BatchNorm, activations, pooling, squeeze-excite's mean and scaling, residual adds.
* FuSe layers (:class:`~fuseops.nn.FuSeConv2d`, :class:`~fuseops.nn.FuSeConvBNAct`) count as their
  two 1-D depthwise convs: N*(C_r + C_c)*H_out*W_out*K.
* Block convs (:class:`~fuseops.nn.BlockConv2d`) count the sum over blocks of each block's output
  size; with ``stride_mode="pool"`` that is the stride-1 conv before the max-pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fuseops import _checks
from fuseops.block_conv.grid import block_grid, block_out_size
from fuseops.nn import BlockConv2d, FuSeConv2d, FuSeConvBNAct

CONVENTION = ("MACs = multiply-accumulates of conv and linear layers (not FLOPs; bias adds, BN, activations "
              "and pooling excluded); FuSe = its two 1-D convs; block conv = sum over blocks")


@dataclass(frozen=True)
class LayerProfile:
    """One call of a layer: dotted name, kind (class name), output shape, own parameters, MACs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass
class Profile:
    """``params`` (unique parameters of the model), ``macs`` (sum over ``layers``), ``layers``."""

    params: int
    macs: int
    input_size: tuple[int, ...]
    layers: list[LayerProfile] = field(default_factory=list)

    def __str__(self) -> str:
        header = ("layer", "kind", "output", "params", "MACs")
        rows = [(r.name or "(model)", r.kind, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}")
                for r in self.layers]
        rows.append(("total", "", "", f"{self.params:,}", f"{self.macs:,}"))
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
        lines = [f"input {'x'.join(map(str, self.input_size))}; {CONVENTION}"]
        for i, row in enumerate([header, *rows]):
            cells = [cell.ljust(w) if j < 3 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
            if i == 0 or i == len(rows) - 1:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _conv_macs(conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> int:
    kh, kw = conv.kernel_size
    per_output = (conv.in_channels // conv.groups) * kh * kw
    if isinstance(conv, BlockConv2d):
        rows, cols = block_grid(x.shape[2], x.shape[3], conv.block_size, conv.blocking)
        stride = conv.stride if conv.stride_mode == "conv" else (1, 1)
        out_h = sum(block_out_size(b - a, kh, stride[0], conv.padding[0], conv.dilation[0]) for a, b in rows)
        out_w = sum(block_out_size(b - a, kw, stride[1], conv.padding[1], conv.dilation[1]) for a, b in cols)
        return x.shape[0] * conv.out_channels * out_h * out_w * per_output
    return out.numel() * per_output


def _fuse_macs(conv: FuSeConv2d, out: torch.Tensor) -> int:
    n, _, h, w = out.shape
    return n * (conv.c_row + conv.c_col) * h * w * conv.kernel_size


def _macs(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int | None:
    """MACs of one call, or None for a module that is not counted itself."""
    if isinstance(module, FuSeConvBNAct):
        return _fuse_macs(module.conv, out)
    if isinstance(module, FuSeConv2d):
        return _fuse_macs(module, out)
    if isinstance(module, nn.Conv2d):
        return _conv_macs(module, x, out)
    if isinstance(module, nn.Linear):
        return (x.numel() // module.in_features) * module.in_features * module.out_features
    return None


def _is_counted(module: nn.Module) -> bool:
    return isinstance(module, (FuSeConvBNAct, FuSeConv2d, nn.Conv2d, nn.Linear))


def profile(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> Profile:
    """Run ``model`` once on a random input of ``input_size`` and count params and MACs per layer.

    The forward runs in eval mode under ``torch.no_grad`` (the model's mode is restored), on the
    model's device and dtype.  Rows list every counted layer call (conv, linear, FuSe) and every
    other leaf module that holds parameters (e.g. BatchNorm, with 0 MACs), in call order.
    Modules inside a FuSe block are part of its row.  See the module docstring for the convention.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(input_size, (tuple, list)) or not input_size:
        raise TypeError(f"input_size must be a non-empty tuple of ints, got {input_size!r}")
    size = tuple(_checks.integer("input_size", s, minimum=1) for s in input_size)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    inside = set()  # modules that belong to a counted unit (FuSe blocks' convs and BNs)
    for module in model.modules():
        if isinstance(module, (FuSeConvBNAct, FuSeConv2d)):
            inside.update(id(m) for m in module.modules() if m is not module)
    names = {id(m): name for name, m in model.named_modules()}
    layers: list[LayerProfile] = []

    def hook(module, args, kwargs, output):
        if id(module) in inside or not isinstance(output, torch.Tensor):
            return
        # The input is the first positional argument, or the first tensor passed by keyword
        # (nn.Linear and nn.Conv2d call theirs ``input``).
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        macs = _macs(module, x, output) if isinstance(x, torch.Tensor) else None
        own = sum(p.numel() for p in module.parameters())
        if macs is None and (own == 0 or list(module.children())):
            return
        layers.append(LayerProfile(names.get(id(module), "?"), type(module).__name__, tuple(output.shape), own,
                                   macs or 0))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
               if _is_counted(m) or not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.randn(size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Profile(params, sum(r.macs for r in layers), size, layers)
