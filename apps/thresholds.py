"""Which config and which score threshold infer.py uses for a checkpoint.

The training stages store the score threshold chosen on the validation frames (max F1) in
``checkpoints/<tag>.state.pt`` (``extra.score_threshold`` in ``best``, and
``extra.threshold.f1`` in every checkpoint of a training run; see training.engine.fit); a
checkpoint without one uses :data:`DEFAULT_THRESHOLD`, logged as a warning.
"""
import logging
from pathlib import Path

from training.checkpoint import checkpoint_file
from training.checkpoint_checks import check_threshold, load_state_file
from utils.errors import CheckpointError, ConfigError

logger = logging.getLogger("FrameShield.inference")

DEFAULT_THRESHOLD = 0.5  # P(abnormal) > 0.5: the model's own class decision
# A stored threshold outside [LOW, HIGH] was chosen on the scores of a model that hardly leaves 0
# (or 1): on another video it flags (or misses) nearly every frame, so infer.py warns.
EXTREME_THRESHOLDS = (0.05, 0.95)


def resolve_config_path(config, weights) -> Path:
    """``config`` when given, else the ``<tag>.yaml`` a FrameShield checkpoint has beside it.
    A ``weights`` path that does not exist is a CheckpointError (before any config is looked for)."""
    if weights and not Path(weights).exists():
        raise CheckpointError(f"--pretrained {weights} does not exist; pass the trained checkpoint "
                              "(e.g. output/<run>/checkpoints/best.safetensors, or a published FrameShield "
                              "model: README 'Pretrained weights')")
    if config:
        return Path(config)
    if weights:
        beside = checkpoint_file(weights, ".yaml")
        if beside.is_file():
            return beside
    raise ConfigError(f"no -cfg given and no config file beside the checkpoint {weights} "
                      "(FrameShield checkpoints have checkpoints/<tag>.yaml); pass -cfg CONFIG.yaml")


def read_stored_threshold(weights):
    """``(threshold or None, where it came from)`` from ``<tag>.state.pt`` beside ``weights``."""
    state_file = checkpoint_file(weights, ".state.pt")
    if not state_file.is_file():
        return None, f"no {state_file.name} beside the checkpoint"
    state = load_state_file(state_file, mmap=True)
    where = f"checkpoint state {state_file}"
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds a {type(state).__name__}, not a checkpoint state dict; pass "
                              "--threshold T, or use the checkpoint's original files")
    extra = state.get("extra", {})
    if not isinstance(extra, dict):
        raise CheckpointError(f"{where}: 'extra' must be a dict, got {type(extra).__name__}; pass --threshold T, "
                              "or use the checkpoint's original files")
    # best.*: extra.score_threshold; every checkpoint of a training run also carries the
    # training state's threshold dict (that of the best evaluation so far)
    value, key = extra.get("score_threshold"), "extra.score_threshold"
    if value is None:
        stored = extra.get("threshold")
        if stored is not None and not isinstance(stored, dict):
            raise CheckpointError(f"{where}: 'extra.threshold' must be a dict, got {type(stored).__name__}; "
                                  "pass --threshold T, or use the checkpoint's original files")
        value, key = (stored or {}).get("f1"), "extra.threshold.f1"
    value = check_threshold(value, f"{where}, '{key}'")
    if value is None:
        return None, f"{state_file.name} holds no score threshold"
    return value, f"{state_file} ({key}, max F1 on the validation frames)"


def resolve_threshold(cli_value, weights, log=logger):
    """``(threshold, source text, origin)``: the flag (origin "flag"), else the checkpoint's
    ("checkpoint"), else :data:`DEFAULT_THRESHOLD` ("default", logged as a warning)."""
    if cli_value is not None:
        if not 0.0 <= cli_value <= 1.0:
            raise ConfigError(f"--threshold must be within [0, 1] (a probability), got {cli_value}")
        return float(cli_value), "--threshold", "flag"
    stored, why = read_stored_threshold(weights) if weights else (None, "no checkpoint")
    if stored is not None:
        low, high = EXTREME_THRESHOLDS
        if not low <= stored <= high:
            log.warning(
                f"the stored score threshold {stored:.4g} ({why}) is {'below' if stored < low else 'above'} "
                f"{low if stored < low else high}: it was chosen on the validation scores of a model whose scores "
                f"sit near {0 if stored < low else 1}, so on your videos it marks {'nearly every' if stored < low else 'almost no'} "
                f"frame as anomalous; pass --threshold T (the model's own decision is {DEFAULT_THRESHOLD})")
        return stored, why, "checkpoint"
    log.warning(f"the checkpoint has no stored score threshold ({why}); using the default "
                f"{DEFAULT_THRESHOLD} (P(abnormal) > 0.5); pass --threshold to choose one")
    return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} ({why})", "default"
