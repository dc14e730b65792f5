"""Raw C++ FuSe kernel times (no Python dispatch, no autograd) against x.clone().

    taskset -c 0 python bench/fuse_cpu_kernel_micro.py [threads]   # default 1 thread

Prints, for K = 3, relu6, bias, N = 8 and MobileNetV2's plane sizes, the best of 7 rounds
of repeated calls in ms.  Used for the per-version numbers in docs/perf-notes.md
("FuSe CPU kernel"); one thread on one pinned core is the least noisy setting on a
shared machine.
"""

import sys
import time

import torch

from fuseops import _extension


def best_ms(fn, calls: int, rounds: int = 7) -> float:
    times = []
    for _ in range(rounds):
        fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return min(times)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    loaded, reason = _extension.load()
    if not loaded:
        raise SystemExit(reason)
    ops = torch.ops.fuseops_ext
    for full in (False, True):
        for channels, size in [(960, 7), (576, 14), (144, 56)]:
            x = torch.randn(8, channels, size, size)
            c_row = channels if full else channels // 2
            c_col = channels if full else channels - c_row
            w_row, w_col = torch.randn(c_row, 1, 1, 3), torch.randn(c_col, 1, 3, 1)
            bias = torch.randn(c_row + c_col)
            grad_out = torch.randn(8, c_row + c_col, size, size)
            calls = 200 if size < 30 else 30
            args = (w_row, w_col, bias, full, 1, 1, 1, "relu6")
            clone = best_ms(x.clone, calls)
            fwd = best_ms(lambda x=x, args=args: ops.fuse_conv2d_forward(x, *args), calls)
            bwd = best_ms(lambda x=x, g=grad_out, args=args: ops.fuse_conv2d_backward(g, x, *args), calls)
            name = f"{'full' if full else 'half'} {channels}x{size}x{size}"
            print(f"{name}: clone {clone:.3f}  fwd {fwd:.3f} ({fwd / clone:.2f}x clone)  bwd {bwd:.3f}", flush=True)


if __name__ == "__main__":
    main()
