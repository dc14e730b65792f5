#!/usr/bin/env bash
# compute-sanitizer over the kernels (cases: bench/gpu_sanitize_cases.py): memcheck with
# PyTorch's caching allocator off (so an out-of-bounds access inside a cached pool is seen)
# of the FuSe and block-pad CUDA kernels, racecheck and initcheck of the FuSe kernels (the
# block-pad kernels use no shared memory), memcheck of one Triton case per op.  Every
# kernel is checked, torch's too: a name filter that matched nothing would report "clean"
# without checking ours.  Each run has its own time limit; the exit status is non-zero on
# any report or time-out.  Part of the one-shot check (bench/gpu_check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
SAN=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
PY=${PYTHON:-python3}
LIMIT=${SANITIZE_LIMIT_S:-20}
[ -x "$SAN" ] || { echo "gpu_sanitize: compute-sanitizer not found (set COMPUTE_SANITIZER=...)"; exit 2; }

status=0
run() {  # tool, part
  echo "== compute-sanitizer --tool $1: $2"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$LIMIT" "$SAN" --tool "$1" --error-exitcode 1 \
    "$PY" bench/gpu_sanitize_cases.py "$2" || { echo "!! $1 $2: exit $?"; status=1; }
}
run memcheck fuse_conv
run racecheck fuse_conv
run initcheck fuse_conv
run memcheck block_pad
run memcheck triton
if [ $status -ne 0 ]; then echo "gpu_sanitize: errors reported"; else echo "gpu_sanitize: clean"; fi
exit $status
