"""Auto-PGD (Croce & Hein, ICML 2020), L-infinity, on the clip objective of attacks.common.

Step size 2*eps halved at checkpoints when progress stalls, momentum 0.75, each halving
restarting from the best point found; on the cross-entropy of the clip logits (``loss="ce"``)
or on the margin between the two class logits (``loss="margin"``).
"""
import math

import torch

from attacks.common import (OBJECTIVES, best_of_restarts, check_inputs, eval_mode, make_forward,
                            objective_and_gradient, project, start_points, values_of)
from utils.errors import ConfigError

MOMENTUM = 0.75
RHO = 0.75  # condition 1: fraction of steps that must have increased the objective


def apgd_checkpoints(steps):
    """Iterations at which APGD checks progress: ceil(p_j * steps), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, sec. 3.2)."""
    points, previous, current = [0], 0.0, 0.22
    while current <= 1.0:
        w = math.ceil(round(current * steps, 6))
        if w > points[-1]:
            points.append(w)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return points


def apgd(model, videos, text_tokens, clip_labels, eps, steps=100, loss="ce", restarts=1,
         random_start=False, generator=None, amp_dtype=None, forward=None,
         momentum=MOMENTUM, rho=RHO):
    """Auto-PGD (L-infinity) -> adversarial videos [N, T, 3, H, W]: the best point found per clip.

    loss: "ce" (cross-entropy of the clip logits) or "margin" (logit margin between the two
        classes); "prob" (the published objective) is accepted too.
    steps: gradient iterations N_iter (one more gradient is taken at the start point).
    Per clip: step size eta starts at 2*eps; x1 = P(x0 + eta sign g0); then
    z = P(x_k + eta sign g_k), x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})) with
    a = ``momentum``. At each checkpoint w_j eta is halved and the iterate reset to the best
    point when (1) fewer than rho * (w_j - w_{j-1}) of the steps since w_{j-1} increased the
    objective, or (2) eta was not halved at w_{j-1} and the best objective has not improved
    since then. restarts / random_start: as in :func:`pgd`, all restarts in one batch.
    """
    labels = check_inputs(videos, clip_labels, eps, steps, restarts)
    if loss not in OBJECTIVES:
        raise ConfigError(f"unknown APGD loss {loss!r}; choose one of {sorted(OBJECTIVES)}")
    objective = OBJECTIVES[loss]
    forward = forward or make_forward(model, text_tokens, amp_dtype)
    clean = videos.detach()
    all_labels = labels.repeat(restarts)
    reference = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
    with eval_mode(model):
        x = start_points(clean, eps, restarts, random_start, generator)
        if steps == 0 or eps == 0:
            return best_of_restarts(x, values_of(forward, x, all_labels, objective), restarts)[0]
        best_x, best_f, best_g = _apgd_run(forward, x, reference, all_labels, objective, eps, steps, momentum, rho)
        return best_of_restarts(best_x, best_f, restarts)[0]


def _apgd_run(forward, x0, clean, labels, objective, eps, steps, momentum, rho):
    """One APGD run over all rows of x0 [M, ...] with per-row step sizes -> (best x, best f, its grad)."""
    m = x0.shape[0]
    shape = (m,) + (1,) * (x0.dim() - 1)
    eta = torch.full(shape, 2.0 * eps, device=x0.device, dtype=x0.dtype)
    f, g = objective_and_gradient(forward, x0, labels, objective)
    best_x, best_f, best_g = x0.clone(), f.clone(), g.clone()
    x_prev, x = x0, project(x0 + eta * g.sign(), clean, eps)
    checkpoints = apgd_checkpoints(steps)
    next_check = 1
    increases = torch.zeros(m, device=x0.device)
    halved_last = torch.zeros(m, dtype=torch.bool, device=x0.device)
    best_at_last_check = best_f.clone()
    for k in range(steps):
        if k > 0:  # x is x^k; build x^{k+1}
            z = project(x + eta * g.sign(), clean, eps)
            x_prev, x = x, project(x + momentum * (z - x) + (1 - momentum) * (x - x_prev), clean, eps)
        f_new, g = objective_and_gradient(forward, x, labels, objective)
        increases += (f_new > f).float()
        f = f_new
        better = f > best_f
        best_x[better], best_f[better], best_g[better] = x[better], f[better], g[better]
        if next_check < len(checkpoints) and k + 1 == checkpoints[next_check]:
            span = checkpoints[next_check] - checkpoints[next_check - 1]
            stalled = increases < rho * span
            no_progress = ~halved_last & (best_f <= best_at_last_check)
            halve = stalled | no_progress
            eta[halve] /= 2
            x[halve], f[halve], g[halve] = best_x[halve], best_f[halve], best_g[halve]
            halved_last, best_at_last_check = halve, best_f.clone()
            increases.zero_()
            next_check += 1
    return best_x, best_f, best_g
