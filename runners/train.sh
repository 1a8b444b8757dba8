#!/usr/bin/env bash
# Stage 1: clean PromptMIL training (main.py); evaluates on the test list every SAVE_FREQ epochs.
# Usage: bash runners/train.sh NUM_GPUs [more main.py arguments, e.g. --opts TRAIN.EPOCHS 10]
# Edit the lines below (or set them in the environment) to pick the dataset and folders.
CONFIG=${CONFIG:-configs/shanghai/shanghai_server.yaml}
OUTPUT=${OUTPUT:-output/shanghai/promptmil}                # checkpoints/best.safetensors feeds the next stages
PRETRAINED=${PRETRAINED-weights/k400_16_8.pth}             # X-CLIP/CLIP weights; empty = random init (ARCH preset)
set -euo pipefail
cd "$(dirname "$0")/.."
source runners/launch.sh
ARGS=(-cfg "$CONFIG" --output "$OUTPUT")
if [[ -n "$PRETRAINED" ]]; then ARGS+=(--pretrained "$PRETRAINED"); fi
launch "${1:-}" main.py "${ARGS[@]}" "${@:2}"
