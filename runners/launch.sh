# Shared launcher for the runner scripts (sourced, not run).
#
# launch NUM_GPUS SCRIPT ARGS...
#   Starts NUM_GPUS processes of SCRIPT through torchrun: `python -m utils.dist` is
#   torch.distributed.run that, when a rank fails, prints that rank's one-line error last
#   (not the launcher's 25-line ChildFailedError traceback) and exits with its code: 2 for a
#   bad config, list, data or checkpoint (FrameShieldError), as a single process does.
#   How: each rank writes its one-line error to torchrun's TORCHELASTIC_ERROR_FILE
#   (training/stage.run_main -> utils/dist.record_error); the launcher reads it back.
#   With CUDA GPUs present, NUM_GPUS may not exceed their number (clear error otherwise);
#   with none, it starts NUM_GPUS CPU processes that use the gloo backend.
# Environment:
#   PYTHON        interpreter (default: python)
#   TORCHRUN_ARGS rendezvous flags for torchrun (default: --standalone); for several nodes
#                 e.g. TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint host0:29400"

launch() {
    local num="${1:-}"
    shift || true
    if [[ ! "$num" =~ ^[1-9][0-9]*$ ]]; then
        echo "usage: bash $0 NUM_GPUs [more arguments for the python script]" >&2
        echo "  NUM_GPUs must be a positive integer (got '${num}')" >&2
        return 2
    fi
    local python="${PYTHON:-python}"
    local found
    if [[ -n "${CUDA_VISIBLE_DEVICES+set}" && -z "${CUDA_VISIBLE_DEVICES}" ]]; then
        found=0  # GPUs hidden on purpose: no need to ask torch
    else
        found="$("$python" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')" || {
            echo "error: could not import torch with '$python'" >&2
            return 2
        }
    fi
    if [[ "$found" -eq 0 ]]; then
        echo "[runner] no CUDA GPU found: running ${num} CPU process(es) with the gloo backend" >&2
    elif [[ "$num" -gt "$found" ]]; then
        echo "error: asked for ${num} GPU(s) but only ${found} visible (CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES:-}')" >&2
        echo "  pass NUM_GPUs of at most ${found}, or make more GPUs visible (CUDA_VISIBLE_DEVICES)" >&2
        return 2
    fi
    # shellcheck disable=SC2086  # TORCHRUN_ARGS is a list of flags
    "$python" -m utils.dist ${TORCHRUN_ARGS:---standalone} --nproc_per_node "$num" "$@"
}
