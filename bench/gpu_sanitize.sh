#!/usr/bin/env bash
# compute-sanitizer over the CUDA kernels: memcheck and racecheck of fuse_conv2d forward
# and backward, memcheck of the block-pad gather and scatter.  Needs a GPU and a CUDA
# build of fuseops._C:
#
#     FUSEOPS_CUDA=1 pip install --no-build-isolation -e .
#     bash bench/gpu_sanitize.sh            # exit status non-zero on any error report
#
# Shapes are small (the sanitizer slows kernels down ~100x) but cover: odd sizes,
# several row tiles, many rows per block, stride 2, dilation 2, K = 5, a ragged
# column chunk, the wide-halo direct kernel, both weight-reduction modes, and all
# three block-pad modes with ragged blocks, NCHW and channels_last.
#
# STATUS: written without a GPU; never run.
set -euo pipefail
cd "$(dirname "$0")/.."
SAN=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
PY=${PYTHON:-python3}
[ -x "$SAN" ] || { echo "gpu_sanitize: compute-sanitizer not found (set COMPUTE_SANITIZER=...)"; exit 2; }

driver=$(mktemp --suffix=.py)
trap 'rm -f "$driver"' EXIT
cat > "$driver" <<'PY'
import sys

import torch

import fuseops  # noqa: F401  (loads fuseops._C)
from fuseops import backends
from fuseops.block_conv.grid import block_grid
from fuseops.block_pad_canvas import block_pad_canvas
from fuseops.fuse_conv import fuse_conv2d

assert torch.cuda.is_available(), "needs a GPU"
part = sys.argv[1]
if part == "fuse_conv":
    cases = [  # (n, c_row, c_col, h, w, k, stride, dilation, full, dtype)
        (2, 3, 4, 13, 29, 3, 1, 1, False, torch.float32),
        (1, 5, 5, 7, 7, 5, 2, 1, True, torch.float16),
        (2, 4, 3, 33, 1030, 3, 1, 2, False, torch.bfloat16),
        (1, 2, 0, 3, 14003, 3, 1, 7000, False, torch.float32),  # direct row kernel
    ]
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        for n, cr, cc, h, w, k, s, d, full, dtype in cases:
            c = cr if full else cr + cc
            x = torch.randn(n, c, h, w, device="cuda", dtype=dtype, requires_grad=True)
            wr = torch.randn(cr, 1, 1, k, device="cuda", dtype=dtype, requires_grad=True)
            wc = torch.randn(cc, 1, k, 1, device="cuda", dtype=dtype, requires_grad=True)
            b = torch.randn(cr + cc, device="cuda", dtype=dtype, requires_grad=True)
            with backends.use_backend("cuda"):
                out = fuse_conv2d(x, wr, wc, b, variant="full" if full else "half", stride=s, dilation=d,
                                  activation="hardswish")
                out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
elif part == "block_pad":
    for mode in ("constant", "replicate", "reflect"):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 3, 31, 29, device="cuda").to(memory_format=layout).requires_grad_()
            rows, cols = block_grid(31, 29, 14)  # ragged last blocks: 3 rows, 1 column
            # reflect needs padding < block size, so no W padding against the 1-wide block
            padding = (1, 1, 0, 0) if mode == "reflect" else (1, 1, 1, 1)
            out = block_pad_canvas(x, rows, cols, padding, mode, 2)
            out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
print(f"{part}: ran")
PY

status=0
run() {
  # Every kernel is checked (torch's too): a name filter that matched nothing would
  # report "clean" without checking ours.
  echo "== compute-sanitizer --tool $1 : $2"
  "$SAN" --tool "$1" --error-exitcode 1 \
    "$PY" "$driver" "$2" || status=1
}
run memcheck fuse_conv
run racecheck fuse_conv
run synccheck fuse_conv
run memcheck block_pad
run racecheck block_pad
if [ $status -ne 0 ]; then echo "gpu_sanitize: errors reported"; else echo "gpu_sanitize: clean"; fi
exit $status
