"""What one call costs around the kernel: each entry to the ops on a tiny CPU input.

On a MobileNet 7x7 layer the kernel itself takes tens of microseconds, so the layers in
front of it (argument checks, autograd, dispatch, backend selection) are a visible part of
a network's time, eager and compiled.  This target times, on an input so small that the
kernel is nearly free, every way into the op against the C++ kernel called alone:

* ``C++ kernel``: ``torch.ops.fuseops_ext.*`` (the floor);
* ``torch.ops``: the registered op, as compiled graphs call it (autograd wrapper, then the
  C++ kernel at the op's CPU key);
* ``torch.ops, Python selection``: the same where the C++ kernel hands the call to the
  Python selection, as it does under ``use_backend("reference")`` (here it picks the cpu
  backend, so only the route differs; csrc/common/selection.h);
* ``public``: ``fuseops.fuse_conv2d`` / ``fuseops.block_conv2d`` in eager mode;
* ``public, fwd+bwd`` against ``C++ kernels, fwd+bwd``: with a gradient.

Providers are interleaved round by round; each time is the best round's mean per call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import fuseops
from fuseops import backends
from fuseops.benchmarking import cpp_targets
from fuseops.cli.output import progress_bar, show_results

COLUMNS = ("op", "entry", "us per call", "vs C++ kernel")


def _inputs() -> dict[str, tuple[tuple, Callable[[torch.Tensor], torch.Tensor]]]:
    """op name -> (the op's arguments, the public function of x with the same options)."""
    wr, wc, w = torch.randn(4, 1, 1, 3), torch.randn(4, 1, 3, 1), torch.randn(4, 4, 3, 3)
    return {
        "fuse_conv2d": ((torch.randn(1, 8, 4, 4), wr, wc, None, False, 1, 1, 1, "relu6"),
                        lambda x: fuseops.fuse_conv2d(x, wr, wc, padding=1, activation="relu6")),
        "block_conv2d": ((torch.randn(1, 4, 6, 6), w, None, [1, 1], [1, 1], [1, 1], 1, [0, 3, 6], [0, 3, 6],
                          "constant"),
                         lambda x: fuseops.block_conv2d(x, w, padding=1, block_size=3)),
    }


def _entries(op_name: str, args: tuple, public: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Callable]:
    """The entries listed in the module docstring, each a function of no arguments."""
    kernel = getattr(torch.ops.fuseops_ext, f"{op_name}_forward").default
    kernel_backward = getattr(torch.ops.fuseops_ext, f"{op_name}_backward").default
    registered = getattr(torch.ops.fuseops, op_name).default
    x = args[0].clone().requires_grad_()
    grad = torch.randn_like(kernel(*args))

    def python_selection():
        with backends.python_chooses():
            return registered(*args)

    def kernels_fwd_bwd():
        kernel(*args)
        return kernel_backward(grad, *args)

    return {"C++ kernel": lambda: kernel(*args), "torch.ops": lambda: registered(*args),
            "torch.ops, Python selection": python_selection, "public": lambda: public(args[0]),
            "C++ kernels, fwd+bwd": kernels_fwd_bwd,
            "public, fwd+bwd": lambda: torch.autograd.grad(public(x), x, grad)}


def run(quick: bool = False, threads: int | None = 1, progress: bool = True) -> list[tuple[str, ...]]:
    """Rows under :data:`COLUMNS`.  Needs the C++ extension (the floor is its kernel)."""
    cpp_targets.set_up("calls", threads)
    calls, rounds = (200, 3) if quick else (2000, 7)
    rows = []
    inputs = _inputs()
    bar = progress_bar(len(inputs), "calls", "op", progress)
    for op_name, (args, public) in inputs.items():
        fns = _entries(op_name, args, public)
        for fn in fns.values():  # warm: the checks' and selection's caches, the first-call paths
            fn()
        with torch.no_grad():
            plain = cpp_targets.best_round_means({k: v for k, v in fns.items() if "fwd+bwd" not in k}, calls, rounds)
        with_grad = cpp_targets.best_round_means({k: v for k, v in fns.items() if "fwd+bwd" in k}, calls, rounds)
        times = {name: seconds * 1e6 for name, seconds in {**plain, **with_grad}.items()}
        for name, us in times.items():
            floor = times["C++ kernels, fwd+bwd" if "fwd+bwd" in name else "C++ kernel"]
            rows.append((op_name, name, f"{us:.1f}", f"{us / floor:.2f}x"))
        bar.update(1)
    bar.close()
    return rows


def main(quick: bool = False, threads: int | None = 1, min_time: float | None = None, out_dir: str | None = None,
         markdown: bool = False, progress: bool = True) -> int:
    """The ``fuseops bench calls`` target: measure, print the table (and markdown), return 0.

    ``threads`` defaults to 1 here: the input is too small for a second thread to help.
    ``min_time`` is accepted for the shared bench interface; with ``out_dir`` the rows are
    also written to ``out_dir/calls.csv``.
    """
    rows = run(quick=quick, threads=threads, progress=progress)
    title = f"per-call cost on a tiny CPU input (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    show_results(title, COLUMNS, rows, markdown, out_dir, "calls.csv")
    return 0
