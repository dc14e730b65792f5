"""Check every available backend of every op against the reference, in float64.

Used by ``python -m fuseops validate`` and the report.  Each case draws fresh random
inputs, runs the forward and backward on the backend and on the reference, and
compares them.  A backend that is not available on the device is reported as such
(with the reason), never silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fuseops import backends
from fuseops.block_conv import block_conv2d
from fuseops.fuse_conv import fuse_conv2d

#: float64 comparisons: the kernels and the reference differ only in summation order.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Case:
    op: str
    name: str
    make: Callable[[torch.device], tuple[tuple[torch.Tensor, ...], dict]]
    call: Callable[..., torch.Tensor]


#: The columns of :meth:`Result.row`, for the validate command's table and the report's.
COLUMNS = ("op", "backend", "case", "status", "fwd err", "bwd err", "detail")


@dataclass(frozen=True)
class Result:
    op: str
    backend: str
    case: str
    status: str  # "pass", "FAIL" or "unavailable"
    forward_error: float | None
    backward_error: float | None
    detail: str = ""

    def row(self) -> tuple[str, ...]:
        """The result as table cells (:data:`COLUMNS`); errors to 2 significant digits."""
        return (self.op, self.backend, self.case, self.status, _error_cell(self.forward_error),
                _error_cell(self.backward_error), self.detail)


def _error_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _fuse_case(n, c, h, w, k, variant, stride, activation, bias):
    def make(device):
        def rand(*shape):
            return torch.randn(*shape, dtype=torch.float64, device=device)

        c_row = c if variant == "full" else (c + 1) // 2
        c_col = c if variant == "full" else c - c_row
        c_out = c_row + c_col
        tensors = (rand(n, c, h, w), rand(c_row, 1, 1, k), rand(c_col, 1, k, 1))
        if bias:
            tensors += (rand(c_out),)
        return tensors, {"variant": variant, "stride": stride, "activation": activation}

    name = f"{variant} N{n} C{c} {h}x{w} K{k} s{stride} {activation or 'linear'}{' +bias' if bias else ''}"
    return Case("fuse_conv2d", name, make, fuse_conv2d)


def _block_case(n, c_in, c_out, h, w, k, groups, padding, block, blocking, mode, stride):
    def make(device):
        def rand(*shape):
            return torch.randn(*shape, dtype=torch.float64, device=device)

        tensors = (rand(n, c_in, h, w), rand(c_out, c_in // groups, k, k), rand(c_out))
        return tensors, {"stride": stride, "padding": padding, "groups": groups, "block_size": block,
                         "blocking": blocking, "padding_mode": mode}

    name = f"{blocking} {block} {mode} N{n} {c_in}->{c_out} {h}x{w} k{k} g{groups} s{stride}"
    return Case("block_conv2d", name, make, block_conv2d)


def default_cases() -> list[Case]:
    """A fixed, small set of cases covering both variants, odd sizes, strides and modes."""
    return [
        _fuse_case(2, 7, 13, 11, 3, "half", 1, None, False),
        _fuse_case(1, 5, 9, 10, 5, "full", 2, "relu6", True),
        _fuse_case(2, 3, 8, 7, 7, "half", 3, "hardswish", True),
        _block_case(2, 4, 6, 13, 11, 3, 1, 1, 5, "fixed", "constant", 1),
        _block_case(1, 4, 4, 12, 12, 3, 4, 1, 2, "hierarchical", "reflect", 2),
        _block_case(2, 6, 4, 10, 9, 5, 2, 2, (5, 4), "fixed", "replicate", 1),
    ]


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def validate(device: str | torch.device = "cpu", cases: list[Case] | None = None) -> Iterator[Result]:
    """Yield one Result per (case, backend) on ``device``, reference included."""
    device = torch.device(device)
    for case in cases or default_cases():
        tensors, options = case.make(device)
        ref_out, ref_grads, grad_out = None, None, None
        for backend in backends.BACKENDS:
            avail = backends.availability(case.op, backend, device)
            if not avail.ok:
                yield Result(case.op, backend, case.name, "unavailable", None, None, avail.reason)
                continue
            inputs = [t.detach().clone().requires_grad_(True) for t in tensors]
            try:
                with backends.use_backend(backend):
                    out = case.call(*inputs, **options)
                    if grad_out is None:
                        grad_out = torch.randn_like(out)
                    grads = torch.autograd.grad(out, inputs, grad_out)
            except Exception as exc:  # noqa: BLE001 - a crash is a failed validation, reported
                yield Result(case.op, backend, case.name, "FAIL", None, None, f"{type(exc).__name__}: {exc}")
                continue
            if ref_out is None:  # backends.BACKENDS starts with "reference"
                ref_out, ref_grads = out.detach(), grads
            fwd = _max_error(out.detach(), ref_out)
            bwd = max(_max_error(g, r) for g, r in zip(grads, ref_grads))
            ok = fwd <= TOLERANCE and bwd <= TOLERANCE and torch.isfinite(out).all().item()
            yield Result(case.op, backend, case.name, "pass" if ok else "FAIL", fwd, bwd)
