"""The eager path from the public function to the kernel stays short.

A small FuSe or block conv costs about as much in Python as in the kernel
(docs/fuse_conv_cpu.md, "Python-side cost per call"), so the number of Python function calls
one eager call makes is held to a budget.  Counting calls, not timing them, keeps the test
deterministic on a loaded machine.
"""

from __future__ import annotations

import sys

import pytest
import torch
from backend_helpers import require_backend

import fuseops
from fuseops import _checks

#: Python calls per eager CPU call, from the public function to the kernel, inclusive.
BUDGET = 20
#: With a tensor that requires grad the call goes through ``torch.autograd.Function.apply``,
#: whose own Python (torch/autograd/function.py and the dead-wrapper check it calls in
#: torch/_functorch/utils.py, one frame per argument) is not ours to trim; it is left out of
#: the count and bounded on its own.
TORCH_AUTOGRAD_FILES = ("/torch/autograd/function.py", "/torch/_functorch/utils.py")
TORCH_AUTOGRAD_BUDGET = 16


def _python_calls(fn, *args, **kwargs) -> list[str]:
    """The Python functions that ``fn(*args, **kwargs)`` calls, in order, ``fn`` first."""
    fn(*args, **kwargs)  # warm: caches of checks and backend resolution are filled by the first call
    names = []

    def profile(frame, event, arg):
        if event == "call":
            names.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return names


def _check_budget(calls: list[str], public: str, requires_grad: bool) -> None:
    assert calls[0].endswith(f"/api.py:{public}")  # the profile saw the call itself
    autograd = [c for c in calls if c.rpartition(":")[0].endswith(TORCH_AUTOGRAD_FILES)]
    ours = [c for c in calls if c not in autograd]
    assert len(ours) <= BUDGET, "\n".join(ours)
    if requires_grad:
        assert 0 < len(autograd) <= TORCH_AUTOGRAD_BUDGET, "\n".join(autograd)
    else:
        assert autograd == []


@pytest.fixture
def cpu_backend(monkeypatch):
    """The default selection ("auto"), under which the C++ kernels run: the path users take."""
    require_backend("fuse_conv2d", "cpu")
    require_backend("block_conv2d", "cpu")
    monkeypatch.delenv(fuseops.backends.ENV_VAR, raising=False)
    for op in ("fuse_conv2d", "block_conv2d"):
        assert fuseops.backends.resolve(op, torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("requires_grad", [False, True])
def test_fuse_conv2d_eager_call_budget(cpu_backend, requires_grad):
    x = torch.randn(1, 8, 14, 14, requires_grad=requires_grad)
    wr, wc = torch.randn(8, 1, 1, 3), torch.randn(8, 1, 3, 1)
    calls = _python_calls(fuseops.fuse_conv2d, x, wr, wc, padding=1, variant="full")
    _check_budget(calls, "fuse_conv2d", requires_grad)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_block_conv2d_eager_call_budget(cpu_backend, requires_grad):
    x = torch.randn(1, 8, 14, 14, requires_grad=requires_grad)
    w = torch.randn(8, 8, 3, 3)
    calls = _python_calls(fuseops.block_conv2d, x, w, padding=1, block_size=7)
    _check_budget(calls, "block_conv2d", requires_grad)


def test_validated_calls_run_the_checks_once_per_signature():
    seen = []

    def validate(x, w, bias, stride, mode):
        if not isinstance(x, torch.Tensor):
            raise TypeError("x must be a torch.Tensor")
        seen.append((tuple(x.shape), stride, mode))
        if not isinstance(stride, int) or isinstance(stride, bool):
            raise TypeError("stride must be an int")
        return stride * 2

    checked = _checks.ValidatedCalls(validate, max_entries=2)
    x, w = torch.randn(1, 2, 3, 3), torch.randn(2)
    assert checked((x, w), None, (1, "a")) == 2
    assert checked((torch.randn(1, 2, 3, 3), w), None, (1, "a")) == 2  # same metadata: cached
    assert len(seen) == 1
    # Anything the checks depend on is part of the signature.
    assert checked((x.double(), w), None, (1, "a")) == 2
    assert len(seen) == 2
    with pytest.raises(TypeError):
        checked((x, w), None, (True, "a"))  # True == 1 and hashes alike
    with pytest.raises(TypeError):
        checked((x, w), None, (1.0, "a"))
    assert checked((x, w), torch.randn(2), (1, "a")) == 2  # a bias where there was none
    assert checked((x.to(torch.float64), w), None, (3, "a")) == 6  # full: runs, not stored
    assert checked((x.to(torch.float64), w), None, (3, "a")) == 6
    assert seen.count(((1, 2, 3, 3), 3, "a")) == 2
    # Unhashable options and non-tensors are checked every time, never cached.
    with pytest.raises(TypeError):
        checked(([1], w), None, (1, "a"))


def test_block_conv2d_cached_calls_still_reject_lookalike_arguments():
    """A nested lookalike: stride (True, 1) equals (1, 1) and hashes alike."""
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 2, 3, 3)
    with fuseops.use_backend("reference"):
        fuseops.block_conv2d(x, w, stride=(1, 1), padding=1, block_size=4)
        with pytest.raises(TypeError, match=r"stride\[0\] must be an int"):
            fuseops.block_conv2d(x, w, stride=(True, 1), padding=1, block_size=4)
        with pytest.raises(TypeError, match="padding must be an int"):
            fuseops.block_conv2d(x, w, stride=(1, 1), padding=1.0, block_size=4)
