#!/usr/bin/env bash
# Throughput of every FrameShield part on this machine (GPU when present, else CPU):
# train step and peak memory (tiny, ViT-B/32; 16 x 5-frame videos), PGD-10 attacked clips/s,
# SRD ms/frame, loader items/s. Results: stdout (Markdown) and output/bench/bench_<device>.json.
# Usage: bash runners/bench.sh [benchmarks/bench_all.py arguments, e.g. --quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEVICE=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
mkdir -p output/bench
exec "$PYTHON" benchmarks/bench_all.py --json "output/bench/bench_${DEVICE}.json" "$@"
