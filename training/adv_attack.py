"""Stage 2's inner attack: how each training step crafts its adversarial clips.

The published FrameShield training runs PGD (ATTACK.STEPS steps of 2.5 * eps / steps from
the clean clip) before every update, so a step costs STEPS + 1 forward+backward passes.
The options below come from the efficient adversarial-training literature; each is behind
an ``ADV_TRAIN`` key whose default is the published attack:

- ``ATTACK_INIT``: where the attack starts. ``clean`` (published; ATTACK.RANDOM_START still
  applies), ``uniform`` (a uniform point of the eps-ball: with one step and a step of
  about 1.25 eps this is the FGSM-RS of Wong et al., "Fast is better than free", 2020), or
  ``previous`` (the perturbation this video's clips ended with the last time they were
  attacked, as in ATTA, Zheng et al. 2020: perturbations transfer between epochs, so a
  few steps from there reach what many steps from scratch would; uniform on a first visit).
- ``ATTACK_SCHEDULE``: ``constant`` (published) or ``ramp`` (1 step in the first epoch,
  rising linearly to ATTACK.STEPS in the last: weak attacks while the model is weak).
- ``ATTACK_STEP_SIZE``: step size in 1/255 units; negative = the ATTACK.STEP_SIZE rule
  (published 2.5 * eps / steps, with the scheduled number of steps).
- ``FREE_UPDATE`` (with ``ATTACK_INIT: previous``): the training step's own backward pass
  also moves each video's remembered perturbation by one signed step of the training loss's
  input gradient (free adversarial training, Shafahi et al. 2019, one replay per visit);
  with ``ATTACK.STEPS: 0`` a step then costs no attack pass at all. The step is
  ``ATTACK_STEP_SIZE`` (negative = eps, as in the paper).
- ``OVERFIT_CHECK_STEPS``: catastrophic overfitting (the known failure of single-step
  training: accuracy under the training attack stays high while PGD accuracy collapses)
  is watched by attacking the first batch of every epoch with PGD of this many steps too;
  a gap above ``OVERFIT_GAP`` in clip accuracy is logged as a warning. 0 = off.

The perturbation memory keeps one int8 tensor per (video, view) on the CPU (1 byte per
pixel of a training clip): with several ranks each rank remembers the videos it saw, and a
video that lands on another rank next epoch starts uniform. Neither the memory nor the
overfitting checks are saved in checkpoints: a resumed run starts its memory empty, and
results.json lists the checks of the process that finished the run.
"""
from __future__ import annotations

import logging

import torch

from attacks.common import uniform
from attacks.pgd import default_step_size, pgd
from attacks.settings import attack_settings, describe, pgd_kwargs

INITS = ("clean", "uniform", "previous")
SCHEDULES = ("constant", "ramp")
_LEVELS = 127  # int8 quantisation of a perturbation in units of eps / 127


def scheduled_steps(steps: int, schedule: str, epoch: int, epochs: int) -> int:
    """Attack steps of 0-based ``epoch`` of ``epochs``: ``steps``, or 1 -> ``steps`` linearly."""
    if schedule == "constant" or steps <= 1 or epochs <= 1:
        return steps
    return 1 + round((steps - 1) * min(epoch, epochs - 1) / (epochs - 1))


class PerturbationMemory:
    """Each (video, view)'s last perturbation [K, T, 3, H, W], stored as int8 multiples of eps / 127."""

    def __init__(self):
        self._store: dict[tuple, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def starts(self, clean, keys, eps, generator=None):
        """Start points [V*B*K, T, 3, H, W] for ``clean`` (view-major, ``keys`` one per V*B video):
        the remembered perturbation where there is one of the same shape, else uniform noise."""
        per_video = clean.reshape(len(keys), -1, *clean.shape[1:])
        delta = (2 * uniform(per_video.shape, generator, clean.device, clean.dtype) - 1) * eps
        for i, key in enumerate(keys):
            stored = self._store.get(key)
            if stored is not None and stored.shape == per_video.shape[1:]:
                delta[i] = stored.to(clean.device, clean.dtype) * (eps / _LEVELS)
        return (per_video + delta).reshape(clean.shape)

    def remember(self, adv, clean, keys, eps) -> None:
        delta = (adv.detach() - clean.detach()).reshape(len(keys), -1, *clean.shape[1:])
        if eps <= 0:
            return
        q = (delta / (eps / _LEVELS)).round().clamp(-_LEVELS, _LEVELS).to(torch.int8).cpu()
        for i, key in enumerate(keys):
            self._store[key] = q[i].clone()


class TrainAttack:
    """The inner attack of stage 2 for a config; called once per training micro-batch."""

    def __init__(self, cfg, generator: torch.Generator | None = None, logger: logging.Logger | None = None):
        adv = cfg.ADV_TRAIN  # values checked by utils.config (INITS, SCHEDULES, OVERFIT_CHECK_STEPS >= 0)
        self.cfg = cfg
        self.base = attack_settings(cfg, "train")
        self.init, self.schedule = adv.ATTACK_INIT, adv.ATTACK_SCHEDULE
        self.step_size_255 = float(adv.ATTACK_STEP_SIZE)
        self.generator = generator
        self.logger = logger or logging.getLogger("FrameShield")
        self.memory = PerturbationMemory() if self.init == "previous" else None
        self.free = bool(adv.FREE_UPDATE)
        self.checks: list[dict] = []  # one row per overfitting check

    def settings(self, epoch: int) -> dict:
        """attacks.pgd.pgd keyword arguments for 0-based ``epoch``."""
        kwargs = pgd_kwargs(self.base)
        steps = scheduled_steps(kwargs["steps"], self.schedule, epoch, self.cfg.TRAIN.EPOCHS)
        if self.step_size_255 >= 0:
            step_size = self.step_size_255 / 255.0
        elif steps != kwargs["steps"] and self.cfg.ATTACK.STEP_SIZE < 0:
            step_size = default_step_size(kwargs["eps"], steps)
        else:
            step_size = kwargs["step_size"]
        random_start = kwargs["random_start"] or self.init == "uniform"
        return {**kwargs, "steps": steps, "step_size": step_size, "random_start": random_start}

    def describe(self) -> str:
        """One log line: the published attack's description plus the efficient-training options."""
        first, last = self.settings(0), self.settings(max(self.cfg.TRAIN.EPOCHS - 1, 0))
        steps = f"{first['steps']}" if first["steps"] == last["steps"] else f"{first['steps']} -> {last['steps']}"
        return (describe(self.base) + f"; in training: start {self.init}, schedule {self.schedule} "
                f"({steps} steps of {first['step_size'] * 255:g}/255), overfitting check "
                + (f"PGD-{self.cfg.ADV_TRAIN.OVERFIT_CHECK_STEPS}" if self.cfg.ADV_TRAIN.OVERFIT_CHECK_STEPS else "off"))

    def __call__(self, model, clips, text_tokens, clip_labels, keys, epoch: int):
        """Adversarial clips [N, T, 3, H, W] for ``clips`` with labels [N]; ``keys``: one per video."""
        kwargs = self.settings(epoch)
        start = None
        if self.memory is not None:
            start = self.memory.starts(clips, keys, kwargs["eps"], self.generator)
            kwargs["random_start"] = False
        adv = pgd(model, clips, text_tokens, clip_labels, generator=self.generator, start=start, **kwargs)
        if self.memory is not None:
            self.memory.remember(adv, clips, keys, kwargs["eps"])
        return adv

    def watch(self, adv, clips, keys, epoch: int):
        """With FREE_UPDATE: ``adv`` as a leaf that requires grad, whose gradient in the training
        backward pass updates the memory (a tensor hook: no extra pass). Else ``adv`` itself."""
        if not self.free:
            return adv
        eps = self.base["eps"]
        step = self.step_size_255 / 255.0 if self.step_size_255 >= 0 else eps
        leaf = adv.detach().requires_grad_(True)
        clean = clips.detach()

        def update(grad):
            with torch.no_grad():
                moved = (clean + (leaf.detach() + step * grad.sign() - clean).clamp(-eps, eps)).clamp(0, 1)
                self.memory.remember(moved, clean, keys, eps)

        leaf.register_hook(update)
        return leaf

    @torch.no_grad()
    def _accuracy(self, model, clips, text_tokens, clip_labels) -> float:
        logits = model(clips, text_tokens)["y"].float()
        return float((logits.argmax(-1) == (clip_labels > 0).long()).float().mean())

    def check_overfitting(self, model, clips, adv, text_tokens, clip_labels, epoch: int) -> dict | None:
        """Clip accuracy clean / under the training attack / under PGD-N on one batch; warns on a gap."""
        steps = self.cfg.ADV_TRAIN.OVERFIT_CHECK_STEPS
        if not steps:
            return None
        was_training = model.training
        model.eval()
        try:
            strong = pgd(model, clips, text_tokens, clip_labels, eps=self.base["eps"], steps=steps)
            row = {"epoch": epoch + 1, "clean_acc": self._accuracy(model, clips, text_tokens, clip_labels),
                   "train_attack_acc": self._accuracy(model, adv, text_tokens, clip_labels),
                   f"pgd{steps}_acc": self._accuracy(model, strong, text_tokens, clip_labels)}
        finally:
            model.train(was_training)
        row["gap"] = row["train_attack_acc"] - row[f"pgd{steps}_acc"]
        row["overfitting"] = row["gap"] > self.cfg.ADV_TRAIN.OVERFIT_GAP
        self.checks.append(row)
        message = (f"overfitting check, epoch {epoch + 1}: clip accuracy clean {row['clean_acc']:.3f}, under the "
                   f"training attack {row['train_attack_acc']:.3f}, under PGD-{steps} {row[f'pgd{steps}_acc']:.3f}")
        if row["overfitting"]:
            self.logger.warning(message + f": a gap of {row['gap']:.3f} > ADV_TRAIN.OVERFIT_GAP "
                                f"{self.cfg.ADV_TRAIN.OVERFIT_GAP:g} suggests catastrophic overfitting (the training "
                                "attack no longer finds the model's adversarial examples); use more attack steps, "
                                "ADV_TRAIN.ATTACK_INIT previous, or a smaller ADV_TRAIN.ATTACK_STEP_SIZE")
        else:
            self.logger.info(message)
        return row
