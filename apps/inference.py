"""Score a user's own videos (files or frame folders) with a trained FrameShield checkpoint.

Why it looks like this: the scores must be exactly those the evaluation would give the
same video, so a video is cut with the test segmenting (``datasets.sampling.video_segments``:
segments of ``DATA.NUM_FRAMES * DATA.FRAME_INTERVAL`` frames, one clip of T frames each),
each clip goes through the test transform (``datasets.transforms.build_test_view``), the
anomaly probability of a segment is ``softmax(logits)[:, 1]`` (averaged over crops with
TEST.NUM_CROP 3), and segment scores are spread over frames with
``evaluation.metrics.segment_scores_to_frames`` (optionally the published 32-window smoothing,
``evaluation.metrics.smooth_windows``).

Streaming: segments are processed in chunks covering at most ``chunk_frames`` video frames
(whole segments, at least one), and only the T sampled frames of each segment are decoded,
so the pixel memory is bounded by the chunk, not by the video's length. What grows with the
length is one float32 score per frame (0.4 MB for an hour at 30 fps).

Frame rate: video files use decord's average frame rate; frame folders have none, so they
use ``fps`` (default :data:`DEFAULT_FOLDER_FPS`); an explicit ``fps`` overrides both.

Threshold: the training stages store the score threshold chosen on the validation frames
(max F1) in ``checkpoints/<tag>.state.pt`` (``extra.score_threshold`` in ``best``, and
``extra.threshold.f1`` in every checkpoint of a training run; see ``training.engine.fit``); a
checkpoint without one (other formats, or no defined threshold) uses
:data:`DEFAULT_THRESHOLD`, logged as a warning.

Attack (optional): every clip is attacked with L-inf PGD (``attacks.pgd.pgd``, ATTACK.*
settings) with clip label "anomalous", which makes the attacker push P(abnormal) down: an
adversary hiding an event. The perturbation acts on the model input (the transformed clip
in [0, 1]) and stays within eps of it.
"""
import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from apps.intervals import annotation_labels, detect_intervals, frame_scores, parse_interval_text, video_auc
from apps.render import DEFAULT_RENDER_SECONDS, plot_scores, render_annotated
from datasets.video_probe import open_source
from utils.errors import CheckpointError, ConfigError, DataError
from utils.io import atomic_write_json, atomic_write_text

logger = logging.getLogger("FrameShield.inference")

DEFAULT_CHUNK_FRAMES = 256
FLAGGED_WARNING = 0.9  # warn when at least this fraction of a video's frames is above the threshold


# ----------------------------------------------------------------------------- video sources
# ----------------------------------------------------------------------------- model and threshold
def load_model(cfg, weights, device, log=logger):
    """The trained model to score with, in eval mode (training.stage.load_model, verified)."""
    from training.stage import load_model as load_checkpoint_model

    if not weights:
        raise ConfigError("pass --pretrained CHECKPOINT (the trained model to score with)")
    return load_checkpoint_model(cfg, weights, device, log, verify=True).eval()


def class_tokens(cfg, device):
    """Tokens [C, 77] of DATA.LABEL_LIST's class names (training.stage.class_tokens)."""
    from training.stage import class_tokens as tokens_of

    return tokens_of(cfg, device)


# ----------------------------------------------------------------------------- scoring
def segment_chunks(segments, chunk_frames):
    """Consecutive groups of segments covering at most ``chunk_frames`` frames (>= 1 segment)."""
    if chunk_frames <= 0:
        raise ConfigError(f"--chunk-frames must be positive, got {chunk_frames}")
    group, covered = [], 0
    for seg in segments:
        if group and covered + seg.length > chunk_frames:
            yield group
            group, covered = [], 0
        group.append(seg)
        covered += seg.length
    if group:
        yield group


def clips_of_segments(frames, segments, view):
    """Decoded frames ``uint8 [S*T, 3, H, W]`` -> model input ``float [S, T, 3, s, s]``
    (``[S, 3, T, 3, s, s]`` with three crops), the test view applied per clip as in the
    evaluation's dataset."""
    t = len(segments[0].frame_inds)
    return torch.stack([view(frames[i * t:(i + 1) * t]) for i in range(len(segments))])


def clip_probabilities(model, clips, tokens, batch_size, cfg=None):
    """P(abnormal) [S] of clips [S, T, 3, s, s] or [S, crops, T, 3, s, s] (crop mean), scored
    in batches of ``batch_size`` by the evaluation's evaluation.scoring.segment_probabilities."""
    return score_clips(model, clips, tokens, batch_size, cfg)[0]


def attack_clips(model, clips, tokens, settings, batch_size, cfg=None):
    """PGD toward "all normal": every clip labelled anomalous, so P(abnormal) is pushed down.

    clips: [S, T, 3, s, s] (or with a crops dim) float in [0, 1]; returns the attacked clips
    of the same shape, within ``settings["eps"]`` of ``clips`` (L-inf) and inside [0, 1].
    ``settings``: attacks.settings.attack_settings (or the keyword arguments of attacks.pgd.pgd).
    """
    from attacks.common import amp_dtype_from_config
    from attacks.pgd import pgd_in_chunks
    from attacks.settings import pgd_kwargs

    device = next(model.parameters()).device
    flat = clips.reshape(-1, *clips.shape[-4:]).to(device)
    labels = torch.ones(flat.shape[0], dtype=torch.long, device=device)
    amp = amp_dtype_from_config(cfg, device) if cfg is not None else None
    adv = pgd_in_chunks(model, flat, tokens, labels, batch_size, amp_dtype=amp, **pgd_kwargs(settings))
    return adv.detach().cpu().reshape(clips.shape)


def score_clips(model, clips, tokens, batch_size, cfg=None, attack=None):
    """(clean P(abnormal) [S], attacked P(abnormal) [S] or None, attacked clips or None) of
    one chunk of clips, scored in batches of ``batch_size``; the attack (``attack``:
    attacks.settings.attack_settings) labels every clip anomalous."""
    from attacks.common import amp_dtype_from_config, eval_mode, make_forward
    from evaluation.scoring import segment_probabilities

    device = next(model.parameters()).device
    forward = make_forward(model, tokens, amp_dtype_from_config(cfg, device) if cfg is not None else None)

    def probabilities(x):
        with eval_mode(model):
            return torch.cat([segment_probabilities(forward, x[i:i + batch_size].to(device)).cpu()
                              for i in range(0, x.shape[0], batch_size)])

    clean = probabilities(clips)
    if attack is None:
        return clean, None, None
    adv = attack_clips(model, clips, tokens, attack, cfg.ATTACK.BATCH_SIZE if cfg is not None else 0, cfg)
    return clean, probabilities(adv), adv


@dataclass
class SegmentScores:
    """Per-segment results of one video; ``attacked`` is None without an attack."""

    starts: np.ndarray  # int64 [S]
    lengths: np.ndarray  # int64 [S]
    scores: np.ndarray  # float32 [S]
    attacked: np.ndarray | None = None
    max_linf: float = 0.0  # largest |attacked - clean| input pixel change, [0, 1] units
    seconds: float = 0.0


def score_video(model, tokens, source, cfg, chunk_frames=DEFAULT_CHUNK_FRAMES, attack=None,
                show_progress=True, desc=None):
    """Segment scores of ``source`` streamed in chunks of at most ``chunk_frames`` frames.

    attack: None, or the keyword arguments of ``attacks.pgd.pgd`` (eps in [0, 1] units).
    """
    from datasets.sampling import video_segments
    from datasets.transforms import build_test_view
    from utils.logger import progress

    clip_len, interval = cfg.DATA.NUM_FRAMES, cfg.DATA.FRAME_INTERVAL
    segments = video_segments(source.num_frames, clip_len, interval)
    if not segments:
        raise DataError(f"video {source.path}: {source.num_frames} frame(s) is too short; a clip needs "
                        f"at least DATA.NUM_FRAMES={clip_len} frames")
    view = build_test_view(cfg)
    scores, attacked, max_linf = [], [], 0.0
    started = time.time()
    bar = progress(total=len(segments), desc=desc or source.path.name, rank=0 if show_progress else 1)
    for group in segment_chunks(segments, chunk_frames):
        inds = [i for seg in group for i in seg.frame_inds]
        clips = clips_of_segments(source.reader.read(inds), group, view)
        clean, adv_scores, adv = score_clips(model, clips, tokens, cfg.TEST.BATCH_SIZE, cfg, attack)
        scores.append(clean)
        if attack is not None:
            max_linf = max(max_linf, float((adv - clips).abs().max()))
            attacked.append(adv_scores)
        bar.update(len(group))
    bar.close()
    result = SegmentScores(
        starts=np.array([s.start for s in segments], dtype=np.int64),
        lengths=np.array([s.length for s in segments], dtype=np.int64),
        scores=torch.cat(scores).numpy().astype(np.float32),
        attacked=torch.cat(attacked).numpy().astype(np.float32) if attack is not None else None,
        max_linf=max_linf, seconds=time.time() - started)
    check_finite_scores(result, source.path)
    return result


def check_finite_scores(result: SegmentScores, video) -> None:
    """Refuse NaN/Inf scores: finite weights can still overflow (an edited or diverged checkpoint
    with huge values), and NaN scores would be written, thresholded and reported as a success."""
    for kind, values in (("clean", result.scores), ("attacked", result.attacked)):
        if values is not None and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise CheckpointError(f"video {video}: the model's {kind} P(abnormal) is NaN/Inf for {bad} of "
                                  f"{len(values)} segment(s); the checkpoint's weights overflow (a diverged or "
                                  "edited checkpoint?); use another checkpoint (e.g. an earlier epoch_N)")


# ----------------------------------------------------------------------------- outputs
def write_tables(out_dir, fps, clean, attacked=None):
    """``scores.csv`` (frame,time_s,score[,attacked_score]); returns the columns as lists."""
    columns = {"frame": list(range(len(clean))),
               "time_s": [round(i / fps, 6) for i in range(len(clean))],
               "score": [float(s) for s in clean]}
    if attacked is not None:
        columns["attacked_score"] = [float(s) for s in attacked]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(columns))
    clean32 = np.asarray(clean, dtype=np.float32)
    adv32 = np.asarray(attacked, dtype=np.float32) if attacked is not None else None
    for i in range(len(clean32)):
        row = [i, f"{columns['time_s'][i]:.6f}", str(clean32[i])]
        if adv32 is not None:
            row.append(str(adv32[i]))
        writer.writerow(row)
    atomic_write_text(Path(out_dir) / "scores.csv", buffer.getvalue())
    return columns


# ----------------------------------------------------------------------------- one video
@dataclass
class InferenceOptions:
    """What the command line asks for (see infer.py)."""

    threshold: float
    threshold_source: str
    smooth: bool = False
    min_duration: float = 0.0
    merge_gap: float = 0.0
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    attack: dict | None = None  # attacks.pgd.pgd keyword arguments
    render: bool = False
    render_seconds: float = DEFAULT_RENDER_SECONDS
    annotation: str | None = None
    intervals: str | None = None
    fps: float | None = None
    checkpoint: str | None = None
    show_progress: bool = True

    def __post_init__(self):
        """Refuse bad flags before any video is scored."""
        checks = [(self.chunk_frames > 0, f"--chunk-frames must be positive, got {self.chunk_frames}"),
                  (self.min_duration >= 0, f"--min-duration must be >= 0 seconds, got {self.min_duration}"),
                  (self.merge_gap >= 0, f"--merge-gap must be >= 0 seconds, got {self.merge_gap}"),
                  (self.render_seconds > 0, f"--render-seconds must be positive, got {self.render_seconds}"),
                  (self.fps is None or (self.fps > 0 and math.isfinite(self.fps)),
                   f"--fps must be a positive number, got {self.fps}")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def unique_dir_name(path, taken):
    """A folder name for ``path``'s outputs, unique among ``taken`` (which it joins)."""
    from utils.plots import safe_file_name

    path = Path(path)
    # "clip.mp4" -> "clip_mp4": an output folder named like a video file would mislead
    base = safe_file_name(f"{path.stem}_{path.suffix[1:]}" if path.is_file() and path.suffix else path.name)
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def infer_video(model, tokens, cfg, video, out_dir, options: InferenceOptions, log=logger):
    """Score one video and write its outputs under ``out_dir``; returns its summary dict."""
    source = open_source(video, cfg.DATA.FILENAME_TMPL, options.fps, bool(cfg.DATA.REPLACE_BAD_FRAMES))
    segs = score_video(model, tokens, source, cfg, options.chunk_frames, options.attack,
                       options.show_progress)
    clean = frame_scores(segs.scores, source.num_frames, options.smooth)
    attacked = frame_scores(segs.attacked, source.num_frames, options.smooth) if segs.attacked is not None else None
    threshold = options.threshold
    intervals = detect_intervals(clean, threshold, source.fps, options.min_duration, options.merge_gap)
    flagged = float((clean > threshold).mean())
    if flagged >= FLAGGED_WARNING:
        log.warning(f"{source.path.name}: {100 * flagged:.0f}% of the frames score above the threshold "
                    f"{threshold:.4g} ({options.threshold_source}), so the whole video is flagged; if that is "
                    "not what it shows, the threshold is too low for this model: pass --threshold T")

    labels, annotation = None, None
    if options.intervals:
        labels = parse_interval_text(options.intervals, source.num_frames)
        annotation = {"source": "--intervals", "text": options.intervals}
    elif options.annotation:
        labels = annotation_labels(options.annotation, source.path, source.num_frames,
                                   cfg.DATA.COUNT_START_ZERO, log)
        if labels is not None:
            annotation = {"source": str(options.annotation)}
    auc = video_auc(clean, labels) if labels is not None else None
    attacked_auc = video_auc(attacked, labels) if labels is not None and attacked is not None else None
    if annotation is not None:
        from utils.plots import anomaly_intervals

        annotation["intervals"] = [[int(s), int(e)] for s, e in anomaly_intervals(labels)]

    out_dir = Path(out_dir)
    columns = write_tables(out_dir, source.fps, clean, attacked)
    result = {
        "video": str(source.path), "kind": source.kind, "num_frames": source.num_frames,
        "fps": source.fps, "fps_source": source.fps_source, "duration_s": round(source.duration_s, 6),
        "checkpoint": options.checkpoint, "threshold": threshold, "threshold_source": options.threshold_source,
        "smooth": bool(options.smooth),
        "segmenting": {"clip_len": cfg.DATA.NUM_FRAMES, "frame_interval": cfg.DATA.FRAME_INTERVAL,
                       "input_size": cfg.DATA.INPUT_SIZE, "num_crop": cfg.TEST.NUM_CROP},
        "segments": {"start": segs.starts.tolist(), "length": segs.lengths.tolist(),
                     "score": [float(s) for s in segs.scores]},
        "frames": columns,
        "intervals": intervals, "flagged_fraction": flagged,
        "max_score": float(clean.max()),
        "annotation": annotation, "auc": _json_number(auc),
        "seconds": round(segs.seconds, 3),
    }
    if segs.attacked is not None:
        result["segments"]["attacked_score"] = [float(s) for s in segs.attacked]
        result["attack"] = {
            "target": "all normal (every clip labelled anomalous: P(abnormal) pushed down)",
            "eps_255": options.attack["eps"] * 255, "steps": options.attack["steps"],
            "step_size_255": (options.attack["step_size"] or 0.0) * 255,
            "random_start": options.attack["random_start"], "restarts": options.attack["restarts"],
            "max_linf_255": segs.max_linf * 255,
            "max_score": float(attacked.max()),
            "intervals": detect_intervals(attacked, threshold, source.fps, options.min_duration,
                                          options.merge_gap),
            "auc": _json_number(attacked_auc),
        }
    times = np.asarray(columns["time_s"])
    title = source.path.name + (f"  AUC {auc:.3f}" if auc is not None and math.isfinite(auc) else "")
    plot_scores(out_dir / "scores.png", times, clean, threshold, labels, attacked, auc, attacked_auc,
                intervals, title=title)
    result["plot"] = str(out_dir / "scores.png")
    if options.render:
        result["render"] = render_annotated(out_dir / "annotated.mp4", source, clean, threshold,
                                            options.render_seconds)
    atomic_write_json(out_dir / "scores.json", result)
    log.info(summary_line(result))
    return result


def _json_number(value):
    return None if value is None or not math.isfinite(value) else float(value)


def summary_line(result):
    """One line per video: frames, length, max score, intervals above the threshold, AUC, attack."""
    spans = ", ".join(f"{i['start_s']:.1f}-{i['end_s']:.1f}s" for i in result["intervals"][:4])
    more = f" (+{len(result['intervals']) - 4})" if len(result["intervals"]) > 4 else ""
    line = (f"{Path(result['video']).name}: {result['num_frames']} frames, {result['duration_s']:.1f}s "
            f"@ {result['fps']:g} fps ({result['fps_source']}); max score {result['max_score']:.3f}; "
            f"{len(result['intervals'])} interval(s) above {result['threshold']:.3g}"
            + (f": {spans}{more}" if spans else ""))
    if result["annotation"] is not None:
        line += f"; AUC {result['auc']:.4f}" if result["auc"] is not None else "; AUC undefined (one class)"
    if "attack" in result:
        attack = result["attack"]
        line += (f"; PGD eps {attack['eps_255']:g}/255: max score {attack['max_score']:.3f}, "
                 f"{len(attack['intervals'])} interval(s)")
        if attack["auc"] is not None:
            line += f", AUC {attack['auc']:.4f}"
    return line
