"""Checks that a robustness evaluation is trustworthy (Carlini et al. 2019; Croce & Hein 2020).

A failed check points at gradient masking or a too weak white-box attack: AUC that rises
with eps or steps, no collapse at a large eps, a gradient-free or transfer attack beating
the white-box ones, or input gradients that are zero or non-finite.
"""
import logging
import math

import torch

from attacks.common import OBJECTIVES, check_inputs, eval_mode, make_forward, objective_and_gradient
from attacks.registry import GRADIENT_FREE, WHITE_BOX

logger = logging.getLogger("FrameShield.robustness")


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


def input_gradient_stats(model, videos, text_tokens, clip_labels, objective="margin", amp_dtype=None):
    """Input-gradient health of the objective: a gradient-masking symptom check.

    Returns {"clips", "zero_clips" (clips whose gradient is exactly zero everywhere),
    "nonfinite_clips" (NaN/inf anywhere), "mean_abs" (mean |grad| over finite entries)}.
    """
    labels = check_inputs(videos, clip_labels, 0.0, 0, 1)
    forward = make_forward(model, text_tokens, amp_dtype)
    with eval_mode(model):
        _, grad = objective_and_gradient(forward, videos.detach(), labels, OBJECTIVES[objective])
    flat = grad.reshape(grad.shape[0], -1)
    finite = torch.isfinite(flat)
    return {"clips": int(flat.shape[0]),
            "zero_clips": int(((flat == 0) | ~finite).all(dim=1).sum()),
            "nonfinite_clips": int((~finite).any(dim=1).sum()),
            "mean_abs": float(flat[finite].abs().mean()) if finite.any() else float("nan")}
