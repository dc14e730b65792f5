"""The layout Inductor (torch.compile's default backend) gives an op's inputs.

When a CPU graph has convolutions, Inductor runs them in channels_last ("layout
optimisation"), where oneDNN is fast.  A custom op, left to Inductor's default, gets its
tensor inputs back in the stride order they had while the graph was traced: NCHW for a
network written in NCHW.  A FuSe layer would then sit between two layout copies, and the
compiled FuSe MobileNetV2 ran at 1.25-1.4x its compiled baseline.  The FuSe CPU kernels
read and write channels_last natively, so for such ops this asks Inductor for x (and, in
the backward, grad_out) in channels_last whenever it has chosen channels_last for the
graph's convolutions, and leaves every other graph as it was.

This reaches into Inductor's private lowering API (``make_fallback`` with a layout
constraint, ``ExternKernel.require_channels_last``, ``V.graph.layout_opt``).  It is
registered the first time an op is traced with Inductor loaded (from the op's fake impl),
so ``import fuseops`` does not import Inductor.  If that API is missing the ops keep
Inductor's default constraint: the same results with the copies back, and a warning.
"""

from __future__ import annotations

import sys
import warnings

import torch

_registered: set[str] = set()


def request_channels_last(op: torch._ops.OpOverload, tensor_positions: tuple[int, ...]) -> None:
    """Ask Inductor, once, for the tensors at ``tensor_positions`` of ``op`` in channels_last
    on CPU graphs it lays out in channels_last.  Does nothing until Inductor is imported."""
    name = str(op)
    if name in _registered or "torch._inductor.lowering" not in sys.modules:
        return
    _registered.add(name)
    try:
        from torch._inductor import ir
        from torch._inductor import lowering as inductor_lowering
        from torch._inductor.virtualized import V
    except ImportError as exc:  # pragma: no cover - depends on the torch version
        warnings.warn(f"fuseops: cannot set Inductor's layout for {name} ({exc}); compiled "
                      "channels_last graphs will copy around it", stacklevel=2)
        return

    def channels_last_inputs(fx_node, *args, **kwargs):
        if not getattr(V.graph, "layout_opt", False):
            return args, kwargs
        args = list(args)
        for i in tensor_positions:
            arg = args[i]
            if (inductor_lowering._is_tensor_irnode(arg) and arg.get_device().type == "cpu"
                    and len(arg.get_size()) == 4):
                args[i] = ir.ExternKernel.require_channels_last(arg)
        return tuple(args), kwargs

    try:
        inductor_lowering.make_fallback(op, layout_constraint=channels_last_inputs)
    except (AttributeError, AssertionError, TypeError) as exc:  # pragma: no cover - torch version
        warnings.warn(f"fuseops: cannot set Inductor's layout for {name} ({exc}); compiled "
                      "channels_last graphs will copy around it", stacklevel=2)
