"""AdamW and the per-step warmup + cosine learning-rate schedule of X-CLIP/FrameShield.

Gradient accumulation is the caller's job: the scheduler is stepped once per optimizer
step, so a run has ``steps_per_epoch = ceil(len(train_loader) / TRAIN.ACCUMULATION_STEPS)``
(:func:`optimizer_steps_per_epoch`). After optimizer step s (0-based) the caller calls
``scheduler.step_update(s + 1)``; step s therefore runs at lr(s), with
lr(t) = LR * t / warmup for t < warmup (linear from 0) and afterwards
lr(t) = LR/100 + (LR - LR/100) * (1 + cos(pi * t / total)) / 2 (timm's CosineLRScheduler
with t_in_epochs=False and no warmup prefix, as published), LR/100 once t >= total.
"""
import math

import torch

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
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)


def optimizer_steps_per_epoch(num_batches, accumulation_steps):
    """Optimizer steps in an epoch of ``num_batches`` micro-batches (the last window may be short)."""
    return math.ceil(num_batches / max(1, accumulation_steps))


class WarmupCosineScheduler:
    """Per-step LR: linear warmup from 0, then cosine down to ``min_lr_ratio`` x the base LR.

    ``step_update(t)`` sets every group's lr to base_lr(group) * factor(t). Its state
    (base LRs, last step, lengths) round-trips through state_dict/load_state_dict.
    """

    def __init__(self, optimizer, total_steps, warmup_steps, min_lr_ratio=0.01):
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self.step_update(0)

    def factor(self, step):
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr_ratio
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def step_update(self, num_updates):
        """Set the LR for the optimizer step that follows ``num_updates`` completed ones."""
        self.last_step = int(num_updates)
        factor = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"base_lrs": list(self.base_lrs), "last_step": self.last_step,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state):
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.min_lr_ratio = float(state["min_lr_ratio"])
        self.step_update(int(state["last_step"]))


def build_scheduler(cfg, optimizer, steps_per_epoch):
    """Cosine schedule over TRAIN.EPOCHS with TRAIN.WARMUP_EPOCHS of warmup, floor LR/100.

    ``steps_per_epoch`` counts optimizer steps (see :func:`optimizer_steps_per_epoch`).
    """
    if cfg.TRAIN.LR_SCHEDULER.lower() != "cosine":
        raise ConfigError(f"TRAIN.LR_SCHEDULER {cfg.TRAIN.LR_SCHEDULER!r} is not supported; "
                          "use 'cosine'")
    total = int(cfg.TRAIN.EPOCHS * steps_per_epoch)
    warmup = int(cfg.TRAIN.WARMUP_EPOCHS * steps_per_epoch)
    return WarmupCosineScheduler(optimizer, total_steps=total, warmup_steps=warmup)
