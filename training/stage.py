"""What every stage script does before and after its loop.

``setup_stage`` parses nothing itself: the entry script builds the parser
(``utils.config.build_arg_parser`` plus its own flags) and hands over the parsed args.
It then reads the config, starts the process group (torchrun, torch.distributed.launch or
a plain single process), checks the output folder, opens the per-rank log, seeds
SEED + rank and writes ``config.yaml`` (rank 0). ``build_model`` and ``text_tokens``
turn the config into the X-CLIP model and the [C, 77] class-name tokens.

Output-folder rule: a folder that holds results (checkpoints, results.json, scores.npz,
pseudo labels) and whose ``config.yaml`` differs from this run's config in a key those results
depend on (training/run_identity.py says which, per kind of result) holds another run, and a
stage refuses to write there unless ``--overwrite`` is given. A matching folder is the same
run: training resumes from its last checkpoint. A folder without results is no run at all
(a failed start leaves only config.yaml and a log): the stage starts there afresh.

No run replaces the results of another kind of run (:func:`evaluation_folder`): an evaluation
(main.py --only_test, main_attack.py) whose --output holds a training run, pseudo labels or
another kind of evaluation writes into ``OUTPUT/test`` or ``OUTPUT/attack`` instead, stage 2a
(main_advtrain.py --only_test) refuses a folder that already holds a training (its
pseudo_labels.json must stay the one that training used) and a training refuses a folder of
evaluation results, unless ``--overwrite``. The folder is claimed first (utils/outdir.py:
created, locked against a second run, stale temporary files removed).
"""
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

# which keys make two runs the same run, per what a folder holds: training/run_identity.py
from training.run_identity import (RESULT_FILES, RUN_MODE_KEYS, compared_keys, evaluation_folder,  # noqa: F401
                                   folder_contents, read_run_config)
from utils.config import config_to_yaml, get_config, save_config
from utils.errors import CheckpointError, ConfigError, OutputError
from utils.io import atomic_path, atomic_write_json
from utils.outdir import check_output_path


@dataclass
class Stage:
    """The state a stage script passes to the engine loops."""

    name: str
    cfg: object
    args: object
    dist: object  # utils.dist.DistInfo
    logger: object
    output: Path
    same_run: bool  # the output folder already held this run's config
    started: float = field(default_factory=time.time)

    @property
    def device(self):
        return self.dist.device

    @property
    def is_main(self):
        return self.dist.rank == 0


def setup_stage(name, args) -> Stage:
    """Config, process group, output-folder check, logger, seeds and config.yaml."""
    from utils import dist as dist_utils
    from utils.logger import create_logger

    cfg = get_config(args)
    if not cfg.OUTPUT:
        raise ConfigError(f"{name}: no output folder; pass --output DIR (or set OUTPUT in the config)")
    info = dist_utils.init_distributed(cfg.LOCAL_RANK)
    overwrite = getattr(args, "overwrite", False)
    # every rank reads the same files, so every rank reaches the same verdict (no hang
    # waiting for a rank that raised)
    check_output_path(cfg.OUTPUT)  # before anything looks inside it
    output, redirected = evaluation_folder(name, cfg, Path(cfg.OUTPUT), overwrite)
    notes = [redirected] if redirected else []
    notes += _claim(output, f"{name}{' --only_test' if cfg.TEST.ONLY_TEST else ''}", info.rank)
    same_run = check_output_folder(cfg, output, overwrite=overwrite)
    old_checkpoints = output / "checkpoints"
    moved = None
    if info.rank == 0 and not same_run and not cfg.TEST.ONLY_TEST and any(old_checkpoints.glob("*")):
        # --overwrite starts over: keep the other run's checkpoints, but out of auto-resume's way
        moved = output / time.strftime("checkpoints_replaced_%Y%m%d_%H%M%S")
        old_checkpoints.rename(moved)
    dist_utils.barrier()
    output.mkdir(parents=True, exist_ok=True)
    logger = create_logger(str(output), info.rank)
    dist_utils.seed_everything(cfg.SEED + info.rank)
    if info.rank == 0:
        save_config(cfg, output / "config.yaml")
    logger.info(f"{name}: rank {info.rank}/{info.world_size} on {info.device}; output {output}")
    for note in notes:
        logger.warning(note)
    if moved is not None:
        logger.warning(f"--overwrite: moved the checkpoints of the run that was in {output} to {moved}")
    logger.debug(f"config:\n{config_to_yaml(cfg)}")
    return Stage(name, cfg, args, info, logger, output, same_run)


def _claim(output: Path, what: str, rank: int) -> list:
    """utils.outdir.claim_output on rank 0; every rank raises the same OutputError when it fails."""
    from utils import dist as dist_utils
    from utils.outdir import claim_output

    notes, error = [], None
    if rank == 0:
        try:
            notes = claim_output(output, what)
        except OutputError as err:
            error = err
    message = dist_utils.broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise OutputError(message)
    return notes


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(cfg, config_file, keys=None) -> list[str]:
    """``KEY: old -> new`` for every key where ``config_file`` differs from ``cfg``: among ``keys``
    when given, else among all keys but the run-mode keys. A key the file lacks (written
    before the key existed) counts as its default."""
    from utils.config import get_default_config

    defaults = _flatten(yaml.safe_load(config_to_yaml(get_default_config())))
    old = {**defaults, **_flatten(read_run_config(config_file))}
    new = _flatten(yaml.safe_load(config_to_yaml(cfg)))
    candidates = (set(old) | set(new)) - RUN_MODE_KEYS if keys is None else set(keys)
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
            for k in sorted(candidates) if old.get(k) != new.get(k)]


def check_output_folder(cfg, output: Path, overwrite: bool) -> bool:
    """True when ``output`` holds this same run; ConfigError when it holds another one.

    Another run = the folder holds results (training.run_identity.folder_contents) and its
    config.yaml differs in a key they depend on (training.run_identity.compared_keys), or it
    has results but no config.yaml. A folder without results is not a run (False: start
    fresh). ``overwrite`` lets the stage write anyway (returns False: start fresh).
    """
    config_file = output / "config.yaml"
    kinds = folder_contents(output)
    if not kinds:
        return False
    if config_file.is_file():
        try:
            keys = compared_keys(kinds, _flatten(yaml.safe_load(config_to_yaml(cfg))))
            diffs = config_differences(cfg, config_file, keys)
        except (yaml.YAMLError, ConfigError) as err:
            diffs = [f"its config.yaml cannot be read ({err})"]
        if not diffs:
            return not overwrite
        if overwrite:
            return False
        shown = "\n  ".join(diffs[:12]) + (f"\n  ... ({len(diffs) - 12} more)" if len(diffs) > 12 else "")
        raise ConfigError(
            f"output folder {output} holds a run ({', '.join(kinds)}) with a different config:\n  {shown}\n"
            "choose another --output, or pass --overwrite to write over it"
        )
    if not overwrite:
        raise ConfigError(
            f"output folder {output} holds results but no config.yaml, so it cannot be checked to be "
            "this run; choose another --output, or pass --overwrite to write over it"
        )
    return False


def build_model(stage: Stage, weights=None):
    """X-CLIP from ``weights`` (default MODEL.PRETRAINED) or, with none, the MODEL.ARCH preset.

    Returns the model on the stage's device in train mode (not yet wrapped in DDP).
    """
    path = weights if weights is not None else stage.cfg.MODEL.PRETRAINED
    return load_model(stage.cfg, path, stage.device, stage.logger).train()


def load_model(cfg, weights, device, logger, verify=False):
    """The one model loader of the stages and infer.py: X-CLIP from ``weights`` (any format
    models.xclip.load reads; None = random init of the MODEL.ARCH preset) on ``device``.

    Random init (no weights, or layers the weights lack) is drawn from SEED alone, so it is
    the same on every rank and leaves the per-rank stream (SEED + rank) untouched.
    ``verify``: a missing file is a CheckpointError, and a FrameShield checkpoint with a
    manifest is verified first (CheckpointError when damaged).
    """
    from models import xclip
    from training.checkpoint import checkpoint_file, verify_checkpoint

    if verify and weights:
        if not Path(weights).is_file():
            raise CheckpointError(f"checkpoint {weights} does not exist")
        if checkpoint_file(weights, ".manifest.json").is_file():
            ok, problem = verify_checkpoint(weights)
            if not ok:
                raise CheckpointError(f"checkpoint {weights} is damaged: {problem}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.SEED)
        model, _, _ = xclip.load(
            weights, name=cfg.MODEL.ARCH, device="cpu", T=cfg.DATA.NUM_FRAMES, droppath=cfg.MODEL.DROP_PATH_RATE,
            use_checkpoint=cfg.TRAIN.USE_CHECKPOINT, logger=logger, prompts_alpha=cfg.MODEL.PROMPTS_ALPHA,
            prompts_layers=cfg.MODEL.PROMPTS_LAYERS, mit_layers=cfg.MODEL.MIT_LAYERS, fix_text=cfg.MODEL.FIX_TEXT,
            train_video_head=cfg.MODEL.TRAIN_VIDEO_HEAD)
    if model.input_resolution != cfg.DATA.INPUT_SIZE:
        raise ConfigError(
            f"the model takes {model.input_resolution}px frames but DATA.INPUT_SIZE is {cfg.DATA.INPUT_SIZE}; "
            f"use the training config (-cfg) or set DATA.INPUT_SIZE {model.input_resolution}")
    return model.to(device)


def text_tokens(stage: Stage) -> torch.Tensor:
    """Tokens [C, 77] of the class names in DATA.LABEL_LIST (id order; class 1 = abnormal)."""
    return class_tokens(stage.cfg, stage.device, stage.logger)


def class_tokens(cfg, device, logger=None) -> torch.Tensor:
    """Tokens [C, 77] of DATA.LABEL_LIST's class names (id order; class 1 = abnormal)."""
    from clip import tokenize
    from datasets.lists import read_label_csv

    names = read_label_csv(cfg.DATA.LABEL_LIST)
    if len(names) != cfg.DATA.NUM_CLASSES or len(names) < 2:
        raise ConfigError(f"{cfg.DATA.LABEL_LIST} lists {len(names)} classes but DATA.NUM_CLASSES is "
                          f"{cfg.DATA.NUM_CLASSES}, and scoring needs class 1 = abnormal")
    if logger is not None:
        logger.info(f"classes: {names}")
    return tokenize(names).to(device)


def write_results(stage: Stage, results: dict) -> None:
    """OUTPUT/results.json (rank 0): ``results`` plus config path, stage name and wall time."""
    if not stage.is_main:
        return
    payload = {"stage": stage.name, **results, "config": str(stage.output / "config.yaml"),
               "config_source": str(stage.args.config)}
    payload.setdefault("timings", {})["total_s"] = round(time.time() - stage.started, 3)
    atomic_write_json(stage.output / "results.json", _finite(payload))
    stage.logger.info(f"wrote {stage.output / 'results.json'}")


def _finite(obj):
    """JSON has no NaN: write undefined metrics as null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


class BestEvaluation:
    """``on_best`` callback of :func:`training.engine.fit`: keeps the best evaluation and writes
    its clean scores (``OUTPUT/scores.npz``) each time a new best is found."""

    def __init__(self, stage: Stage):
        self.stage, self.result = stage, None

    def __call__(self, result, epoch):
        self.result = result
        write_scores(self.stage, {"clean": result["videos"]}, {"clean": result["eval"]})


def write_scores(stage: Stage, score_sets: dict, evals: dict, name="scores.npz") -> None:
    """Per-video segment and frame scores as ``OUTPUT/scores.npz`` (rank 0; no pickle).

    score_sets: {set name ("clean", "adversarial"): {video path: {"starts", "lengths", "scores"}}};
    evals: {set name: evaluation.metrics.evaluate_scores result} for the frame-level curves.
    Arrays (V videos in sorted path order, S segments, F frames):
    ``videos`` [V] str; ``seg_offsets`` [V+1], ``seg_starts`` [S], ``seg_lengths`` [S],
    ``<set>_scores`` [S] float32 (segments of video v: seg_offsets[v]:seg_offsets[v+1]);
    ``frame_offsets`` [V+1], ``frame_labels`` [F] uint8, ``<set>_frame_scores`` [F] float32
    (the smoothed frame scores the metric used; videos without scores have 0 frames).
    """
    if not stage.is_main:
        return
    from evaluation.metrics import video_name

    first = next(iter(score_sets.values()))
    videos = sorted(first)
    arrays = {"videos": np.array(videos, dtype=str)}
    seg_counts = [len(first[v]["starts"]) for v in videos]
    arrays["seg_offsets"] = np.concatenate([[0], np.cumsum(seg_counts)]).astype(np.int64)
    arrays["seg_starts"] = _concat([first[v]["starts"] for v in videos], np.int64)
    arrays["seg_lengths"] = _concat([first[v]["lengths"] for v in videos], np.int64)
    for set_name, scores in score_sets.items():
        arrays[f"{set_name}_scores"] = _concat([scores[v]["scores"] for v in videos], np.float32)
    first_eval = next(iter(evals.values()))["per_video"]
    names = [video_name(v) for v in videos]
    frame_counts = [len(first_eval[n]["labels"]) if n in first_eval else 0 for n in names]
    arrays["frame_offsets"] = np.concatenate([[0], np.cumsum(frame_counts)]).astype(np.int64)
    arrays["frame_labels"] = _concat([first_eval[n]["labels"] for n in names if n in first_eval], np.uint8)
    for set_name, result in evals.items():
        per_video = result["per_video"]
        arrays[f"{set_name}_frame_scores"] = _concat(
            [per_video[n]["scores"] for n in names if n in first_eval], np.float32)
    with atomic_path(stage.output / name) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    stage.logger.info(f"wrote {stage.output / name}")


def _concat(parts, dtype):
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def read_scores(path) -> dict:
    """Load a scores.npz written by :func:`write_scores` (no pickle) -> {name: array}."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_plots(stage: Stage, evals: dict, title: str) -> list:
    """OUTPUT/plots/roc.png (one curve per set) and plots/scores_<video>.png for every video
    (rank 0). evals: {"clean": evaluate_scores result[, "adversarial": ...]}; adversarial
    frame scores are drawn on the same axes as the clean ones. Returns the written paths.
    """
    if not stage.is_main:
        return []
    from utils import plots

    folder = stage.output / "plots"
    paths = plots.write_stage_plots(folder, evals, title=title, limit=None)
    stage.logger.info(f"wrote {len(paths)} plot(s) under {folder}")
    return paths


def write_training_plot(stage: Stage):
    """OUTPUT/plots/training.png from OUTPUT/metrics.csv (rank 0); its path, or None."""
    if not stage.is_main:
        return None
    from training.scalars import CSV_NAME, read_metrics
    from utils import plots

    rows = read_metrics(stage.output / CSV_NAME)
    if not rows:
        return None
    path = plots.plot_training(stage.output / "plots" / "training.png", rows, title=f"{stage.name}: {stage.output}")
    stage.logger.info(f"wrote {path} (curves of {stage.output / CSV_NAME})")
    return path


def weights_to_test(stage: Stage):
    """The checkpoint an evaluation stage scores: MODEL.RESUME, else MODEL.PRETRAINED."""
    weights = stage.cfg.MODEL.RESUME or stage.cfg.MODEL.PRETRAINED
    if weights is None:
        stage.logger.warning(f"{stage.name}: no --pretrained/--resume given: evaluating the "
                             f"{stage.cfg.MODEL.ARCH} preset with RANDOM weights")
    return weights


def report_evaluation(stage: Stage, result: dict, weights, key="test") -> dict:
    """Scores, plots and results.json of one evaluated model (main.py --only_test)."""
    from training.engine import choose_threshold

    threshold = choose_threshold(result["eval"])
    write_scores(stage, {"clean": result["videos"]}, {"clean": result["eval"]})
    plot_paths = write_plots(stage, {"clean": result["eval"]}, title=f"{stage.name}: {weights or 'random weights'}")
    from training.scalars import log_evaluation

    results = {key: result["metrics"], "threshold": threshold, "checkpoint": weights,
               "segments_per_s": result["segments_per_s"], "plots": [str(p) for p in plot_paths],
               "scalars": log_evaluation(stage, result["metrics"])}
    write_results(stage, results)
    return results


def report_training(stage: Stage, summary: dict, best_result) -> dict:
    """results.json of a training stage: best/last metrics, threshold, history, checkpoint;
    plots/ of the best evaluation and plots/training.png (the curves of metrics.csv)."""
    if best_result is not None:
        write_plots(stage, {"clean": best_result["eval"]}, title=f"{stage.name}: best epoch {summary['best']['epoch']}")
    curves = write_training_plot(stage)
    if curves is not None:
        summary = {**summary, "plots": {"training": str(curves)}}
    write_results(stage, summary)
    return summary


def run_main(main) -> None:
    """Run an entry script's ``main()`` and exit with its code; a FrameShieldError (a problem
    the user can fix: config, lists, data, checkpoint, output folder, a diverging loss) ends the
    process with its message and exit code 2 instead of a traceback, and so does an OSError of
    a full disk, a quota or a read-only file system. The message is left for torchrun's
    launcher (``python -m utils.dist``, runners/launch.sh) to print last."""
    import logging
    import sys

    from utils.dist import record_error
    from utils.errors import FrameShieldError
    from utils.io import WRITE_ERRNOS, output_error

    try:
        try:
            code = main()
        except OSError as err:
            # a write outside utils/io.py (a log line, metrics.csv, tensorboard) on a full or
            # read-only disk: the environment's fault, reported like the project's own errors
            if isinstance(err, FrameShieldError) or err.errno not in WRITE_ERRNOS:
                raise
            raise output_error(err.filename or "a file of this run", err) from err
    except FrameShieldError as err:
        logger = logging.getLogger("FrameShield")
        message = f"{type(err).__name__}: {err}"
        if logger.handlers:
            logger.error(message)
        else:
            print(f"error: {message}", file=sys.stderr)
        record_error(message)  # under torchrun: the launcher's summary shows this line (utils/dist.py)
        code = 2
    sys.exit(code)
