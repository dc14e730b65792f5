"""Measured per-layer latency of a model, for setting beside the analytical models.

Each compute layer (nn.Conv2d and its subclasses, nn.Linear, FuSeConv2d, and
FuSeConvBNAct, which in eval mode runs its folded conv without calling its inner
FuSeConv2d) is timed alone on the input it receives inside the model.  Layers that a
forward never calls are not timed.  The time is the best of the repeats: on a shared
machine the minimum is the least disturbed by other processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from fuseops.nn import FuSeConv2d, FuSeConvBNAct


@dataclass(frozen=True)
class LayerTiming:
    name: str
    kind: str
    seconds: float  # best of the repeats


def _compute_layers(model: nn.Module) -> dict[str, nn.Module]:
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, FuSeConv2d, FuSeConvBNAct)):
            layers[name] = module
    return layers


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_layers(model: nn.Module, input_shape: tuple[int, ...], *, repeats: int = 5, warmup: int = 1,
                   device: str | torch.device = "cpu", progress=None) -> list[LayerTiming]:
    """Best-of-``repeats`` wall time of each compute layer of ``model`` (eval mode, no grad).

    ``progress`` is an optional callable advanced once per layer (e.g. a tqdm's update).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    layers = _compute_layers(model)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(lambda mod, args, name=name: captured.setdefault(name, args[0].detach()))
        for name, module in layers.items()
    ]
    try:
        with torch.no_grad():
            model(torch.randn(*input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    timings = []
    with torch.no_grad():
        for name, module in layers.items():
            if name not in captured:  # a layer the forward never reached is not timed
                continue
            x = captured[name]
            for _ in range(warmup):
                module(x)
            samples = []
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                module(x)
                _synchronize(device)
                samples.append(time.perf_counter() - start)
            kind = type(module).__name__
            timings.append(LayerTiming(name, kind, min(samples)))
            if progress is not None:
                progress(1)
    return timings
