"""The configuration tree: defaults <- YAML (with ``BASE`` inheritance) <- ``--opts`` <- flags.

Every key a run can read is declared in ``_defaults()``; anything else in a YAML file or in
``--opts`` is a typo and raises :class:`~utils.errors.ConfigError` naming the key and where it
came from (the YAML file, or ``--opts``). Values are type-checked against the default's type
(an int is accepted for a float key; a string such as ``8e-6``, which YAML 1.1 reads as text,
is accepted for a number key when it parses as one). ``docs/CONFIG.md`` lists every key.

Public API::

    build_arg_parser(description, groups) -> argparse.ArgumentParser   # utils/flags.py
    get_config(args) -> CfgNode                   # frozen
    load_config_file(path) -> CfgNode             # defaults <- YAML only, frozen
    get_default_config() -> CfgNode               # defaults only, not frozen
    merge_opts(cfg, opts) -> None                 # KEY VALUE pairs into an unfrozen cfg
    save_config(cfg, path) -> None                # YAML, atomic
    resolve_local_rank(args) -> int               # env LOCAL_RANK wins over the flag
"""
import difflib
import math
import os
import re
from pathlib import Path

import yaml
from yacs.config import CfgNode

from utils.config_values import validate_values
from utils.errors import ConfigError
from utils.flags import FlagDefault, build_arg_parser  # noqa: F401 (build_arg_parser: the stages' parser)
from utils.io import atomic_write_text

# Keys whose default is None accept None or a string; these strings mean None too.
_NONE_STRINGS = {"none", "null", "~", ""}
_INT_RE = re.compile(r"[+-]?\d+", re.ASCII)
_CHOICES = {
    ("TRAIN", "AMP"): ("none", "bf16"),
    ("TRAIN", "LR_SCALING"): ("none", "linear"),
    ("ADV_TRAIN", "LOSS"): ("mil", "ce"),
    ("ADV_TRAIN", "PSEUDO_LABEL_RULE"): ("argmax", "normal_quantile"),
    ("TRAIN", "SELECT"): ("test", "val", "last"),
    ("TRAIN", "MIL_NORMAL"): ("top", "all"),
    ("ADV_TRAIN", "SRD_MODE"): ("center", "gradcam"),
    # training.adv_attack.INITS / SCHEDULES
    ("ADV_TRAIN", "ATTACK_INIT"): ("clean", "uniform", "previous"),
    ("ADV_TRAIN", "ATTACK_SCHEDULE"): ("constant", "ramp"),
    ("ADV_TRAIN", "SRD_SEVERITY"): ("light", "medium", "heavy"),
    ("TEST", "NUM_CROP"): (1, 3),
    # the presets of datasets.synthetic.DATASET_PRESETS ('' = none)
    ("DATA", "SYNTHETIC_PRESET"): ("", "small", "default", "large"),
    # the names of attacks.registry.ATTACKS (utils/ imports nothing above it)
    ("ROBUSTNESS", "ATTACK"): ("pgd", "apgd-ce", "apgd-margin", "square", "transfer"),
    ("ROBUSTNESS", "SWEEP_ATTACK"): ("", "pgd", "apgd-ce", "apgd-margin", "square", "transfer"),
    ("ROBUSTNESS", "TRANSFER_ATTACK"): ("pgd", "apgd-ce", "apgd-margin"),
    ("DATA", "RESIZE"): ("published", "antialias"),
}
# Keys that existed once and were never read: setting one is an error that says what to do.
REMOVED_KEYS = {
    "DATA.DATASET": "the dataset is given by DATA.ROOT and the list files; delete the line",
    "TEST.NUM_CLIP": "test clips are one per segment of DATA.NUM_FRAMES * DATA.FRAME_INTERVAL frames; "
                     "delete the line",
    "AUG.LABEL_SMOOTH": "FrameShield's losses use no label smoothing; delete the line",
    "AUG.MIXUP": "FrameShield trains without mixup; delete the line",
    "AUG.CUTMIX": "FrameShield trains without cutmix; delete the line",
    "AUG.MIXUP_SWITCH_PROB": "FrameShield trains without mixup/cutmix; delete the line",
}
_POSITIVE_INTS = [
    ("DATA", "INPUT_SIZE"), ("DATA", "NUM_CLIPS"), ("DATA", "NUM_FRAMES"), ("DATA", "FRAME_INTERVAL"),
    ("DATA", "NUM_CLASSES"), ("DATA", "NUM_VIEWS"), ("TRAIN", "BATCH_SIZE"), ("TRAIN", "ACCUMULATION_STEPS"),
    ("TEST", "BATCH_SIZE"), ("ATTACK", "BATCH_SIZE"), ("ATTACK", "RESTARTS"),
    ("ROBUSTNESS", "STRONG_STEPS"), ("ROBUSTNESS", "SQUARE_QUERIES"),
    ("SAVE_FREQ",), ("PRINT_FREQ",),
]
W_SMOOTH_DEFAULT = 0.01
W_SPARSE_DEFAULT = 0.001


def _defaults():
    """The whole tree with its defaults (published FrameShield/X-CLIP behaviour)."""
    return {
        "DATA": {
            "ROOT": "", "TRAIN_FILE": "", "VAL_FILE": "", "VAL_SPLIT_FILE": "",
            "INPUT_SIZE": 224, "NUM_CLIPS": 16, "NUM_FRAMES": 5, "FRAME_INTERVAL": 6,
            "NUM_CLASSES": 2, "LABEL_LIST": "configs/labels_2.csv", "FILENAME_TMPL": "img_{:08}.jpg",
            "NUM_WORKERS": 2, "PIN_MEMORY": True, "PERSISTENT_WORKERS": False, "PREFETCH_FACTOR": 2,
            "NUM_VIEWS": 2, "COUNT_START_ZERO": False, "REPLACE_BAD_FRAMES": False,
            "ALLOW_OUTSIDE_ROOT": False, "RESIZE": "antialias", "SYNTHETIC_PRESET": "",
        },
        "MODEL": {
            "ARCH": "ViT-B/32", "DROP_PATH_RATE": 0.0, "PRETRAINED": None, "RESUME": None,
            "FIX_TEXT": True, "PROMPTS_ALPHA": 0.1, "PROMPTS_LAYERS": 2, "MIT_LAYERS": 1,
            "TRAIN_VIDEO_HEAD": False,
        },
        "TRAIN": {
            "EPOCHS": 40, "WARMUP_EPOCHS": 5, "WEIGHT_DECAY": 0.001, "LR": 8e-6, "BATCH_SIZE": 8,
            "ACCUMULATION_STEPS": 1, "LR_SCHEDULER": "cosine", "OPTIMIZER": "adamw",
            "AUTO_RESUME": False, "USE_CHECKPOINT": False, "AMP": "none", "CLIP_GRAD": 0.0,
            "USE_VIEW2": False, "W_SMOOTH": W_SMOOTH_DEFAULT, "W_SPARSE": W_SPARSE_DEFAULT,
            "MIL_DETACH_WEIGHT": False, "LR_SCALING": "none", "LR_BASE_BATCH": 0, "TENSORBOARD": True,
            "SELECT": "test", "MIL_NORMAL": "top", "MIL_ANOMALOUS_BOTTOM": False, "FUSED_OPTIMIZER": True,
            "COMPILE": False,
        },
        "ADV_TRAIN": {
            "EPS": 2.0, "LOSS": "mil", "PSEUDO_LABEL": False, "PSEUDO_ANOMALY": False,
            "PSEUDO_LABEL_FILE": "", "CLEAN_WEIGHT": 0.0, "SRD_PROB": 0.5, "SRD_SEVERITY": "medium",
            "SRD_MODE": "center", "GRADCAM_DIR": "",
            "PSEUDO_LABEL_RULE": "argmax", "PSEUDO_LABEL_QUANTILE": 0.95,
            "ATTACK_INIT": "clean", "ATTACK_SCHEDULE": "constant", "ATTACK_STEP_SIZE": -1.0,
            "FREE_UPDATE": False, "OVERFIT_CHECK_STEPS": 0, "OVERFIT_GAP": 0.2,
        },
        "ATTACK": {
            "EPS": -1.0, "STEPS": 10, "STEP_SIZE": -1.0, "RANDOM_START": False, "RESTARTS": 1,
            "BATCH_SIZE": 8,
        },
        "ROBUSTNESS": {
            "ATTACK": "pgd", "RESTARTS": 0, "SWEEP_EPS": [], "SWEEP_STEPS": [], "SWEEP_ATTACK": "",
            "STRONG_STEPS": 100, "SQUARE_QUERIES": 1000, "SQUARE_P_INIT": 0.8, "TRANSFER_FROM": "",
            "TRANSFER_ATTACK": "pgd", "REPORT": False, "REPORT_MODELS": [], "SANITY_TOL": 0.02,
        },
        "AUG": {"COLOR_JITTER": 0.8, "GRAY_SCALE": 0.2},
        "TEST": {"NUM_CROP": 1, "ONLY_TEST": False, "BATCH_SIZE": 8, "SMOOTH": True},
        "OUTPUT": "", "SAVE_FREQ": 1, "PRINT_FREQ": 10, "SEED": 1024,
        # Runtime only: filled by get_config from env LOCAL_RANK / --local-rank (-1 = not distributed).
        "LOCAL_RANK": -1,
    }


def get_default_config():
    """A fresh, unfrozen CfgNode holding only the defaults."""
    return CfgNode(_defaults())


# ---------------------------------------------------------------- value checking
def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def _coerce(value, default, key, source, from_text=False):
    """Return ``value`` converted to the type of ``default`` or raise ConfigError.

    ``from_text``: the value is a raw command-line string (``--opts``), so numbers and
    booleans are parsed from it; YAML values arrive already typed.
    """
    where = f"{key} (in {source})"
    if default is None:
        if value is None:
            return None
        if isinstance(value, str):
            return None if value.strip().lower() in _NONE_STRINGS else value
        raise ConfigError(f"{where}: expected a path string or None, got {_describe(value)}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
        raise ConfigError(f"{where}: expected true/false, got {_describe(value)}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            return int(value.strip())
        raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
    if isinstance(default, float):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {_describe(value)}")
        return number
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(
            f"{where}: expected a string, got {_describe(value)}; quote it in YAML ('...')"
        )
    if isinstance(default, (list, tuple)):
        if from_text and isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{where}: cannot read {value!r} as a list: {exc}") from None
        if isinstance(value, (list, tuple)):
            return type(default)(value)
        raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
    raise ConfigError(f"{where}: unsupported default type {type(default).__name__}")


def _unknown_key(full_key, known, source):
    if full_key in REMOVED_KEYS:
        return ConfigError(f"{full_key} in {source} was removed (it was never read): {REMOVED_KEYS[full_key]}")
    last = full_key.rsplit(".", 1)[-1]
    known = list(known)
    close = [last.upper()] if last.upper() in known else difflib.get_close_matches(last, known, n=1)
    hint = f"; did you mean {full_key.rsplit('.', 1)[0] + '.' if '.' in full_key else ''}{close[0]}?" if close else ""
    return ConfigError(
        f"unknown config key {full_key} in {source}{hint} (every key is listed in docs/CONFIG.md)"
    )


def _merge_mapping(cfg, mapping, source, prefix="", sources=None):
    """Merge a parsed YAML mapping into ``cfg`` (a CfgNode), checking keys and types;
    ``sources`` (a dict, when given) records ``source`` as where each key was set."""
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {prefix}{key!r} in {source} is not a name")
        full_key = prefix + key
        if key not in cfg:
            raise _unknown_key(full_key, cfg.keys(), source)
        current = cfg[key]
        if isinstance(current, CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{full_key} in {source} is a section; give it a mapping of keys, got {_describe(value)}"
                )
            _merge_mapping(current, value, source, full_key + ".", sources)
        else:
            cfg[key] = _coerce(value, current, full_key, source)
            if sources is not None:
                sources[full_key] = source


# ---------------------------------------------------------------- YAML files
def _read_yaml(path, source_chain):
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}{_chain_note(source_chain)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an impossible date such as 2001-13-45
        raise ConfigError(f"config file {path} holds a value YAML cannot build: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (DATA:, MODEL:, ...), got {type(data).__name__}"
        )
    return data


def _chain_note(chain):
    return f" (included through BASE from {chain[-1]})" if chain else ""


def _merge_file(cfg, path, chain=(), sources=None):
    """Merge ``path`` and, first, its BASE files (recursive, relative to ``path``)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"BASE inheritance cycle: {cycle}")
    data = _read_yaml(path, chain)
    bases = data.pop("BASE", [])
    if bases is None:
        bases = []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"BASE in {path} must be a list of YAML file paths, got {_describe(bases)}")
    for base in bases:
        if base.strip() == "":  # X-CLIP's configs carry BASE: [''] meaning "no base"
            continue
        if "\0" in base:
            raise ConfigError(f"BASE in {path} holds a NUL character in {base!r}; give YAML file paths")
        _merge_file(cfg, path.parent / base, (*chain, resolved), sources)
    _merge_mapping(cfg, data, str(path), sources=sources)


def merge_opts(cfg, opts, source="--opts", sources=None):
    """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` (dotted keys, raw strings) into unfrozen ``cfg``
    (``sources``: as in :func:`_merge_mapping`)."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(
            f"{source} takes KEY VALUE pairs, got an odd number of items ({len(opts)}): {opts}"
        )
    for key, value in zip(opts[0::2], opts[1::2]):
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source}: {key!r} is not a config key")
        node = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if part not in node:
                raise _unknown_key(".".join(parts[: depth + 1]), node.keys(), source)
            if depth < len(parts) - 1:
                node = node[part]
                if not isinstance(node, CfgNode):
                    raise ConfigError(f"{source}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        if isinstance(node[parts[-1]], CfgNode):
            example = next(iter(node[parts[-1]]))
            raise ConfigError(f"{source}: {key} is a section; set one of its keys (e.g. {key}.{example})")
        node[parts[-1]] = _coerce(value, node[parts[-1]], key, source, from_text=True)
        if sources is not None:
            sources[key] = source


def _validate(cfg, sources=None):
    """Check the choices, the cross-key rules and every value rule (utils/config_values.py)."""
    for (section, key), choices in _CHOICES.items():
        if cfg[section][key] not in choices:
            raise ConfigError(f"{section}.{key} must be one of {list(choices)}, got {cfg[section][key]!r}")
    for path in _POSITIVE_INTS:
        node = cfg
        for part in path:
            node = node[part]
        if node < 1:
            key = ".".join(path)
            where = f" (set in {sources[key]})" if sources and key in sources else ""
            raise ConfigError(f"{key}{where} must be at least 1, got {node}")
    if cfg.TRAIN.LR_BASE_BATCH < 0:
        raise ConfigError(f"TRAIN.LR_BASE_BATCH must be >= 0 (0 = BATCH_SIZE x ACCUMULATION_STEPS, one process), "
                          f"got {cfg.TRAIN.LR_BASE_BATCH}")
    if not 0 < cfg.ROBUSTNESS.SQUARE_P_INIT <= 1:
        raise ConfigError(f"ROBUSTNESS.SQUARE_P_INIT must be in (0, 1], got {cfg.ROBUSTNESS.SQUARE_P_INIT}")
    if cfg.ROBUSTNESS.RESTARTS < 0:
        raise ConfigError(f"ROBUSTNESS.RESTARTS must be >= 0 (0 = ATTACK.RESTARTS), got {cfg.ROBUSTNESS.RESTARTS}")
    if cfg.DATA.NUM_VIEWS > 2:
        raise ConfigError(f"DATA.NUM_VIEWS must be 1 or 2, got {cfg.DATA.NUM_VIEWS}")
    if cfg.TRAIN.SELECT == "val" and not cfg.DATA.VAL_SPLIT_FILE:
        raise ConfigError("TRAIN.SELECT 'val' keeps the epoch with the best AUC@all on a validation list, but "
                          "DATA.VAL_SPLIT_FILE is empty; give a test-format list of held-back training videos "
                          "(the synthetic dataset writes val.txt) or use TRAIN.SELECT 'test' or 'last'")
    if cfg.ADV_TRAIN.FREE_UPDATE and cfg.ADV_TRAIN.ATTACK_INIT != "previous":
        raise ConfigError("ADV_TRAIN.FREE_UPDATE updates each video's remembered perturbation, which needs "
                          f"ADV_TRAIN.ATTACK_INIT 'previous' (got {cfg.ADV_TRAIN.ATTACK_INIT!r}); set both or neither")
    if not 0 < cfg.ADV_TRAIN.PSEUDO_LABEL_QUANTILE < 1:
        raise ConfigError(f"ADV_TRAIN.PSEUDO_LABEL_QUANTILE must be in (0, 1), got {cfg.ADV_TRAIN.PSEUDO_LABEL_QUANTILE}")
    validate_values(cfg, sources)


def load_config_file(path):
    """Defaults <- the YAML at ``path`` (with its BASE files); frozen and validated."""
    cfg = get_default_config()
    sources = {}
    _merge_file(cfg, path, sources=sources)
    _validate(cfg, sources)
    cfg.freeze()
    return cfg


# ---------------------------------------------------------------- command line
def resolve_local_rank(args=None):
    """LOCAL_RANK from the environment (torchrun) if set, else ``args.local_rank``, else -1."""
    env = os.environ.get("LOCAL_RANK")
    if env is not None and env.strip() != "":
        if not _INT_RE.fullmatch(env.strip()) or int(env) < 0:
            raise ConfigError(f"environment variable LOCAL_RANK={env!r} is not an integer >= 0; "
                              "unset it (one process) or launch with torchrun")
        return int(env)
    value = getattr(args, "local_rank", -1) if args is not None else -1
    return -1 if value is None else int(value)


def _given(value):
    return value is not None and not isinstance(value, FlagDefault)


def apply_flags(cfg, args, flag_values, sources=None):
    """Set each config key whose flag was given: ``flag_values`` = [(attribute of args,
    (SECTION, KEY), flag name)]. Scripts register their own flags as ``args.config_flags``.
    ``sources``: as in :func:`_merge_mapping`."""
    for attr, path, flag in flag_values:
        value = getattr(args, attr, None)
        if _given(value):
            node = cfg
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = _coerce(value, node[path[-1]], ".".join(path), flag)
            if sources is not None:
                sources[".".join(path)] = flag
    return cfg


def get_config(args):
    """Defaults <- YAML (``args.config``) <- ``args.opts`` <- flags; frozen and validated.

    ``args`` is the namespace from :func:`build_arg_parser` (missing attributes count as
    not given, so a ``types.SimpleNamespace(config=...)`` works too).
    """
    config_path = getattr(args, "config", None)
    if not config_path:
        raise ConfigError("no config file given: pass -cfg/--config FILE.yaml")
    cfg = get_default_config()
    sources = {}
    _merge_file(cfg, config_path, sources=sources)
    merge_opts(cfg, getattr(args, "opts", None), sources=sources)
    flag_values = [
        ("output", ("OUTPUT",), "--output"),
        ("pretrained", ("MODEL", "PRETRAINED"), "--pretrained"),
        ("resume", ("MODEL", "RESUME"), "--resume"),
        ("batch_size", ("TRAIN", "BATCH_SIZE"), "--batch-size"),
        ("accumulation_steps", ("TRAIN", "ACCUMULATION_STEPS"), "--accumulation-steps"),
        ("w_smooth", ("TRAIN", "W_SMOOTH"), "--w-smooth"),
        ("w_sparse", ("TRAIN", "W_SPARSE"), "--w-sparse"),
    ]
    apply_flags(cfg, args, flag_values + list(getattr(args, "config_flags", None) or ()), sources)
    if getattr(args, "only_test", False):
        cfg.TEST.ONLY_TEST = True
    cfg.LOCAL_RANK = resolve_local_rank(args)
    _validate(cfg, sources)
    cfg.freeze()
    return cfg


def save_config(cfg, path):
    """Write ``cfg`` as YAML atomically; :func:`load_config_file` reads it back unchanged."""
    atomic_write_text(path, config_to_yaml(cfg))


def config_to_yaml(cfg):
    """The YAML text of ``cfg`` (plain types; None written as null)."""
    return yaml.safe_dump(_to_plain(cfg), sort_keys=False, default_flow_style=False)


def _to_plain(node):
    if isinstance(node, CfgNode):
        return {key: _to_plain(value) for key, value in node.items()}
    if isinstance(node, tuple):
        return [_to_plain(v) for v in node]
    return node
