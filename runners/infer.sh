#!/usr/bin/env bash
# Score your own videos (infer.py): per-frame scores (CSV/JSON), a plot, detected intervals,
# optionally a PGD-attacked comparison (--attack) and an annotated mp4 (--render).
# Usage: bash runners/infer.sh VIDEO [VIDEO ...] [more infer.py arguments, e.g. --attack --render]
# Edit the lines below (or set them in the environment) to pick the checkpoint and folder.
PRETRAINED=${PRETRAINED:-output/shanghai/advtrain/checkpoints/best.safetensors}
OUTPUT=${OUTPUT:-output/infer}
CONFIG=${CONFIG:-}    # empty: the config saved beside the checkpoint (checkpoints/<tag>.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -eq 0 ]]; then
    echo "usage: bash $0 VIDEO [VIDEO ...] [more infer.py arguments]" >&2
    exit 2
fi
ARGS=(--pretrained "$PRETRAINED" --output "$OUTPUT")
if [[ -n "$CONFIG" ]]; then ARGS+=(-cfg "$CONFIG"); fi
exec "${PYTHON:-python}" infer.py "${ARGS[@]}" "$@"
