"""L-infinity PGD on video clips, the published FrameShield attack.

The attacker pushes clips labelled normal toward "abnormal" and clips labelled
anomalous toward "normal": each step ascends the sign of the gradient of
sum_n coef_n * P_n(abnormal), coef = +1 for normal clips and -1 for anomalous ones,
then projects onto the eps-ball around the clean clip and onto [0, 1].
Pixel space is [0, 1]; ``eps`` and ``step_size`` are in those units (EPS / 255).
"""
import torch

from attacks import strong as strong_attacks
from utils.errors import ConfigError


def attack_settings_from_config(cfg):
    """Keyword arguments of :func:`pgd` from the ATTACK section (eps in [0,1] units).

    ATTACK.EPS < 0 means ADV_TRAIN.EPS; ATTACK.STEP_SIZE < 0 means 2.5 * eps / STEPS.
    """
    eps = cfg.ATTACK.EPS if cfg.ATTACK.EPS >= 0 else cfg.ADV_TRAIN.EPS
    step_size = cfg.ATTACK.STEP_SIZE / 255.0 if cfg.ATTACK.STEP_SIZE >= 0 else None
    return {"eps": eps / 255.0, "steps": int(cfg.ATTACK.STEPS), "step_size": step_size,
            "random_start": bool(cfg.ATTACK.RANDOM_START), "restarts": int(cfg.ATTACK.RESTARTS)}


def default_step_size(eps, steps):
    """Published step size: 2.5 * eps / steps."""
    return 2.5 * eps / steps


def pgd(model, videos, text_tokens, clip_labels, eps, steps=10, step_size=None,
        random_start=False, generator=None, restarts=1, forward_fn=None):
    """Adversarial videos [N, T, 3, H, W] in [0, 1] within ``eps`` of ``videos``.

    model: anything with ``model(videos, text_tokens)["y"]`` -> logits [N, C] (class 1 =
        abnormal); a DistributedDataParallel wrapper is bypassed (the attack is local to a
        rank and must not trigger gradient synchronisation).
    videos: [N, T, 3, H, W] float in [0, 1]. clip_labels: [N] (0 normal, >0 anomalous).
    eps, step_size: [0, 1] units; step_size None = 2.5 * eps / steps.
    random_start: start from a uniform point of the eps-ball (drawn with ``generator``).
    restarts: number of runs (needs random_start), attacked together as one batch; per
        clip the run whose final objective coef * P(abnormal) is highest is kept.
    forward_fn: optional callable(videos) -> logits [N, C] used instead of
        ``model(videos, text_tokens)["y"]`` (e.g. to reuse precomputed text features).

    The model runs in eval mode during the attack (its previous mode is restored) and
    gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so no
    parameter ``.grad`` is created or changed. Without random start the result is
    deterministic and equals the published update.
    """
    if restarts < 1:
        raise ConfigError(f"ATTACK.RESTARTS must be >= 1, got {restarts}")
    if restarts > 1 and not random_start:
        raise ConfigError("ATTACK.RESTARTS > 1 repeats the same deterministic attack; "
                          "set ATTACK.RANDOM_START True or RESTARTS 1")
    if eps < 0 or steps < 0:
        raise ConfigError(f"the attack needs eps >= 0 and steps >= 0, got eps={eps}, steps={steps}")
    if not videos.is_floating_point():
        raise ValueError(f"pgd expects float videos in [0, 1], got {videos.dtype}")
    clip_labels = clip_labels.reshape(-1).to(videos.device)
    if clip_labels.numel() != videos.shape[0]:
        raise ValueError(f"{clip_labels.numel()} clip labels for {videos.shape[0]} clips")
    if step_size is None:
        step_size = default_step_size(eps, steps) if steps > 0 else 0.0

    if forward_fn is None:
        forward_fn = strong_attacks.make_forward(model, text_tokens)
    # One implementation of the update: utils.strong_attacks.pgd (restarts batched; with
    # one restart, no random start and the "prob" objective it is the published update).
    return strong_attacks.pgd(model, videos, text_tokens, clip_labels, eps, steps=steps, step_size=step_size,
                              restarts=restarts, random_start=random_start, generator=generator,
                              objective="prob", forward=forward_fn)


def pgd_in_chunks(model, videos, text_tokens, clip_labels, batch_size, **attack_kwargs):
    """:func:`pgd` over ``videos`` in chunks of ``batch_size`` clips (ATTACK.BATCH_SIZE).

    Chunking changes nothing in the result (each clip's objective term is independent)
    unless the model mixes clips of a batch (batch norm in train mode; it runs in eval).
    """
    if batch_size <= 0:
        return pgd(model, videos, text_tokens, clip_labels, **attack_kwargs)
    clip_labels = clip_labels.reshape(-1)
    parts = [pgd(model, videos[i:i + batch_size], text_tokens, clip_labels[i:i + batch_size],
                 **attack_kwargs)
             for i in range(0, videos.shape[0], batch_size)]
    return torch.cat(parts, dim=0)
