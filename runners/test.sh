#!/usr/bin/env bash
# Stage 1 test: score the test list with a trained checkpoint (main.py --only_test).
# Usage: bash runners/test.sh NUM_GPUs [more main.py arguments, e.g. --opts TEST.SMOOTH False]
# Edit the lines below (or set them in the environment) to pick the dataset and folders.
CONFIG=${CONFIG:-configs/shanghai/shanghai_server.yaml}
OUTPUT=${OUTPUT:-output/shanghai/promptmil_test}
PRETRAINED=${PRETRAINED-output/shanghai/promptmil/checkpoints/best.safetensors}   # written by train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source runners/launch.sh
ARGS=(-cfg "$CONFIG" --output "$OUTPUT" --only_test)
if [[ -n "$PRETRAINED" ]]; then ARGS+=(--pretrained "$PRETRAINED"); fi
launch "${1:-}" main.py "${ARGS[@]}" "${@:2}"
