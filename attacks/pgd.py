"""L-infinity PGD on video clips: the one signed-gradient update of the project.

The published FrameShield attack is one setting of :func:`pgd`: no random start, one
restart, the ``prob`` objective and step size 2.5 * eps / steps. Each step ascends the sign
of the gradient of sum_n coef_n * P_n(abnormal) (coef = +1 for clips labelled normal, -1
for anomalous ones), then projects onto the eps-ball around the clean clip and onto [0, 1].
Stage-2 training, stage-3 evaluation, the robustness suite and infer.py all call it.
"""
import torch

from attacks.common import (OBJECTIVES, best_of_restarts, check_inputs, eval_mode, in_chunks, make_forward,
                            objective_and_gradient, project, start_points)


def default_step_size(eps: float, steps: int) -> float:
    """Published step size: 2.5 * eps / steps (0 for a zero-step attack)."""
    return 2.5 * eps / steps if steps > 0 else 0.0


def pgd(model, videos, text_tokens, clip_labels, eps, steps=10, step_size=None, restarts=1,
        random_start=False, generator=None, objective="prob", amp_dtype=None, forward=None, start=None):
    """Sign-gradient PGD -> adversarial videos [N, T, 3, H, W] within ``eps`` of ``videos``.

    model: anything with ``model(videos, text_tokens)["y"]`` -> logits [N, C] (class 1 =
        abnormal); a DistributedDataParallel wrapper is bypassed (the attack is local to a
        rank and must not trigger gradient synchronisation).
    videos: [N, T, 3, H, W] float in [0, 1]; clip_labels: [N] (0 normal, > 0 anomalous).
    eps, step_size: [0, 1] units; step_size None = 2.5 * eps / steps.
    restarts: R copies of the clips are attacked together as one batch (memory x R); per
        clip the copy with the highest final objective is kept. Restart 0 starts at the
        clean clip unless ``random_start``; the others start at uniform points of the
        eps-ball, drawn with ``generator``.
    objective: "prob" (published), "ce" or "margin" (attacks.common.OBJECTIVES).
    forward: optional callable(videos) -> logits [N, C] used instead of the model's forward
        (e.g. to reuse precomputed text features); amp_dtype: autocast dtype of the default one.
    start: optional [N, T, 3, H, W] start of the first restart instead of the clean clip
        (projected onto the eps-ball; stage 2 passes each video's previous perturbation).

    Without random start and with one restart the result is deterministic and equals the
    published update.
    """
    labels = check_inputs(videos, clip_labels, eps, steps, restarts)
    if step_size is None:
        step_size = default_step_size(eps, steps)
    loss = OBJECTIVES[objective]
    forward = forward or make_forward(model, text_tokens, amp_dtype)
    clean = videos.detach()
    all_labels = labels.repeat(restarts)
    with eval_mode(model):
        adv = start_points(clean, eps, restarts, random_start, generator, start)
        reference = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
        for _ in range(steps):
            _, grad = objective_and_gradient(forward, adv, all_labels, loss)
            adv = project(adv + step_size * grad.sign(), reference, eps)
        if restarts == 1:
            return adv
        with torch.no_grad():
            values = loss(forward(adv), all_labels)
        return best_of_restarts(adv, values, restarts)[0]


def pgd_in_chunks(model, videos, text_tokens, clip_labels, batch_size, **attack_kwargs):
    """:func:`pgd` over ``videos`` in chunks of ``batch_size`` clips (ATTACK.BATCH_SIZE).

    Every objective term is per clip, so chunking changes nothing in the result unless the
    model mixes clips of a batch (batch norm in train mode; the attack runs in eval).
    """
    return in_chunks(pgd, videos, clip_labels, batch_size, model=model, text_tokens=text_tokens, **attack_kwargs)
