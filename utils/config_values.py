"""The value rules of the config tree: one table, key -> what a value must be.

``utils.config`` coerces every value to its key's type; this module checks what the value
means (a learning rate above zero, a probability in [0, 1], a file-name template that formats
one frame number), so a bad value fails when the config is read, naming the key, where it was
set (the YAML file, ``--opts`` or the flag) and what to do, instead of a traceback (or a silent
wrong run) deep inside the loader, the optimizer or the attack. ``validate_values`` is called
by ``utils.config._validate`` on every merged config; docs/CONFIG.md lists the rules.

Each rule is ``(check, requirement, hint)``: ``check(value)`` is True for a good value.
Keys without a rule are booleans, choices (``utils.config._CHOICES``) or free numbers whose
every finite value means something (``ATTACK.EPS`` < 0 inherits ``ADV_TRAIN.EPS``,
``ATTACK.STEP_SIZE`` < 0 is 2.5 * eps / steps, ``MODEL.PROMPTS_ALPHA``).
"""
import math
import re
import string
from collections.abc import Callable, Mapping

from utils.errors import ConfigError

Rule = tuple[Callable[[object], bool], str, str]

# A seed is added to the rank and worker numbers and handed to torch ([-2**63, 2**64)) and
# numpy (modulo 2**32); negative seeds work everywhere.
MAX_SEED = 2**62
# The width/zero-padding of a frame number: '', '05', '08d', 'd' (no fill, sign or precision).
_FRAME_SPEC = re.compile(r"0?\d{0,2}d?", re.ASCII)


def _range(low=None, high=None, low_open=False, high_open=False) -> Callable[[object], bool]:
    def check(value) -> bool:
        if low is not None and (value <= low if low_open else value < low):
            return False
        return not (high is not None and (value >= high if high_open else value > high))
    return check


def _all(check: Callable[[object], bool], kind: type) -> Callable[[object], bool]:
    """A list rule: every element is a finite ``kind`` (not a bool) for which ``check`` holds."""
    def check_list(values) -> bool:
        return all(isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) and check(v)
                   for v in values)
    return check_list


def _no_nul(value) -> bool:
    return value is None or "\x00" not in value


def _paths_ok(values) -> bool:
    return all(isinstance(v, str) and "\x00" not in v for v in values)


_PROBABILITY = (_range(0.0, 1.0), "a probability in [0, 1]", "0 = never, 1 = always (a share of the clips)")
_PATH = (_no_nul, "a path without NUL characters", "retype the path")

VALUE_RULES: dict[str, Rule] = {
    "DATA.ROOT": _PATH, "DATA.TRAIN_FILE": _PATH, "DATA.VAL_FILE": _PATH, "DATA.VAL_SPLIT_FILE": _PATH,
    "DATA.LABEL_LIST": _PATH,
    "DATA.NUM_WORKERS": (_range(0), ">= 0", "0 loads in the training process; N starts N loader processes"),
    "DATA.PREFETCH_FACTOR": (_range(1), ">= 1", "batches each loader worker prepares ahead (unused with "
                             "DATA.NUM_WORKERS 0); the default is 2"),
    "MODEL.DROP_PATH_RATE": (_range(0.0, 1.0, high_open=True), "in [0, 1)", "the published value is 0.0"),
    "MODEL.PRETRAINED": _PATH, "MODEL.RESUME": _PATH,
    "MODEL.PROMPTS_LAYERS": (_range(0), ">= 0", "0 = no prompt-generator block; the published value is 2"),
    "MODEL.MIT_LAYERS": (_range(0), ">= 0", "0 = no cross-frame attention block; the published value is 1"),
    "TRAIN.EPOCHS": (_range(1), ">= 1", "to evaluate a checkpoint without training pass --only_test"),
    "TRAIN.WARMUP_EPOCHS": (_range(0), ">= 0", "0 = no warmup"),
    "TRAIN.LR": (_range(0.0, low_open=True), "> 0", "the published value is 8e-6"),
    "TRAIN.WEIGHT_DECAY": (_range(0.0), ">= 0", "0 = no weight decay; the published value is 0.001"),
    "TRAIN.CLIP_GRAD": (_range(0.0), ">= 0", "0 = no gradient clipping"),
    "TRAIN.W_SMOOTH": (_range(0.0), ">= 0", "a negative weight rewards rough scores; 0 turns the term off"),
    "TRAIN.W_SPARSE": (_range(0.0), ">= 0", "a negative weight rewards dense scores; 0 turns the term off"),
    "ADV_TRAIN.EPS": (_range(0.0), ">= 0 (1/255 units)", "the published value is 2.0"),
    "ADV_TRAIN.CLEAN_WEIGHT": (_range(0.0, 1.0), "in [0, 1]", "the loss is (1 - w) * adversarial + w * clean"),
    "ADV_TRAIN.SRD_PROB": _PROBABILITY,
    "ADV_TRAIN.PSEUDO_LABEL_FILE": _PATH, "ADV_TRAIN.GRADCAM_DIR": _PATH,
    "ATTACK.STEPS": (_range(0), ">= 0", "0 = no attack (clean scores twice)"),
    "ADV_TRAIN.OVERFIT_CHECK_STEPS": (_range(0), ">= 0", "0 = no overfitting check, 10 = a PGD-10 check"),
    "ROBUSTNESS.SWEEP_EPS": (_all(_range(0.0), (int, float)), "a list of budgets >= 0 (1/255 units)",
                             "e.g. [0, 0.5, 2, 4] (write 0.001, not 1e-3, which YAML reads as text)"),
    "ROBUSTNESS.SWEEP_STEPS": (_all(_range(0), int), "a list of whole step counts >= 0", "e.g. [1, 10, 50]"),
    "ROBUSTNESS.TRANSFER_FROM": _PATH,
    "ROBUSTNESS.REPORT_MODELS": (_paths_ok, "a list of NAME=CKPT strings", "e.g. ['clean=a.safetensors']"),
    "ROBUSTNESS.SANITY_TOL": (_range(0.0, 1.0), "an AUC difference in [0, 1]", "the default is 0.02"),
    "AUG.COLOR_JITTER": _PROBABILITY, "AUG.GRAY_SCALE": _PROBABILITY,
    "OUTPUT": _PATH,
    "SEED": (_range(-MAX_SEED, MAX_SEED), "in [-2^62, 2^62]", "e.g. 1024"),
}


def filename_template_problem(template: str) -> str:
    """What is wrong with a frame file-name template, or '' when it formats frame numbers.

    A template holds exactly one replacement field for the frame number (``{}``, ``{:05}``,
    ``{:08d}``, ``{0:04}``): no second field, no attribute or index access (``{0.real}``,
    ``{x[0]}``), no string or float format (``{:s}``, ``{:.2f}``), and two frame numbers give
    two different names without a path separator (a frame is a file inside its video's folder).
    """
    try:
        fields = [f for f in string.Formatter().parse(template) if f[1] is not None]
    except ValueError as err:  # '{' or '}' unbalanced
        return f"is not a format string ({err}); write a literal brace as '{{{{' or '}}}}'"
    if len(fields) != 1:
        return (f"must hold exactly one replacement field for the frame number, found {len(fields)}; "
                "e.g. 'img_{:08}.jpg'")
    _, name, spec, conversion = fields[0]
    if name not in ("", "0"):
        return f"has the field {{{name}}}: the frame number is the only value, write {{}} or {{:05}}"
    if conversion is not None:
        return f"converts the frame number with !{conversion}; drop it"
    if not _FRAME_SPEC.fullmatch(spec or ""):
        return (f"formats the frame number with ':{spec}'; use a zero-padded width such as "
                "{:05} or {:08d} (no string, float or nested format)")
    first, second = template.format(0), template.format(1)
    if first == second:
        return "gives the same name to every frame"
    if any(sep in first for sep in ("/", "\\", "\x00")) or first in (".", ".."):
        return "must name a file inside the video's frame folder (no '/', '\\' or '..')"
    return ""


def validate_values(cfg, sources: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError for the first value of ``cfg`` that breaks its rule (module docstring).

    ``sources``: where each dotted key was last set (a YAML file, ``--opts``, a flag), named
    in the message when known.
    """
    sources = sources or {}

    def where(key: str) -> str:
        return f" (set in {sources[key]})" if key in sources else ""

    for key, (check, requirement, hint) in VALUE_RULES.items():
        value = _get(cfg, key)
        if not check(value):
            raise ConfigError(f"{key}{where(key)} must be {requirement}, got {value!r}; {hint}")
    problem = filename_template_problem(cfg.DATA.FILENAME_TMPL)
    if problem:
        raise ConfigError(f"DATA.FILENAME_TMPL{where('DATA.FILENAME_TMPL')} {cfg.DATA.FILENAME_TMPL!r} {problem}")


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node
