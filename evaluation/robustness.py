"""Robustness evaluation beyond one PGD-10 run: which attacks run, sweeps, the driver.

What runs is configuration (saved with the run in config.yaml): ATTACK.* gives the budget
and steps (attacks.settings), ROBUSTNESS.* the main attack, restarts, sweeps, the --report
suite, Square's queries and p_init, the transfer source and the sanity tolerance; the flags
of main_attack.py (:func:`add_robustness_args`) only set those keys.

- :func:`plan_settings`: which (attack, eps, steps, restarts) settings run, in order.
- :func:`evaluate_robustness`: every setting on one pass of the test loader
  (evaluation.scoring), the sweeps, and the sanity checks (evaluation.sanity);
  :func:`run_robustness`: that for one or more checkpoints plus the report (evaluation.report).
"""
import argparse
import logging
import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from attacks.common import amp_dtype_from_config
from attacks.registry import ATTACKS, AttackSetting
from attacks.settings import attack_settings
from evaluation.report import METRIC_KEYS, format_table, write_robustness_report
from evaluation.sanity import input_gradient_stats, sanity_checks
from evaluation.scoring import model_device, records_metrics_fn, score_batches, score_loader, scores_by_video
from utils import dist
from utils.errors import ConfigError

logger = logging.getLogger("FrameShield.robustness")

DEFAULT_SWEEP_EPS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # 1/255 units
DEFAULT_SWEEP_STEPS = (1, 2, 5, 10, 20, 50)


# ----------------------------------------------------------------------------- metrics per setting
def metrics_of_settings(pass_result, settings, metrics_fn):
    """Rows {attack, eps, eps_255, steps, restarts, random_start, key, auc_all, auc_ano, ap,
    seconds, segments_per_s} per setting, plus the clean row (attack "none", eps 0)."""
    clean = {"attack": "none", "eps": 0.0, "eps_255": 0.0, "steps": 0, "restarts": 1, "random_start": False,
             "key": "clean", **_three(metrics_fn(pass_result["clean"]))}
    rows = []
    for s in settings:
        seconds = pass_result["seconds"][s.key]
        rows.append({**asdict(s), "eps_255": s.eps * 255, "key": s.key,
                     **_three(metrics_fn(pass_result["adversarial"][s.key])),
                     "seconds": seconds, "segments_per_s": pass_result["items"] / max(seconds, 1e-9)})
    return clean, rows


def _three(metrics):
    return {k: float(metrics.get(k, float("nan"))) for k in METRIC_KEYS}


# ----------------------------------------------------------------------------- sweeps
def sweep_eps(model, batches, text_tokens, attack, eps_list, steps, metrics_fn, generator=None, **kw):
    """Metrics versus eps ([0, 1] units; 0 = clean) for ``attack`` at ``steps``.

    batches: a re-iterable of (keys, videos, labels) (see evaluation.scoring.score_batches);
    metrics_fn({key: P(abnormal)}) -> dict with auc_all, auc_ano, ap.
    Returns {"attack", "steps", "eps_255": [...], "auc_all": [...], "auc_ano": [...], "ap": [...]}.
    """
    settings = [AttackSetting(attack, float(e), int(steps), **_setting_kw(kw)) for e in eps_list if e > 0]
    result = score_batches(model, batches, text_tokens, settings, generator=generator, **_pass_kw(kw))
    clean, rows = metrics_of_settings(result, settings, metrics_fn)
    return curve_from_rows([clean] + rows, "eps", attack=attack, steps=int(steps), eps_list=eps_list)


def sweep_steps(model, batches, text_tokens, attack, eps, steps_list, metrics_fn, generator=None, **kw):
    """Metrics versus steps (0 = clean) for ``attack`` at ``eps`` ([0, 1] units); as :func:`sweep_eps`."""
    settings = [AttackSetting(attack, float(eps), int(s), **_setting_kw(kw)) for s in steps_list if s > 0]
    result = score_batches(model, batches, text_tokens, settings, generator=generator, **_pass_kw(kw))
    clean, rows = metrics_of_settings(result, settings, metrics_fn)
    return curve_from_rows([clean] + rows, "steps", attack=attack, eps=float(eps), steps_list=steps_list)


def _setting_kw(kw):
    return {k: kw[k] for k in ("restarts", "random_start", "step_size") if k in kw}


def _pass_kw(kw):
    return {k: kw[k] for k in ("amp_dtype", "batch_size", "source_model", "source_attack") if k in kw}


def curve_from_rows(rows, axis, attack, steps=None, eps=None, eps_list=None, steps_list=None, restarts=None):
    """A sweep curve from result rows: the clean row at eps 0 / steps 0 plus ``attack`` rows
    at the other points (``axis`` "eps": rows with ``steps``; "steps": rows with ``eps``)."""
    clean = next(r for r in rows if r["attack"] == "none")
    points = []
    if axis == "eps":
        for e in eps_list:
            match = clean if e == 0 else _find(rows, attack, eps=e, steps=steps, restarts=restarts)
            if match is not None:
                points.append((match["eps_255"] if e > 0 else 0.0, match))
        curve = {"axis": "eps", "attack": attack, "steps": steps, "eps_255": [p[0] for p in points]}
    else:
        for s in steps_list:
            match = clean if s == 0 else _find(rows, attack, eps=eps, steps=s, restarts=restarts)
            if match is not None:
                points.append((int(s), match))
        curve = {"axis": "steps", "attack": attack, "eps_255": eps * 255, "steps": [p[0] for p in points]}
    for k in METRIC_KEYS:
        curve[k] = [p[1][k] for p in points]
    return curve


def _find(rows, attack, eps, steps, restarts=None):
    for r in rows:
        if (r["attack"] == attack and math.isclose(r["eps"], eps, rel_tol=1e-6, abs_tol=1e-12)
                and r["steps"] == steps and (restarts is None or r["restarts"] == restarts)):
            return r
    return None


# ----------------------------------------------------------------------------- flags and planning
class _ListOrDefault(argparse.Action):
    """``--sweep-eps`` / ``--sweep-steps``: the values given, or the default sweep when none."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(values) if values else list(self.const))


# flag -> config key: get_config sets each key whose flag was given (utils.config.apply_flags)
ROBUSTNESS_FLAGS = [
    ("attack", ("ROBUSTNESS", "ATTACK"), "--attack"),
    ("restarts", ("ROBUSTNESS", "RESTARTS"), "--restarts"),
    ("sweep_eps", ("ROBUSTNESS", "SWEEP_EPS"), "--sweep-eps"),
    ("sweep_steps", ("ROBUSTNESS", "SWEEP_STEPS"), "--sweep-steps"),
    ("sweep_attack", ("ROBUSTNESS", "SWEEP_ATTACK"), "--sweep-attack"),
    ("strong_steps", ("ROBUSTNESS", "STRONG_STEPS"), "--strong-steps"),
    ("square_queries", ("ROBUSTNESS", "SQUARE_QUERIES"), "--square-queries"),
    ("square_p_init", ("ROBUSTNESS", "SQUARE_P_INIT"), "--square-p-init"),
    ("transfer_from", ("ROBUSTNESS", "TRANSFER_FROM"), "--transfer-from"),
    ("transfer_attack", ("ROBUSTNESS", "TRANSFER_ATTACK"), "--transfer-attack"),
    ("report", ("ROBUSTNESS", "REPORT"), "--report"),
    ("report_models", ("ROBUSTNESS", "REPORT_MODELS"), "--report-models"),
    ("sanity_tol", ("ROBUSTNESS", "SANITY_TOL"), "--sanity-tol"),
]


def add_robustness_args(parser):
    """The robustness flags of main_attack.py: each sets one ROBUSTNESS key (docs/CONFIG.md),
    so what ran is saved in config.yaml and the same-run check sees it."""
    group = parser.add_argument_group("robustness evaluation (docs/ROBUSTNESS.md; each flag sets ROBUSTNESS.*)")
    group.add_argument("--attack", choices=sorted(ATTACKS), default=None,
                       help="main attack, ROBUSTNESS.ATTACK (default pgd = the published one at ATTACK.EPS/STEPS)")
    group.add_argument("--restarts", type=int, default=None,
                       help="restarts, batched, worst case kept; ROBUSTNESS.RESTARTS (default ATTACK.RESTARTS)")
    group.add_argument("--sweep-eps", type=float, nargs="*", default=None, metavar="EPS", action=_ListOrDefault,
                       const=DEFAULT_SWEEP_EPS, help="eps sweep in 1/255 units (no value: 0 0.25 0.5 1 2 4 8 16)")
    group.add_argument("--sweep-steps", type=int, nargs="*", default=None, metavar="STEPS", action=_ListOrDefault,
                       const=DEFAULT_SWEEP_STEPS, help="steps sweep (no value: 1 2 5 10 20 50)")
    group.add_argument("--sweep-attack", choices=sorted(ATTACKS), default=None,
                       help="attack of the sweeps (default: --attack)")
    group.add_argument("--strong-steps", type=int, default=None,
                       help="steps of the many-step PGD and APGD runs of --report (default 100)")
    group.add_argument("--square-queries", type=int, default=None,
                       help="queries of the Square attack (default 1000)")
    group.add_argument("--square-p-init", type=float, default=None,
                       help="initial fraction of pixels a Square proposal covers (default 0.8, the paper's)")
    group.add_argument("--transfer-from", default=None, metavar="CKPT",
                       help="source checkpoint of the transfer attack (same architecture config)")
    group.add_argument("--transfer-attack", choices=["pgd", "apgd-ce", "apgd-margin"], default=None,
                       help="attack run on the transfer source (default pgd)")
    group.add_argument("--report", action="store_true", default=None,
                       help="full suite (PGD, PGD-many+restarts, APGD-CE, APGD-margin, Square, transfer), "
                            "eps and steps sweeps, sanity checks, robustness.md")
    group.add_argument("--report-models", nargs="+", default=None, metavar="NAME=CKPT",
                       help="checkpoints to evaluate side by side (NAME=PATH or PATH)")
    group.add_argument("--sanity-tol", type=float, default=None,
                       help="AUC tolerance of the sanity checks (default 0.02)")
    parser.set_defaults(config_flags=ROBUSTNESS_FLAGS)
    return parser


def robustness_requested(cfg) -> bool:
    """Whether the ROBUSTNESS section asks for more than the published single PGD run."""
    r = cfg.ROBUSTNESS
    return bool(r.REPORT or r.REPORT_MODELS or r.SWEEP_EPS or r.SWEEP_STEPS or r.TRANSFER_FROM
                or r.ATTACK != "pgd" or r.RESTARTS)


def robustness_options(cfg) -> SimpleNamespace:
    """The ROBUSTNESS section as the names the planning code reads (None where unset)."""
    r = cfg.ROBUSTNESS
    return SimpleNamespace(
        attack=r.ATTACK, restarts=r.RESTARTS or None, sweep_eps=list(r.SWEEP_EPS) or None,
        sweep_steps=list(r.SWEEP_STEPS) or None, sweep_attack=r.SWEEP_ATTACK or None, strong_steps=r.STRONG_STEPS,
        square_queries=r.SQUARE_QUERIES, square_p_init=r.SQUARE_P_INIT, transfer_from=r.TRANSFER_FROM or None,
        transfer_attack=r.TRANSFER_ATTACK, report=r.REPORT, report_models=list(r.REPORT_MODELS) or None,
        sanity_tol=r.SANITY_TOL)


def parse_report_models(specs, default=None):
    """["NAME=PATH" | "PATH", ...] -> [(name, path)]; no specs -> [default] (if given)."""
    if not specs:
        return [default] if default is not None else []
    models = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise ConfigError(f"--report-models entry {spec!r}: use NAME=CHECKPOINT or CHECKPOINT")
        if name in {n for n, _ in models}:
            raise ConfigError(f"--report-models: the name {name!r} is used twice; name them NAME=CHECKPOINT")
        models.append((name, path))
    return models


def plan_settings(cfg):
    """The settings to run, in order, without duplicates -> (settings, plan dict).

    main: ``--attack`` at ATTACK.EPS / ATTACK.STEPS (queries for square), ``--restarts``.
    --report adds: the published PGD, PGD and both APGDs at ``--strong-steps`` with the
    restarts, Square, transfer (with --transfer-from), and the default sweeps unless given.
    Sweeps use ``--sweep-attack`` (default ``--attack``).
    """
    args = robustness_options(cfg)
    base = attack_settings(cfg)
    explicit_step = base["step_size"] if cfg.ATTACK.STEP_SIZE >= 0 else None  # else 2.5 * eps / steps per setting
    eps, steps = base["eps"], base["steps"]
    restarts = args.restarts if args.restarts is not None else base["restarts"]
    if restarts < 1:
        raise ConfigError(f"ROBUSTNESS.RESTARTS (--restarts) must be >= 1, got {restarts}")
    random_start = base["random_start"]  # False + restarts > 1: restart 0 at the clean clip, the others random
    transfer_source = getattr(args, "transfer_from", None)

    def make(attack, e, s, r=restarts, rs=random_start, queries=None):
        if attack == "square":  # its steps are queries: --square-queries unless a steps sweep gives them
            return AttackSetting("square", e, queries or args.square_queries, r, True, p_init=args.square_p_init)
        # ATTACK.STEP_SIZE belongs to ATTACK.EPS/STEPS; other budgets get 2.5 * eps / steps
        same_budget = s == steps and math.isclose(e, eps, rel_tol=1e-9)
        step_size = explicit_step if attack in ("pgd", "transfer") and same_budget else None
        return AttackSetting(attack, e, s, r, rs, step_size)

    main = make(args.attack, eps, steps)
    settings = [main]
    sweep_eps_list, sweep_steps_list = args.sweep_eps, args.sweep_steps
    if args.report:
        settings.append(make("pgd", eps, steps, 1, base["random_start"]))
        for attack in ("pgd", "apgd-ce", "apgd-margin"):
            settings.append(make(attack, eps, args.strong_steps))
        settings.append(make("square", eps, steps))
        if transfer_source:
            settings.append(make("transfer", eps, steps))
        sweep_eps_list = [] if sweep_eps_list is None else sweep_eps_list
        sweep_steps_list = [] if sweep_steps_list is None else sweep_steps_list
    if "transfer" in {s.attack for s in settings} and not transfer_source:
        raise ConfigError("--attack transfer needs --transfer-from CKPT (the model the attack is crafted on)")
    sweep_attack = args.sweep_attack or args.attack
    plan = {"main": main.key, "sweep_attack": sweep_attack, "restarts": restarts}
    if sweep_eps_list is not None:
        values = [float(e) for e in (sweep_eps_list or DEFAULT_SWEEP_EPS)]
        if any(e < 0 for e in values):
            raise ConfigError(f"--sweep-eps values must be >= 0 (1/255 units), got {values}")
        eps_settings = [make(sweep_attack, e / 255.0, steps) for e in sorted(set(values)) if e > 0]
        settings += eps_settings
        plan["sweep_eps"] = {"eps": [e / 255.0 for e in sorted(set(values))], "steps": eps_settings[0].steps
                             if eps_settings else steps}
    if sweep_steps_list is not None:
        values = sorted({int(s) for s in (sweep_steps_list or DEFAULT_SWEEP_STEPS)})
        if any(s < 0 for s in values):
            raise ConfigError(f"--sweep-steps values must be >= 0, got {values}")
        steps_settings = [make(sweep_attack, eps, s, queries=s) for s in values if s > 0]
        settings += steps_settings
        plan["sweep_steps"] = {"steps": [s.steps for s in steps_settings], "eps": eps,
                               "with_clean": 0 in values}
    unique = list({s.key: s for s in settings}.values())
    return unique, plan


def evaluate_robustness(model, loader, text_tokens, cfg, log=None, source_model=None, max_batches=None):
    """Robustness of one model on a test loader -> results dict (JSON-ready but for "videos").

    loader: the test loader (batches with imgs, vid, path, seg_start, seg_len, frame_inds;
        ``loader.dataset.records``); what runs comes from cfg.ATTACK and cfg.ROBUSTNESS.
    source_model: the transfer source (needed when a transfer setting runs).
    Returns {"clean": {auc_all, auc_ano, ap}, "main": row, "rows": [rows], "sweeps":
    {"eps": curve, "steps": curve}, "sanity": [checks], "gradients": {...}, "segments",
    "segments_per_s" (of the main attack), "settings": plan, "videos": {"clean": ...,
    "adversarial": ...} (per-video segment scores of the main attack, numpy arrays)}.
    """
    log = log or logger
    settings, plan = plan_settings(cfg)
    amp_dtype = amp_dtype_from_config(cfg, model_device(model))
    records = loader.dataset.records
    log.info("robustness: " + ", ".join(s.key for s in settings))
    gradients = {}

    def gradient_check(keys, videos, labels):  # on the first batch only
        if not gradients:
            flat = videos.reshape(-1, *videos.shape[-4:])
            crops = flat.shape[0] // videos.shape[0]
            gradients.update(input_gradient_stats(model, flat, text_tokens, labels.repeat_interleave(crops),
                                                  amp_dtype=amp_dtype))

    result = score_loader(model, loader, text_tokens, cfg, settings, desc="robustness", source_model=source_model,
                          source_attack=cfg.ROBUSTNESS.TRANSFER_ATTACK, batch_hook=gradient_check,
                          max_batches=max_batches)
    gradients = _gather_gradients(gradients)
    metrics_fn = records_metrics_fn(records, cfg.DATA.COUNT_START_ZERO, cfg.TEST.SMOOTH)
    clean, rows = metrics_of_settings(result, settings, metrics_fn)
    main = next(r for r in rows if r["key"] == plan["main"])
    sweeps = {}
    if "sweep_eps" in plan:
        sweeps["eps"] = curve_from_rows([clean] + rows, "eps", plan["sweep_attack"], steps=plan["sweep_eps"]["steps"],
                                        eps_list=plan["sweep_eps"]["eps"], restarts=plan["restarts"])
    if "sweep_steps" in plan:
        steps_list = ([0] if plan["sweep_steps"]["with_clean"] else []) + plan["sweep_steps"]["steps"]
        sweeps["steps"] = curve_from_rows([clean] + rows, "steps", plan["sweep_attack"], eps=plan["sweep_steps"]["eps"],
                                          steps_list=steps_list, restarts=plan["restarts"])
    checks = sanity_checks(clean, rows, gradients, tolerance=cfg.ROBUSTNESS.SANITY_TOL, log=log)
    log.info(format_table({"model": {"clean": clean, "rows": rows}}))
    return {"clean": clean, "main": main, "rows": rows, "sweeps": sweeps, "sanity": checks, "gradients": gradients,
            "segments": result["items"], "segments_per_s": main["segments_per_s"], "settings": plan,
            "videos": {"clean": scores_by_video(result["clean"]),
                       "adversarial": scores_by_video(result["adversarial"][plan["main"]])}}


def _gather_gradients(stats):
    """Sum the first-batch gradient statistics of every rank (None when no rank had a batch)."""
    parts = [p for p in dist.all_gather_object(stats or None) if p]
    if not parts:
        return None
    total = {k: sum(p[k] for p in parts) for k in ("clips", "zero_clips", "nonfinite_clips")}
    total["mean_abs"] = float(np.nanmean([p["mean_abs"] for p in parts]))
    return total


def run_robustness(stage, loader, text_tokens, build_model, weights=None):
    """Evaluate one or more checkpoints and write the report (rank 0) -> {name: results}.

    stage: training.stage.Stage (cfg, logger, output, is_main). build_model: callable(path or
    None) -> model (e.g. ``lambda w: stages.build_model(stage, w)``). weights: the stage's
    checkpoint, used when --report-models is not given. Writes OUTPUT/robustness.json,
    OUTPUT/plots/robustness_*.png and, with --report, OUTPUT/robustness.md.
    """
    args = robustness_options(stage.cfg)
    models = parse_report_models(args.report_models,
                                 default=(Path(str(weights)).stem if weights else "model", weights))
    source = None
    if args.transfer_from:
        source = build_model(args.transfer_from)
        stage.logger.info(f"transfer source: {args.transfer_from}")
    results = {}
    for name, path in models:
        stage.logger.info(f"robustness of {name} ({path or 'random weights'})")
        model = build_model(path)
        results[name] = evaluate_robustness(model, loader, text_tokens, stage.cfg, stage.logger,
                                            source_model=source)
        results[name]["checkpoint"] = path
        del model
    if stage.is_main:
        write_robustness_report(stage.output, results, markdown=bool(args.report),
                                transfer_from=args.transfer_from)
    return results
