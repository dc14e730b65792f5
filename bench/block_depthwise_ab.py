"""Depthwise block conv next to the plain depthwise conv, in one process: the A/B script
behind docs/perf-notes.md ("Fifth session").

    taskset -c 0,1 python bench/block_depthwise_ab.py LABEL

N=8, 128x56x56, 3x3, bias, stride 1, padding 1, 2 threads; every provider runs in 10
interleaved rounds of 15 calls and the best round's mean is printed (ms).  To compare two
builds, copy each build's fuseops/_C*.so in place in turn and run this script after each,
alternating a few times: the shared machine drifts more between minutes than between builds.
"""

import sys
import time

import torch
import torch.nn.functional as F

import fuseops


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "build"
    torch.set_num_threads(2)
    x = torch.randn(8, 128, 56, 56)
    weight = torch.randn(128, 1, 3, 3)
    bias = torch.randn(128)
    x_leaf, w_leaf = x.clone().requires_grad_(), weight.clone().requires_grad_()
    grad_out = torch.randn(8, 128, 56, 56)

    def blocked(block_size, blocking, mode):
        return lambda: fuseops.block_conv2d(x, weight, bias, padding=1, groups=128, block_size=block_size,
                                            blocking=blocking, padding_mode=mode)

    providers = {"plain": lambda: F.conv2d(x, weight, bias, padding=1, groups=128)}
    for name, block_size, blocking in (("F14", 14, "fixed"), ("F28", 28, "fixed"), ("H4x4", (4, 4), "hierarchical")):
        for mode in ("constant", "reflect"):
            providers[f"{name} {mode}"] = blocked(block_size, blocking, mode)
    providers["F14 reflect fwd+bwd"] = lambda: torch.autograd.grad(
        fuseops.block_conv2d(x_leaf, w_leaf, None, padding=1, groups=128, block_size=14, padding_mode="reflect"),
        (x_leaf, w_leaf), grad_out)
    providers["plain fwd+bwd"] = lambda: torch.autograd.grad(
        F.conv2d(x_leaf, w_leaf, None, padding=1, groups=128), (x_leaf, w_leaf), grad_out)

    best = dict.fromkeys(providers, float("inf"))
    for fn in providers.values():
        for _ in range(5):
            fn()
    for _ in range(10):
        for name, fn in providers.items():
            start = time.perf_counter()
            for _ in range(15):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / 15 * 1e3)
    print(label, "  ".join(f"{name}={ms:.3f}" for name, ms in best.items()), flush=True)


if __name__ == "__main__":
    main()
