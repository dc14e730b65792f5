"""How an op is assembled from its launchers: backend selection, the registered custom op
(schema, fake impl, autograd) and the plain-eager entry point.

Both ops are one :class:`OpDefinition` each (``fuseops/fuse_conv/op.py``,
``fuseops/block_conv/op.py``), so their dispatch glue cannot drift apart.  An op is
described by:

* its schema, written once as a string: the launcher interface.  Every backend module
  ``fuseops.<op>.<backend>_impl`` provides ``forward(*args) -> out`` taking the forward
  schema's arguments in order, and ``backward(grad_out, *args) -> grads`` taking the
  backward schema's, returning one gradient per tensor argument (also for an optional
  bias that is None).  grad_out arrives dense in the output's memory format.  The op's
  output and grad_x have x's memory format (:func:`memory_format_of`, as ``nn.Conv2d``);
  a launcher whose kernel writes NCHW leaves the copy to :meth:`OpDefinition.run`;
* its reference launchers (pure PyTorch, imported eagerly: they are the definition);
* fake impls for both schemas (output shapes from the op's geometry module).

One dispatch: every call reaches the kernels of the registered custom op
``torch.ops.fuseops.<name>``, whether through the dispatcher (what torch.compile, fake
tensors, opcheck, vmap and dispatch modes see) or, in plain eager mode, through
:attr:`OpDefinition.eager`, a plain ``torch.autograd.Function`` that calls the op's kernel
for x's device directly (see :mod:`fuseops._eager`).  On CPU tensors that kernel is C++
(registered by ``fuseops._C`` at the CPU key) and runs itself unless the backend is
Python's to pick; then, and on every other device, :meth:`OpDefinition.run` picks the
backend and calls its launcher.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable

import torch

from fuseops import _eager, _inductor, backends
from fuseops._layout import memory_format_of
from fuseops.autotune import TuneRequest, signature


def _requesting_channels_last(fake: Callable, op_name: str, tensor_positions: tuple[int, ...]) -> Callable:
    """``fake``, which first asks Inductor for channels_last inputs of ``fuseops::op_name``."""

    def fake_impl(*args):
        _inductor.request_channels_last(getattr(torch.ops.fuseops, op_name).default, tensor_positions)
        return fake(*args)

    return fake_impl


#: device type -> the backends "auto" tries, in order, when it does not measure.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


class OpDefinition:
    """One op: ``torch.ops.fuseops.<name>`` and ``<name>_backward``, their autograd, and
    the eager entry point, all over the backend launchers of ``fuseops.<package>``.

    The first ``tensor_count`` arguments of the forward schema are tensors (the last may
    be an optional bias); the rest are options.  Every op has the four backends; the cpu
    and cuda ones are available when ``fuseops._C`` has ``cpu_kernel`` / ``cuda_kernel``
    for that device.  ``autotune``: "auto" on CUDA tensors times the candidate backends
    once per call signature (:mod:`fuseops.autotune`); otherwise, and when measuring is
    off, "auto" takes the first available in :data:`AUTO_ORDER`.
    ``channels_last_kernels``: the cpu kernels read channels_last natively, so Inductor is
    asked for channels_last inputs where it lays convolutions out so (:mod:`fuseops._inductor`).
    """

    def __init__(
        self,
        name: str,
        *,
        package: str,
        schema: str,
        backward_schema: str,
        tensor_count: int,
        reference: tuple[Callable, Callable],
        fake: Callable,
        backward_fake: Callable,
        cpu_kernel: str,
        cuda_kernel: str,
        autotune: bool = False,
        channels_last_kernels: bool = False,
    ) -> None:
        self.name = name
        self._package = package
        self._tensor_count = tensor_count
        self._autotune = autotune
        forward, backward = reference
        self._launchers: dict[str, object] = {
            "reference": types.SimpleNamespace(forward=forward, backward=backward)
        }
        probes = {
            "reference": backends.reference_probe,
            "cpu": backends.cpu_probe_for(cpu_kernel),
            "cuda": backends.cuda_probe_for(cuda_kernel),
            "triton": backends.triton_probe,
        }
        backends.register_op(name, probes=probes, auto_order=AUTO_ORDER)

        self.forward_op = torch.library.custom_op(
            f"fuseops::{name}", self._run_forward, mutates_args=(), schema=schema)
        self.backward_op = torch.library.custom_op(
            f"fuseops::{name}_backward", self._run_backward, mutates_args=(), schema=backward_schema)
        if channels_last_kernels:  # the fake impls run while torch.compile traces, before Inductor lowers
            fake = _requesting_channels_last(fake, name, (0,))
            backward_fake = _requesting_channels_last(backward_fake, f"{name}_backward", (0, 1))
        self.forward_op.register_fake(fake)
        self.backward_op.register_fake(backward_fake)
        self.forward_op.register_autograd(self._autograd_backward, setup_context=self._setup_context)
        # Where the C++ kernels at the ops' CPU key hand a call whose backend Python picks
        # (csrc/common/selection.h): the same Python selection as every other device's.
        self._library = torch.library.Library("fuseops", "FRAGMENT")
        for op_name, op_schema, kernel in ((name, schema, self._run_forward),
                                           (f"{name}_backward", backward_schema, self._run_backward)):
            self._library.define(f"_{op_name}_by_selection{op_schema}")
            self._library.impl(f"_{op_name}_by_selection", kernel, "CPU")
        #: the op in plain eager mode (the caller checks fuseops._eager.dispatcher_bypass_allowed)
        self.eager = _eager.eager_op(self.forward_op._opoverload, self.backward_op._opoverload, self.run,
                                     tensor_count)

    def launcher(self, backend: str):
        """The launcher module of ``backend``; imported on first use (triton_impl imports triton)."""
        module = self._launchers.get(backend)
        if module is None:
            module = self._launchers[backend] = importlib.import_module(f"{self._package}.{backend}_impl")
        return module

    def tune_request(self, function: str, args: tuple) -> TuneRequest | None:
        """For "auto" on CUDA tensors: how to time ``function`` of each backend on ``args``."""
        if not self._autotune or args[0].device.type != "cuda":  # x or grad_out: on x's device
            return None
        return TuneRequest(
            key=(function, signature(args)),
            run=lambda name: functools.partial(getattr(self.launcher(name), function), *args),
        )

    def selected_impl(self, function: str, args: tuple, selection: str | None = None):
        """The launcher module of the backend selected now (or of ``selection``, a name as
        :func:`fuseops.current_backend` returns) for ``function`` ("forward" or "backward")
        on ``args``; x is args[0] in the forward, args[1] in the backward."""
        device = args[1 if function == "backward" else 0].device
        tune = self.tune_request(function, args) if self._autotune and device.type == "cuda" else None
        return self.launcher(backends.resolve(self.name, device, tune=tune, name=selection))

    def run(self, function: str, args: tuple, selection: str | None = None):
        """``function`` ("forward" or "backward") of the selected backend on ``args``, its
        output (or grad_x) in x's memory format whatever the launcher wrote."""
        result = getattr(self.selected_impl(function, args, selection), function)(*args)
        x = args[1 if function == "backward" else 0]
        out = result if function == "forward" else result[0]
        # fuseops._layout.memory_format_of's rule, inline: this runs on every eager call, whose
        # Python calls are budgeted (tests/test_call_path.py).
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            layout = torch.contiguous_format
        else:
            layout = torch.channels_last
        if not out.is_contiguous(memory_format=layout):  # a launcher that wrote NCHW: one copy
            out = out.contiguous(memory_format=layout)
        return out if function == "forward" else (out, *result[1:])

    def _run_forward(self, *args):
        return self.run("forward", args)

    def _run_backward(self, *args):
        return self.run("backward", args)

    def _setup_context(self, ctx, inputs, output):
        # The backward recomputes what it needs from the inputs, so only they are saved.
        # It runs on the backend selected when the forward ran, even if it is called outside
        # that `use_backend` block (eager mode; compiled graphs read the selection at run time).
        ctx.backend = backends.current_backend()
        ctx.save_for_backward(*inputs[: self._tensor_count])
        ctx.options = inputs[self._tensor_count :]

    def _autograd_backward(self, ctx, grad_out):
        saved = ctx.saved_tensors
        with backends.use_backend(ctx.backend):
            grads = self.backward_op(grad_out.contiguous(memory_format=memory_format_of(saved[0])), *saved,
                                     *ctx.options)
        grads = tuple(g if t is not None else None for g, t in zip(grads, saved))
        return grads + (None,) * len(ctx.options)
