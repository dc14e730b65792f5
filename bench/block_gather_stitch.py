"""Gather- and stitch-bound block conv cases: time over the plain conv, 1 thread, CPU time.

A thin side (C_out=4 or C_in=4) makes the conv cheap, so block time minus plain time is
mostly the gather (C_in large) or the output stitch (C_out large).  Compare two builds
side by side: PYTHONPATH=/work/main python bench/block_gather_stitch.py, then the branch.
"""

import statistics
import time

import torch
import torch.nn.functional as F

import fuseops
from fuseops.block_conv.api import block_conv2d


def median_ms(fn, rounds=30):
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def main():
    torch.set_num_threads(1)
    print(fuseops.__file__)
    for c_in, c_out, size, block in [
        (64, 4, 56, 14),
        (4, 64, 56, 14),
        (128, 4, 28, 7),
        (4, 128, 28, 7),
        (256, 4, 14, 7),
        (4, 256, 14, 7),
    ]:
        x = torch.randn(8, c_in, size, size)
        w = torch.randn(c_out, c_in, 3, 3)
        plain = median_ms(lambda x=x, w=w: F.conv2d(x, w, padding=1))
        blocked = median_ms(lambda x=x, w=w, b=block: block_conv2d(x, w, padding=1, block_size=b))
        print(
            f"{c_in:3d}->{c_out:3d} {size}x{size} F{block}: plain {plain:.2f} block {blocked:.2f} ms, "
            f"over plain {blocked - plain:.2f} ms"
        )


if __name__ == "__main__":
    main()
