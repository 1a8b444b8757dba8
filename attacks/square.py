"""The gradient-free L-infinity Square attack (Andriushchenko et al., ECCV 2020).

A random search that needs only scores: the check for gradient masking. Same conventions
as every attack here (attacks.common).
"""
import math

import torch

from attacks.common import best_of_restarts, check_inputs, eval_mode, make_forward, margin_objective, uniform, values_of

DEFAULT_P_INIT = 0.8  # the paper's (and torchattacks') initial square fraction for L-infinity

SQUARE_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration, queries, p_init):
    """Fraction of pixels the square covers at ``iteration`` (schedule of the paper, for
    10000 queries, rescaled to ``queries``): p_init halved at each passed milestone."""
    scaled = int(iteration / max(queries, 1) * 10000)
    return p_init / 2 ** sum(scaled > m for m in SQUARE_P_SCHEDULE)


def square(model, videos, text_tokens, clip_labels, eps, steps=1000, restarts=1, generator=None,
           p_init=DEFAULT_P_INIT, amp_dtype=None, forward=None, random_start=None):
    """Gradient-free L-infinity Square attack -> adversarial videos [N, T, 3, H, W].

    steps: queries (one forward of the whole batch each). Start: vertical stripes of
    +-eps (a random sign per frame, channel and column). Each query moves, per clip, one
    random s x s square (the same location in every frame) to +-eps around the clean
    clip (a random sign per frame and channel) and keeps the change when the margin
    objective increases. s = round(sqrt(p * H * W)), p following the paper's schedule.
    Unlike the original (which stops once a clip is misclassified) every clip keeps
    being pushed, since AUROC rewards moving scores further. ``random_start`` is ignored
    (the stripes are the random start).
    """
    labels = check_inputs(videos, clip_labels, eps, steps, restarts)
    forward = forward or make_forward(model, text_tokens, amp_dtype)
    clean = videos.detach()
    reference = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
    all_labels = labels.repeat(restarts)
    m, t, c, h, w = reference.shape
    device, dtype = clean.device, clean.dtype
    with eval_mode(model):
        signs = torch.where(uniform((m, t, c, 1, w), generator, device, dtype) < 0.5, -1.0, 1.0)
        x = (reference + eps * signs).clamp(0, 1)
        best = values_of(forward, x, all_labels, margin_objective)
        rows_idx = torch.arange(m, device=device).view(m, 1, 1, 1, 1)
        for i in range(steps):
            side = int(round(math.sqrt(square_fraction(i, steps, p_init) * h * w)))
            side = min(max(side, 1), h - 1, w - 1) if min(h, w) > 1 else 1
            top = (uniform((m,), generator, device, dtype) * (h - side + 1)).long().clamp(max=h - side)
            left = (uniform((m,), generator, device, dtype) * (w - side + 1)).long().clamp(max=w - side)
            new_signs = torch.where(uniform((m, t, c), generator, device, dtype) < 0.5, -1.0, 1.0)
            ys = (top.view(m, 1) + torch.arange(side, device=device)).view(m, 1, 1, side, 1)
            xs = (left.view(m, 1) + torch.arange(side, device=device)).view(m, 1, 1, 1, side)
            frames = torch.arange(t, device=device).view(1, t, 1, 1, 1)
            chans = torch.arange(c, device=device).view(1, 1, c, 1, 1)
            candidate = x.clone()
            window = reference[rows_idx, frames, chans, ys, xs]
            candidate[rows_idx, frames, chans, ys, xs] = (window + eps * new_signs.view(m, t, c, 1, 1)).clamp(0, 1)
            values = values_of(forward, candidate, all_labels, margin_objective)
            better = values > best
            x[better], best[better] = candidate[better], values[better]
        return best_of_restarts(x, best, restarts)[0]
