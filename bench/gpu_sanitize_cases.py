"""The cases compute-sanitizer runs (bench/gpu_sanitize.sh): small, but covering the CUDA
kernels' edge paths, and one Triton case per op.

    python bench/gpu_sanitize_cases.py fuse_conv|block_pad|triton

Shapes are small (the sanitizer slows kernels ~100x) but cover odd sizes, several row
tiles, many rows per block, stride 2, dilation 2, K = 5, a ragged column chunk, the
wide-halo direct kernel, both weight-reduction modes (deterministic or not), and all
three block-pad modes with ragged blocks, NCHW and channels_last.
"""

from __future__ import annotations

import sys

import torch

import fuseops  # noqa: F401  (loads fuseops._C)
from fuseops import backends
from fuseops.block_conv.grid import block_grid
from fuseops.block_pad_canvas import block_pad_canvas
from fuseops.fuse_conv import fuse_conv2d

FUSE_CASES = [  # (n, c_row, c_col, h, w, k, stride, dilation, full, dtype)
    (2, 3, 4, 13, 29, 3, 1, 1, False, torch.float32),
    (1, 5, 5, 7, 7, 5, 2, 1, True, torch.float16),
    (2, 4, 3, 33, 1030, 3, 1, 2, False, torch.bfloat16),
    (1, 2, 0, 3, 14003, 3, 1, 7000, False, torch.float32),  # the wide-halo direct row kernel
]


def fuse_case(backend: str, n, c_row, c_col, h, w, k, stride, dilation, full, dtype) -> None:
    c = c_row if full else c_row + c_col
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtype, requires_grad=True)
    w_row = torch.randn(c_row, 1, 1, k, device="cuda", dtype=dtype, requires_grad=True)
    w_col = torch.randn(c_col, 1, k, 1, device="cuda", dtype=dtype, requires_grad=True)
    bias = torch.randn(c_row + c_col, device="cuda", dtype=dtype, requires_grad=True)
    with backends.use_backend(backend):
        out = fuse_conv2d(x, w_row, w_col, bias, variant="full" if full else "half", stride=stride,
                          dilation=dilation, activation="hardswish")
        out.backward(torch.randn_like(out))


def main(part: str) -> None:
    assert torch.cuda.is_available(), "needs a GPU"
    if part == "fuse_conv":
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            for case in FUSE_CASES:
                fuse_case("cuda", *case)
    elif part == "block_pad":
        for mode in ("constant", "replicate", "reflect"):
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(2, 3, 31, 29, device="cuda").to(memory_format=layout).requires_grad_()
                rows, cols = block_grid(31, 29, 14)  # ragged last blocks: 3 rows, 1 column
                # reflect needs padding < block size, so no W padding against the 1-wide block
                padding = (1, 1, 0, 0) if mode == "reflect" else (1, 1, 1, 1)
                out = block_pad_canvas(x, rows, cols, padding, mode, 2)
                out.backward(torch.randn_like(out))
    elif part == "triton":
        fuse_case("triton", *FUSE_CASES[0])
        x = torch.randn(2, 8, 17, 15, device="cuda", requires_grad=True)
        weight = torch.randn(16, 8, 3, 3, device="cuda", requires_grad=True)
        with backends.use_backend("triton"):
            out = fuseops.block_conv2d(x, weight, None, padding=1, block_size=6, padding_mode="reflect")
            out.backward(torch.randn_like(out))
    else:
        raise SystemExit(f"unknown part {part!r}: fuse_conv, block_pad or triton")
    torch.cuda.synchronize()
    print(f"{part}: ran")


if __name__ == "__main__":
    main(sys.argv[1])
