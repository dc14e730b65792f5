"""One dispatch: the C++ kernels sit at the CPU key of the public ops and run there,
unless the backend is Python's to pick (csrc/common/selection.h).

The default ("auto") call on CPU tensors must reach the C++ kernel without the Python
selection (``OpDefinition.run``), in eager mode, through ``torch.ops`` and compiled; a
named backend, ``$FUSEOPS_BACKEND`` or a block open in another thread must still be
honoured exactly as the Python selection says.
"""

from __future__ import annotations

import threading

import pytest
import torch
from backend_helpers import require_backend, spy_launchers

import fuseops
from fuseops import backends
from fuseops.block_conv import op as block_op
from fuseops.block_conv.reference import block_conv2d_reference, block_conv2d_reference_backward
from fuseops.fuse_conv import op as fuse_op
from fuseops.fuse_conv.reference import fuse_conv2d_reference, fuse_conv2d_reference_backward

OPS = ("fuse_conv2d", "fuse_conv2d_backward", "block_conv2d", "block_conv2d_backward")


@pytest.fixture(autouse=True)
def cpp_kernels(monkeypatch):
    require_backend("fuse_conv2d", "cpu")
    require_backend("block_conv2d", "cpu")
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


def _open_choices() -> int:
    from fuseops import _C

    return _C.open_python_choices()


def _fuse_args():
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, requires_grad=True)
    wr = torch.randn(3, 1, 1, 3, dtype=torch.float64, requires_grad=True)
    wc = torch.randn(3, 1, 3, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    return (x, wr, wc, b, False, 1, 1, 1, "relu6")


def _block_args():
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    return (x, w, b, [1, 1], [1, 1], [1, 1], 1, [0, 4, 9], [0, 5, 10], "reflect")


CASES = {
    "fuse_conv2d": (fuse_op.FUSE_CONV2D, _fuse_args, fuse_conv2d_reference, fuse_conv2d_reference_backward, 4),
    "block_conv2d": (block_op.BLOCK_CONV2D, _block_args, block_conv2d_reference, block_conv2d_reference_backward, 3),
}


def _spy_run(monkeypatch, definition) -> list[str]:
    """Record every call of the Python selection (``definition.run``)."""
    calls: list[str] = []
    real = definition.run

    def spying(function, args, selection=None):
        calls.append(function)
        return real(function, args, selection)

    monkeypatch.setattr(definition, "run", spying)
    return calls


def _forward_and_grads(fn, args, tensor_count, grad_out_seed=0):
    out = fn(*args)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(grad_out_seed))
    tensors = args[:tensor_count]
    grads = torch.autograd.grad(out, tensors, grad_out)
    return out, grads


def _expected(name, args):
    _, _, reference, _, tensor_count = CASES[name]
    return _forward_and_grads(reference, args, tensor_count)


@pytest.mark.parametrize("name", OPS)
def test_cpp_kernels_sit_at_the_public_ops_cpu_key(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fuseops::{name}", "CPU")
    cpu_line = next(line for line in torch._C._dispatch_dump(f"fuseops::{name}").splitlines()
                    if line.startswith("CPU:"))
    assert "csrc/" in cpu_line and "ops.cpp" in cpu_line, cpu_line


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("entry", ["public", "torch.ops", "compiled"])
def test_default_call_reaches_the_cpp_kernel_without_the_python_selection(monkeypatch, name, entry):
    definition, make_args, _, _, tensor_count = CASES[name]
    args = make_args()
    want_out, want_grads = _expected(name, args)
    op = getattr(torch.ops.fuseops, name).default
    if entry == "public":
        fn = definition.eager
    elif entry == "torch.ops":
        fn = op
    else:
        torch._dynamo.reset()
        fn = torch.compile(lambda *a: op(*a), fullgraph=True)
    calls = _spy_run(monkeypatch, definition)
    out, grads = _forward_and_grads(fn, args, tensor_count)
    torch._dynamo.reset()
    assert calls == []
    torch.testing.assert_close(out, want_out)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("how", ["use_backend", "environment"])
def test_a_named_backend_goes_through_the_python_selection(monkeypatch, name, how):
    definition, make_args, _, _, tensor_count = CASES[name]
    args = make_args()
    want_out, want_grads = _expected(name, args)
    launched = spy_launchers(monkeypatch, definition)
    if how == "environment":
        monkeypatch.setenv(backends.ENV_VAR, "reference")
        out, grads = _forward_and_grads(definition.eager, args, tensor_count)
    else:
        with fuseops.use_backend("reference"):
            out, grads = _forward_and_grads(definition.eager, args, tensor_count)
    assert launched == ["reference", "reference"]  # forward and backward, both in Python's hands
    torch.testing.assert_close(out, want_out)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want)


def test_a_compiled_graph_reads_the_selection_when_it_runs(monkeypatch):
    definition, make_args, _, _, _ = CASES["fuse_conv2d"]
    args = make_args()
    op = torch.ops.fuseops.fuse_conv2d.default
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: op(*a), fullgraph=True)
    with torch.no_grad():
        compiled(*args)  # compiled under "auto"
        launched = spy_launchers(monkeypatch, definition)
        with fuseops.use_backend("reference"):
            got = compiled(*args)
    torch._dynamo.reset()
    assert launched == ["reference"]
    torch.testing.assert_close(got, fuse_conv2d_reference(*args))


def test_a_block_open_in_another_thread_leaves_this_threads_selection_alone(monkeypatch):
    """The C++ side only counts open blocks, process-wide: a block in another thread sends
    this thread's calls through Python, which must still resolve this thread's "auto"."""
    definition, make_args, _, _, _ = CASES["fuse_conv2d"]
    args = make_args()
    opened, release = threading.Event(), threading.Event()

    def other_thread():
        with fuseops.use_backend("reference"):
            opened.set()
            release.wait(timeout=60)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert opened.wait(timeout=60)
        launched = spy_launchers(monkeypatch, definition)
        with torch.no_grad():
            got = definition.eager(*args)
    finally:
        release.set()
        thread.join()
    assert launched == ["cpu"]
    torch.testing.assert_close(got, fuse_conv2d_reference(*args))


def test_open_blocks_are_counted_in_and_out():
    start = _open_choices()
    with fuseops.use_backend("reference"):
        assert _open_choices() == start + 1
        with fuseops.use_backend("auto"):  # "auto" is what the C++ kernels do by themselves
            assert _open_choices() == start + 1
        with fuseops.use_backend("cpu"):  # so is "cpu" on CPU tensors
            assert _open_choices() == start + 1
        with pytest.raises(KeyError), fuseops.use_backend("triton"):
            assert _open_choices() == start + 2
            raise KeyError("leave the block by an exception")
        assert _open_choices() == start + 1
    assert _open_choices() == start
    with backends.python_chooses():
        assert _open_choices() == start + 1
    assert _open_choices() == start


def test_the_backward_runs_on_the_forwards_selection(monkeypatch):
    """Forward under "auto" (the C++ kernel), backward inside a "reference" block: the
    backward still takes the forward's selection, as the Python selection did before."""
    definition, make_args, _, _, tensor_count = CASES["fuse_conv2d"]
    args = make_args()
    out = definition.eager(*args)
    launched = spy_launchers(monkeypatch, definition)
    with fuseops.use_backend("reference"):
        grads = torch.autograd.grad(out, args[:tensor_count], torch.ones_like(out))
    assert launched == ["cpu"]
    want = fuse_conv2d_reference_backward(torch.ones_like(out), *[a.detach() if isinstance(a, torch.Tensor) else a
                                                                    for a in args])
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected)
