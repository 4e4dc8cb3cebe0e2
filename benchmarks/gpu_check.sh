#!/usr/bin/env bash
# The GPU figures in one command (<= 8 min on an H100/H200): estimate checks, the real ZeroScope
# step (s/step, peak memory, MFU), a 576x320x24 sampling run, the other bases' steps when they
# exist. Writes benchmarks/results/gpu_<date>.json. Without CUDA it says so and exits 0.
#   bash benchmarks/gpu_check.sh [--budget SECONDS] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch here; nothing measured (run it on a machine with a GPU)"
    exit 0
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
