"""One provider in a plain loop (no interleaving), for perf tools:

    taskset -c 0,1 perf stat -e page-faults python bench/block_conv_loop.py block 300
    taskset -c 0,1 perf stat -e page-faults python bench/block_conv_loop.py plain 300

3x3 conv 64x56x56 -> 64, N=8, block_size 14 (or --block-size), 2 threads.  Prints the mean
ms per call; subtract a run with 0 calls to get the faults per call (docs/perf-notes.md,
"Page faults: scratch buffers kept per thread").
"""

import argparse
import time

import torch
import torch.nn.functional as F

import fuseops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("provider", choices=("plain", "block"))
    parser.add_argument("calls", type=int)
    parser.add_argument("--block-size", type=int, default=14)
    args = parser.parse_args()
    torch.set_num_threads(2)
    x, w, b = torch.randn(8, 64, 56, 56), torch.randn(64, 64, 3, 3), torch.randn(64)
    if args.provider == "block":
        def call():
            return fuseops.block_conv2d(x, w, b, 1, 1, block_size=args.block_size)
    else:
        def call():
            return F.conv2d(x, w, b, 1, 1)
    with torch.no_grad():
        for _ in range(20):
            call()
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
    if args.calls:
        print(f"{args.provider}: {(time.perf_counter() - start) / args.calls * 1e3:.2f} ms per call")


if __name__ == "__main__":
    main()
