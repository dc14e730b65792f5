"""GPU validation and timing of the Triton block_conv2d backend (implicit GEMM).

NOT RUN YET: written without a GPU.  On a CUDA machine:

    python bench/gpu_block_conv.py --check               # float64 correctness, poisoned outputs
    python bench/gpu_block_conv.py --quick               # a few shapes, both dtypes
    python bench/gpu_block_conv.py --out results.csv     # the full grid
    python bench/gpu_block_conv.py --shapes resnet --modes reflect --dtypes fp16 --out r.csv

The full grid is 600 rows and compiles torch.compile once per case: on a 10-minute
device slot, run it in slices with --shapes / --modes / --dtypes.

What is timed (median of triton.testing.do_bench, ms), side by side in one run:

* ``cudnn``: plain F.conv2d on the same unblocked tensor (the floor; zero padding);
* ``triton``: fuseops.block_conv2d on the triton backend;
* ``composition``: the paper code's view/permute/pad/conv/permute
  (fuseops.block_conv.reference.block_conv2d_composition; evenly divisible grids only);
* ``compiled``: torch.compile of that composition.

for forward and forward+backward, fp16 and fp32 (tf32 on, as cuDNN uses it), the
ResNet-18/50 and VGG-16 3x3 shapes at N=32, fixed blocks 14/28/56 and hierarchical
2x2/4x4, every padding mode, and a MobileNet depthwise 3x3.
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch
import torch.nn.functional as F

import fuseops
from fuseops.block_conv import triton_impl
from fuseops.block_conv.grid import block_grid, spans_to_bounds
from fuseops.block_conv.reference import (
    block_conv2d_composition,
    block_conv2d_reference,
    block_conv2d_reference_backward,
)

# (name, channels, height = width, groups): 3x3, stride 1, padding 1, C -> C.
SHAPES = [
    ("resnet18/50-c2", 64, 56, 1),
    ("resnet18/50-c3", 128, 28, 1),
    ("resnet18/50-c4", 256, 14, 1),
    ("resnet18/50-c5", 512, 7, 1),
    ("vgg16-c1", 64, 224, 1),
    ("vgg16-c2", 128, 112, 1),
    ("vgg16-c3", 256, 56, 1),
    ("vgg16-c4", 512, 28, 1),
    ("vgg16-c5", 512, 14, 1),
    ("mobilenet-dw", 128, 56, 128),
]
BLOCKINGS = [(14, "fixed"), (28, "fixed"), (56, "fixed"), ((2, 2), "hierarchical"), ((4, 4), "hierarchical")]
MODES = ("constant", "replicate", "reflect")
BATCH = 32


# ----------------------------------------------------------------------------- correctness
# (n, c_in, c_out, h, w, k, stride, padding, dilation, groups, block_size, blocking)
CHECK_CASES = [
    (2, 3, 5, 11, 14, 3, 1, (2, 1), 1, 1, (4, 5), "fixed"),
    (2, 32, 48, 29, 23, 3, 2, (1, 1), 1, 1, (2, 2), "hierarchical"),
    (1, 32, 32, 20, 20, 5, 1, (2, 2), 2, 2, 10, "fixed"),
    (2, 64, 64, 56, 56, 3, 1, (1, 1), 1, 64, 14, "fixed"),
    (2, 16, 16, 28, 28, 1, 2, (0, 0), 1, 1, 14, "fixed"),
    (1, 64, 64, 30, 30, 7, 3, (3, 3), 1, 1, (3, 3), "hierarchical"),
]


def check(device: torch.device) -> bool:
    """float64 forward/backward against the per-block reference on CUDA, every output
    buffer poisoned with NaN first (an unwritten element fails)."""
    real_empty = triton_impl._empty
    triton_impl._empty = lambda shape, dtype, dev: torch.full(shape, float("nan"), dtype=dtype, device=dev)
    ok = True
    try:
        for n, ci, co, h, w, k, s, p, d, g, bs, blocking in CHECK_CASES:
            for mode in MODES:
                rows, cols = block_grid(h, w, bs, blocking)
                args = ([s, s], list(p), [d, d], g, spans_to_bounds(rows), spans_to_bounds(cols), mode)
                x = torch.randn(n, ci, h, w, dtype=torch.float64, device=device)
                wt = torch.randn(co, ci // g, k, k, dtype=torch.float64, device=device)
                b = torch.randn(co, dtype=torch.float64, device=device)
                ref = block_conv2d_reference(x, wt, b, *args)
                out = triton_impl.forward(x, wt, b, *args)
                grad = torch.randn_like(ref)
                got = triton_impl.backward(grad, x, wt, b, *args)
                want = block_conv2d_reference_backward(grad, x, wt, b, *args)
                errors = [(out - ref).abs().max().item()] + [(a - r).abs().max().item() for a, r in zip(got, want)]
                good = all(e == e and e < 1e-8 for e in errors)  # e == e rejects NaN
                ok &= good
                print(f"{'ok  ' if good else 'FAIL'} {mode:9s} n{n} c{ci}->{co} {h}x{w} k{k} s{s} p{p} d{d} g{g} "
                      f"{blocking}{bs}: max |err| out/gx/gw/gb = " + " ".join(f"{e:.1e}" for e in errors))
    finally:
        triton_impl._empty = real_empty
    return ok


# ----------------------------------------------------------------------------- timing
def _divides(h: int, block_size, blocking: str) -> tuple[int, int] | None:
    rows, cols = block_grid(h, h, block_size, blocking)
    sizes = {b - a for a, b in rows} | {b - a for a, b in cols}
    return (rows[0][1], cols[0][1]) if len(sizes) == 1 else None


def _bench(fn, backward: bool, inputs) -> float:
    from triton.testing import do_bench

    if not backward:
        return do_bench(lambda: fn(*inputs))
    out = fn(*inputs)
    grad = torch.randn_like(out)

    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)

    return do_bench(step)


def time_case(name, c, h, groups, block_size, blocking, mode, dtype, backward, providers, device="cuda"):
    x = torch.randn(BATCH, c, h, h, device=device, dtype=dtype, requires_grad=backward)
    w = torch.randn(c, c // groups, 3, 3, device=device, dtype=dtype, requires_grad=backward)
    even = _divides(h, block_size, blocking)
    row = {"shape": name, "C": c, "H": h, "groups": groups, "blocking": f"{blocking}{block_size}", "mode": mode,
           "dtype": str(dtype).replace("torch.", ""), "pass": "fwd+bwd" if backward else "fwd"}
    fns = {
        "cudnn": lambda x, w: F.conv2d(x, w, None, 1, 1, 1, groups),
        "triton": lambda x, w: _triton(x, w, groups, block_size, blocking, mode),
    }
    if even is not None:
        def composition(x, w):
            return block_conv2d_composition(x, w, None, even[0], even[1], (1, 1), (1, 1), (1, 1), groups, mode)
        fns["composition"] = composition
        fns["compiled"] = torch.compile(composition, dynamic=False)
    for provider in providers:
        if provider not in fns:
            row[provider] = float("nan")
            continue
        row[provider] = _bench(fns[provider], backward, (x, w))
    return row


def _triton(x, w, groups, block_size, blocking, mode):
    with fuseops.use_backend("triton"):
        return fuseops.block_conv2d(x, w, None, 1, 1, 1, groups, block_size=block_size, padding_mode=mode,
                                    blocking=blocking)


def _time_all(args, dtypes, shapes, blockings, modes, providers) -> list[dict]:
    rows = []
    for dtype_name in args.dtypes.split(","):
        for name, c, h, groups in shapes:
            for block_size, blocking in blockings:
                for mode in modes:
                    for backward in (False, True):
                        row = time_case(name, c, h, groups, block_size, blocking, mode, dtypes[dtype_name],
                                        backward, providers)
                        floor = row.get("cudnn", float("nan"))
                        cells = " ".join(f"{p}={row[p]:.3f}ms({row[p] / floor:.2f}x)" for p in providers)
                        print(f"{dtype_name} {name:15s} {row['blocking']:18s} {mode:9s} {row['pass']:7s} {cells}",
                              flush=True)
                        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only the float64 correctness check")
    parser.add_argument("--quick", action="store_true", help="resnet c2/c4 + depthwise, F28 and H2x2, one mode")
    parser.add_argument("--dtypes", default="fp16,fp32", help="comma list of fp16, bf16, fp32 (tf32 on)")
    parser.add_argument("--providers", default="cudnn,triton,composition,compiled")
    parser.add_argument("--shapes", default=None, help="comma list of substrings of shape names (e.g. resnet,dw)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of padding modes")
    parser.add_argument("--out", default=None, help="write the rows as CSV here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU (this script has not been run yet: it was written without one)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}", end="")
    import triton

    print(f"; triton {triton.__version__}")
    ok = check(device)
    print("correctness:", "PASS" if ok else "FAIL")
    if args.check or not ok:
        return 0 if ok else 1

    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    shapes, blockings, modes = SHAPES, BLOCKINGS, tuple(args.modes.split(","))
    if args.shapes:
        shapes = [s for s in SHAPES if any(part in s[0] for part in args.shapes.split(","))]
    if args.quick:
        shapes = [SHAPES[0], SHAPES[2], SHAPES[-1]]
        blockings = [BLOCKINGS[1], BLOCKINGS[3]]
        modes = ("replicate",)
    providers = args.providers.split(",")
    # The custom op resolves its backend again in backward: keep "triton" in force for
    # the whole timing loop (the other providers do not call fuseops ops).
    with fuseops.use_backend("triton"):
        rows = _time_all(args, dtypes, shapes, blockings, modes, providers)
    if args.out:
        with open(args.out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
