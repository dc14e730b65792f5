#!/usr/bin/env bash
# The one-shot GPU check (bench/gpu_check.py has the stages): from the repo root on a lent
# GPU, with $OUT set by the device tool.  --plan prints the stages and the time budget.
#
#     bash bench/gpu_check.sh            # writes $OUT/summary.md, results.json, logs.txt
#     bash bench/gpu_check.sh --plan
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
