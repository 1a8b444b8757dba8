"""The loops the three stages share: training epochs, evaluation, pseudo labels, attacks.

Shapes: a training batch holds ``imgs [B, A, K, T, 3, H, W]`` (A views, K clips of T
frames); the model sees ``[N, T, 3, H, W]`` with N = B*K (per view) and returns logits
[N, C]; losses take them back as [B, K, C]. A test batch holds one segment per item,
``imgs [B, T, 3, H, W]`` (or ``[B, crops, T, 3, H, W]``).

Distributed: the model passed to ``train_one_epoch`` may be wrapped in
DistributedDataParallel; gradients are synchronised only on the last micro-step of an
accumulation group (``no_sync`` on the others). Evaluation results are gathered from every
rank and de-duplicated, so a sharded evaluation equals the single-process one.
"""
import contextlib
import itertools
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from utils import dist
from utils.errors import TrainingError


# ----------------------------------------------------------------------------- helpers
def gather_rows(rows) -> list:
    """The rows of every rank, concatenated in rank order."""
    return [r for part in dist.all_gather_object(rows) for r in part]


def unwrap(model):
    return dist.unwrap_model(model)


def autocast(cfg, device):
    """bf16 autocast on CUDA when TRAIN.AMP is 'bf16'; a no-op otherwise."""
    if cfg.TRAIN.AMP == "bf16" and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_device(model) -> torch.device:
    return next(unwrap(model).parameters()).device


def progress(iterable=None, **kwargs):
    """A tqdm bar on rank 0 only (ETA and rate come with it)."""
    from utils.logger import progress as rank_progress

    return rank_progress(iterable, rank=dist.get_rank(), **kwargs)


def memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return 0.0


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch, CUDA), checkpoint-safe types."""
    from training.checkpoint import capture_rng_state

    return capture_rng_state()


def set_rng_state(state: dict) -> None:
    from training.checkpoint import restore_rng_state

    restore_rng_state(state)


# ----------------------------------------------------------------------------- training
@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a run continues exactly.

    ``batch_in_epoch``: micro-batches of ``epoch`` already trained (0 at an epoch start);
    ``history``: metrics of every evaluation so far; ``best``: epoch and metrics of the best
    one; ``threshold``: the score threshold chosen on the best evaluation.
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    best_metric: float = float("-inf")
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    threshold: dict = field(default_factory=dict)


def view_clips(imgs, use_view2):
    """Training clips of view 1 (and view 2) -> ([V*B*K, T, 3, H, W], V) in view-major order."""
    b, a, k = imgs.shape[:3]
    views = 2 if use_view2 and a > 1 else 1
    clips = imgs[:, :views].transpose(0, 1).reshape(views * b * k, *imgs.shape[3:])
    return clips, views


def promptmil_step(model, batch, text_tokens, cfg, device, micro):
    """Stage-1 loss of one batch: MIL + smoothness + sparsity (mean over the used views)."""
    from training.losses import promptmil_loss

    imgs = batch["imgs"].to(device, non_blocking=True)
    labels = batch["label"].to(device)
    b, k = imgs.shape[0], imgs.shape[2]
    clips, views = view_clips(imgs, cfg.TRAIN.USE_VIEW2)
    with autocast(cfg, device):
        logits = model(clips, text_tokens)["y"]
    logits = logits.float().reshape(views * b, k, -1)
    loss, parts = promptmil_loss(logits, labels.repeat(views), cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE,
                                 cfg.TRAIN.MIL_DETACH_WEIGHT)
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


def train_attack_settings(cfg) -> dict:
    """PGD settings for adversarial training: eps = ADV_TRAIN.EPS / 255; steps, step size
    (STEP_SIZE < 0 = 2.5 * eps / steps), random start and restarts from the ATTACK section."""
    eps = cfg.ADV_TRAIN.EPS / 255.0
    step_size = cfg.ATTACK.STEP_SIZE / 255.0 if cfg.ATTACK.STEP_SIZE >= 0 else None
    return {"eps": eps, "steps": int(cfg.ATTACK.STEPS), "step_size": step_size,
            "random_start": bool(cfg.ATTACK.RANDOM_START), "restarts": int(cfg.ATTACK.RESTARTS)}


def make_advtrain_step(pseudo_labels=None, attack_generator=None):
    """The stage-2 step: craft PGD clips against the clip labels, then train on them.

    ADV_TRAIN.LOSS 'ce' (per-clip CE + smoothness) or 'mil'; with ADV_TRAIN.CLEAN_WEIGHT w > 0
    the loss is (1 - w) * adversarial + w * clean, both from one forward pass.
    """
    from attacks.pgd import pgd
    from training.losses import advtrain_loss

    def step(model, batch, text_tokens, cfg, device, micro):
        imgs = batch["imgs"].to(device, non_blocking=True)
        video_labels = batch["label"].to(device)
        b, k = imgs.shape[0], imgs.shape[2]
        clips, views = view_clips(imgs, cfg.TRAIN.USE_VIEW2)
        clip_labels = advtrain_clip_labels(batch, cfg, pseudo_labels).to(device).repeat(views, 1)  # [V*B, K]
        with autocast(cfg, device):
            adv = pgd(unwrap(model), clips, text_tokens, clip_labels.reshape(-1), generator=attack_generator,
                      **train_attack_settings(cfg))
        if micro.first:
            # the attack takes gradients w.r.t. the input only; clearing here (first micro-step
            # of an accumulation group) also guarantees no attack gradient reaches the step
            micro.optimizer.zero_grad(set_to_none=True)
        model.train()
        w = cfg.ADV_TRAIN.CLEAN_WEIGHT
        inputs = torch.cat([adv, clips]) if w > 0 else adv
        with autocast(cfg, device):
            logits = model(inputs, text_tokens)["y"]
        logits = logits.float().reshape(-1, k, logits.shape[-1])
        vlabels = video_labels.repeat(views)
        loss_args = (cfg.ADV_TRAIN.LOSS, cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE, cfg.TRAIN.MIL_DETACH_WEIGHT)
        loss, parts = advtrain_loss(logits[: views * b], vlabels, clip_labels, *loss_args)
        if w > 0:
            clean_loss, _ = advtrain_loss(logits[views * b:], vlabels, clip_labels, *loss_args)
            parts = {**parts, "adv": loss, "clean": clean_loss}
            loss = (1 - w) * loss + w * clean_loss
            parts["total"] = loss
        return loss, parts

    return step


@dataclass
class MicroStep:
    """What a step function may need to know about its place in the accumulation group."""

    first: bool
    last: bool
    optimizer: object


def train_one_epoch(model, loader, optimizer, scheduler, text_tokens, cfg, state: TrainState, step_fn,
                    logger, stop_requested=lambda: False, resume_rng=None):
    """One epoch (or its rest, from ``state.batch_in_epoch``); returns "done" or "stopped".

    step_fn(model, batch, text_tokens, cfg, device, MicroStep) -> (loss, parts).
    Gradients of TRAIN.ACCUMULATION_STEPS micro-batches are summed (each loss divided by the
    size of its group; the last group of an epoch may be shorter) and applied in one
    optimizer step; DDP synchronises only on the last micro-step of a group. After each
    optimizer step ``stop_requested()`` is checked (agreed across ranks): when true the
    function returns "stopped" with ``state`` pointing at the next micro-batch.
    A non-finite loss on any rank raises TrainingError naming epoch and step.
    ``resume_rng``: RNG states to restore before continuing after the ``state.batch_in_epoch``
    micro-batches already trained (those are skipped without being loaded).
    """
    device = model_device(model)
    accum = cfg.TRAIN.ACCUMULATION_STEPS
    total = len(loader)
    skip = state.batch_in_epoch
    model.train()
    optimizer.zero_grad(set_to_none=True)
    bar = progress(total=total, initial=skip, desc=f"train {state.epoch + 1}/{cfg.TRAIN.EPOCHS}")
    started, done_here = time.time(), 0
    outcome = "done"
    batches = iter(remaining_batches(loader, skip))  # creating the iterator draws a seed
    if resume_rng is not None:  # ... so restore the interrupted run's RNG after it
        set_rng_state(resume_rng)
    for idx, batch in enumerate(batches, start=skip):
        group_start = idx - idx % accum
        group_end = min(group_start + accum, total)
        micro = MicroStep(first=idx == group_start, last=idx + 1 == group_end, optimizer=optimizer)
        with dist.sync_context(model, sync=micro.last):
            loss, parts = step_fn(model, batch, text_tokens, cfg, device, micro)
            if dist.any_rank(not torch.isfinite(loss.detach()).item()):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {state.epoch + 1}, micro-batch {idx + 1}/{total}, "
                    f"optimizer step {state.step + 1}; lower TRAIN.LR, set TRAIN.CLIP_GRAD, or check the data "
                    f"of {batch.get('path')}")
            (loss / (group_end - group_start)).backward()
        done_here += 1
        if micro.last:
            if cfg.TRAIN.CLIP_GRAD > 0:
                torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), cfg.TRAIN.CLIP_GRAD)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            _scheduler_step(scheduler, state.step)
            state.batch_in_epoch = idx + 1
        bar.update(1)
        parts = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}
        if dist.is_main_process():
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in parts.items()}, "lr": f"{lr:.2e}",
                             **({"mem": f"{memory_mb(device):.0f}MB"} if device.type == "cuda" else {})})
            if (idx + 1) % cfg.PRINT_FREQ == 0 or idx + 1 == total:
                eta = (time.time() - started) / done_here * (total - idx - 1)
                logger.info(
                    f"epoch {state.epoch + 1}/{cfg.TRAIN.EPOCHS} [{idx + 1}/{total}] "
                    + " ".join(f"{k} {v:.4f}" for k, v in parts.items())
                    + f" lr {lr:.3e} eta {eta:.0f}s mem {memory_mb(device):.0f}MB")
        if micro.last and idx + 1 < total and stop_requested():
            outcome = "stopped"
            break
    bar.close()
    if outcome == "done":
        state.epoch += 1
        state.batch_in_epoch = 0
    return outcome


class _WorkerIgnoresSigterm:
    """``worker_init_fn`` wrapper: DataLoader workers ignore SIGTERM, then run the original.

    A launcher (torchrun) or scheduler signals whole process groups, data workers included;
    a worker that dies of it breaks the batch the rank is waiting for, and the rank crashes
    before it can save. Ignoring it leaves the shutdown to the rank (which stops at the next
    optimizer step and closes its workers). Workaround kept here until datasets.build's own
    worker_init_fn does it (see the stage engineer's report).
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, worker_id):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


def protect_workers_from_sigterm(loader):
    """Make ``loader``'s worker processes ignore SIGTERM (no-op without workers); returns it."""
    if isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers > 0 \
            and not isinstance(loader.worker_init_fn, _WorkerIgnoresSigterm):
        loader.worker_init_fn = _WorkerIgnoresSigterm(loader.worker_init_fn)
    return loader


class _SkipFirst(torch.utils.data.Sampler):
    """The keys of ``base`` after its first ``skip`` (the rest of an interrupted epoch)."""

    def __init__(self, base, skip):
        self.base, self.skip = base, skip

    def __iter__(self):
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self):
        return max(0, len(self.base) - self.skip)


def remaining_batches(loader, skip_batches):
    """The batches of ``loader`` after the first ``skip_batches``, without loading those.

    For a DataLoader the same dataset, sampler order and worker setup are kept and only the
    first ``skip_batches * batch_size`` sampler keys are dropped (items are seeded by their
    key, so the remaining batches are the ones the uninterrupted epoch would have seen).
    """
    if skip_batches == 0:
        return loader
    if not isinstance(loader, torch.utils.data.DataLoader):
        return itertools.islice(loader, skip_batches, None)
    if loader.batch_size is None or loader.drop_last:
        raise TrainingError("resuming inside an epoch needs a loader with a batch size and drop_last False")
    extra = {}
    if loader.num_workers > 0:
        extra = dict(persistent_workers=False, prefetch_factor=loader.prefetch_factor,
                     worker_init_fn=loader.worker_init_fn,
                     multiprocessing_context=loader.multiprocessing_context)
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=loader.batch_size,
        sampler=_SkipFirst(loader.sampler, skip_batches * loader.batch_size), num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=False, generator=loader.generator, **extra)


def _scheduler_step(scheduler, step):
    if scheduler is None:
        return
    if hasattr(scheduler, "step_update"):
        scheduler.step_update(step)
    else:
        scheduler.step()


# ----------------------------------------------------------------------------- evaluation
def segment_probabilities(model, imgs, text_tokens, cfg, device):
    """Class probabilities [B, C] of test items [B, T, 3, H, W] or [B, crops, T, 3, H, W]
    (the mean over crops): how every evaluation, attack and inference scores a segment."""
    crops = imgs.shape[1] if imgs.dim() == 6 else 1
    flat = imgs.reshape(-1, *imgs.shape[-4:])
    with autocast(cfg, device):
        logits = model(flat, text_tokens)["y"]
    return logits.float().softmax(dim=-1).reshape(imgs.shape[0], crops, -1).mean(dim=1)


def _rows_to_videos(rows):
    """Gathered rows (path, seg_start, seg_len, values...) -> {path: rows sorted by start}.

    Duplicates (a distributed sampler pads the last shard with repeated items) are dropped.
    """
    videos = {}
    for row in rows:
        videos.setdefault(row[0], {})[row[1]] = row
    return {path: [segs[s] for s in sorted(segs)] for path, segs in videos.items()}


@torch.no_grad()
def evaluate(model, loader, text_tokens, cfg, logger, desc="test"):
    """Score every test segment; metrics from evaluation.metrics on rank-gathered scores.

    Returns ``{"metrics": {auc_all, auc_ano, ap, ...}, "videos": {path: {"starts",
    "lengths", "scores"}}, "eval": <evaluation.metrics.evaluate_scores result>, "segments_per_s"}``.
    """
    device = model_device(model)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    rows, started = [], time.time()
    for batch in progress(loader, desc=desc):
        probs = segment_probabilities(net, batch["imgs"].to(device, non_blocking=True), text_tokens, cfg, device)
        for i in range(probs.shape[0]):
            rows.append((batch["path"][i], int(batch["seg_start"][i]), int(batch["seg_len"][i]),
                         float(probs[i, 1])))
    net.train(was_training)
    elapsed = time.time() - started
    all_rows = gather_rows(rows)
    videos = rows_to_scores(all_rows)
    metrics, result = score_metrics(videos, loader.dataset.records, cfg)
    logger.info(f"{desc}: AUC@all {metrics['auc_all']:.4f} AUC@ano {metrics['auc_ano']:.4f} "
                f"AP {metrics['ap']:.4f} ({metrics['num_videos']} videos, {len(all_rows)} segments)")
    return {"metrics": metrics, "videos": videos, "eval": result,
            "segments_per_s": sum(len(v["scores"]) for v in videos.values()) / max(elapsed, 1e-9)}


def score_metrics(videos, records, cfg):
    """(metrics {auc_all, auc_ano, ap, num_videos, num_frames}, full evaluate_scores result)."""
    from evaluation.metrics import evaluate_scores

    result = evaluate_scores({p: v["scores"] for p, v in videos.items()}, records,
                             count_start_zero=cfg.DATA.COUNT_START_ZERO, smooth=cfg.TEST.SMOOTH)
    return {k: result[k] for k in ("auc_all", "auc_ano", "ap", "num_videos", "num_frames")}, result


def choose_threshold(eval_result) -> dict:
    """Score thresholds chosen on the evaluated frames (smoothed frame scores of the list).

    ``f1``: the threshold maximising F1 of "frame is anomalous" (the one stored as
    ``score_threshold``); ``youden``: the one maximising TPR - FPR. None when undefined.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    per_video = eval_result["per_video"]
    if not per_video:
        return {"f1": None, "youden": None, "rule": "max F1 over evaluated frames"}
    scores = np.concatenate([v["scores"] for v in per_video.values()])
    labels = np.concatenate([v["labels"] for v in per_video.values()])
    if labels.min() == labels.max():
        return {"f1": None, "youden": None, "rule": "max F1 over evaluated frames"}
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best_f1 = int(np.argmax(f1))
    fpr, tpr, roc_thr = roc_curve(labels, scores)
    finite = np.isfinite(roc_thr)
    youden = float(roc_thr[finite][np.argmax((tpr - fpr)[finite])]) if finite.any() else None
    return {"f1": float(thresholds[best_f1]), "f1_value": float(f1[best_f1]), "youden": youden,
            "rule": "max F1 over evaluated (smoothed) frame scores"}


@torch.no_grad()
def generate_pseudo_labels(model, loader, text_tokens, cfg, logger):
    """Argmax class of every segment of every training video -> {path: VideoPseudoLabels}.

    ``loader``: the deterministic train-as-test loader (datasets.build.build_train_as_test_loader).
    Gathered from all ranks; every rank returns the same dict.
    """
    from training.pseudo_labels import VideoPseudoLabels

    device = model_device(model)
    net = unwrap(model)
    net.eval()
    rows = []
    for batch in progress(loader, desc="pseudo labels"):
        probs = segment_probabilities(net, batch["imgs"].to(device, non_blocking=True), text_tokens, cfg, device)
        classes = probs.argmax(dim=-1)
        for i in range(probs.shape[0]):
            rows.append((batch["path"][i], int(batch["seg_start"][i]), int(batch["seg_len"][i]),
                         [int(f) for f in batch["frame_inds"][i]], int(classes[i])))
    all_rows = gather_rows(rows)
    frames = {r.path: r.num_frames for r in loader.dataset.records}
    labels = {
        path: VideoPseudoLabels(frames[path], np.array([r[3] for r in segs], dtype=np.int64),
                                np.array([r[4] for r in segs], dtype=np.int64))
        for path, segs in _rows_to_videos(all_rows).items()
    }
    positives = sum(int((v.labels > 0).sum()) for v in labels.values())
    total = sum(len(v.labels) for v in labels.values())
    logger.info(f"pseudo labels: {len(labels)} videos, {total} segments, {positives} labelled abnormal")
    return labels


def segment_ground_truth(batch, records, count_start_zero):
    """Ground-truth label [B] (long) of test segments: 1 if any of its sampled frames is anomalous."""
    from datasets.lists import frame_labels

    out = torch.zeros(len(batch["vid"]), dtype=torch.long)
    for i, vid in enumerate(batch["vid"].tolist()):
        truth = frame_labels(records[vid], count_start_zero)
        inds = batch["frame_inds"][i].reshape(-1).clamp(0, len(truth) - 1).numpy()
        out[i] = int(truth[inds].any())
    return out


def evaluate_attack(model, loader, text_tokens, cfg, logger, attack_settings):
    """Clean and PGD-attacked scores of every test segment (attacked with its true label).

    Returns ``(clean_rows, adv_rows, seconds)`` gathered from all ranks; rows are
    (path, seg_start, seg_len, P(abnormal)). ``attack_settings``: keyword arguments of
    attacks.pgd.pgd (eps in [0,1] units).
    """
    from attacks.pgd import pgd_in_chunks

    device = model_device(model)
    net = unwrap(model)
    net.eval()
    records = loader.dataset.records
    clean_rows, adv_rows, started = [], [], time.time()
    bar = progress(loader, desc="attack")
    for batch in bar:
        imgs = batch["imgs"].to(device, non_blocking=True)
        truth = segment_ground_truth(batch, records, cfg.DATA.COUNT_START_ZERO).to(device)
        crops = imgs.shape[1] if imgs.dim() == 6 else 1
        flat = imgs.reshape(-1, *imgs.shape[-4:])
        with torch.no_grad():
            clean = segment_probabilities(net, imgs, text_tokens, cfg, device)
        with autocast(cfg, device):
            adv = pgd_in_chunks(net, flat, text_tokens, truth.repeat_interleave(crops), cfg.ATTACK.BATCH_SIZE,
                                **attack_settings)
        with torch.no_grad():
            attacked = segment_probabilities(net, adv.reshape(imgs.shape), text_tokens, cfg, device)
        for i in range(imgs.shape[0]):
            key = (batch["path"][i], int(batch["seg_start"][i]), int(batch["seg_len"][i]))
            clean_rows.append((*key, float(clean[i, 1])))
            adv_rows.append((*key, float(attacked[i, 1])))
    seconds = time.time() - started
    return gather_rows(clean_rows), gather_rows(adv_rows), seconds


def rows_to_scores(rows) -> dict:
    """Gathered rows -> {path: {"starts", "lengths", "scores"}} (segments in time order)."""
    return {
        path: {"starts": np.array([r[1] for r in segs], dtype=np.int64),
               "lengths": np.array([r[2] for r in segs], dtype=np.int64),
               "scores": np.array([r[3] for r in segs], dtype=np.float32)}
        for path, segs in _rows_to_videos(rows).items()
    }


# ----------------------------------------------------------------------------- the epoch loop
def fit(stage, model, train_loader, test_loader, text_tokens, step_fn, on_best=None):
    """Train TRAIN.EPOCHS epochs (continuing a resumed run), evaluating every SAVE_FREQ epochs.

    Checkpoints (training.checkpoint): ``last`` after every epoch and on a stop signal (with the
    position inside the epoch and every rank's RNG states, so the run continues exactly);
    ``best`` when AUC@all improves, its metadata holding the score threshold chosen on the
    evaluated frames (see :func:`choose_threshold`). ``on_best(eval_result, epoch)`` is called
    on every rank when a new best is found (the stage writes scores and plots there).
    Returns a summary dict for results.json; ``summary["stopped"]`` is True after a signal.
    """
    from datasets.build import set_loader_epoch
    from utils import signals
    from training.optim import build_optimizer, build_scheduler, optimizer_steps_per_epoch

    cfg, logger = stage.cfg, stage.logger
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = optimizer_steps_per_epoch(len(train_loader), cfg.TRAIN.ACCUMULATION_STEPS)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    state, resume_rng, resumed_from = TrainState(), None, None
    path = resume_checkpoint_path(stage)
    if path is not None:
        state, resume_rng = load_training_state(path, model, optimizer, scheduler, logger)
        resumed_from = str(path)
    ddp_model = dist.wrap_model(model, stage.dist)
    for loader in (train_loader, test_loader):
        protect_workers_from_sigterm(loader)
    signals.install_stop_handler()
    timings = {"train_s": 0.0, "eval_s": 0.0}
    try:
        while state.epoch < cfg.TRAIN.EPOCHS:
            set_loader_epoch(train_loader, state.epoch)  # data order and items follow (SEED, epoch)
            started = time.time()
            outcome = train_one_epoch(ddp_model, train_loader, optimizer, scheduler, text_tokens, cfg, state,
                                      step_fn, logger, stop_requested=lambda: signals.stop_requested(sync=True),
                                      resume_rng=resume_rng)
            timings["train_s"] += time.time() - started
            resume_rng = None
            if outcome == "stopped":
                save_training_state(stage, "last", model, optimizer, scheduler, state)
                logger.warning(f"stopped by a signal at epoch {state.epoch + 1}, micro-batch {state.batch_in_epoch}; "
                               f"saved {stage.output / 'checkpoints' / 'last'}; run the same command again to continue")
                return {"stopped": True, "epoch": state.epoch, "step": state.step}
            if state.epoch % cfg.SAVE_FREQ == 0 or state.epoch == cfg.TRAIN.EPOCHS:
                started = time.time()
                result = evaluate(ddp_model, test_loader, text_tokens, cfg, logger, desc=f"test epoch {state.epoch}")
                timings["eval_s"] += time.time() - started
                metrics = result["metrics"]
                state.history.append({"epoch": state.epoch, "step": state.step, **metrics})
                value = metrics["auc_all"]
                if np.isfinite(value) and value > state.best_metric:
                    state.best_metric = float(value)
                    state.best = {"epoch": state.epoch, **metrics}
                    state.threshold = choose_threshold(result["eval"])
                    if on_best is not None:  # before the checkpoint: a kill in between redoes both
                        on_best(result, state.epoch)
                    save_training_state(stage, "best", model, optimizer, scheduler, state,
                                        extra={"score_threshold": state.threshold["f1"]})
                    logger.info(f"new best AUC@all {value:.4f} at epoch {state.epoch}; "
                                f"score threshold (max F1) {state.threshold['f1']}")
            save_training_state(stage, "last", model, optimizer, scheduler, state)
            if signals.stop_requested(sync=True):
                logger.warning(f"stopped by a signal after epoch {state.epoch}; run the same command again to continue")
                return {"stopped": True, "epoch": state.epoch, "step": state.step}
    finally:
        signals.uninstall_stop_handler()
    best_file = stage.output / "checkpoints" / "best.safetensors"
    return {"stopped": False, "epochs": state.epoch, "steps": state.step, "history": state.history,
            "best": state.best or None, "last": state.history[-1] if state.history else None,
            "threshold": state.threshold or None, "resumed_from": resumed_from, "timings": timings,
            "checkpoint": str(best_file) if state.best else None}


def resume_checkpoint_path(stage):
    """MODEL.RESUME, else the last checkpoint of OUTPUT when TRAIN.AUTO_RESUME or the folder
    holds this same run (training.stage.check_output_folder), else None."""
    from training import checkpoint as ckpt

    if stage.cfg.MODEL.RESUME:
        return stage.cfg.MODEL.RESUME
    if stage.cfg.TRAIN.AUTO_RESUME or stage.same_run:
        return ckpt.find_auto_resume(str(stage.output))
    return None


def save_training_state(stage, tag, model, optimizer, scheduler, state: TrainState, extra=None):
    """Checkpoint ``tag`` (rank 0 writes; every rank must call: RNG states are gathered)."""
    from training import checkpoint as ckpt

    rngs = dist.all_gather_object(rng_state())
    if dist.is_main_process():
        payload = {"batch_in_epoch": state.batch_in_epoch, "rng": rngs,
                   "world_size": dist.get_world_size(), "history": state.history, "best": state.best,
                   "threshold": state.threshold, **(extra or {})}
        ckpt.save_checkpoint(str(stage.output), tag, dist.unwrap_model(model), optimizer, scheduler, state.epoch,
                             state.step, state.best_metric, stage.cfg, extra=payload)
    dist.barrier()


def load_training_state(path, model, optimizer, scheduler, logger):
    """Load a checkpoint written by :func:`save_training_state` -> (TrainState, RNG to restore or None)."""
    from training import checkpoint as ckpt

    meta = ckpt.load_checkpoint(str(path), model, optimizer, scheduler)
    extra = meta.get("extra", meta)
    state = TrainState(epoch=int(meta["epoch"]), step=int(meta["step"]),
                       batch_in_epoch=int(extra.get("batch_in_epoch", 0)),
                       best_metric=float(meta.get("best_metric", float("-inf"))),
                       history=list(extra.get("history", [])), best=dict(extra.get("best", {})),
                       threshold=dict(extra.get("threshold", {})))
    rank, world = dist.get_rank(), dist.get_world_size()
    rngs = extra.get("rng")
    resume_rng = None
    if rngs and len(rngs) == world:
        if state.batch_in_epoch > 0:
            resume_rng = rngs[rank]  # restored by train_one_epoch once its loader iterator exists
        else:
            set_rng_state(rngs[rank])
    else:
        logger.warning(f"{path}: no RNG states for {world} rank(s); the run continues with fresh seeds "
                       "(same weights and schedule, different random draws)")
    logger.info(f"resumed from {path}: epoch {state.epoch}, step {state.step}, micro-batch "
                f"{state.batch_in_epoch}, best AUC@all {state.best_metric}")
    return state, resume_rng
