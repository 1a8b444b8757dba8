"""Attacks stronger than (and different from) the published PGD-10, for robustness evaluation.

All attacks share the clip-level objective of :func:`attacks.pgd.pgd`: clips labelled
normal (label 0) are pushed toward "abnormal" and clips labelled anomalous (label > 0)
toward "normal". They work in [0, 1] pixel space on ``videos [N, T, 3, H, W]`` with an
L-infinity budget ``eps`` in [0, 1] units (EPS / 255), keep every clip inside the eps-ball
around the clean clip and inside [0, 1], run the model in eval mode (restoring its mode)
and take gradients w.r.t. the input only (``torch.autograd.grad``), so no parameter
``.grad`` is created. Randomness (random starts, Square attack proposals) comes only from
the ``generator`` argument, so a seeded generator gives a deterministic result.

- :func:`pgd`: the published sign-gradient PGD with restarts run as one batch (R copies of
  the clips), the worst case per clip kept.
- :func:`apgd`: Auto-PGD (Croce & Hein, ICML 2020): step size 2*eps halved at checkpoints
  when progress stalls, momentum 0.75, each halving restarting from the best point found;
  on the cross-entropy of the clip logits (``loss="ce"``) or on the margin between the two
  class logits (``loss="margin"``).
- :func:`square`: the gradient-free L-infinity Square attack (Andriushchenko et al., ECCV
  2020), a random search that needs only scores; it is the check for gradient masking.
- :func:`transfer`: adversarial clips crafted on a source model, to be scored on another.

Objectives per clip (``logits [N, C]``, class 1 = abnormal, coef = +1 normal / -1 anomalous):
``prob`` = coef * P(abnormal) (the published one), ``ce`` = CE(logits, label),
``margin`` = coef * (z_abnormal - z_normal). For a binary head all three order the clips'
candidate points the same way; they differ in how their gradients saturate.
"""
import contextlib
import math

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from utils.errors import ConfigError

MOMENTUM = 0.75
RHO = 0.75  # APGD condition 1: fraction of steps that must have increased the objective


# ----------------------------------------------------------------------------- objectives
def clip_coefficients(clip_labels, dtype=torch.float32):
    """+1 for clips labelled normal, -1 for anomalous ones: [N]."""
    return torch.where(clip_labels.reshape(-1) == 0, 1.0, -1.0).to(dtype)


def probability_objective(logits, clip_labels):
    """coef * P(abnormal) [N], the published PGD objective."""
    return clip_coefficients(clip_labels, logits.dtype) * logits.softmax(dim=-1)[:, 1]


def ce_objective(logits, clip_labels):
    """Cross-entropy of the clip logits against the clip label [N] (to be maximised)."""
    return F.cross_entropy(logits, (clip_labels.reshape(-1) > 0).long(), reduction="none")


def margin_objective(logits, clip_labels):
    """coef * (z_abnormal - z_normal) [N]: logit margin toward the wrong class (no saturation)."""
    return clip_coefficients(clip_labels, logits.dtype) * (logits[:, 1] - logits[:, 0])


OBJECTIVES = {"prob": probability_objective, "ce": ce_objective, "margin": margin_objective}


# ----------------------------------------------------------------------------- model plumbing
def amp_dtype_from_config(cfg, device):
    """bf16 when training ran under bf16 autocast (TRAIN.AMP 'bf16', CUDA only), else None."""
    if cfg.TRAIN.AMP == "bf16" and torch.device(device).type == "cuda":
        return torch.bfloat16
    return None


def unwrap_model(model):
    """The module itself (a DDP wrapper is bypassed: attacks are local to a rank)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def make_forward(model, text_tokens, amp_dtype=None):
    """callable(videos [N,T,3,H,W]) -> float32 logits [N, C], reusing clean text features.

    X-CLIP with a frozen text tower caches its text features itself. With a trainable
    text tower (fix_text False) the text features are computed once here, without autograd
    (they do not depend on the video), and the rest of X-CLIP's forward is run on them.
    ``amp_dtype``: run the model under autocast of that dtype (match training precision).
    """
    net = unwrap_model(model)
    if _is_xclip(net) and not net.fix_text:
        with torch.no_grad(), _autocast(text_tokens.device, None):
            text = net.encode_text(text_tokens).float()

        def run(videos):
            return _xclip_logits(net, videos, text)
    else:
        def run(videos):
            return net(videos, text_tokens)["y"]

    def forward(videos):
        with _autocast(videos.device, amp_dtype):
            logits = run(videos)
        return logits.float()

    return forward


def _is_xclip(net):
    return all(hasattr(net, a) for a in ("forward_with_text_features", "encode_text", "fix_text"))


def _xclip_logits(net, videos, text):
    """X-CLIP's forward with precomputed text features [C, D] -> logits [N, C]."""
    return net.forward_with_text_features(videos, text)["y"]


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(*models):
    """Put models in eval mode for the attack and restore their modes afterwards."""
    nets = [unwrap_model(m) for m in models if m is not None]
    modes = [n.training for n in nets]
    for n in nets:
        n.eval()
    try:
        yield
    finally:
        for n, mode in zip(nets, modes):
            n.train(mode)


def objective_and_gradient(forward, videos, clip_labels, objective):
    """Per-clip objective [N] (detached) and its input gradient [N, T, 3, H, W]."""
    x = videos.detach().requires_grad_(True)
    with torch.enable_grad():
        values = objective(forward(x), clip_labels)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad.detach()


# ----------------------------------------------------------------------------- shared helpers
def _check_inputs(videos, clip_labels, eps, steps, restarts):
    if eps < 0 or steps < 0:
        raise ConfigError(f"the attack needs eps >= 0 and steps >= 0, got eps={eps}, steps={steps}")
    if restarts < 1:
        raise ConfigError(f"restarts must be >= 1, got {restarts}")
    if not videos.is_floating_point() or videos.dim() != 5:
        raise ValueError(f"expected float videos [N,T,3,H,W] in [0, 1], got {videos.dtype} {tuple(videos.shape)}")
    labels = clip_labels.reshape(-1).to(videos.device)
    if labels.numel() != videos.shape[0]:
        raise ValueError(f"{labels.numel()} clip labels for {videos.shape[0]} clips")
    return labels


def _uniform(shape, generator, device, dtype):
    """U[0, 1) numbers drawn from ``generator`` (on its device), moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=dtype).to(device)


def _project(x, clean, eps):
    return (clean + (x - clean).clamp(-eps, eps)).clamp(0, 1)


def _start_points(clean, eps, restarts, random_start, generator):
    """Starting points [R*N, ...] (restart-major) for R restarts of N clips.

    With random_start every restart starts at a uniform point of the eps-ball; without it
    the first restart starts at the clean clips (the published start) and the others at
    uniform points.
    """
    replicated = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
    if not random_start and restarts == 1:
        return replicated.clone()
    noise = (2 * _uniform(replicated.shape, generator, clean.device, clean.dtype) - 1) * eps
    starts = (replicated + noise).clamp(0, 1)
    if not random_start:
        starts[: clean.shape[0]] = clean
    return starts


def _best_of_restarts(candidates, values, restarts):
    """Per clip the candidate [R*N, ...] with the highest objective value [R*N] -> [N, ...]."""
    n = candidates.shape[0] // restarts
    best = values.view(restarts, n).argmax(dim=0)
    rows = best * n + torch.arange(n, device=candidates.device)
    return candidates[rows], values[rows]


def in_chunks(attack, videos, clip_labels, batch_size, **kwargs):
    """Run ``attack(videos=..., clip_labels=..., **kwargs)`` over chunks of ``batch_size`` clips.

    Every objective term is per clip, so chunking changes nothing but memory (and the order
    in which random numbers are drawn). ``batch_size <= 0`` runs one chunk.
    """
    if batch_size <= 0 or videos.shape[0] <= batch_size:
        return attack(videos=videos, clip_labels=clip_labels, **kwargs)
    labels = clip_labels.reshape(-1)
    return torch.cat([attack(videos=videos[i:i + batch_size], clip_labels=labels[i:i + batch_size], **kwargs)
                      for i in range(0, videos.shape[0], batch_size)], dim=0)


# ----------------------------------------------------------------------------- PGD
def pgd(model, videos, text_tokens, clip_labels, eps, steps=10, step_size=None, restarts=1,
        random_start=False, generator=None, objective="prob", amp_dtype=None, forward=None):
    """Sign-gradient PGD with R restarts in one batch -> adversarial videos [N, T, 3, H, W].

    eps, step_size in [0, 1] units (step_size None: the published 2.5 * eps / steps).
    restarts: R copies of the clips are attacked together (memory x R); per clip the copy
    with the highest final objective is kept. Restart 0 starts at the clean clip unless
    ``random_start``; the others start at uniform points of the eps-ball.
    With restarts=1, no random start and objective "prob" this is the published update,
    identical to :func:`attacks.pgd.pgd`.
    """
    labels = _check_inputs(videos, clip_labels, eps, steps, restarts)
    if step_size is None:
        step_size = 2.5 * eps / steps if steps > 0 else 0.0
    loss = OBJECTIVES[objective]
    forward = forward or make_forward(model, text_tokens, amp_dtype)
    clean = videos.detach()
    all_labels = labels.repeat(restarts)
    with eval_mode(model):
        adv = _start_points(clean, eps, restarts, random_start, generator)
        reference = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
        for _ in range(steps):
            _, grad = objective_and_gradient(forward, adv, all_labels, loss)
            adv = _project(adv + step_size * grad.sign(), reference, eps)
        if restarts == 1:
            return adv
        with torch.no_grad():
            values = loss(forward(adv), all_labels)
        return _best_of_restarts(adv, values, restarts)[0]


# ----------------------------------------------------------------------------- APGD
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
    labels = _check_inputs(videos, clip_labels, eps, steps, restarts)
    if loss not in OBJECTIVES:
        raise ConfigError(f"unknown APGD loss {loss!r}; choose one of {sorted(OBJECTIVES)}")
    objective = OBJECTIVES[loss]
    forward = forward or make_forward(model, text_tokens, amp_dtype)
    clean = videos.detach()
    all_labels = labels.repeat(restarts)
    reference = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
    with eval_mode(model):
        x = _start_points(clean, eps, restarts, random_start, generator)
        if steps == 0 or eps == 0:
            return _best_of_restarts(x, _values(forward, x, all_labels, objective), restarts)[0]
        best_x, best_f, best_g = _apgd_run(forward, x, reference, all_labels, objective, eps, steps, momentum, rho)
        return _best_of_restarts(best_x, best_f, restarts)[0]


def _values(forward, x, labels, objective):
    with torch.no_grad():
        return objective(forward(x), labels)


def _apgd_run(forward, x0, clean, labels, objective, eps, steps, momentum, rho):
    """One APGD run over all rows of x0 [M, ...] with per-row step sizes -> (best x, best f, its grad)."""
    m = x0.shape[0]
    shape = (m,) + (1,) * (x0.dim() - 1)
    eta = torch.full(shape, 2.0 * eps, device=x0.device, dtype=x0.dtype)
    f, g = objective_and_gradient(forward, x0, labels, objective)
    best_x, best_f, best_g = x0.clone(), f.clone(), g.clone()
    x_prev, x = x0, _project(x0 + eta * g.sign(), clean, eps)
    checkpoints = apgd_checkpoints(steps)
    next_check = 1
    increases = torch.zeros(m, device=x0.device)
    halved_last = torch.zeros(m, dtype=torch.bool, device=x0.device)
    best_at_last_check = best_f.clone()
    for k in range(steps):
        if k > 0:  # x is x^k; build x^{k+1}
            z = _project(x + eta * g.sign(), clean, eps)
            x_prev, x = x, _project(x + momentum * (z - x) + (1 - momentum) * (x - x_prev), clean, eps)
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


# ----------------------------------------------------------------------------- Square attack
SQUARE_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration, queries, p_init):
    """Fraction of pixels the square covers at ``iteration`` (schedule of the paper, for
    10000 queries, rescaled to ``queries``): p_init halved at each passed milestone."""
    scaled = int(iteration / max(queries, 1) * 10000)
    return p_init / 2 ** sum(scaled > m for m in SQUARE_P_SCHEDULE)


def square(model, videos, text_tokens, clip_labels, eps, steps=1000, restarts=1, generator=None,
           p_init=0.05, amp_dtype=None, forward=None, random_start=None):
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
    labels = _check_inputs(videos, clip_labels, eps, steps, restarts)
    forward = forward or make_forward(model, text_tokens, amp_dtype)
    clean = videos.detach()
    reference = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
    all_labels = labels.repeat(restarts)
    m, t, c, h, w = reference.shape
    device, dtype = clean.device, clean.dtype
    with eval_mode(model):
        signs = torch.where(_uniform((m, t, c, 1, w), generator, device, dtype) < 0.5, -1.0, 1.0)
        x = (reference + eps * signs).clamp(0, 1)
        best = _values(forward, x, all_labels, margin_objective)
        rows_idx = torch.arange(m, device=device).view(m, 1, 1, 1, 1)
        for i in range(steps):
            side = int(round(math.sqrt(square_fraction(i, steps, p_init) * h * w)))
            side = min(max(side, 1), h - 1, w - 1) if min(h, w) > 1 else 1
            top = (_uniform((m,), generator, device, dtype) * (h - side + 1)).long().clamp(max=h - side)
            left = (_uniform((m,), generator, device, dtype) * (w - side + 1)).long().clamp(max=w - side)
            new_signs = torch.where(_uniform((m, t, c), generator, device, dtype) < 0.5, -1.0, 1.0)
            ys = (top.view(m, 1) + torch.arange(side, device=device)).view(m, 1, 1, side, 1)
            xs = (left.view(m, 1) + torch.arange(side, device=device)).view(m, 1, 1, 1, side)
            frames = torch.arange(t, device=device).view(1, t, 1, 1, 1)
            chans = torch.arange(c, device=device).view(1, 1, c, 1, 1)
            candidate = x.clone()
            window = reference[rows_idx, frames, chans, ys, xs]
            candidate[rows_idx, frames, chans, ys, xs] = (window + eps * new_signs.view(m, t, c, 1, 1)).clamp(0, 1)
            values = _values(forward, candidate, all_labels, margin_objective)
            better = values > best
            x[better], best[better] = candidate[better], values[better]
        return _best_of_restarts(x, best, restarts)[0]


# ----------------------------------------------------------------------------- transfer
def transfer(source_model, videos, text_tokens, clip_labels, eps, steps=10, source_attack="pgd",
             generator=None, **kwargs):
    """Adversarial videos crafted on ``source_model`` with ``source_attack`` ("pgd",
    "apgd-ce", "apgd-margin", "square"); score them on the target model yourself."""
    attacks = {"pgd": pgd, "apgd-ce": lambda *a, **k: apgd(*a, loss="ce", **k),
               "apgd-margin": lambda *a, **k: apgd(*a, loss="margin", **k), "square": square}
    if source_attack not in attacks:
        raise ConfigError(f"unknown transfer source attack {source_attack!r}; choose one of {sorted(attacks)}")
    return attacks[source_attack](source_model, videos, text_tokens, clip_labels, eps, steps=steps,
                                  generator=generator, **kwargs)


# ----------------------------------------------------------------------------- diagnostics
def input_gradient_stats(model, videos, text_tokens, clip_labels, objective="margin", amp_dtype=None):
    """Input-gradient health of the objective: a gradient-masking symptom check.

    Returns {"clips", "zero_clips" (clips whose gradient is exactly zero everywhere),
    "nonfinite_clips" (NaN/inf anywhere), "mean_abs" (mean |grad| over finite entries)}.
    """
    labels = _check_inputs(videos, clip_labels, 0.0, 0, 1)
    forward = make_forward(model, text_tokens, amp_dtype)
    with eval_mode(model):
        _, grad = objective_and_gradient(forward, videos.detach(), labels, OBJECTIVES[objective])
    flat = grad.reshape(grad.shape[0], -1)
    finite = torch.isfinite(flat)
    return {"clips": int(flat.shape[0]),
            "zero_clips": int(((flat == 0) | ~finite).all(dim=1).sum()),
            "nonfinite_clips": int((~finite).any(dim=1).sum()),
            "mean_abs": float(flat[finite].abs().mean()) if finite.any() else float("nan")}
