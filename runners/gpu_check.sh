#!/usr/bin/env bash
# The GPU check (issue 18): train step, PGD-10, SRD, loader and inference throughput in fp32
# and bf16 autocast, plus a 2-epoch tiny pipeline in both precisions (AUC within 0.01).
# One GPU, under 5 minutes. Result: OUT/gpu_check.json (default output/gpu_check); read
# docs/BENCHMARKS.md "GPU check". Usage: bash runners/gpu_check.sh [--out DIR] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
exec "$PYTHON" benchmarks/gpu_check.py "$@"
