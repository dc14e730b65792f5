"""Raw C++ FuSe op times in a hot loop (torch.ops.fuseops_ext, no Python layers), next to
x.clone() and torch.cat([x, x], 1) (the full variant's bytes), at 1 and 2 threads.

    taskset -c 0,1 python bench/fuse_cpu_raw.py [--backward]

Used for the per-version figures in docs/perf-notes.md ("FuSe CPU kernel", v8-v12).
Hot-loop times keep x in cache; docs/benchmarks.md has the interleaved, cache-cold table.
"""

import argparse
import time

import torch

from fuseops import _extension

SHAPES = ((960, 7), (576, 14), (384, 14), (192, 28), (144, 56))


def best_ms(calls: int, fn, *args) -> float:
    """Best of 5 rounds of `calls` calls of fn(*args), ms per call."""
    for _ in range(10):
        fn(*args)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backward", action="store_true", help="also time the backward op")
    args = parser.parse_args()
    loaded, reason = _extension.load()
    if not loaded:
        raise SystemExit(reason)
    forward, backward = torch.ops.fuseops_ext.fuse_conv2d_forward, torch.ops.fuseops_ext.fuse_conv2d_backward
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for channels, size in SHAPES:
            x = torch.randn(8, channels, size, size)
            calls = 40 if size >= 56 else 200
            row = [f"clone {best_ms(calls, torch.clone, x):.3f}", f"cat {best_ms(calls, torch.cat, [x, x], 1):.3f}"]
            for k in (3, 5):
                for full in (False, True):
                    c_row, c_col = (channels, channels) if full else (channels // 2, channels - channels // 2)
                    weights = (torch.randn(c_row, 1, 1, k), torch.randn(c_col, 1, k, 1), torch.randn(c_row + c_col))
                    options = (full, 1, k // 2, 1, "relu6")
                    name = f"{'full' if full else 'half'} K{k}"
                    row.append(f"{name} {best_ms(calls, forward, x, *weights, *options):.3f}")
                    if args.backward:
                        grad = torch.randn(8, c_row + c_col, size, size)
                        row.append(f"bwd {best_ms(calls // 2, backward, grad, x, *weights, *options):.3f}")
            print(f"threads {threads} {channels}x{size}x{size}: " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()
