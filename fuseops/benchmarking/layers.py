"""The FuSe layers of a zoo network, each timed alone in NCHW and in channels_last.

A network hands the op the layouts it keeps: an eager NCHW network gives the NCHW kernels
(csrc/fuse_conv/forward.cpp), a channels_last network, or a compiled one (Inductor keeps
its convolutions channels_last), gives the NHWC kernels (csrc/fuse_conv/channels_last.cpp).
This target records every ``fuse_conv2d`` call of one eval forward of the network at N=8,
224x224, and times each distinct layer's forward through the C++ kernel:

* ``NCHW ms`` and ``NHWC ms``: the kernel on contiguous and on channels_last input;
* ``copy ms``: ``copy_`` of the channels_last input into a buffer allocated once, the
  memory floor of a layer that reads x once and writes an output of x's size (the half
  variant at stride 1; the full variant writes twice that, stride 2 a quarter).  A
  ``clone`` would time the allocator too: above glibc's 32 MB mmap threshold each fresh
  buffer is page-faulted in again;
* the ratios, and a total over the network (each layer times its count).

Layouts are interleaved round by round on fresh inputs (three per layer, so a call does
not find its input in cache from the previous one); each time is the best round's mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fuseops.benchmarking import cpp_targets
from fuseops.cli.output import progress_bar, show_results
from fuseops.models import get_model

COLUMNS = ("network", "x shape", "stride", "K", "count", "NCHW ms", "NHWC ms", "copy ms", "NHWC / NCHW",
           "NHWC / copy")
NETWORKS = (("mobilenet_v2", "half"), ("mobilenet_v2", "full"))
QUICK_NETWORKS = (("mobilenet_v2", "half"),)


class _RecordFuseCalls(TorchDispatchMode):
    """Collects the arguments of every ``fuseops::fuse_conv2d`` call made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.fuseops.fuse_conv2d.default:
            self.calls.append(args)
        return func(*args, **(kwargs or {}))


def network_layers(network: str, variant: str, batch: int = 8, size: int = 224) -> list[tuple[tuple, int]]:
    """The distinct ``fuse_conv2d`` argument lists of one eval forward, each with its count,
    in the order the network first calls them.  Tensors are kept (for their shapes and the
    layer's weights)."""
    model = get_model(network, variant=variant).eval()
    recorder = _RecordFuseCalls()
    with torch.no_grad(), recorder:
        model(torch.randn(batch, 3, size, size))
    layers: dict[tuple, tuple[tuple, int]] = {}
    for args in recorder.calls:
        key = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args)
        first, count = layers.get(key, (args, 0))
        layers[key] = (first, count + 1)
    return list(layers.values())


def _providers(args: tuple) -> dict[str, Callable[[], object]]:
    """Layout -> a function of no arguments, each call on the next of three fresh inputs."""
    kernel = torch.ops.fuseops_ext.fuse_conv2d_forward.default
    x, rest = args[0], args[1:]
    nchw = [torch.randn_like(x).contiguous() for _ in range(3)]
    nhwc = [v.contiguous(memory_format=torch.channels_last) for v in nchw]
    copy = torch.empty_like(nhwc[0])
    turn = itertools.count()
    return {"NCHW": lambda: kernel(nchw[next(turn) % 3], *rest), "NHWC": lambda: kernel(nhwc[next(turn) % 3], *rest),
            "copy": lambda: copy.copy_(nhwc[next(turn) % 3])}


def run(quick: bool = False, threads: int | None = 2, progress: bool = True) -> list[tuple[str, ...]]:
    """Rows under :data:`COLUMNS`, a total row per network last.  Needs the C++ extension."""
    cpp_targets.set_up("layers", threads)
    calls, rounds = (3, 3) if quick else (10, 5)
    rows = []
    networks = QUICK_NETWORKS if quick else NETWORKS
    for network, variant in networks:
        layers = network_layers(network, variant)
        bar = progress_bar(len(layers), f"{network} {variant}", "layer", progress)
        totals = dict.fromkeys(("NCHW", "NHWC", "copy"), 0.0)
        label = f"{network} {variant}"
        with torch.no_grad():
            for args, count in layers:
                fns = _providers(args)
                for fn in fns.values():
                    fn()
                ms = {name: seconds * 1e3 for name, seconds in cpp_targets.best_round_means(fns, calls, rounds).items()}
                for name in totals:
                    totals[name] += ms[name] * count
                rows.append((label, "x".join(map(str, args[0].shape)), str(args[5]), str(args[1].shape[-1]),
                             str(count), f"{ms['NCHW']:.3f}", f"{ms['NHWC']:.3f}", f"{ms['copy']:.3f}",
                             f"{ms['NHWC'] / ms['NCHW']:.2f}x", f"{ms['NHWC'] / ms['copy']:.2f}x"))
                bar.update(1)
        bar.close()
        total_count = sum(count for _, count in layers)
        rows.append((label, "all layers", "", "", str(total_count), f"{totals['NCHW']:.2f}", f"{totals['NHWC']:.2f}",
                     f"{totals['copy']:.2f}", f"{totals['NHWC'] / totals['NCHW']:.2f}x",
                     f"{totals['NHWC'] / totals['copy']:.2f}x"))
    return rows


def main(quick: bool = False, threads: int | None = 2, min_time: float | None = None, out_dir: str | None = None,
         markdown: bool = False, progress: bool = True) -> int:
    """The ``fuseops bench layers`` target: measure, print the table (and markdown), return 0.

    ``min_time`` is accepted for the shared bench interface; with ``out_dir`` the rows are
    also written to ``out_dir/layers.csv``.
    """
    rows = run(quick=quick, threads=threads, progress=progress)
    title = f"FuSe layers alone, forward, eval (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    show_results(title, COLUMNS, rows, markdown, out_dir, "layers.csv")
    return 0
