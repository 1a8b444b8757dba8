"""Robustness evaluation beyond one PGD-10 run: attack registry, sweeps, sanity checks, report.

Pieces (all attacks from :mod:`attacks.strong`, eps in [0, 1] units):
- ``ATTACKS`` / :func:`run_attack`: every attack by name behind one signature.
- :class:`AttackSetting`, :func:`plan_settings`: which (attack, eps, steps, restarts) runs.
- :func:`attack_batches`: one pass over batches of segments, every setting applied to each
  batch (so a video loader decodes each segment once), adversarial P(abnormal) collected.
- :func:`sweep_eps`, :func:`sweep_steps`: metrics versus eps / steps, given a function that
  maps segment scores to metrics.
- :func:`sanity_checks`: the checks of Carlini et al. / Croce & Hein against gradient masking
  and weak attacks, each failed one logged as a warning.
- :func:`evaluate_robustness`: all of it on a test loader (the attack stage calls this);
  :func:`run_robustness`: that for one or more checkpoints plus the report;
  :func:`write_robustness_report`: ``robustness.md``, ``robustness.json`` and sweep plots.
"""
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from attacks import strong as sa
from utils.errors import ConfigError

logger = logging.getLogger("FrameShield.robustness")

DEFAULT_SWEEP_EPS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # 1/255 units
DEFAULT_SWEEP_STEPS = (1, 2, 5, 10, 20, 50)
WHITE_BOX = ("pgd", "apgd-ce", "apgd-margin")
GRADIENT_FREE = ("square",)
METRIC_KEYS = ("auc_all", "auc_ano", "ap")


# ----------------------------------------------------------------------------- registry
def _pgd(model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
    return sa.pgd(model, videos, text_tokens, clip_labels, eps, steps=steps, generator=generator, **kw)


def _apgd_ce(model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
    return sa.apgd(model, videos, text_tokens, clip_labels, eps, steps=steps, loss="ce", generator=generator, **kw)


def _apgd_margin(model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
    return sa.apgd(model, videos, text_tokens, clip_labels, eps, steps=steps, loss="margin", generator=generator,
                   **kw)


def _square(model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
    kw.pop("step_size", None)
    return sa.square(model, videos, text_tokens, clip_labels, eps, steps=steps, generator=generator, **kw)


def _transfer(model, videos, text_tokens, clip_labels, eps, steps, generator=None, source_model=None,
              source_attack="pgd", **kw):
    if source_model is None:
        raise ConfigError("the transfer attack needs a source model (--transfer-from CKPT)")
    if source_attack != "pgd":
        kw.pop("step_size", None)
    return sa.transfer(source_model, videos, text_tokens, clip_labels, eps, steps=steps,
                       source_attack=source_attack, generator=generator, **kw)


ATTACKS = {"pgd": _pgd, "apgd-ce": _apgd_ce, "apgd-margin": _apgd_margin, "square": _square, "transfer": _transfer}


def run_attack(name, model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
    """Adversarial videos [N, T, 3, H, W] from the attack registered as ``name``.

    videos [N, T, 3, H, W] in [0, 1]; clip_labels [N] (0 normal, >0 anomalous); eps in
    [0, 1] units; steps = gradient steps (queries for "square"; the source attack's steps
    for "transfer"). Keyword arguments go to the attack: restarts, random_start,
    step_size (pgd), amp_dtype, source_model / source_attack (transfer), p_init (square).
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](model, videos, text_tokens, clip_labels, eps, steps, generator=generator, **kw)


@dataclass(frozen=True)
class AttackSetting:
    """One attack configuration. eps in [0, 1] units; steps = queries for square."""

    attack: str
    eps: float
    steps: int
    restarts: int = 1
    random_start: bool = False
    step_size: float | None = None  # pgd only; None = 2.5 * eps / steps

    @property
    def key(self) -> str:
        size = "" if self.step_size is None else f",a={self.step_size * 255:g}"
        start = ",rs" if self.random_start else ""
        return f"{self.attack}(eps={self.eps * 255:g}/255,steps={self.steps},R={self.restarts}{start}{size})"

    def kwargs(self) -> dict:
        kw = {"restarts": self.restarts, "random_start": self.random_start}
        if self.attack in ("pgd", "transfer") and self.step_size is not None:
            kw["step_size"] = self.step_size
        return kw


# ----------------------------------------------------------------------------- one pass over batches
def segment_probabilities(forward, videos):
    """P(abnormal) [B] of items [B, T, 3, H, W] or [B, crops, T, 3, H, W] (crop mean)."""
    crops = videos.shape[1] if videos.dim() == 6 else 1
    with torch.no_grad():
        probs = forward(videos.reshape(-1, *videos.shape[-4:])).softmax(dim=-1)[:, 1]
    return probs.reshape(videos.shape[0], crops).mean(dim=1)


def attack_batches(model, batches, text_tokens, settings, generator=None, amp_dtype=None, batch_size=0,
                   source_model=None, source_attack="pgd"):
    """Clean and adversarial P(abnormal) of every item, for every setting, in one pass.

    batches: iterable of (keys: list, videos [B, T, 3, H, W] or [B, crops, T, 3, H, W],
        labels [B]); every crop of an item is attacked with the item's label.
    Returns {"clean": {key: p}, "adversarial": {setting.key: {key: p}},
    "seconds": {setting.key: attack seconds}, "items": number of items}.
    """
    forward = sa.make_forward(model, text_tokens, amp_dtype)
    clean, adversarial = {}, {s.key: {} for s in settings}
    seconds = {s.key: 0.0 for s in settings}
    items = 0
    with sa.eval_mode(model, source_model):
        for keys, videos, labels in batches:
            items += len(keys)
            flat = videos.reshape(-1, *videos.shape[-4:])
            crops = flat.shape[0] // videos.shape[0]
            flat_labels = labels.reshape(-1).to(videos.device).repeat_interleave(crops)
            for key, p in zip(keys, segment_probabilities(forward, videos).tolist()):
                clean[key] = p
            for setting in settings:
                started = time.perf_counter()
                kw = setting.kwargs()
                if setting.attack == "transfer":
                    kw.update(source_model=source_model, source_attack=source_attack)
                adv = sa.in_chunks(_registry_call(setting.attack), flat, flat_labels, batch_size, model=model,
                                   text_tokens=text_tokens, eps=setting.eps, steps=setting.steps,
                                   generator=generator, amp_dtype=amp_dtype, **kw)
                probs = segment_probabilities(forward, adv.reshape(videos.shape))
                if videos.device.type == "cuda":
                    torch.cuda.synchronize(videos.device)
                seconds[setting.key] += time.perf_counter() - started
                for key, p in zip(keys, probs.tolist()):
                    adversarial[setting.key][key] = p
    return {"clean": clean, "adversarial": adversarial, "seconds": seconds, "items": items}


def _registry_call(name):
    def call(model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
        return run_attack(name, model, videos, text_tokens, clip_labels, eps, steps, generator=generator, **kw)
    return call


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

    batches: a re-iterable of (keys, videos, labels) (see :func:`attack_batches`);
    metrics_fn({key: P(abnormal)}) -> dict with auc_all, auc_ano, ap.
    Returns {"attack", "steps", "eps_255": [...], "auc_all": [...], "auc_ano": [...], "ap": [...]}.
    """
    settings = [AttackSetting(attack, float(e), int(steps), **_setting_kw(kw)) for e in eps_list if e > 0]
    result = attack_batches(model, batches, text_tokens, settings, generator=generator, **_pass_kw(kw))
    clean, rows = metrics_of_settings(result, settings, metrics_fn)
    return curve_from_rows([clean] + rows, "eps", attack=attack, steps=int(steps), eps_list=eps_list)


def sweep_steps(model, batches, text_tokens, attack, eps, steps_list, metrics_fn, generator=None, **kw):
    """Metrics versus steps (0 = clean) for ``attack`` at ``eps`` ([0, 1] units); as :func:`sweep_eps`."""
    settings = [AttackSetting(attack, float(eps), int(s), **_setting_kw(kw)) for s in steps_list if s > 0]
    result = attack_batches(model, batches, text_tokens, settings, generator=generator, **_pass_kw(kw))
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


# ----------------------------------------------------------------------------- sanity checks
def sanity_checks(clean, rows, gradients=None, tolerance=0.02, chance_margin=0.1, large_eps=8 / 255,
                  log=None):
    """Checks that an evaluation is trustworthy -> [{"check", "passed" (True/False/None =
    not applicable), "detail"}]; every failed check is logged as a warning.

    - monotone-eps: for one attack at fixed steps/restarts, AUC@all and AUC@ano must not
      rise (beyond ``tolerance``) as eps grows (the clean AUC is the eps-0 point).
    - monotone-steps: for one white-box attack at fixed eps, AUC must not rise with steps.
    - large-eps-chance: at eps >= ``large_eps`` the strongest white-box attack must bring
      AUC@all to <= 0.5 + ``chance_margin``.
    - gradient-free-weaker / transfer-weaker: Square and transfer attacks must not beat
      (by more than ``tolerance``) the strongest white-box attack at the same eps.
    - input-gradients: no clip's input gradient is all zero or non-finite.
    A failure points at gradient masking (or a too weak white-box attack).
    """
    log = log or logger
    checks = []
    attacked = [r for r in rows if r["attack"] != "none"]

    groups = {}
    for r in attacked:
        groups.setdefault((r["attack"], r["steps"], r["restarts"]), []).append(r)
    for (attack, steps, restarts), members in groups.items():
        if not members:
            continue
        curve = [clean] + sorted(members, key=lambda r: r["eps"])
        checks.append(_monotone("monotone-eps", f"{attack} ({steps} steps, {restarts} restarts)", curve, "eps_255",
                                tolerance))
    groups = {}
    for r in attacked:
        if r["attack"] in WHITE_BOX:
            groups.setdefault((r["attack"], r["eps"], r["restarts"]), []).append(r)
    for (attack, eps, restarts), members in groups.items():
        if len(members) < 2:
            continue
        curve = sorted(members, key=lambda r: r["steps"])
        checks.append(_monotone("monotone-steps", f"{attack} (eps {eps * 255:g}/255, {restarts} restarts)", curve,
                                "steps", tolerance))

    large = [r for r in attacked if r["attack"] in WHITE_BOX and r["eps"] >= large_eps - 1e-12
             and not math.isnan(r["auc_all"])]
    if large:
        worst = min(large, key=lambda r: r["auc_all"])
        passed = worst["auc_all"] <= 0.5 + chance_margin
        checks.append({"check": "large-eps-chance", "passed": passed,
                       "detail": f"lowest white-box AUC@all at eps >= {large_eps * 255:g}/255 is "
                                 f"{worst['auc_all']:.4f} ({worst['key']}); expected <= {0.5 + chance_margin:.2f}"})
    else:
        checks.append({"check": "large-eps-chance", "passed": None,
                       "detail": f"no white-box attack ran at eps >= {large_eps * 255:g}/255"})

    for kind, names in (("gradient-free-weaker", GRADIENT_FREE), ("transfer-weaker", ("transfer",))):
        for r in (r for r in attacked if r["attack"] in names):
            white = [w for w in attacked if w["attack"] in WHITE_BOX
                     and math.isclose(w["eps"], r["eps"], rel_tol=1e-6) and not math.isnan(w["auc_all"])]
            if not white:
                checks.append({"check": kind, "passed": None,
                               "detail": f"{r['key']}: no white-box attack at the same eps to compare with"})
                continue
            best = min(white, key=lambda w: w["auc_all"])
            passed = r["auc_all"] >= best["auc_all"] - tolerance
            checks.append({"check": kind, "passed": passed,
                           "detail": f"{r['key']} AUC@all {r['auc_all']:.4f} vs strongest white-box "
                                     f"{best['key']} {best['auc_all']:.4f}"
                                     + ("" if passed else ": the white-box attacks are weaker than a "
                                        "gradient-free/transfer one, a sign of gradient masking")})
    if gradients is not None:
        passed = gradients["zero_clips"] == 0 and gradients["nonfinite_clips"] == 0
        checks.append({"check": "input-gradients", "passed": passed,
                       "detail": f"{gradients['zero_clips']} of {gradients['clips']} clips have an all-zero and "
                                 f"{gradients['nonfinite_clips']} a non-finite input gradient "
                                 f"(mean |grad| {gradients['mean_abs']:.3g})"})
    for c in checks:
        if c["passed"] is False:
            log.warning(f"robustness sanity check FAILED [{c['check']}]: {c['detail']}")
    return checks


def _monotone(name, what, curve, axis, tolerance):
    bad = []
    for k in ("auc_all", "auc_ano"):
        values = [r[k] for r in curve]
        for i in range(1, len(values)):
            if not (math.isnan(values[i]) or math.isnan(values[i - 1])) and values[i] > values[i - 1] + tolerance:
                bad.append(f"{k} rises {values[i - 1]:.4f} -> {values[i]:.4f} at {axis} {curve[i][axis]:g}")
    return {"check": name, "passed": not bad,
            "detail": f"{what}: " + ("; ".join(bad) if bad else f"non-increasing over {len(curve)} points")}


# ----------------------------------------------------------------------------- flags and planning
def add_robustness_args(parser):
    """The robustness flags of main_attack.py (none of them changes the config)."""
    group = parser.add_argument_group("robustness evaluation (docs/ROBUSTNESS.md)")
    group.add_argument("--attack", choices=sorted(ATTACKS), default="pgd",
                       help="main attack (default pgd = the published one at ATTACK.EPS/STEPS)")
    group.add_argument("--restarts", type=int, default=None,
                       help="restarts, batched, worst case kept (default ATTACK.RESTARTS)")
    group.add_argument("--sweep-eps", type=float, nargs="*", default=None, metavar="EPS",
                       help="eps sweep in 1/255 units (no value: 0 0.25 0.5 1 2 4 8 16)")
    group.add_argument("--sweep-steps", type=int, nargs="*", default=None, metavar="STEPS",
                       help="steps sweep (no value: 1 2 5 10 20 50)")
    group.add_argument("--sweep-attack", choices=sorted(ATTACKS), default=None,
                       help="attack of the sweeps (default: --attack)")
    group.add_argument("--strong-steps", type=int, default=100,
                       help="steps of the many-step PGD and APGD runs of --report (default 100)")
    group.add_argument("--square-queries", type=int, default=1000,
                       help="queries of the Square attack (default 1000)")
    group.add_argument("--transfer-from", default=None, metavar="CKPT",
                       help="source checkpoint of the transfer attack (same architecture config)")
    group.add_argument("--transfer-attack", choices=["pgd", "apgd-ce", "apgd-margin"], default="pgd",
                       help="attack run on the transfer source (default pgd)")
    group.add_argument("--report", action="store_true",
                       help="full suite (PGD, PGD-many+restarts, APGD-CE, APGD-margin, Square, transfer), "
                            "eps and steps sweeps, sanity checks, robustness.md")
    group.add_argument("--report-models", nargs="+", default=None, metavar="NAME=CKPT",
                       help="checkpoints to evaluate side by side (NAME=PATH or PATH)")
    group.add_argument("--sanity-tol", type=float, default=0.02,
                       help="AUC tolerance of the sanity checks (default 0.02)")
    return parser


def robustness_requested(args) -> bool:
    """Whether any robustness flag asks for more than the published single PGD run."""
    return bool(getattr(args, "report", False) or getattr(args, "report_models", None)
                or getattr(args, "sweep_eps", None) is not None or getattr(args, "sweep_steps", None) is not None
                or getattr(args, "transfer_from", None) or getattr(args, "attack", "pgd") != "pgd"
                or getattr(args, "restarts", None))


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


def plan_settings(cfg, args):
    """The settings to run, in order, without duplicates -> (settings, plan dict).

    main: ``--attack`` at ATTACK.EPS / ATTACK.STEPS (queries for square), ``--restarts``.
    --report adds: the published PGD, PGD and both APGDs at ``--strong-steps`` with the
    restarts, Square, transfer (with --transfer-from), and the default sweeps unless given.
    Sweeps use ``--sweep-attack`` (default ``--attack``).
    """
    from attacks.pgd import attack_settings_from_config

    base = attack_settings_from_config(cfg)
    eps, steps = base["eps"], base["steps"]
    restarts = args.restarts if args.restarts is not None else base["restarts"]
    if restarts < 1:
        raise ConfigError(f"--restarts must be >= 1, got {restarts}")
    random_start = base["random_start"]  # False + restarts > 1: restart 0 at the clean clip, the others random
    transfer_source = getattr(args, "transfer_from", None)

    def make(attack, e, s, r=restarts, rs=random_start, queries=None):
        if attack == "square":  # its steps are queries: --square-queries unless a steps sweep gives them
            return AttackSetting("square", e, queries or args.square_queries, r, True)
        # ATTACK.STEP_SIZE belongs to ATTACK.EPS/STEPS; other budgets get 2.5 * eps / steps
        same_budget = s == steps and math.isclose(e, eps, rel_tol=1e-9)
        step_size = base["step_size"] if attack in ("pgd", "transfer") and same_budget else None
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


# ----------------------------------------------------------------------------- driver
def loader_batches(loader, records, count_start_zero=False, device="cpu", max_batches=None):
    """(keys (path, seg_start, seg_len), videos, segment labels [B]) from a test loader.

    A segment is anomalous when any of its sampled frames is (datasets.lists.frame_labels).
    """
    from datasets.lists import frame_labels

    truth_cache = {}
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            return
        labels = torch.zeros(len(batch["vid"]), dtype=torch.long)
        for i, vid in enumerate(batch["vid"].tolist()):
            if vid not in truth_cache:
                truth_cache[vid] = frame_labels(records[vid], count_start_zero)
            truth = truth_cache[vid]
            inds = batch["frame_inds"][i].reshape(-1).clamp(0, len(truth) - 1).numpy()
            labels[i] = int(truth[inds].any())
        keys = [(batch["path"][i], int(batch["seg_start"][i]), int(batch["seg_len"][i]))
                for i in range(len(batch["path"]))]
        yield keys, batch["imgs"].to(device, non_blocking=True), labels.to(device)


def scores_by_video(segment_scores):
    """{(path, seg_start, seg_len): p} -> {path: {"starts", "lengths", "scores"}} (time order)."""
    videos = {}
    for (path, start, length), p in segment_scores.items():
        videos.setdefault(path, []).append((start, length, p))
    out = {}
    for path, segs in videos.items():
        segs.sort()
        out[path] = {"starts": np.array([s[0] for s in segs], dtype=np.int64),
                     "lengths": np.array([s[1] for s in segs], dtype=np.int64),
                     "scores": np.array([s[2] for s in segs], dtype=np.float32)}
    return out


def records_metrics_fn(records, count_start_zero=False, smooth=True):
    """metrics_fn for segment keys (path, seg_start, seg_len): the published frame-level metric."""
    from evaluation.metrics import evaluate_scores

    def metrics(segment_scores):
        videos = scores_by_video(segment_scores)
        return evaluate_scores({p: v["scores"] for p, v in videos.items()}, records,
                               count_start_zero=count_start_zero, smooth=smooth)
    return metrics


def _gather_pass(result):
    """Merge one attack pass from every rank (duplicated padded items collapse)."""
    from utils import dist

    parts = dist.all_gather_object(result)
    if len(parts) == 1:
        return result
    merged = {"clean": {}, "adversarial": {k: {} for k in result["adversarial"]},
              "seconds": {k: max(p["seconds"][k] for p in parts) for k in result["seconds"]}}
    for p in parts:
        merged["clean"].update(p["clean"])
        for k, v in p["adversarial"].items():
            merged["adversarial"][k].update(v)
    merged["items"] = len(merged["clean"])
    return merged


def evaluate_robustness(model, loader, text_tokens, cfg, args, log=None, source_model=None, max_batches=None):
    """Robustness of one model on a test loader -> results dict (JSON-ready but for "videos").

    loader: the test loader (batches with imgs, vid, path, seg_start, seg_len, frame_inds;
        ``loader.dataset.records``). args: parsed flags of :func:`add_robustness_args`.
    source_model: the transfer source (needed when a transfer setting runs).
    Returns {"clean": {auc_all, auc_ano, ap}, "main": row, "rows": [rows], "sweeps":
    {"eps": curve, "steps": curve}, "sanity": [checks], "gradients": {...}, "segments",
    "segments_per_s" (of the main attack), "settings": plan, "videos": {"clean": ...,
    "adversarial": ...} (per-video segment scores of the main attack, numpy arrays)}.
    """
    log = log or logger
    settings, plan = plan_settings(cfg, args)
    device = next(sa.unwrap_model(model).parameters()).device
    amp_dtype = sa.amp_dtype_from_config(cfg, device)
    records = loader.dataset.records
    from utils import dist

    generator = torch.Generator().manual_seed(int(cfg.SEED) + dist.get_rank())
    log.info("robustness: " + ", ".join(s.key for s in settings))
    gradients = {}
    batches = _with_gradient_check(loader_batches(_progress(loader), records, cfg.DATA.COUNT_START_ZERO, device,
                                                  max_batches), model, text_tokens, amp_dtype, gradients)
    result = attack_batches(model, batches, text_tokens, settings, generator=generator, amp_dtype=amp_dtype,
                            batch_size=int(cfg.ATTACK.BATCH_SIZE), source_model=source_model,
                            source_attack=getattr(args, "transfer_attack", "pgd"))
    gradients = _gather_gradients(gradients)
    result = _gather_pass(result)
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
    checks = sanity_checks(clean, rows, gradients, tolerance=getattr(args, "sanity_tol", 0.02), log=log)
    log.info(format_table({"model": {"clean": clean, "rows": rows}}))
    return {"clean": clean, "main": main, "rows": rows, "sweeps": sweeps, "sanity": checks, "gradients": gradients,
            "segments": result["items"], "segments_per_s": main["segments_per_s"], "settings": plan,
            "videos": {"clean": scores_by_video(result["clean"]),
                       "adversarial": scores_by_video(result["adversarial"][plan["main"]])}}


def _gather_gradients(stats):
    """Sum the first-batch gradient statistics of every rank (None when no rank had a batch)."""
    from utils import dist

    parts = [p for p in dist.all_gather_object(stats or None) if p]
    if not parts:
        return None
    total = {k: sum(p[k] for p in parts) for k in ("clips", "zero_clips", "nonfinite_clips")}
    total["mean_abs"] = float(np.nanmean([p["mean_abs"] for p in parts]))
    return total


def _with_gradient_check(batches, model, text_tokens, amp_dtype, out):
    """Pass batches through; on the first one fill ``out`` with input_gradient_stats."""
    for keys, videos, labels in batches:
        if not out:
            flat = videos.reshape(-1, *videos.shape[-4:])
            crops = flat.shape[0] // videos.shape[0]
            out.update(sa.input_gradient_stats(model, flat, text_tokens, labels.repeat_interleave(crops),
                                               amp_dtype=amp_dtype))
        yield keys, videos, labels


def _progress(loader):
    from utils import dist
    from utils.logger import progress

    return progress(loader, desc="robustness", rank=dist.get_rank())


def run_robustness(stage, args, loader, text_tokens, build_model, weights=None):
    """Evaluate one or more checkpoints and write the report (rank 0) -> {name: results}.

    stage: training.stage.Stage (cfg, logger, output, is_main). build_model: callable(path or
    None) -> model (e.g. ``lambda w: stages.build_model(stage, w)``). weights: the stage's
    checkpoint, used when --report-models is not given. Writes OUTPUT/robustness.json,
    OUTPUT/plots/robustness_*.png and, with --report, OUTPUT/robustness.md.
    """
    models = parse_report_models(getattr(args, "report_models", None),
                                 default=(Path(str(weights)).stem if weights else "model", weights))
    source = None
    if getattr(args, "transfer_from", None):
        source = build_model(args.transfer_from)
        stage.logger.info(f"transfer source: {args.transfer_from}")
    results = {}
    for name, path in models:
        stage.logger.info(f"robustness of {name} ({path or 'random weights'})")
        model = build_model(path)
        results[name] = evaluate_robustness(model, loader, text_tokens, stage.cfg, args, stage.logger,
                                            source_model=source)
        results[name]["checkpoint"] = path
        del model
    if stage.is_main:
        write_robustness_report(stage.output, results, markdown=bool(getattr(args, "report", False)),
                                transfer_from=getattr(args, "transfer_from", None))
    return results


# ----------------------------------------------------------------------------- report
def format_table(results_by_model) -> str:
    """Plain-text table (for the log) of every setting's AUC@all / AUC@ano / AP per model."""
    lines = []
    for name, res in results_by_model.items():
        lines.append(f"{name}:")
        lines.append(f"  {'attack':<58} AUC@all  AUC@ano  AP      seg/s")
        for r in [res["clean"]] + list(res["rows"]):
            rate = f"{r['segments_per_s']:.2f}" if "segments_per_s" in r else "-"
            lines.append(f"  {r['key']:<58} {r['auc_all']:.4f}   {r['auc_ano']:.4f}   {r['ap']:.4f}  {rate}")
    return "\n".join(lines)


def write_robustness_report(output_dir, results_by_model, markdown=True, transfer_from=None):
    """robustness.json, plots/robustness_eps.png and _steps.png and (markdown) robustness.md.

    results_by_model: {model name: :func:`evaluate_robustness` result}. Returns the paths written.
    """
    from utils.io import atomic_write_json, atomic_write_text

    output = Path(output_dir)
    paths = []
    plots = {}
    for axis in ("eps", "steps"):
        curves = {n: r["sweeps"][axis] for n, r in results_by_model.items() if axis in r.get("sweeps", {})}
        if curves:
            path = output / "plots" / f"robustness_{axis}.png"
            plot_sweep(curves, axis, path)
            plots[axis] = path
            paths.append(path)
    atomic_write_json(output / "robustness.json", summarize(results_by_model))
    paths.append(output / "robustness.json")
    if markdown:
        atomic_write_text(output / "robustness.md", render_markdown(results_by_model, plots, output, transfer_from))
        paths.append(output / "robustness.md")
    return paths


def summarize(results_by_model) -> dict:
    """JSON-ready copy of {model name: evaluate_robustness result} without the per-video
    scores (NaN -> None): what robustness.json holds, e.g. for results.json["robustness"]."""
    return _json_ready({name: {k: v for k, v in res.items() if k != "videos"}
                        for name, res in results_by_model.items()})


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def plot_sweep(curves, axis, path):
    """One row of panels (AUC@all, AUC@ano, AP) versus eps or steps, one line per model."""
    from matplotlib.figure import Figure

    from utils.plots import save_figure

    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    xkey = "eps_255" if axis == "eps" else "steps"
    for ax, metric, title in zip(axes, METRIC_KEYS, ("AUC@all", "AUC@ano", "AP")):
        for name, curve in curves.items():
            xs = np.asarray(curve[xkey], dtype=float)
            ys = np.asarray([np.nan if v is None else v for v in curve[metric]], dtype=float)
            ax.plot(xs, ys, marker="o", label=f"{name} ({curve['attack']})")
        if axis == "eps":
            ax.set_xscale("symlog", linthresh=0.25)
            ax.set_xlabel("eps (1/255)")
        else:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel("attack steps")
        if metric != "ap":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def render_markdown(results_by_model, plots, output, transfer_from=None) -> str:
    """robustness.md: settings x models table, sanity checks per model, the sweep plots."""
    names = list(results_by_model)
    keys = []
    for res in results_by_model.values():
        for r in res["rows"]:
            if r["key"] not in keys:
                keys.append(r["key"])
    out = ["# Robustness report", "",
           "Frame-level AUC@all / AUC@ano / AP (published metric) of clean and attacked test segments; "
           "eps in 1/255 units, L-infinity, [0, 1] pixels. See docs/ROBUSTNESS.md.", ""]
    if transfer_from:
        out += [f"Transfer attacks are crafted on `{transfer_from}`.", ""]
    header = "| attack | " + " | ".join(f"{n} AUC@all | {n} AUC@ano | {n} AP" for n in names) + " |"
    out += [header, "|" + "---|" * (1 + 3 * len(names))]

    def cells(row):
        if row is None:
            return " - | - | - "
        return " | ".join(_fmt(row[k]) for k in METRIC_KEYS)
    out.append("| clean | " + " | ".join(cells(results_by_model[n]["clean"]) for n in names) + " |")
    for key in keys:
        row_cells = [cells(next((r for r in results_by_model[n]["rows"] if r["key"] == key), None)) for n in names]
        out.append(f"| `{key}` | " + " | ".join(row_cells) + " |")
    out += ["", "Worst case over all attacks (lowest AUC@all):", ""]
    for n in names:
        rows = [r for r in results_by_model[n]["rows"] if not math.isnan(r["auc_all"])]
        if rows:
            worst = min(rows, key=lambda r: r["auc_all"])
            out.append(f"- **{n}**: {_fmt(worst['auc_all'])} (`{worst['key']}`)")
    out += ["", "## Sanity checks", ""]
    for n in names:
        res = results_by_model[n]
        out.append(f"**{n}** (checkpoint `{res.get('checkpoint')}`, {res['segments']} segments, "
                   f"{res['segments_per_s']:.2f} attacked segments/s for the main attack):")
        out.append("")
        for c in res["sanity"]:
            mark = {True: "pass", False: "**FAIL**", None: "n/a"}[c["passed"]]
            out.append(f"- {mark} `{c['check']}`: {c['detail']}")
        out.append("")
    if plots:
        out += ["## Sweeps", ""]
        for axis, path in plots.items():
            out.append(f"![AUC versus {axis}]({Path(path).relative_to(output).as_posix()})")
            out.append("")
    return "\n".join(out) + "\n"


def _fmt(value):
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
