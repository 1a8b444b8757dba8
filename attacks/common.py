"""What every L-infinity attack here shares: objectives, model plumbing, projection, restarts.

Conventions (all attacks): ``videos [N, T, 3, H, W]`` float in [0, 1] pixel space; an
L-infinity budget ``eps`` in [0, 1] units (EPS / 255); ``clip_labels [N]`` (0 normal,
> 0 anomalous). Clips labelled normal are pushed toward "abnormal" and clips labelled
anomalous toward "normal". Every attack keeps each clip inside the eps-ball around the clean
clip and inside [0, 1], runs the model in eval mode (restoring its mode) and takes gradients
w.r.t. the input only (``torch.autograd.grad``), so no parameter ``.grad`` is created.
Randomness comes only from the ``generator`` argument.

Objectives per clip (``logits [N, C]``, class 1 = abnormal, coef = +1 normal / -1 anomalous):
``prob`` = coef * P(abnormal) (the published one), ``ce`` = CE(logits, label),
``margin`` = coef * (z_abnormal - z_normal). For a binary head all three order the clips'
candidate points the same way; they differ in how their gradients saturate.
"""
import contextlib

import torch
import torch.nn.functional as F

from utils.dist import unwrap_model
from utils.errors import ConfigError


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
def check_inputs(videos, clip_labels, eps, steps, restarts):
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


def uniform(shape, generator, device, dtype):
    """U[0, 1) numbers drawn from ``generator`` (on its device), moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=dtype).to(device)


def project(x, clean, eps):
    return (clean + (x - clean).clamp(-eps, eps)).clamp(0, 1)


def start_points(clean, eps, restarts, random_start, generator, start=None):
    """Starting points [R*N, ...] (restart-major) for R restarts of N clips.

    With random_start every restart starts at a uniform point of the eps-ball; without it
    the first restart starts at the clean clips (the published start) and the others at
    uniform points. ``start`` [N, ...] (e.g. the clips' previous adversarial versions),
    projected onto the eps-ball and [0, 1], replaces the first restart's start.
    """
    replicated = clean.repeat(restarts, *([1] * (clean.dim() - 1)))
    if not random_start and restarts == 1 and start is None:
        return replicated.clone()
    if random_start or restarts > 1:
        noise = (2 * uniform(replicated.shape, generator, clean.device, clean.dtype) - 1) * eps
        starts = (replicated + noise).clamp(0, 1)
    else:
        starts = replicated.clone()
    if start is not None:
        starts[: clean.shape[0]] = project(start.to(clean.dtype), clean, eps)
    elif not random_start:
        starts[: clean.shape[0]] = clean
    return starts


def best_of_restarts(candidates, values, restarts):
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


def values_of(forward, x, labels, objective):
    """Objective values [N] of ``x`` without gradients."""
    with torch.no_grad():
        return objective(forward(x), labels)
