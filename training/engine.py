"""The training loop both training stages share: epochs, accumulation, checkpoints, resume.

:func:`fit` trains TRAIN.EPOCHS epochs with a stage's step function (training.steps),
evaluates with evaluation.scoring.evaluate, keeps ``best`` / ``last`` checkpoints and
continues an interrupted run exactly. Shapes of a batch: see training.steps.

Distributed: the model passed to ``train_one_epoch`` may be wrapped in
DistributedDataParallel; gradients are synchronised only on the last micro-step of an
accumulation group (``no_sync`` on the others). Evaluation results are gathered from every
rank and de-duplicated, so a sharded evaluation equals the single-process one.
"""
import itertools
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from evaluation.metrics import choose_threshold
from evaluation.scoring import evaluate, model_device
from training.scalars import GroupMean
from utils import dist
from utils.errors import TrainingError


# ----------------------------------------------------------------------------- helpers
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


@dataclass
class MicroStep:
    """What a step function may need to know about its place in the accumulation group."""

    first: bool
    last: bool
    optimizer: object
    epoch: int = 0  # 0-based epoch of the micro-batch
    index: int = 0  # micro-batch in the epoch


def train_one_epoch(model, loader, optimizer, scheduler, text_tokens, cfg, state: TrainState, step_fn,
                    logger, stop_requested=lambda: False, resume_rng=None, scalars=None):
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
    ``scalars``: a training.scalars log; gets one row per optimizer step (rank 0's loss parts
    averaged over the group, the LR the step ran at, the gradient norm before clipping).
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
    group_parts = GroupMean()  # loss parts of the current accumulation group
    batches = iter(remaining_batches(loader, skip))  # creating the iterator draws a seed
    if resume_rng is not None:  # ... so restore the interrupted run's RNG after it
        set_rng_state(resume_rng)
    for idx, batch in enumerate(batches, start=skip):
        group_start = idx - idx % accum
        group_end = min(group_start + accum, total)
        micro = MicroStep(first=idx == group_start, last=idx + 1 == group_end, optimizer=optimizer,
                          epoch=state.epoch, index=idx)
        with dist.sync_context(model, sync=micro.last):
            loss, parts = step_fn(model, batch, text_tokens, cfg, device, micro)
            if dist.any_rank(not torch.isfinite(loss.detach()).item()):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {state.epoch + 1}, micro-batch {idx + 1}/{total}, "
                    f"optimizer step {state.step + 1}; lower TRAIN.LR, set TRAIN.CLIP_GRAD, or check the data "
                    f"of {batch.get('path')}")
            (loss / (group_end - group_start)).backward()
        done_here += 1
        parts = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}
        group_parts.add(parts)
        if micro.last:
            grad_norm = gradient_norm(dist.unwrap_model(model), cfg.TRAIN.CLIP_GRAD, measure=getattr(scalars, "active", False))
            step_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            _scheduler_step(scheduler, state.step)
            state.batch_in_epoch = idx + 1
            if scalars is not None:
                scalars.train_step(state.step, state.epoch + 1, group_parts.mean(), step_lr, grad_norm)
            group_parts = GroupMean()
        bar.update(1)
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


def gradient_norm(model, clip, measure=True):
    """Clip the gradients to ``clip`` (> 0) and return their total L2 norm before clipping;
    with no clipping the norm is only measured (``measure``; None otherwise)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    if not measure or not params:
        return None
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


class _WorkerIgnoresSigterm:
    """``worker_init_fn`` wrapper: DataLoader workers ignore SIGTERM, then run the original.

    A launcher (torchrun) or scheduler signals whole process groups, data workers included;
    a worker that dies of it breaks the batch the rank is waiting for, and the rank crashes
    before it can save. Ignoring it leaves the shutdown to the rank (which stops at the next
    optimizer step and closes its workers). It lives here, not in datasets.build, because
    only the training loop installs the stop handler that makes that shutdown happen.
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


# ----------------------------------------------------------------------------- the epoch loop
def fit(stage, model, train_loader, test_loader, text_tokens, step_fn, on_best=None, val_loader=None):
    """Train TRAIN.EPOCHS epochs (continuing a resumed run), evaluating every SAVE_FREQ epochs.

    Checkpoints (training.checkpoint): ``last`` after every epoch and on a stop signal (with the
    position inside the epoch and every rank's RNG states, so the run continues exactly);
    ``best`` when AUC@all improves, its metadata holding the score threshold chosen on the
    evaluated frames (see :func:`choose_threshold`). ``on_best(eval_result, epoch)`` is called
    on every rank when a new best is found (the stage writes scores and plots there).
    Returns a summary dict for results.json; ``summary["stopped"]`` is True after a signal.

    Which evaluation is "best" follows TRAIN.SELECT: ``test`` (published) the best test
    AUC@all, ``val`` the best AUC@all on ``val_loader`` (DATA.VAL_SPLIT_FILE, held-back
    training videos; the test split is still scored every epoch, for the curves, but never
    chosen on), ``last`` the latest evaluation. With a validation loader the score threshold
    is chosen on the validation frames. History rows hold ``val_auc_all``/``val_ap`` then.
    """
    from datasets.build import set_loader_epoch
    from utils import signals
    from training.optim import build_optimizer, build_scheduler, global_batch, optimizer_steps_per_epoch, scaled_lr
    from training.scalars import open_scalars

    cfg, logger = stage.cfg, stage.logger
    world = dist.get_world_size()
    optimizer = build_optimizer(cfg, model, world)
    logger.info(f"global batch {global_batch(cfg, world)} videos per optimizer step = {world} process(es) x "
                f"TRAIN.BATCH_SIZE {cfg.TRAIN.BATCH_SIZE} x TRAIN.ACCUMULATION_STEPS {cfg.TRAIN.ACCUMULATION_STEPS}; "
                f"LR {scaled_lr(cfg, world):.3g} (TRAIN.LR {cfg.TRAIN.LR:g}, TRAIN.LR_SCALING {cfg.TRAIN.LR_SCALING})")
    steps_per_epoch = optimizer_steps_per_epoch(len(train_loader), cfg.TRAIN.ACCUMULATION_STEPS)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    state, resume_rng, resumed_from = TrainState(), None, None
    path = resume_checkpoint_path(stage)
    if path is not None:
        state, resume_rng = load_training_state(path, model, optimizer, scheduler, logger)
        resumed_from = str(path)
    if cfg.TRAIN.COMPILE:
        # in place (nn.Module.compile): state_dict keys, checkpoints and unwrap_model stay as they are
        model.compile()
        logger.info("TRAIN.COMPILE: the model's forward runs through torch.compile (the first steps compile it)")
    ddp_model = dist.wrap_model(model, stage.dist)
    scalars = open_scalars(stage, resume=(state.step, state.epoch) if path is not None else None)
    for loader in (train_loader, test_loader, val_loader):
        protect_workers_from_sigterm(loader)
    select = selection_rule(cfg, val_loader)
    signals.install_stop_handler()
    timings = {"train_s": 0.0, "eval_s": 0.0}
    try:
        while state.epoch < cfg.TRAIN.EPOCHS:
            set_loader_epoch(train_loader, state.epoch)  # data order and items follow (SEED, epoch)
            started = time.time()
            outcome = train_one_epoch(ddp_model, train_loader, optimizer, scheduler, text_tokens, cfg, state,
                                      step_fn, logger, stop_requested=lambda: signals.stop_requested(sync=True),
                                      resume_rng=resume_rng, scalars=scalars)
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
                chosen_on = result
                row = {"epoch": state.epoch, "step": state.step, **metrics}
                if val_loader is not None:
                    started = time.time()
                    chosen_on = evaluate(ddp_model, val_loader, text_tokens, cfg, logger, desc=f"val epoch {state.epoch}")
                    timings["eval_s"] += time.time() - started
                    row.update({f"val_{k}": v for k, v in chosen_on["metrics"].items() if k in VAL_KEYS})
                    row.update({f"val_{k}": v for k, v in score_distribution(chosen_on["eval"]).items()})
                    logger.info(f"epoch {state.epoch}: val AUC@all {row['val_auc_all']:.4f}, test AUC@all "
                                f"{metrics['auc_all']:.4f} (TRAIN.SELECT {select})")
                state.history.append(row)
                scalars.evaluation(state.step, state.epoch, row)
                value = selection_value(select, row, state.epoch)
                if np.isfinite(value) and value > state.best_metric:
                    state.best_metric = float(value)
                    state.best = {**row}
                    state.threshold = choose_threshold(chosen_on["eval"])
                    if on_best is not None:  # before the checkpoint: a kill in between redoes both
                        on_best(result, state.epoch)
                    save_training_state(stage, "best", model, optimizer, scheduler, state,
                                        extra={"score_threshold": state.threshold["f1"]})
                    logger.info(f"new best ({select}) {value:.4f} at epoch {state.epoch}, test AUC@all "
                                f"{metrics['auc_all']:.4f}; "
                                f"score threshold (max F1) {state.threshold['f1']}")
            save_training_state(stage, "last", model, optimizer, scheduler, state)
            if signals.stop_requested(sync=True):
                logger.warning(f"stopped by a signal after epoch {state.epoch}; run the same command again to continue")
                return {"stopped": True, "epoch": state.epoch, "step": state.step}
    finally:
        signals.uninstall_stop_handler()
        scalars.close()
    best_file = stage.output / "checkpoints" / "best.safetensors"
    return {"stopped": False, "epochs": state.epoch, "steps": state.step, "history": state.history,
            "select": select, "best": state.best or None, "last": state.history[-1] if state.history else None,
            "threshold": state.threshold or None, "resumed_from": resumed_from, "timings": timings,
            "checkpoint": str(best_file) if state.best else None, "scalars": scalars.paths()}


VAL_KEYS = ("auc_all", "auc_ano", "ap")


def score_distribution(eval_result) -> dict:
    """Mean frame score of the normal videos, of the normal and of the anomalous frames of the
    anomalous videos (``p_normal_videos``, ``p_anomalous_videos_normal``, ``p_anomalous_frames``):
    whether a model separates videos, or frames within a video."""
    groups = {"p_normal_videos": [], "p_anomalous_videos_normal": [], "p_anomalous_frames": []}
    for video in eval_result["per_video"].values():
        scores, labels = np.asarray(video["scores"], float), np.asarray(video["labels"]) > 0
        if labels.any():
            groups["p_anomalous_videos_normal"].append(scores[~labels])
            groups["p_anomalous_frames"].append(scores[labels])
        else:
            groups["p_normal_videos"].append(scores)
    return {k: float(np.concatenate(v).mean()) if v and sum(map(len, v)) else float("nan") for k, v in groups.items()}


def selection_rule(cfg, val_loader) -> str:
    """TRAIN.SELECT, checked against the loaders fit was given."""
    select = cfg.TRAIN.SELECT
    if select == "val" and val_loader is None:
        raise TrainingError("TRAIN.SELECT 'val' needs a validation loader (DATA.VAL_SPLIT_FILE)")
    return select


def selection_value(select, row, epoch) -> float:
    """The number TRAIN.SELECT maximises over the evaluations (``last``: the epoch itself)."""
    if select == "val":
        return row["val_auc_all"]
    if select == "last":
        return float(epoch)
    return row["auc_all"]


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
