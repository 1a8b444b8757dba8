"""The step functions of the two training stages: one batch -> (loss, loss parts).

A step takes ``(model, batch, text_tokens, cfg, device, micro)`` (``micro``:
training.engine.MicroStep) and is passed to training.engine.fit. Shapes: a training batch
holds ``imgs [B, A, K, T, 3, H, W]`` (A views, K clips of T frames); the model sees
``[N, T, 3, H, W]`` with N = V*B*K (V views used) and returns logits [N, C]; the losses take
them back as [V*B, K, C].
"""
import contextlib

import torch

from datasets.transforms import model_input
from training.adv_attack import TrainAttack
from training.losses import advtrain_loss, promptmil_loss
from utils.dist import unwrap_model
from utils.errors import TrainingError


def autocast(cfg, device):
    """bf16 autocast on CUDA when TRAIN.AMP is 'bf16'; a no-op otherwise."""
    if cfg.TRAIN.AMP == "bf16" and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def view_clips(imgs, use_view2):
    """Training clips of view 1 (and view 2) -> ([V*B*K, T, 3, H, W], V) in view-major order."""
    b, a, k = imgs.shape[:3]
    views = 2 if use_view2 and a > 1 else 1
    clips = imgs[:, :views].transpose(0, 1).reshape(views * b * k, *imgs.shape[3:])
    return clips, views


def promptmil_step(model, batch, text_tokens, cfg, device, micro):
    """Stage-1 loss of one batch: MIL + smoothness + sparsity (mean over the used views)."""
    imgs = model_input(batch["imgs"], device)
    labels = batch["label"].to(device)
    b, k = imgs.shape[0], imgs.shape[2]
    clips, views = view_clips(imgs, cfg.TRAIN.USE_VIEW2)
    with autocast(cfg, device):
        logits = model(clips, text_tokens)["y"]
    logits = logits.float().reshape(views * b, k, -1)
    loss, parts = promptmil_loss(logits, labels.repeat(views), cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE,
                                 cfg.TRAIN.MIL_DETACH_WEIGHT, cfg.TRAIN.MIL_NORMAL, cfg.TRAIN.MIL_ANOMALOUS_BOTTOM)
    return loss, parts


def advtrain_clip_labels(batch, cfg, pseudo_labels=None) -> torch.Tensor:
    """Clip labels [B, K] (long, 0/1) the adversarial training step attacks and trains on.

    Per video: SRD-distorted normal video -> its ``pa_labels`` (they take precedence);
    other normal video -> all 0; anomalous video -> its pseudo labels (ADV_TRAIN.PSEUDO_LABEL,
    matched to the sampled clips by frame position) or, without them, 1 for every clip.
    """
    video_labels = batch["label"]
    b, k = batch["frame_inds"].shape[:2]
    labels = torch.zeros(b, k, dtype=torch.long)
    pa = batch.get("pa_labels")
    srd = batch.get("srd_applied")
    for i in range(b):
        if int(video_labels[i]) <= 0:
            applied = bool(srd[i]) if srd is not None else (pa is not None and bool(pa[i].any()))
            if applied and pa is not None:
                labels[i] = (pa[i].cpu() > 0).long()
        elif cfg.ADV_TRAIN.PSEUDO_LABEL:
            path = batch["path"][i]
            if pseudo_labels is None or path not in pseudo_labels:
                raise TrainingError(f"no pseudo labels for anomalous training video {path!r}")
            labels[i] = pseudo_labels[path].clip_labels(batch["frame_inds"][i].cpu())
        else:
            labels[i] = 1
    return labels


def make_advtrain_step(pseudo_labels=None, attack: TrainAttack | None = None):
    """The stage-2 step: craft PGD clips against the clip labels, then train on them.

    ``attack``: the inner attack (training.adv_attack.TrainAttack; None = built from the
    config at the first step). ADV_TRAIN.LOSS 'ce' (per-clip CE + smoothness) or 'mil'; with
    ADV_TRAIN.CLEAN_WEIGHT w > 0 the loss is (1 - w) * adversarial + w * clean, both from one
    forward pass. The first micro-batch of every epoch runs the overfitting check when
    ADV_TRAIN.OVERFIT_CHECK_STEPS > 0.
    """
    attacks = [attack]

    def step(model, batch, text_tokens, cfg, device, micro):
        if attacks[0] is None:
            attacks[0] = TrainAttack(cfg)
        inner = attacks[0]
        imgs = model_input(batch["imgs"], device)
        video_labels = batch["label"].to(device)
        b, k = imgs.shape[0], imgs.shape[2]
        clips, views = view_clips(imgs, cfg.TRAIN.USE_VIEW2)
        clip_labels = advtrain_clip_labels(batch, cfg, pseudo_labels).to(device).repeat(views, 1)  # [V*B, K]
        keys = [(path, view) for view in range(views) for path in batch["path"]]
        with autocast(cfg, device):
            adv = inner(unwrap_model(model), clips, text_tokens, clip_labels.reshape(-1), keys, micro.epoch)
            if micro.index == 0:
                inner.check_overfitting(unwrap_model(model), clips, adv, text_tokens, clip_labels.reshape(-1),
                                        micro.epoch)
        if micro.first:
            # the attack takes gradients w.r.t. the input only; clearing here (first micro-step
            # of an accumulation group) also guarantees no attack gradient reaches the step
            micro.optimizer.zero_grad(set_to_none=True)
        model.train()
        adv = inner.watch(adv, clips, keys, micro.epoch)  # FREE_UPDATE: the backward pass moves the memory
        w = cfg.ADV_TRAIN.CLEAN_WEIGHT
        inputs = torch.cat([adv, clips]) if w > 0 else adv
        with autocast(cfg, device):
            logits = model(inputs, text_tokens)["y"]
        logits = logits.float().reshape(-1, k, logits.shape[-1])
        vlabels = video_labels.repeat(views)
        loss_args = (cfg.ADV_TRAIN.LOSS, cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE, cfg.TRAIN.MIL_DETACH_WEIGHT,
                     cfg.TRAIN.MIL_NORMAL, cfg.TRAIN.MIL_ANOMALOUS_BOTTOM)
        loss, parts = advtrain_loss(logits[: views * b], vlabels, clip_labels, *loss_args)
        if w > 0:
            clean_loss, _ = advtrain_loss(logits[views * b:], vlabels, clip_labels, *loss_args)
            parts = {**parts, "adv": loss, "clean": clean_loss}
            loss = (1 - w) * loss + w * clean_loss
            parts["total"] = loss
        return loss, parts

    step.attacks = attacks  # [TrainAttack]: its overfitting checks go into results.json
    return step
