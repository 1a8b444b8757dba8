#!/usr/bin/env bash
# Stage 3: PGD attack evaluation (main_attack.py): clean vs adversarial AUC on the test list.
# Usage: bash runners/attack.sh NUM_GPUs [more main_attack.py arguments, e.g. --opts ATTACK.EPS 1 ATTACK.STEPS 50]
# Edit the lines below (or set them in the environment) to pick the dataset and folders.
CONFIG=${CONFIG:-configs/shanghai/shanghai_attack.yaml}
OUTPUT=${OUTPUT:-output/shanghai/attack}
PRETRAINED=${PRETRAINED-output/shanghai/advtrain/checkpoints/best.safetensors}    # the model under attack
set -euo pipefail
cd "$(dirname "$0")/.."
source runners/launch.sh
ARGS=(-cfg "$CONFIG" --output "$OUTPUT")
if [[ -n "$PRETRAINED" ]]; then ARGS+=(--pretrained "$PRETRAINED"); fi
launch "${1:-}" main_attack.py "${ARGS[@]}" "${@:2}"
