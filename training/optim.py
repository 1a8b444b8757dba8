"""AdamW and the per-step warmup + cosine learning-rate schedule of X-CLIP/FrameShield.

The schedule is timm's ``CosineLRScheduler`` with the published arguments (X-CLIP's and
FrameShield's ``build_scheduler``): ``t_initial`` = all optimizer steps, ``lr_min = LR / 100``,
``warmup_lr_init = 0``, ``warmup_t`` = the warmup steps, ``cycle_limit = 1``,
``t_in_epochs = False``. So lr(t) = LR * t / warmup for t < warmup (linear from 0), then
LR/100 + (LR - LR/100) * (1 + cos(pi * t / total)) / 2, and LR/100 once t >= total.

Gradient accumulation is the caller's job: the scheduler is stepped once per optimizer
step, so a run has ``steps_per_epoch = ceil(len(train_loader) / TRAIN.ACCUMULATION_STEPS)``
(:func:`optimizer_steps_per_epoch`). After optimizer step s (0-based) the caller calls
``scheduler.step_update(s + 1)``; step s therefore runs at lr(s).

Checkpoints written before the schedule came from timm hold the state of the hand-written
scheduler (``{"base_lrs", "last_step", ...}``); :class:`CosineSchedule` still loads them
(its LRs equal the old ones to 2 ulp, tests/test_optim.py).
"""
import math

import torch
from timm.scheduler.cosine_lr import CosineLRScheduler

from utils.errors import ConfigError, TrainingError

NO_DECAY_KEYWORDS = ("positional_embedding", "class_embedding", "logit_scale")


def parameter_groups(model, weight_decay, lr, no_decay_keywords=NO_DECAY_KEYWORDS):
    """Two AdamW groups over the trainable parameters: with and without weight decay.

    No decay for 0-/1-D tensors, biases, names containing a keyword (positional and class
    embeddings, logit_scale) and whatever the model lists in ``no_weight_decay()`` /
    ``no_weight_decay_keywords()``. Frozen parameters (requires_grad False) are left out.
    """
    model = getattr(model, "module", model)
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    keywords = tuple(no_decay_keywords)
    if hasattr(model, "no_weight_decay_keywords"):
        keywords += tuple(model.no_weight_decay_keywords())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if (param.ndim <= 1 or name.endswith(".bias") or name in skip_names
                or any(k in name for k in keywords)):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return [g for g in groups if g["params"]]


def global_batch(cfg, world_size) -> int:
    """Videos per optimizer step: world size x TRAIN.BATCH_SIZE x TRAIN.ACCUMULATION_STEPS.

    Under DDP every rank trains on its own BATCH_SIZE videos and the gradients are averaged,
    so N processes take one step on N times the videos of one process (the published code
    ran independent replicas instead, each at the single-process batch).
    """
    return int(world_size) * int(cfg.TRAIN.BATCH_SIZE) * int(cfg.TRAIN.ACCUMULATION_STEPS)


def scaled_lr(cfg, world_size) -> float:
    """The learning rate the optimizer uses: TRAIN.LR, or with TRAIN.LR_SCALING 'linear'
    TRAIN.LR x global batch / TRAIN.LR_BASE_BATCH (0 = the one-process batch, so the LR
    grows with the number of processes and the LR per video stays what one process had)."""
    if cfg.TRAIN.LR_SCALING == "none":
        return float(cfg.TRAIN.LR)
    base = cfg.TRAIN.LR_BASE_BATCH or global_batch(cfg, 1)
    return float(cfg.TRAIN.LR) * global_batch(cfg, world_size) / base


def build_optimizer(cfg, model, world_size=1):
    """AdamW (betas 0.9/0.98, eps 1e-8) with :func:`scaled_lr` and TRAIN.WEIGHT_DECAY."""
    if cfg.TRAIN.OPTIMIZER.lower() != "adamw":
        raise ConfigError(f"TRAIN.OPTIMIZER {cfg.TRAIN.OPTIMIZER!r} is not supported; use 'adamw'")
    lr = scaled_lr(cfg, world_size)
    groups = parameter_groups(model, cfg.TRAIN.WEIGHT_DECAY, lr)
    if not groups:
        raise TrainingError("the model has no trainable parameter (all have requires_grad False)")
    # the fused kernel updates each parameter in one pass (4x faster than the per-tensor
    # 'foreach' default on the 2-core CPU for ViT-B/32: docs/bench_model.md); the same update
    # up to float rounding. TRAIN.FUSED_OPTIMIZER False: torch's default implementation
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8,
                             fused=True if cfg.TRAIN.FUSED_OPTIMIZER else None)


def optimizer_steps_per_epoch(num_batches, accumulation_steps):
    """Optimizer steps in an epoch of ``num_batches`` micro-batches (the last window may be short)."""
    return math.ceil(num_batches / max(1, accumulation_steps))


class CosineSchedule(CosineLRScheduler):
    """timm's CosineLRScheduler that also loads the state of the former hand-written
    scheduler (checkpoints saved before the switch): that state holds nothing the config
    does not give again, and the optimizer state restores the current LR itself."""

    def load_state_dict(self, state_dict):
        if "last_step" in state_dict and "base_lrs" in state_dict:  # the former WarmupCosineScheduler
            return
        super().load_state_dict(state_dict)


def build_scheduler(cfg, optimizer, steps_per_epoch):
    """timm's cosine schedule over TRAIN.EPOCHS with TRAIN.WARMUP_EPOCHS of linear warmup from
    0 and the floor LR/100, per optimizer step (the published arguments; module docstring).

    ``steps_per_epoch`` counts optimizer steps (see :func:`optimizer_steps_per_epoch`).
    """
    if cfg.TRAIN.LR_SCHEDULER.lower() != "cosine":
        raise ConfigError(f"TRAIN.LR_SCHEDULER {cfg.TRAIN.LR_SCHEDULER!r} is not supported; "
                          "use 'cosine'")
    total = int(cfg.TRAIN.EPOCHS * steps_per_epoch)
    warmup = int(cfg.TRAIN.WARMUP_EPOCHS * steps_per_epoch)
    return CosineSchedule(optimizer, t_initial=max(1, total), lr_min=cfg.TRAIN.LR / 100, warmup_lr_init=0,
                          warmup_t=warmup, cycle_limit=1, t_in_epochs=False)
