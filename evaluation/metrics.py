"""Frame-level evaluation exactly as the published FrameShield/X-CLIP code does it.

Per test video, the scores of its S segments (one anomaly probability per clip) are
spread over its F frames (segment i covers frames [round(i*r), round((i+1)*r)),
r = F / S, rounding halves up), then smoothed: the frames are cut into 32 windows of
F // 32 frames (plus the remainder) and each window is replaced by its mean. AUROC is
taken over the frames of all videos ("AUC@all") and over the frames of the anomalous
videos only ("AUC@ano"); average precision over all frames is reported too.
Frame scores are float32 like the published code, so ties (and AUCs) match it.
"""
import logging
from pathlib import PurePosixPath

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from utils.errors import DataError

logger = logging.getLogger("FrameShield.metrics")
NUM_WINDOWS = 32


def segment_scores_to_frames(scores, num_frames):
    """Spread S segment scores over ``num_frames`` frames -> float32 array [num_frames].

    Segment i fills frames [floor(i*r + 0.5), floor((i+1)*r + 0.5)) with r = num_frames / S.
    Raises DataError when there is no segment or no frame.
    """
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores.size == 0:
        raise DataError("a video has no segment score; it cannot be spread over its frames")
    if num_frames <= 0:
        raise DataError(f"a video has {num_frames} frames; cannot score it")
    ratio = float(num_frames) / float(scores.size)
    frames = np.zeros(num_frames, dtype=np.float32)
    for i, value in enumerate(scores):
        begin = int(i * ratio + 0.5)
        end = int((i + 1) * ratio + 0.5)
        frames[begin:end] = value
    return frames


def smooth_windows(frame_scores, windows=NUM_WINDOWS):
    """Replace each of ``windows`` equal windows (F // windows frames) and the remainder by its mean.

    A video shorter than ``windows`` frames has windows of size 0, so (as published) the
    whole video becomes its mean score. Returns an array of the input's dtype and length.
    """
    curve = np.asarray(frame_scores)
    size = curve.shape[0] // windows
    smoothed = np.empty_like(curve)
    covered = size * windows
    if size > 0:
        means = curve[:covered].reshape(windows, size).mean(axis=1)
        smoothed[:covered] = np.repeat(means, size)
    if curve.shape[0] > covered:
        smoothed[covered:] = curve[covered:].mean()
    return smoothed


def unwrap_scores(value, name="?"):
    """Accept a 1-D array or the published wrappings ``[array]``, (1, n), (n, 1) -> 1-D float32."""
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 0:
        return array.reshape(1)
    if array.ndim == 2 and array.shape[0] == 1:
        return array[0]
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim == 1:
        return array
    raise DataError(
        f"scores of video {name!r} have shape {array.shape}; expected a 1-D array of segment "
        "anomaly probabilities (or the [array], (1, n), (n, 1) wrappings)")


def video_name(path):
    """The key a video is known by in score dicts: the last component of its list path."""
    return PurePosixPath(str(path).replace("\\", "/").rstrip("/")).name


def evaluate_scores(vid2abnormality, records, count_start_zero=False, smooth=True,
                    windows=NUM_WINDOWS):
    """Frame-level metrics of segment scores against list records.

    vid2abnormality: {video path or its last component: segment scores}.
    records: VideoRecord objects (datasets.lists) of the test list.
    Returns a dict: ``auc_all``, ``auc_ano``, ``ap`` (NaN with a logged message when
    undefined: no anomalous frame, no anomalous video, ...), ``num_videos``,
    ``num_frames``, ``missing`` (listed videos without scores, skipped), ``unused``
    (scored videos not in the list), ``short_videos`` (fewer than ``windows`` frames),
    ``messages`` (every warning given), ``per_video`` ({name: {"scores", "labels"}} with
    the final float32 frame scores and uint8 frame labels) and ``roc`` ({"fpr", "tpr"}
    over all frames, or None).
    """
    from datasets.lists import frame_labels

    messages = []
    lookup = _name_lookup(vid2abnormality)
    names = [video_name(r.path) for r in records]
    duplicated = {n for n in names if names.count(n) > 1}
    per_video, missing, short, used = {}, [], [], set()
    all_scores, all_labels, ano_scores, ano_labels = [], [], [], []
    for record, name in zip(records, names):
        key = record.path if record.path in vid2abnormality else name
        if key not in lookup:
            missing.append(name)
            continue
        if key == name and name in duplicated:
            raise DataError(
                f"several list lines end in {name!r}; key their scores by the full list path "
                f"(e.g. {record.path!r}) so they can be told apart")
        used.add(lookup[key])
        segments = unwrap_scores(vid2abnormality[lookup[key]], name)
        if not np.isfinite(segments).all():
            raise DataError(
                f"scores of video {name!r} hold {int((~np.isfinite(segments)).sum())} NaN/Inf value(s) of "
                f"{segments.size}; an AUC of them would be meaningless. If a model scored them, its weights "
                "overflow (a diverged or edited checkpoint: use another one, e.g. an earlier epoch_N); if they "
                "come from a file, it is damaged: score the videos again")
        if segments.size == 0:
            missing.append(name)
            messages.append(f"video {name} has no segment score; it is left out")
            continue
        labels = frame_labels(record, count_start_zero=count_start_zero)
        scores = segment_scores_to_frames(segments, len(labels))
        if len(labels) < windows:
            short.append(name)
        if smooth:
            scores = smooth_windows(scores, windows)
        per_video[name] = {"scores": scores, "labels": labels}
        all_scores.append(scores)
        all_labels.append(labels)
        if labels.max() >= 1:
            ano_scores.append(scores)
            ano_labels.append(labels)
    unused = sorted(video_name(k) for k in vid2abnormality if k not in used)
    if missing:
        messages.append(f"{len(missing)} listed video(s) have no scores and are left out: "
                        f"{_preview(missing)}")
    if unused:
        messages.append(f"{len(unused)} scored video(s) are not in the list and are ignored: "
                        f"{_preview(unused)}")
    if short and smooth:
        messages.append(f"{len(short)} video(s) have fewer than {windows} frames; each is "
                        f"smoothed to its mean score (published behaviour): {_preview(short)}")
    result = {"num_videos": len(per_video), "missing": missing, "unused": unused,
              "short_videos": short, "per_video": per_video, "roc": None}
    labels_all = np.concatenate(all_labels) if all_labels else np.zeros(0, np.uint8)
    scores_all = np.concatenate(all_scores) if all_scores else np.zeros(0, np.float32)
    result["num_frames"] = int(labels_all.size)
    result["auc_all"] = _auc(labels_all, scores_all, "AUC@all", messages)
    result["ap"] = _average_precision(labels_all, scores_all, messages)
    if ano_labels:
        result["auc_ano"] = _auc(np.concatenate(ano_labels), np.concatenate(ano_scores),
                                 "AUC@ano", messages)
    else:
        messages.append("AUC@ano is undefined: no test video has an anomalous frame "
                        "(an interval counts only when its start is > 0)")
        result["auc_ano"] = float("nan")
    if not np.isnan(result["auc_all"]):
        fpr, tpr, _ = roc_curve(labels_all, scores_all)
        result["roc"] = {"fpr": fpr, "tpr": tpr}
    for message in messages:
        logger.warning(message)
    result["messages"] = messages
    return result


def evaluate_result(vid2abnormality, anno_file, count_start_zero=False, smooth=True):
    """Published entry point: ``(auc_all, auc_ano)`` of segment scores against a test list file.

    ``vid2abnormality`` maps video name (last path component) to its segment scores.
    """
    from datasets.lists import anomalous_without_frames, parse_list_file

    records = parse_list_file(anno_file)
    anomalous_without_frames(records, count_start_zero, logger)
    result = evaluate_scores(vid2abnormality, records,
                             count_start_zero=count_start_zero, smooth=smooth)
    return result["auc_all"], result["auc_ano"]


def _name_lookup(vid2abnormality):
    """Map full keys and last components of keys to the original key."""
    lookup = {}
    for key in vid2abnormality:
        lookup.setdefault(video_name(key), key)
        lookup[key] = key
    return lookup


def _has_both_classes(labels, what, messages):
    if labels.size == 0:
        messages.append(f"{what} is undefined: no frame was scored")
        return False
    positives = int((labels > 0).sum())
    if positives == 0 or positives == labels.size:
        kind = "anomalous" if positives == 0 else "normal"
        messages.append(f"{what} is undefined: the scored frames contain no {kind} frame "
                        "(an interval counts only when its start is > 0)")
        return False
    return True


def _auc(labels, scores, what, messages):
    if not _has_both_classes(labels, what, messages):
        return float("nan")
    return float(roc_auc_score(labels, scores))


def _average_precision(labels, scores, messages):
    if not _has_both_classes(labels, "AP", messages):
        return float("nan")
    return float(average_precision_score(labels, scores))


def _preview(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def choose_threshold(eval_result) -> dict:
    """Score thresholds chosen on the evaluated frames (smoothed frame scores of the list).

    ``f1``: the threshold maximising F1 of "frame is anomalous" (the one stored as
    ``score_threshold``); ``youden``: the one maximising TPR - FPR. None when undefined.
    """
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
