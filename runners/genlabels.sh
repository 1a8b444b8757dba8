#!/usr/bin/env bash
# Stage 2a: pseudo labels (main_advtrain.py --only_test) -> OUTPUT/pseudo_labels.json.
# Usage: bash runners/genlabels.sh NUM_GPUs [more main_advtrain.py arguments, e.g. --opts DATA.NUM_WORKERS 4]
# Edit the lines below (or set them in the environment) to pick the dataset and folders.
CONFIG=${CONFIG:-configs/shanghai/shanghai_advtrain.yaml}
OUTPUT=${OUTPUT:-output/shanghai/advtrain}                 # the SAME folder advtrain.sh trains in: it reads pseudo_labels.json from here
PRETRAINED=${PRETRAINED-output/shanghai/promptmil/checkpoints/best.safetensors}   # written by train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source runners/launch.sh
ARGS=(-cfg "$CONFIG" --output "$OUTPUT" --only_test)
if [[ -n "$PRETRAINED" ]]; then ARGS+=(--pretrained "$PRETRAINED"); fi
launch "${1:-}" main_advtrain.py "${ARGS[@]}" "${@:2}"
