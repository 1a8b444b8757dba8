"""The one place that turns the config into attack settings (eps, steps, step size, starts).

Stage 2 attacks at ADV_TRAIN.EPS while training; stage 3, the robustness suite and infer.py
attack at ATTACK.EPS, where ATTACK.EPS < 0 (the default) inherits ADV_TRAIN.EPS, so the
published way to change the budget (``--opts ADV_TRAIN.EPS 2``) reaches every stage. Both
share ATTACK.STEPS, ATTACK.STEP_SIZE (< 0 = the published 2.5 * eps / steps),
ATTACK.RANDOM_START and ATTACK.RESTARTS. Budgets in the returned dict are in [0, 1] units.
"""
from attacks.pgd import default_step_size
from utils.errors import ConfigError

PURPOSES = ("eval", "train")
# The keys of the stage-3 attack; their config defaults are the published main_attack.py attack
# (PGD-10, step 2.5 * eps / steps, eps = ADV_TRAIN.EPS, no random start, one restart).
EVAL_ATTACK_KEYS = ("ATTACK.EPS", "ATTACK.STEPS", "ATTACK.STEP_SIZE", "ATTACK.RANDOM_START", "ATTACK.RESTARTS")


def published_eval_attack_opts() -> list:
    """``--opts`` pairs that set EVAL_ATTACK_KEYS to the published stage-3 values. infer.py puts
    them before the user's --opts when its config is the one saved beside a checkpoint: an
    adversarially trained checkpoint's config holds the training attack (e.g. ATTACK.STEPS 3)."""
    from utils.config import get_default_config

    defaults = get_default_config()
    pairs = []
    for key in EVAL_ATTACK_KEYS:
        section, name = key.split(".")
        pairs += [key, str(defaults[section][name])]
    return pairs


def attack_settings(cfg, purpose="eval") -> dict:
    """Keyword arguments of attacks.pgd.pgd for ``purpose`` ("eval": stage 3, robustness and
    infer.py; "train": the stage-2 inner attack), with the step size resolved.

    Returns {"eps", "steps", "step_size", "random_start", "restarts"} ([0, 1] units) plus
    "eps_key" (which config key gave the budget) and "step_size_rule".
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if purpose == "train":
        eps_255, eps_key = float(cfg.ADV_TRAIN.EPS), "ADV_TRAIN.EPS"
    elif cfg.ATTACK.EPS >= 0:
        eps_255, eps_key = float(cfg.ATTACK.EPS), "ATTACK.EPS"
    else:
        eps_255, eps_key = float(cfg.ADV_TRAIN.EPS), "ADV_TRAIN.EPS (ATTACK.EPS < 0 inherits it)"
    steps, restarts, random_start = int(cfg.ATTACK.STEPS), int(cfg.ATTACK.RESTARTS), bool(cfg.ATTACK.RANDOM_START)
    if eps_255 < 0:
        raise ConfigError(f"{eps_key.split()[0]} must be >= 0 (1/255 units), got {eps_255}")
    if steps < 0:
        raise ConfigError(f"ATTACK.STEPS must be >= 0, got {steps}")
    if restarts < 1:
        raise ConfigError(f"ATTACK.RESTARTS must be >= 1, got {restarts}")
    if restarts > 1 and not random_start:
        raise ConfigError("ATTACK.RESTARTS > 1 repeats the same deterministic attack; "
                          "set ATTACK.RANDOM_START True or RESTARTS 1")
    eps = eps_255 / 255.0
    if cfg.ATTACK.STEP_SIZE >= 0:
        step_size, rule = cfg.ATTACK.STEP_SIZE / 255.0, "ATTACK.STEP_SIZE"
    else:
        step_size, rule = default_step_size(eps, steps), "2.5 * eps / steps (ATTACK.STEP_SIZE < 0)"
    return {"eps": eps, "steps": steps, "step_size": step_size, "random_start": random_start,
            "restarts": restarts, "eps_key": eps_key, "step_size_rule": rule}


def pgd_kwargs(settings: dict) -> dict:
    """The entries of :func:`attack_settings` that attacks.pgd.pgd takes."""
    return {k: settings[k] for k in ("eps", "steps", "step_size", "random_start", "restarts")}


def describe(settings: dict) -> str:
    """One log line: the budget in 1/255 units and where it came from."""
    return (f"PGD: eps {settings['eps'] * 255:g}/255 (from {settings['eps_key']}), {settings['steps']} steps of "
            f"{settings['step_size'] * 255:g}/255 ({settings['step_size_rule']}), random start "
            f"{settings['random_start']}, restarts {settings['restarts']}")
