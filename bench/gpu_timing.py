"""Kernel and network times for the one-shot GPU check (bench/gpu_check.py).

    python bench/gpu_timing.py --kernels      # FuSe vs floor and compile; block conv vs cuDNN (N=64)
    python bench/gpu_timing.py --networks     # MobileNetV2 vs FuSe-Half, ResNet-18 vs block: eager, compiled
    python bench/gpu_timing.py --kernels --networks --smoke --device cpu    # the logic, on the CPU

Times are medians of CUDA-event timings (wall clock on the CPU) after warm-up, so they
measure the kernels, not the host.  Every row states the bytes an op must move at least
(read x, write out) and its rate next to the floor: a device copy of the same bytes.
Each backend's output is checked against the reference before it is timed, so a wrong
kernel is never timed.  Results print as ``RESULT {json}`` lines, cumulative, after every
case: a run stopped at its time limit keeps what it measured.  ``--limit-s`` stops
starting new cases when the time is nearly up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fuseops import backends
from fuseops.block_conv import block_conv2d
from fuseops.fuse_conv import fuse_conv2d, fuse_conv2d_reference

FUSE_SHAPES = [(144, 56, 56), (384, 14, 14), (960, 7, 7)]  # MobileNetV2's depthwise layers
BLOCK_SHAPES = [(64, 56, 56, 28), (64, 56, 56, 14), (256, 14, 14, 28), (256, 14, 14, 14)]  # (C, H, W, F)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Largest relative error (of the largest output) a backend may show before it is timed.
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}


class Timer:
    def __init__(self, device: torch.device, repeats: int, warmup: int = 3) -> None:
        self.device, self.repeats, self.warmup = device, repeats, warmup

    def __call__(self, fn) -> float:
        """Median milliseconds of ``fn()``."""
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                began = time.perf_counter()
                fn()
                times.append((time.perf_counter() - began) * 1e3)
        return statistics.median(times)


class Results:
    def __init__(self, limit_s: float) -> None:
        self.rows: dict[str, list[dict]] = {}
        self.began, self.limit_s = time.perf_counter(), limit_s

    def add(self, table: str, row: dict) -> None:
        self.rows.setdefault(table, []).append(row)
        print("RESULT " + json.dumps(self.rows), flush=True)

    def time_left(self) -> bool:
        return time.perf_counter() - self.began < self.limit_s


def _checked_ms(run, reference: torch.Tensor, dtype: torch.dtype, timer: Timer) -> tuple[float, float | None]:
    """(relative error of ``run()`` against the float64 reference, its time in ms or None
    when the error is past :data:`TOLERANCE`: a wrong kernel is not timed)."""
    error = ((run().double() - reference).abs().max() / reference.abs().max()).item()
    return error, (timer(run) if error <= TOLERANCE[dtype] else None)


def _kernel_backends(device: torch.device) -> list[str]:
    return ["cuda", "triton"] if device.type == "cuda" else ["cpu"]


def _kernel_cases(dtypes, shapes, results):
    """(dtype name, dtype, shape) for every dtype and shape, while the time budget lasts."""
    for dtype_name, dtype in dtypes.items():
        for shape in shapes:
            if not results.time_left():
                return
            yield dtype_name, dtype, shape


def fuse_kernels(device, dtypes, batch, shapes, timer, results) -> None:
    for dtype_name, dtype, shape in _kernel_cases(dtypes, shapes, results):
        results.add("fuse_conv2d", _fuse_case(device, dtype_name, dtype, batch, shape, timer))
        torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no silent eager fallback


def _fuse_case(device, dtype_name, dtype, batch, shape, timer) -> dict:
    c, h, w = shape
    x = torch.randn(batch, c, h, w, device=device, dtype=dtype)
    w_row = torch.randn(c - c // 2, 1, 1, 3, device=device, dtype=dtype)
    w_col = torch.randn(c // 2, 1, 3, 1, device=device, dtype=dtype)
    reference = fuse_conv2d_reference(x.double(), w_row.double(), w_col.double(), None, False, 1, 1, 1, "relu6")
    moved = 2 * x.numel() * x.element_size()  # read x, write out (same size)
    row = {"dtype": dtype_name, "shape": [batch, c, h, w], "bytes": moved, "copy_ms": timer(lambda: x.clone())}
    row["reference_ms"] = timer(lambda: fuse_conv2d_reference(x, w_row, w_col, None, False, 1, 1, 1, "relu6"))
    compiled = torch.compile(fuse_conv2d_reference, dynamic=False)
    row["compiled_reference_ms"] = timer(lambda: compiled(x, w_row, w_col, None, False, 1, 1, 1, "relu6"))

    def run():
        return fuse_conv2d(x, w_row, w_col, None, variant="half", padding=1, activation="relu6")

    for backend in _kernel_backends(device):
        with backends.use_backend(backend):
            row[f"{backend}_rel_error"], row[f"{backend}_ms"] = _checked_ms(run, reference, dtype, timer)
        if row[f"{backend}_ms"] is not None:
            row[f"{backend}_pct_of_copy_bw"] = round(100 * row["copy_ms"] / row[f"{backend}_ms"], 1)
    _fuse_backward(x, w_row, w_col, device, timer, row)
    return row


def _fuse_backward(x, w_row, w_col, device, timer, row) -> None:
    xg, wr, wc = (t.clone().requires_grad_() for t in (x, w_row, w_col))

    def step(run):
        out = run()
        out.backward(torch.ones_like(out))

    row["reference_fwd_bwd_ms"] = timer(lambda: step(
        lambda: fuse_conv2d_reference(xg, wr, wc, None, False, 1, 1, 1, "relu6")))
    for backend in _kernel_backends(device):
        if row.get(f"{backend}_ms") is None:
            continue  # its forward was wrong
        with backends.use_backend(backend):
            row[f"{backend}_fwd_bwd_ms"] = timer(lambda: step(
                lambda: fuse_conv2d(xg, wr, wc, None, variant="half", padding=1, activation="relu6")))
        row[f"{backend}_fwd_bwd_speedup_vs_reference"] = round(row["reference_fwd_bwd_ms"]
                                                               / row[f"{backend}_fwd_bwd_ms"], 2)


def block_kernels(device, dtypes, batch, shapes, timer, results) -> None:
    for dtype_name, dtype, shape in _kernel_cases(dtypes, shapes, results):
        results.add("block_conv2d", _block_case(device, dtype_name, dtype, batch, shape, timer))


def _block_case(device, dtype_name, dtype, batch, shape, timer) -> dict:
    c, h, w, block = shape
    x = torch.randn(batch, c, h, w, device=device, dtype=dtype)
    weight = torch.randn(c, c, 3, 3, device=device, dtype=dtype) / (3 * c ** 0.5)
    with backends.use_backend("reference"):  # float64 kernels (Triton's fp64 dot) would compile for minutes
        reference = block_conv2d(x.double(), weight.double(), padding=1, block_size=block)
    moved = x.numel() * x.element_size() + reference.numel() * x.element_size()
    row = {"dtype": dtype_name, "shape": [batch, c, h, w], "block": block, "bytes": moved,
           "copy_ms": timer(lambda: x.clone()), "cudnn_ms": timer(lambda: F.conv2d(x, weight, padding=1))}

    def run():
        return block_conv2d(x, weight, padding=1, block_size=block)

    for backend in ("cuda", "triton") if device.type == "cuda" else ("cpu",):
        with backends.use_backend(backend):
            row[f"{backend}_rel_error"], row[f"{backend}_ms"] = _checked_ms(run, reference, dtype, timer)
        if row[f"{backend}_ms"] is not None:
            row[f"{backend}_vs_cudnn"] = round(row[f"{backend}_ms"] / row["cudnn_ms"], 2)
    return row


# The whole-network comparisons of docs/benchmarks.md: each FuSe or block network next to its baseline.
NETWORKS = (("mobilenet_v2", "baseline"), ("mobilenet_v2", "half"), ("resnet18", "baseline"), ("resnet18", "block"))


def networks(device, batch, size, timer, results) -> None:
    """Eval and a training step, eager then compiled, for each of :data:`NETWORKS`."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    for task in ("eval", "train"):
        for mode in ("eager", "compiled"):
            for name, variant in NETWORKS:
                if not results.time_left():
                    return
                ms = _network_case(device, dtype, name, variant, mode, task, x, timer)
                results.add("networks", {"network": name, "variant": variant, "mode": mode, "task": task,
                                         "batch": batch, "dtype": str(dtype), "ms": ms})
                torch._dynamo.reset()


def _network_case(device, dtype, name, variant, mode, task, x, timer) -> float:
    from fuseops.models import get_model

    model = get_model(name, variant=variant, num_classes=1000).to(device=device)
    model = model.to(memory_format=torch.channels_last)
    if task == "eval":
        model = model.to(dtype).eval()
        runner = torch.compile(model) if mode == "compiled" else model
        with torch.no_grad():
            return timer(lambda: runner(x))
    # Training: float32 weights under autocast (as mixed-precision training runs), SGD step.
    model.train()
    runner = torch.compile(model) if mode == "compiled" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = torch.randint(0, 1000, (x.shape[0],), device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                     enabled=False)

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(runner(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timer(step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", action="store_true")
    parser.add_argument("--networks", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, few repeats: checks the script itself")
    parser.add_argument("--limit-s", type=float, default=50.0, help="start no new case after this many seconds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    results = Results(args.limit_s)
    if args.smoke:
        timer, batch = Timer(device, repeats=2, warmup=1), 2
        fuse_shapes, block_shapes, dtypes, size = [(6, 9, 11)], [(4, 12, 10, 5)], {"fp32": torch.float32}, 32
    else:
        timer, batch = Timer(device, repeats=20), 64
        fuse_shapes, block_shapes, dtypes, size = FUSE_SHAPES, BLOCK_SHAPES, DTYPES, 224
    if args.kernels:
        fuse_kernels(device, dtypes, batch, fuse_shapes, timer, results)
        block_kernels(device, dtypes, batch, block_shapes, timer, results)
    if args.networks:
        networks(device, batch, size, timer, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
