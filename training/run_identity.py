"""Which config keys make two runs "the same run" in one output folder.

A folder is compared with a new run only on the keys its contents depend on (see
docs/CONFIG.md, "Output folders"):

===================  ==========================================  ===================================
folder holds          what made it                                keys compared
===================  ==========================================  ===================================
``checkpoints/*``     a training stage (main.py, main_advtrain.py)  every key but the run-mode keys,
                                                                  ``ROBUSTNESS.*`` and ``ATTACK.EPS``
                                                                  (never read by training)
``pseudo_labels.json`` stage 2a (main_advtrain.py --only_test)   the scoring keys: ``DATA.*`` but
                                                                  ``NUM_CLIPS``/``NUM_VIEWS`` (training
                                                                  clips only), ``MODEL.*``, ``TEST.*``,
                                                                  ``SEED``, ``TRAIN.AMP``
results.json ``test``  main.py --only_test                       the scoring keys
results.json, stage    main_attack.py                            the scoring keys, ``ATTACK.*``,
``attack``                                                         ``ADV_TRAIN.EPS``, ``ROBUSTNESS.*``
other results          unknown                                    every key but the run-mode keys
nothing of the above   a run that failed before any result        nothing: the folder is not a run
===================  ==========================================  ===================================

So the training after stage 2a may change what only training reads (``TRAIN.EPOCHS``,
``ADV_TRAIN.*``, ...) in the folder of its pseudo labels, and a run that failed before writing
anything (a missing list file, a typo) leaves no "run" behind. The run-mode keys
(:data:`RUN_MODE_KEYS`) are never compared: they say how a run is executed, not what it
computes. A key absent from an older config.yaml counts as its default value.

:func:`evaluation_folder` keeps one kind of run from replacing another's results: an evaluation
in a folder of another kind writes into a subfolder (``test/``, ``attack/``), stage 2a refuses a
folder holding a training, a training refuses a folder of evaluation results.
"""
import json
from pathlib import Path

import yaml

from utils.errors import ConfigError

# Keys that say how a run is executed, not what it computes; they may differ between the
# runs sharing one output folder (e.g. pseudo-label generation and the training after it).
RUN_MODE_KEYS = {
    "OUTPUT", "LOCAL_RANK", "PRINT_FREQ", "TEST.ONLY_TEST", "TEST.BATCH_SIZE", "MODEL.RESUME",
    "TRAIN.AUTO_RESUME", "DATA.NUM_WORKERS", "DATA.PIN_MEMORY", "DATA.PERSISTENT_WORKERS",
    "DATA.PREFETCH_FACTOR", "ATTACK.BATCH_SIZE", "TRAIN.TENSORBOARD", "DATA.SYNTHETIC_PRESET",
}
# Files whose presence marks a folder as holding results.
RESULT_FILES = ("results.json", "scores.npz", "pseudo_labels.json")

SCORING = ("DATA.", "MODEL.", "TEST.", "SEED", "TRAIN.AMP")
ATTACKING = SCORING + ("ATTACK.", "ADV_TRAIN.EPS", "ROBUSTNESS.")
NOT_READ_BY_TRAINING = ("ROBUSTNESS.", "ATTACK.EPS")
TRAINING_CLIPS_ONLY = ("DATA.NUM_CLIPS", "DATA.NUM_VIEWS")  # how training clips are drawn, not segments


def folder_contents(output: Path) -> list[str]:
    """What ``output`` holds: a list of "training", "pseudo_labels", "evaluation", "attack",
    "unknown" (empty: nothing that makes it a run)."""
    output = Path(output)
    kinds = []
    if any((output / "checkpoints").glob("*")):
        kinds.append("training")
    if (output / "pseudo_labels.json").exists():
        kinds.append("pseudo_labels")
    results = output / "results.json"
    if results.exists():
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # unreadable or deeply nested: a folder of unknown results
            data = None
        if not isinstance(data, dict):
            kinds.append("unknown")
        elif data.get("stage") == "attack":
            kinds.append("attack")
        elif "test" in data:
            kinds.append("evaluation")
        elif "pseudo_labels" in data and "history" not in data:
            kinds.append("pseudo_labels")
        elif "training" not in kinds:
            kinds.append("unknown")  # a finished training's results without its checkpoints
    elif (output / "scores.npz").exists() and not kinds:
        kinds.append("unknown")
    return sorted(set(kinds))


def read_run_config(config_file: Path) -> dict:
    """The mapping in a folder's ``config.yaml`` (written by an earlier run), read back to
    compare it with a new run; ConfigError naming the file when it is not a YAML mapping
    (a list, a scalar, bytes that are not UTF-8, nesting too deep to parse)."""
    config_file = Path(config_file)
    try:
        tree = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as err:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"{config_file} (the config of the run in this folder) cannot be read "
                          f"({type(err).__name__}: {err}); choose another --output, or pass --overwrite") from err
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{config_file} (the config of the run in this folder) is a {type(tree).__name__}, not "
                          "a mapping of config keys; choose another --output, or pass --overwrite")
    return tree


def _matches(key, prefixes):
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def compared_keys(kinds, keys) -> set:
    """The keys among ``keys`` (flat ``SECTION.KEY`` names) that a folder holding ``kinds`` is
    compared on (module docstring)."""
    keys = set(keys) - RUN_MODE_KEYS
    chosen = set()
    for kind in kinds:
        if kind == "training":
            chosen |= {k for k in keys if not _matches(k, NOT_READ_BY_TRAINING)}
        elif kind in ("pseudo_labels", "evaluation"):
            chosen |= {k for k in keys if _matches(k, SCORING) and not _matches(k, TRAINING_CLIPS_ONLY)}
        elif kind == "attack":
            chosen |= {k for k in keys if _matches(k, ATTACKING) and not _matches(k, TRAINING_CLIPS_ONLY)}
        else:
            chosen |= keys
    return chosen


# the kind of results (training.run_identity.folder_contents) each evaluation-only stage writes,
# and the subfolder it writes into when its --output holds results of another kind
_EVALUATIONS = {"promptmil": ("evaluation", "test"), "advtrain": ("pseudo_labels", None),
                "attack": ("attack", "attack"), "infer": ("infer", "infer")}
_KNOWN_KINDS = {"training", "pseudo_labels", "evaluation", "attack"}


def evaluation_folder(name, cfg, output: Path, overwrite=False):
    """``(folder, note)``: where stage ``name`` writes, so that it never replaces the config.yaml,
    results.json, scores.npz, metrics.csv or plots/ of another kind of run in ``output``.

    An evaluation (TEST.ONLY_TEST, or the attack stage) in a folder holding another kind of
    results writes into ``output/test`` (``output/attack``) and sets cfg.OUTPUT to it (note:
    the line to log); stage 2a refuses a folder holding a training, whose pseudo_labels.json it
    would replace (ConfigError), and a training refuses a folder of evaluation or attack results;
    ``overwrite`` lets both write anyway. Results of an unknown kind are left to
    :func:`training.stage.check_output_folder`, except for infer.py (``name`` "infer"), which
    has no such check and so moves away from any run's results.
    """
    if name not in _EVALUATIONS:  # gradcam.py: its own folder rule (masks beside nothing else)
        return output, None
    kinds = set(folder_contents(output))
    if name != "infer":
        kinds &= _KNOWN_KINDS
    evaluating = cfg.TEST.ONLY_TEST or name in ("attack", "infer")
    if not evaluating:
        others = kinds & {"evaluation", "attack"}
        if others and not overwrite:
            raise ConfigError(
                f"output folder {output} holds {' and '.join(sorted(others))} results (results.json, scores.npz, "
                "plots/) that training here would replace; choose another --output, or pass --overwrite")
        return output, None
    own, subfolder = _EVALUATIONS.get(name, ("evaluation", "test"))
    others = kinds - {own}
    if not others:
        return output, None
    if subfolder is None:
        if "training" in others and not overwrite:
            raise ConfigError(
                f"output folder {output} holds a training run (checkpoints/) that used its pseudo_labels.json; "
                "generating pseudo labels there would replace them and the run's results.json and config.yaml. "
                "Choose a new --output for stage 2a (and train stage 2b there), or pass --overwrite")
        return output, None
    target = output / subfolder
    cfg.defrost()
    cfg.OUTPUT = str(target)
    cfg.freeze()
    return target, (f"{output} holds a {'/'.join(sorted(others))} run: this {own} writes into {target}, "
                    f"leaving that run's config.yaml, results.json, scores.npz and plots/ as they are")
