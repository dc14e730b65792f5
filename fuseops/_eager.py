"""When an op may skip the torch dispatcher and call its backend directly.

The registered custom ops (``torch.ops.fuseops.*``) are what ``torch.compile``, fake
tensors, ``opcheck``, ``vmap``, tracing and dispatch modes need.  In plain eager mode,
their Python layers (custom-op dispatch, the autograd wrapper, the dynamo-disable
wrapper) cost 50-100 us per call on the 2-core CPU here, as much as the whole kernel on
a MobileNet 7x7 layer (docs/fuse_conv_cpu.md, "Python-side cost per call").  So the
public functions call the same backend launchers through a plain
``torch.autograd.Function`` when, and only when, no machinery that needs the registered
op is active.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from fuseops import backends
from fuseops._layout import memory_format_of


def dispatcher_bypass_allowed(*tensors: torch.Tensor | None) -> bool:
    """True in plain eager mode on plain tensors: the op's backend may be called directly."""
    # torch.jit.is_scripting() is not asked: this runs only as Python, never in TorchScript.
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return False
    if torch._C._are_functorch_transforms_active():  # vmap / grad / jvp need the op's rules
        return False
    if torch._C._is_torch_function_mode_enabled() or _get_current_dispatch_mode() is not None:
        return False  # e.g. FlopCounterMode, FakeTensorMode: they must see the registered op
    # Subclasses (FakeTensor, DTensor, ...) dispatch through the op; exact torch.Tensor only.
    # A loop rather than all(<generator>): this runs on every call, and a generator is a frame.
    for t in tensors:
        if t is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return False
    return True


#: device type -> the dispatch key of the op's kernel for tensors of that device.
_KERNEL_KEYS = {"cpu": torch._C.DispatchKeySet(torch._C.DispatchKey.CPU),
                "cuda": torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)}


def eager_op(forward_op: torch._ops.OpOverload, backward_op: torch._ops.OpOverload,
             run: Callable[[str, tuple, str], Any], tensor_count: int) -> Callable[..., torch.Tensor]:
    """An op's eager entry point: the kernels of ``forward_op`` / ``backward_op`` for x's
    device, called below the dispatcher's Python layers, behind a ``torch.autograd.Function``.

    On CPU tensors that kernel is the C++ one when ``fuseops._C`` is built (it defers to the
    Python selection when needed, csrc/common/selection.h); on CUDA tensors it is the
    Python selection.  Tensors of other devices go to ``run(function, args, selection)``,
    the Python selection itself (:meth:`fuseops._op_definition.OpDefinition.run`).
    The op's arguments are ``tensor_count`` tensors (the last may be an optional bias,
    None) followed by non-tensor options; ``backward_op(grad_out, *tensors, *options)``
    returns one gradient per tensor.  As in the custom ops' autograd, the backward runs on
    the backend selection that was in force at the forward, and there is no double backward.
    """
    forward_kernel, backward_kernel = forward_op._handle.redispatch_boxed, backward_op._handle.redispatch_boxed

    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            ctx.selection = backends.current_backend()
            ctx.save_for_backward(*args[:tensor_count])
            ctx.options = args[tensor_count:]
            keys = _KERNEL_KEYS.get(args[0].device.type)
            return run("forward", args, ctx.selection) if keys is None else forward_kernel(keys, *args)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_out):
            saved = ctx.saved_tensors
            # grad_out dense in the output's memory format, which is x's (as in the custom op).
            args = (grad_out.contiguous(memory_format=memory_format_of(saved[0])), *saved, *ctx.options)
            keys = _KERNEL_KEYS.get(grad_out.device.type)
            # The forward's selection, also for the kernels' own check and for launchers that call other ops.
            with backends.use_backend(ctx.selection):
                grads = run("backward", args, ctx.selection) if keys is None else backward_kernel(keys, *args)
            grads = tuple(g if t is not None else None for g, t in zip(grads, saved))
            return grads + (None,) * len(ctx.options)

    def call(*args) -> torch.Tensor:
        if torch.is_grad_enabled():
            for t in args[:tensor_count]:  # a loop, not any(<generator>): see dispatcher_bypass_allowed
                if t is not None and t.requires_grad:
                    return EagerFunction.apply(*args)
        keys = _KERNEL_KEYS.get(args[0].device.type)
        return run("forward", args, backends.current_backend()) if keys is None else forward_kernel(keys, *args)

    return call
