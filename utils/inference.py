"""Score a user's own videos (files or frame folders) with a trained FrameShield checkpoint.

Why it looks like this: the scores must be exactly those the evaluation would give the
same video, so a video is cut with the test segmenting (``datasets.sampling.video_segments``:
segments of ``DATA.NUM_FRAMES * DATA.FRAME_INTERVAL`` frames, one clip of T frames each),
each clip goes through the test transform (``datasets.transforms.build_test_view``), the
anomaly probability of a segment is ``softmax(logits)[:, 1]`` (averaged over crops with
TEST.NUM_CROP 3), and segment scores are spread over frames with
``utils.metrics.segment_scores_to_frames`` (optionally the published 32-window smoothing,
``utils.metrics.smooth_windows``).

Streaming: segments are processed in chunks covering at most ``chunk_frames`` video frames
(whole segments, at least one), and only the T sampled frames of each segment are decoded,
so the pixel memory is bounded by the chunk, not by the video's length. What grows with the
length is one float32 score per frame (0.4 MB for an hour at 30 fps).

Frame rate: video files use decord's average frame rate; frame folders have none, so they
use ``fps`` (default :data:`DEFAULT_FOLDER_FPS`); an explicit ``fps`` overrides both.

Threshold: the training stages store the score threshold chosen on the validation frames
(max F1) in ``checkpoints/<tag>.state.pt`` (``extra.score_threshold`` in ``best``, and
``extra.threshold.f1`` in every checkpoint of a training run; see ``utils.engine.fit``); a
checkpoint without one (other formats, or no defined threshold) uses
:data:`DEFAULT_THRESHOLD`, logged as a warning.

Attack (optional): every clip is attacked with L-inf PGD (``utils.attacks.pgd``, ATTACK.*
settings) with clip label "anomalous", which makes the attacker push P(abnormal) down: an
adversary hiding an event. The perturbation acts on the model input (the transformed clip
in [0, 1]) and stays within eps of it.
"""
import contextlib
import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from utils.errors import CheckpointError, ConfigError, DataError
from utils.io import atomic_path, atomic_write_json, atomic_write_text

logger = logging.getLogger("FrameShield.inference")

DEFAULT_THRESHOLD = 0.5  # P(abnormal) > 0.5: the model's own class decision
DEFAULT_FOLDER_FPS = 30.0
DEFAULT_CHUNK_FRAMES = 256
DEFAULT_RENDER_SECONDS = 20.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


# ----------------------------------------------------------------------------- video sources
@dataclass
class VideoSource:
    """An opened video: ``reader.read(indices) -> uint8 [N, 3, H, W]`` (datasets.frames)."""

    path: Path
    kind: str  # "file" or "frames"
    num_frames: int
    fps: float
    fps_source: str  # "decord", "default" or "--fps"
    reader: object

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def count_folder_frames(folder, filename_tmpl) -> int:
    """Consecutive frames ``filename_tmpl.format(first + i)`` in ``folder`` (first 0 or 1)."""
    from datasets.frames import detect_start_index

    folder = Path(folder)
    names = {p.name for p in folder.iterdir()}
    if not names:
        raise DataError(f"video {folder}: the frame folder is empty (zero frames)")
    if not any(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
        raise DataError(f"video {folder}: the folder holds no image files (zero frames); "
                        f"frames are read as {filename_tmpl!r} (DATA.FILENAME_TMPL)")
    first = detect_start_index(folder, filename_tmpl)
    count = 0
    while filename_tmpl.format(first + count) in names:
        count += 1
    return count


def open_source(path, filename_tmpl="img_{:08}.jpg", fps=None) -> VideoSource:
    """Open a video file (decord) or a frame folder; DataError when it cannot be read.

    ``fps``: None = decord's frame rate for files, :data:`DEFAULT_FOLDER_FPS` for folders.
    """
    from datasets.frames import VIDEO_SUFFIXES, open_video

    path = Path(path)
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ConfigError(f"--fps must be a positive number, got {fps}")
    if path.is_dir():
        num_frames = count_folder_frames(path, filename_tmpl)
        rate, source = (fps, "--fps") if fps is not None else (DEFAULT_FOLDER_FPS, "default")
        return VideoSource(path, "frames", num_frames, float(rate), source,
                           open_video(path, num_frames, filename_tmpl))
    if not path.exists():
        raise DataError(f"video {path}: no such file or folder")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise DataError(f"video {path}: not a frame folder and not a video file with one of the "
                        f"suffixes {sorted(VIDEO_SUFFIXES)}")
    num_frames, file_fps = _probe_video_file(path)
    if fps is not None:
        rate, source = fps, "--fps"
    elif file_fps > 0 and math.isfinite(file_fps):
        rate, source = file_fps, "decord"
    else:
        raise DataError(f"video {path}: the file states no frame rate ({file_fps}); pass --fps")
    return VideoSource(path, "file", num_frames, float(rate), source, open_video(path, num_frames))


def _probe_video_file(path):
    """(frame count, average fps) of a video file through decord."""
    import decord

    if path.stat().st_size == 0:
        raise DataError(f"video {path}: the file is empty (0 bytes, zero frames)")
    try:
        video = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        num_frames, rate = len(video), float(video.get_avg_fps())
    except (decord.DECORDError, RuntimeError) as err:
        raise DataError(f"video {path}: cannot read the video file ({err})") from err
    if num_frames == 0:
        raise DataError(f"video {path}: the video file holds zero frames")
    return num_frames, rate


# ----------------------------------------------------------------------------- model and threshold
def resolve_config_path(config, weights) -> Path:
    """``config`` when given, else the ``<tag>.yaml`` a FrameShield checkpoint has beside it."""
    from utils.checkpoint import checkpoint_file

    if config:
        return Path(config)
    if weights:
        beside = checkpoint_file(weights, ".yaml")
        if beside.is_file():
            return beside
    raise ConfigError(f"no -cfg given and no config file beside the checkpoint {weights} "
                      "(FrameShield checkpoints have checkpoints/<tag>.yaml); pass -cfg CONFIG.yaml")


def read_stored_threshold(weights):
    """``(threshold or None, where it came from)`` from ``<tag>.state.pt`` beside ``weights``."""
    import pickle
    import zipfile

    from utils.checkpoint import checkpoint_file

    state_file = checkpoint_file(weights, ".state.pt")
    if not state_file.is_file():
        return None, f"no {state_file.name} beside the checkpoint"
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError,
            zipfile.BadZipFile) as err:
        raise CheckpointError(f"cannot read {state_file}: {type(err).__name__}: {err}") from err
    extra = (state.get("extra") or {}) if isinstance(state, dict) else {}
    # best.*: extra.score_threshold; every checkpoint of a training run also carries the
    # training state's threshold dict (that of the best evaluation so far)
    value, key = extra.get("score_threshold"), "extra.score_threshold"
    if value is None and isinstance(extra.get("threshold"), dict):
        value, key = extra["threshold"].get("f1"), "extra.threshold.f1"
    if value is None:
        return None, f"{state_file.name} holds no score threshold"
    value = float(value)
    if not math.isfinite(value):
        return None, f"{state_file.name} holds a non-finite score threshold ({value})"
    return value, f"{state_file} ({key}, max F1 on the validation frames)"


def resolve_threshold(cli_value, weights, log=logger):
    """``(threshold, source text, origin)``: the flag (origin "flag"), else the checkpoint's
    ("checkpoint"), else :data:`DEFAULT_THRESHOLD` ("default", logged as a warning)."""
    if cli_value is not None:
        if not 0.0 <= cli_value <= 1.0:
            raise ConfigError(f"--threshold must be within [0, 1] (a probability), got {cli_value}")
        return float(cli_value), "--threshold", "flag"
    stored, why = read_stored_threshold(weights) if weights else (None, "no checkpoint")
    if stored is not None:
        return stored, why, "checkpoint"
    log.warning(f"the checkpoint has no stored score threshold ({why}); using the default "
                f"{DEFAULT_THRESHOLD} (P(abnormal) > 0.5); pass --threshold to choose one")
    return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} ({why})", "default"


def load_model(cfg, weights, device, log=logger):
    """X-CLIP from ``weights`` (any supported format) in eval mode on ``device``.

    A FrameShield checkpoint with a manifest is verified first (CheckpointError when damaged).
    """
    from models import xclip
    from utils.checkpoint import checkpoint_file, verify_checkpoint

    if not weights:
        raise ConfigError("pass --pretrained CHECKPOINT (the trained model to score with)")
    if not Path(weights).is_file():
        raise CheckpointError(f"checkpoint {weights} does not exist")
    if checkpoint_file(weights, ".manifest.json").is_file():
        ok, problem = verify_checkpoint(weights)
        if not ok:
            raise CheckpointError(f"checkpoint {weights} is damaged: {problem}")
    model, _, _ = xclip.load(
        weights, name=cfg.MODEL.ARCH, device="cpu", T=cfg.DATA.NUM_FRAMES, logger=log,
        prompts_alpha=cfg.MODEL.PROMPTS_ALPHA, prompts_layers=cfg.MODEL.PROMPTS_LAYERS,
        mit_layers=cfg.MODEL.MIT_LAYERS, fix_text=cfg.MODEL.FIX_TEXT, train_video_head=cfg.MODEL.TRAIN_VIDEO_HEAD)
    if model.input_resolution != cfg.DATA.INPUT_SIZE:
        raise ConfigError(f"the checkpoint takes {model.input_resolution}px frames but DATA.INPUT_SIZE "
                          f"is {cfg.DATA.INPUT_SIZE}; use the training config (-cfg) or "
                          f"--opts DATA.INPUT_SIZE {model.input_resolution}")
    return model.to(device).eval()


def class_tokens(cfg, device):
    """Tokens [C, 77] of DATA.LABEL_LIST's class names (class 1 = abnormal)."""
    from clip import tokenize
    from datasets.lists import read_label_csv

    names = read_label_csv(cfg.DATA.LABEL_LIST)
    if len(names) != cfg.DATA.NUM_CLASSES or len(names) < 2:
        raise ConfigError(f"{cfg.DATA.LABEL_LIST} lists {len(names)} classes; DATA.NUM_CLASSES is "
                          f"{cfg.DATA.NUM_CLASSES} and scoring needs class 1 = abnormal")
    return tokenize(names).to(device)


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
    """P(abnormal) [S] of clips [S, T, 3, s, s] or [S, crops, T, 3, s, s] (crop mean),
    scored as the evaluation scores them (utils.engine.segment_probabilities)."""
    from utils.config import get_default_config
    from utils.engine import segment_probabilities

    cfg = cfg if cfg is not None else get_default_config()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, clips.shape[0], batch_size):
            part = clips[i:i + batch_size].to(device)
            out.append(segment_probabilities(model, part, tokens, cfg, device)[:, 1].cpu())
    return torch.cat(out)


def attack_clips(model, clips, tokens, settings, batch_size, cfg=None):
    """PGD toward "all normal": every clip labelled anomalous, so P(abnormal) is pushed down.

    clips: [S, T, 3, s, s] (or with a crops dim) float in [0, 1]; returns the attacked clips
    of the same shape, within ``settings["eps"]`` of ``clips`` (L-inf) and inside [0, 1].
    """
    from utils.attacks import pgd_in_chunks
    from utils.engine import autocast

    device = next(model.parameters()).device
    flat = clips.reshape(-1, *clips.shape[-4:]).to(device)
    labels = torch.ones(flat.shape[0], dtype=torch.long, device=device)
    with autocast(cfg, device) if cfg is not None else contextlib.nullcontext():
        adv = pgd_in_chunks(model, flat, tokens, labels, batch_size, **settings)
    return adv.detach().cpu().reshape(clips.shape)


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

    attack: None, or the keyword arguments of ``utils.attacks.pgd`` (eps in [0, 1] units).
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
        scores.append(clip_probabilities(model, clips, tokens, cfg.TEST.BATCH_SIZE, cfg))
        if attack is not None:
            adv = attack_clips(model, clips, tokens, attack, cfg.ATTACK.BATCH_SIZE, cfg)
            max_linf = max(max_linf, float((adv - clips).abs().max()))
            attacked.append(clip_probabilities(model, adv, tokens, cfg.TEST.BATCH_SIZE, cfg))
        bar.update(len(group))
    bar.close()
    return SegmentScores(
        starts=np.array([s.start for s in segments], dtype=np.int64),
        lengths=np.array([s.length for s in segments], dtype=np.int64),
        scores=torch.cat(scores).numpy().astype(np.float32),
        attacked=torch.cat(attacked).numpy().astype(np.float32) if attack is not None else None,
        max_linf=max_linf, seconds=time.time() - started)


def frame_scores(segment_scores, num_frames, smooth=False):
    """Per-frame scores float32 [num_frames] with the evaluation's mapping (and smoothing)."""
    from utils.metrics import segment_scores_to_frames, smooth_windows

    frames = segment_scores_to_frames(segment_scores, num_frames)
    return smooth_windows(frames) if smooth else frames


# ----------------------------------------------------------------------------- intervals
def detect_intervals(scores, threshold, fps, min_duration=0.0, merge_gap=0.0):
    """Runs of frames with score > ``threshold`` -> list of interval dicts.

    Runs separated by a gap of at most ``merge_gap`` seconds are merged first; then
    intervals shorter than ``min_duration`` seconds are dropped. Frames are end-exclusive:
    ``start_frame`` is the first anomalous frame, ``end_frame`` the first frame after.
    """
    from utils.plots import anomaly_intervals

    if min_duration < 0 or merge_gap < 0:
        raise ConfigError(f"--min-duration and --merge-gap must be >= 0 seconds, got "
                          f"{min_duration} and {merge_gap}")
    scores = np.asarray(scores, dtype=np.float32)
    merged = []
    for start, end in anomaly_intervals(scores > threshold):
        if merged and (start - merged[-1][1]) / fps <= merge_gap:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    out = []
    for start, end in merged:
        if (end - start) / fps < min_duration:
            continue
        part = scores[start:end]
        out.append({"start_frame": int(start), "end_frame": int(end),
                    "start_s": round(start / fps, 6), "end_s": round(end / fps, 6),
                    "duration_s": round((end - start) / fps, 6),
                    "peak_score": float(part.max()), "mean_score": float(part.mean())})
    return out


# ----------------------------------------------------------------------------- ground truth
def parse_interval_text(text, num_frames):
    """``"10-40,80-95"`` (frames, end exclusive) -> labels uint8 [num_frames]."""
    labels = np.zeros(num_frames, dtype=np.uint8)
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        bounds = part.split("-")
        try:
            start, end = (int(b) for b in bounds) if len(bounds) == 2 else (None, None)
        except ValueError:
            start = end = None
        if start is None:
            raise ConfigError(f"--intervals: {part!r} is not START-END (frame numbers, end exclusive), "
                              "e.g. --intervals 10-40,80-95")
        if not 0 <= start < end <= num_frames:
            raise ConfigError(f"--intervals: {part!r} must satisfy 0 <= start < end <= {num_frames} "
                              "(the video's frame count)")
        labels[start:end] = 1
    return labels


def annotation_labels(list_file, video_path, num_frames, count_start_zero=False, log=logger):
    """Frame labels of ``video_path`` from a test list file, or None when it is not listed.

    The entry is matched by the video's last path component (or, for a file, its stem).
    Labels follow the evaluation's rule (``datasets.lists.frame_labels``).
    """
    from datasets.lists import frame_labels, parse_list_file
    from utils.metrics import video_name

    records = parse_list_file(list_file, kind="test")
    path = Path(video_path)
    names = [video_name(r.path) for r in records]
    record = next((r for r, n in zip(records, names) if n == path.name), None)
    if record is None:  # "clip" in the list for clip.mp4, or the other way round
        record = next((r for r, n in zip(records, names) if Path(n).stem == path.stem), None)
    if record is None:
        log.warning(f"{path.name}: not in the annotation list {list_file}; no ground truth, no AUC")
        return None
    labels = frame_labels(record, count_start_zero)
    if len(labels) != num_frames:
        log.warning(f"{path.name}: {list_file}:{record.line} gives {len(labels)} frames but the video has "
                    f"{num_frames}; labels beyond the shorter count are taken as normal")
        fitted = np.zeros(num_frames, dtype=np.uint8)
        n = min(num_frames, len(labels))
        fitted[:n] = labels[:n]
        labels = fitted
    return labels


def video_auc(scores, labels):
    """Frame-level AUROC of one video, NaN when its labels hold a single class."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


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


def plot_scores(path, times, clean, threshold, labels=None, attacked=None, auc=None,
                attacked_auc=None, intervals=(), title=""):
    """Score over time (seconds) with the threshold line, shaded ground truth and AUC."""
    from matplotlib.figure import Figure

    from utils.plots import anomaly_intervals, save_figure

    figure = Figure(figsize=(9, 3))
    axes = figure.add_subplot()
    step = times[1] - times[0] if len(times) > 1 else 1.0
    if labels is not None:
        for k, (start, end) in enumerate(anomaly_intervals(labels)):
            axes.axvspan(times[start], times[end - 1] + step, color="red", alpha=0.15, linewidth=0,
                         label="ground truth" if k == 0 else None)
    for k, interval in enumerate(intervals):
        axes.axvspan(interval["start_s"], interval["end_s"], ymin=0.97, ymax=1.0, color="black",
                     linewidth=0, label="detected" if k == 0 else None)
    axes.plot(times, clean, color="tab:blue", label="clean" + (f" (AUC {auc:.3f})" if auc is not None and
                                                                 math.isfinite(auc) else ""))
    if attacked is not None:
        label = "attacked (PGD)" + (f" (AUC {attacked_auc:.3f})" if attacked_auc is not None and
                                    math.isfinite(attacked_auc) else "")
        axes.plot(times, attacked, color="tab:orange", label=label)
    axes.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    axes.set(xlim=(0, max(times[-1] + step, step)), ylim=(-0.02, 1.04), xlabel="time (s)",
             ylabel="P(abnormal)", title=title)
    axes.legend(loc="upper right", fontsize="small")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- rendering
def overlay_frames(frames, scores, threshold):
    """Draw the score bar and, on frames scoring above ``threshold``, a red border.

    frames: uint8 [N, 3, H, W]; scores: [N]. The bar along the bottom is filled to
    ``score * W`` (green below the threshold, red above) with a white tick at the threshold.
    """
    out = frames.clone()
    n, _, h, w = out.shape
    bar, border = max(4, h // 16), max(2, min(h, w) // 40)
    red = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    green = torch.tensor([40, 200, 60], dtype=torch.uint8).view(3, 1, 1)
    out[:, :, h - bar:, :] = 24
    tick = min(w - 1, max(0, int(round(threshold * w))))
    for i in range(n):
        score = float(scores[i])
        fill = int(round(min(max(score, 0.0), 1.0) * w))
        anomalous = score > threshold
        out[i, :, h - bar:, :fill] = red if anomalous else green
        out[i, :, h - bar:, max(0, tick - 1):tick + 1] = 255
        if anomalous:
            out[i, :, :border, :] = red
            out[i, :, h - border:, :] = red
            out[i, :, :, :border] = red
            out[i, :, :, w - border:] = red
    return out


def _encoder_size(h, w, min_short=240, max_long=960):
    """Output size: small videos scaled up by an integer factor, large ones down; even sides."""
    scale = 1.0
    if min(h, w) < min_short:
        scale = float(math.ceil(min_short / min(h, w)))
    elif max(h, w) > max_long:
        scale = max_long / max(h, w)
    return max(2, int(h * scale) // 2 * 2), max(2, int(w * scale) // 2 * 2)


def render_annotated(path, source, scores, threshold, max_seconds=DEFAULT_RENDER_SECONDS, chunk=32):
    """A short annotated mp4 (H.264 via PyAV) around the highest-scoring frame.

    At most ``max_seconds`` of video are written, centred on the peak score (the whole
    video when shorter). Frames are decoded and encoded in chunks. Returns a dict with the
    path and the rendered frame range.
    """
    import av
    import torch.nn.functional as F

    count = min(source.num_frames, max(1, int(round(max_seconds * source.fps))))
    peak = int(np.argmax(scores))
    first = min(max(0, peak - count // 2), source.num_frames - count)
    rate = Fraction(source.fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            stream = None
            for lo in range(first, first + count, chunk):
                inds = list(range(lo, min(lo + chunk, first + count)))
                frames = source.reader.read(inds)
                size = _encoder_size(*frames.shape[-2:])
                if tuple(frames.shape[-2:]) != size:
                    mode = "nearest" if size[0] > frames.shape[-2] else "area"
                    frames = F.interpolate(frames.float(), size=size, mode=mode).round().clamp(0, 255).to(torch.uint8)
                frames = overlay_frames(frames, scores[inds], threshold)
                if stream is None:
                    stream = container.add_stream("libx264", rate=rate)
                    stream.height, stream.width = size
                    stream.pix_fmt = "yuv420p"
                for array in frames.permute(0, 2, 3, 1).contiguous().numpy():
                    for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return {"path": str(path), "start_frame": first, "end_frame": first + count,
            "start_s": round(first / source.fps, 6), "end_s": round((first + count) / source.fps, 6)}


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
    attack: dict | None = None  # utils.attacks.pgd keyword arguments
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
    source = open_source(video, cfg.DATA.FILENAME_TMPL, options.fps)
    segs = score_video(model, tokens, source, cfg, options.chunk_frames, options.attack,
                       options.show_progress)
    clean = frame_scores(segs.scores, source.num_frames, options.smooth)
    attacked = frame_scores(segs.attacked, source.num_frames, options.smooth) if segs.attacked is not None else None
    threshold = options.threshold
    intervals = detect_intervals(clean, threshold, source.fps, options.min_duration, options.merge_gap)

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
        "intervals": intervals,
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
