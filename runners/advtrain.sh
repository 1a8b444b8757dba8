#!/usr/bin/env bash
# Stage 2b: FrameShield adversarial training (main_advtrain.py); reads OUTPUT/pseudo_labels.json from genlabels.sh.
# Usage: bash runners/advtrain.sh NUM_GPUs [more main_advtrain.py arguments, e.g. --opts ADV_TRAIN.EPS 1.0]
# Edit the lines below (or set them in the environment) to pick the dataset and folders.
CONFIG=${CONFIG:-configs/shanghai/shanghai_advtrain.yaml}
OUTPUT=${OUTPUT:-output/shanghai/advtrain}                 # same folder as genlabels.sh
PRETRAINED=${PRETRAINED-output/shanghai/promptmil/checkpoints/best.safetensors}   # start from the stage-1 model
set -euo pipefail
cd "$(dirname "$0")/.."
source runners/launch.sh
ARGS=(-cfg "$CONFIG" --output "$OUTPUT")
if [[ -n "$PRETRAINED" ]]; then ARGS+=(--pretrained "$PRETRAINED"); fi
launch "${1:-}" main_advtrain.py "${ARGS[@]}" "${@:2}"
