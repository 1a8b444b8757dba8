"""Frame scores, detected intervals and per-video ground truth of infer.py.

Segment scores are spread over frames with the evaluation's mapping
(evaluation.metrics.segment_scores_to_frames, optionally its 32-window smoothing); frames
above the threshold form intervals, filtered by a minimum duration and merged across small
gaps; ground truth comes from ``--intervals`` or a test list file (``--annotation``).
"""
import logging
from pathlib import Path

import numpy as np

from utils.errors import ConfigError

logger = logging.getLogger("FrameShield.inference")


def frame_scores(segment_scores, num_frames, smooth=False):
    """Per-frame scores float32 [num_frames] with the evaluation's mapping (and smoothing)."""
    from evaluation.metrics import segment_scores_to_frames, smooth_windows

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
    from datasets.lists import anomalous_without_frames, frame_labels, parse_list_file
    from evaluation.metrics import video_name

    records = parse_list_file(list_file, kind="test")
    path = Path(video_path)
    names = [video_name(r.path) for r in records]
    record = next((r for r, n in zip(records, names) if n == path.name), None)
    if record is None:  # "clip" in the list for clip.mp4, or the other way round
        record = next((r for r, n in zip(records, names) if Path(n).stem == path.stem), None)
    if record is None:
        log.warning(f"{path.name}: not in the annotation list {list_file}; no ground truth, no AUC")
        return None
    if record.is_anomalous:
        anomalous_without_frames([record], count_start_zero, log)
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
