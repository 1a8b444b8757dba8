#!/usr/bin/env bash
# Quick-start demo: the whole FrameShield pipeline on the embedded synthetic dataset
# (dataset, clean PromptMIL, pseudo labels, FrameShield + two ablations, PGD attack on all,
# summary table and plots in OUTPUT). Uses every visible GPU through torchrun, else the CPU.
# Usage: bash runners/demo.sh [demo.py arguments, e.g. --preset fast | --seeds 3 | --device cpu]
# Interrupted? Run the same command again: finished stages are reused, training resumes.
# OUTPUT=<folder> sets the output folder (default: output/demo, or output/demo_<preset>).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUTPUT:-}" ]; then
    exec "${PYTHON:-python}" demo.py --output "$OUTPUT" "$@"
fi
exec "${PYTHON:-python}" demo.py "$@"
