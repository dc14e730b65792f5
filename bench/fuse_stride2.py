"""The stride-2 FuSe layers of MobileNetV2 (N = 8, K = 3, relu6, bias), C++ backend against
the reference and x.clone(), forward and forward+backward, interleaved, best of 7 rounds.

    taskset -c 0,1 python bench/fuse_stride2.py

Not part of issue 2's table (its shapes are stride 1); used for docs/perf-notes.md v17.
"""

import time

import torch

import fuseops
from fuseops.fuse_conv import fuse_conv2d_reference

SHAPES = ((96, 112), (144, 56), (192, 28), (576, 14))  # (C, H = W) at the layer's input


def best_ms(fns, calls: int, rounds: int = 7) -> list[float]:
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / calls * 1e3)
    return best


def main() -> None:
    torch.set_num_threads(2)
    for channels, size in SHAPES:
        for variant in ("half", "full"):
            full = variant == "full"
            c_row = channels if full else (channels + 1) // 2
            c_col = channels if full else channels - c_row
            leaves = [torch.randn(8, channels, size, size), torch.randn(c_row, 1, 1, 3), torch.randn(c_col, 1, 3, 1),
                      torch.randn(c_row + c_col)]
            x = leaves[0]

            def cpu(leaves=leaves, variant=variant):
                return fuseops.fuse_conv2d(*leaves, variant=variant, stride=2, activation="relu6")

            def ref(leaves=leaves, full=full):
                return fuse_conv2d_reference(*leaves, full, 2, 1, 1, "relu6")

            with torch.no_grad():
                torch.testing.assert_close(cpu(), ref(), rtol=1e-4, atol=1e-4)
                clone_ms, ref_ms, cpu_ms = best_ms([x.clone, ref, cpu], calls=10)
            for t in leaves:
                t.requires_grad_()
            grad = torch.randn_like(ref())
            def steps(fn, leaves=leaves, grad=grad):
                return lambda: torch.autograd.grad(fn(), leaves, grad)

            ref_fb, cpu_fb = best_ms([steps(ref), steps(cpu)], calls=5, rounds=5)
            print(f"{variant} {channels}x{size}x{size} stride 2: fwd clone {clone_ms:.3f} ref {ref_ms:.3f} "
                  f"cpu {cpu_ms:.3f} (ref/cpu {ref_ms / cpu_ms:.1f}x, cpu/clone {cpu_ms / clone_ms:.2f}); "
                  f"fwd+bwd ref {ref_fb:.2f} cpu {cpu_fb:.2f} (ref/cpu {ref_fb / cpu_fb:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
