"""When an op may skip the torch dispatcher and call its backend directly.

The registered custom ops (``torch.ops.fuseops.*``) are what ``torch.compile``, fake
tensors, ``opcheck``, ``vmap``, tracing and dispatch modes need.  In plain eager mode,
their Python layers (custom-op dispatch, the autograd wrapper, the dynamo-disable
wrapper) cost 50-100 us per call on the 2-core CPU here, as much as the whole kernel on
a MobileNet 7x7 layer (docs/perf-notes.md).  So the public functions call the same
backend launchers through a plain ``torch.autograd.Function`` when, and only when, no
machinery that needs the registered op is active.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def dispatcher_bypass_allowed(*tensors: torch.Tensor | None) -> bool:
    """True in plain eager mode on plain tensors: the op's backend may be called directly."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if torch._C._are_functorch_transforms_active():  # vmap / grad / jvp need the op's rules
        return False
    if torch._C._is_torch_function_mode_enabled() or _get_current_dispatch_mode() is not None:
        return False  # e.g. FlopCounterMode, FakeTensorMode: they must see the registered op
    # Subclasses (FakeTensor, DTensor, ...) dispatch through the op; exact torch.Tensor only.
    return all(t is None or type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)
