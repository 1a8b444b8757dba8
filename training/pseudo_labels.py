"""Clip-level pseudo labels of the training videos: the hand-over from stage 2a to 2b.

``main_advtrain.py --only_test`` scores every training video segment by segment with the
stage-1 model and writes ``pseudo_labels.json``; adversarial training reads it back and
labels each sampled training clip from the scored segments that hold its frames
(``VideoPseudoLabels.clip_labels``).

File format (JSON, written atomically)::

    {"<video path as written in the train list>": {
        "num_frames": 960,                       # from the list, to catch a stale file
        "frame_inds": [[0, 6, 12, 18, 24], ...], # [S][T] frames of each scored segment, in time order
        "labels": [0, 0, 1, ...],                # [S] label per segment (1 = abnormal), by the rule
        "scores": [0.12, 0.31, 0.97, ...]        # [S] anomaly score 1 - P(normal) (informative)
    }, ...}

Rules (ADV_TRAIN.PSEUDO_LABEL_RULE): ``argmax`` (published) labels a segment with its argmax
class (P(abnormal) > 0.5 with two classes), so it trusts the stage-1 model's calibration;
``normal_quantile`` labels a segment of an anomalous video 1 when its score exceeds the
ADV_TRAIN.PSEUDO_LABEL_QUANTILE quantile of the scores of the normal training videos'
segments (which are known to be normal), and always labels each anomalous video's top
segment 1 (the MIL assumption). Under every rule the segments of normal training videos are
written as 0: their video label already says so, training never reads them, and they are
not counted as labelled abnormal.

Keys are the video paths (not list line numbers), so reordering or filtering the list
keeps the labels valid; a file from another list or another frame count is refused.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.errors import DataError
from utils.io import atomic_write_text

REGENERATE_HINT = (
    "regenerate it with `bash runners/genlabels.sh NUM_GPUs` (main_advtrain.py --only_test "
    "with the same config and --output), or point ADV_TRAIN.PSEUDO_LABEL_FILE at the right file"
)


@dataclass
class VideoPseudoLabels:
    """Scored segments of one video: ``frame_inds`` [S, T] int64, ``labels`` [S] int64."""

    num_frames: int
    frame_inds: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None

    def to_json(self) -> dict:
        out = {
            "num_frames": int(self.num_frames),
            "frame_inds": self.frame_inds.astype(int).tolist(),
            "labels": self.labels.astype(int).tolist(),
        }
        if self.scores is not None:
            out["scores"] = [round(float(v), 5) for v in self.scores]
        return out

    def clip_labels(self, clip_frame_inds) -> torch.Tensor:
        """Labels [K] (long, 0/1) of training clips with frame indices [K, T].

        A clip is labelled 1 iff any scored segment that holds one of its frames is labelled
        anomalous (class > 0): the clip shows (part of) what that segment was scored on.
        The segments tile the video in time order, as datasets.sampling.video_segments cuts
        it: segment s holds the frames from its first sampled frame up to the next segment's
        first frame; the last one holds the rest of the video (including a dropped short
        tail), and frames before the first segment belong to it. When the training clips are
        the scored segments themselves this is the identity mapping; a training clip that
        runs over a segment boundary (short videos, see datasets.sampling) takes both.
        """
        clips = torch.as_tensor(clip_frame_inds, dtype=torch.int64).reshape(len(clip_frame_inds), -1)
        firsts = torch.as_tensor(np.ascontiguousarray(self.frame_inds[:, 0]), dtype=torch.int64)  # [S], rising
        holding = (torch.searchsorted(firsts, clips, right=True) - 1).clamp_(min=0)  # [K, T]
        return (torch.as_tensor(self.labels)[holding] > 0).any(dim=1).long()


def summarise(labels: dict[str, VideoPseudoLabels], anomalous=None) -> dict:
    """Counts for results.json: videos, segments, and the anomalous videos' segments labelled
    abnormal (``anomalous``: the paths of the anomalous videos; None = every video counts)."""
    chosen = [v for k, v in labels.items() if anomalous is None or k in anomalous]
    segments = sum(len(v.labels) for v in labels.values())
    anomalous_segments = sum(len(v.labels) for v in chosen)
    abnormal = sum(int((v.labels > 0).sum()) for v in chosen)
    return {"videos": len(labels), "segments": segments, "anomalous_videos": len(chosen),
            "anomalous_video_segments": anomalous_segments, "abnormal_segments": abnormal,
            "abnormal_fraction": abnormal / anomalous_segments if anomalous_segments else None}


def agreement(labels: dict[str, VideoPseudoLabels], intervals: dict) -> dict | None:
    """Pseudo labels of the anomalous videos vs their true segment labels (synthetic data).

    ``intervals``: {video path: (start, end) or None}; a segment is truly anomalous when any
    of its frames lies in [start, end). Returns accuracy, precision, recall, segments, or None
    when no anomalous video has a known interval.
    """
    agree = total = tp = positives = predicted = 0
    for path, entry in labels.items():
        interval = intervals.get(path)
        if not interval:
            continue
        start, end = interval
        truth = ((entry.frame_inds >= start) & (entry.frame_inds < end)).any(axis=1)
        pred = entry.labels > 0
        agree += int((truth == pred).sum())
        total += len(truth)
        tp += int((truth & pred).sum())
        positives += int(truth.sum())
        predicted += int(pred.sum())
    if not total:
        return None
    return {"accuracy": agree / total, "recall": tp / positives if positives else None,
            "precision": tp / predicted if predicted else None, "segments": total}


def apply_rule(scores: dict, classes: dict, anomalous: set, rule: str, quantile: float):
    """Labels {path: [S] int64} from segment scores / argmax classes ({path: [S]}) under ``rule``
    (see the module doc) -> (labels, threshold or None)."""
    threshold = None
    if rule == "normal_quantile":
        normal = [scores[k] for k in scores if k not in anomalous]
        if not normal:
            raise DataError("ADV_TRAIN.PSEUDO_LABEL_RULE 'normal_quantile' needs normal training videos to "
                            "take the quantile of; the training list has none (use 'argmax')")
        threshold = float(np.quantile(np.concatenate(normal), quantile))
    elif rule != "argmax":
        raise DataError(f"ADV_TRAIN.PSEUDO_LABEL_RULE must be 'argmax' or 'normal_quantile', got {rule!r}")
    labels = {}
    for key, value in scores.items():
        if key not in anomalous:
            labels[key] = np.zeros(len(value), np.int64)
        elif rule == "argmax":
            labels[key] = np.asarray(classes[key], np.int64)
        else:
            out = (value > threshold).astype(np.int64)
            out[int(np.argmax(value))] = 1
            labels[key] = out
    return labels, threshold


def pseudo_label_path(cfg) -> Path:
    """ADV_TRAIN.PSEUDO_LABEL_FILE, or OUTPUT/pseudo_labels.json when it is empty."""
    name = cfg.ADV_TRAIN.PSEUDO_LABEL_FILE
    return Path(name) if name else Path(cfg.OUTPUT) / "pseudo_labels.json"


def write_pseudo_labels(path, labels: dict[str, VideoPseudoLabels]) -> None:
    """Write ``{video path: VideoPseudoLabels}`` to ``path`` atomically, one video per line."""
    lines = [f"{json.dumps(key)}: {json.dumps(labels[key].to_json())}" for key in sorted(labels)]
    atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


def read_pseudo_labels(path, records) -> dict[str, VideoPseudoLabels]:
    """Read ``path`` and check it against the training list ``records`` (VideoRecords).

    Every anomalous training video must have an entry with the list's frame count, and
    every entry must name a video of the list; otherwise DataError says what differs. The
    video names are only compared with the list, never turned into paths.
    """
    path = Path(path)
    raw = _load_json_object(path)
    frames_by_path = {rec.path: rec.num_frames for rec in records}
    unknown = sorted(set(raw) - set(frames_by_path))
    if unknown:
        raise DataError(
            f"pseudo-label file {path} has {len(unknown)} video(s) that are not in the training list "
            f"(first: {unknown[:3]}); it was made for another list; {REGENERATE_HINT}"
        )
    missing = sorted({rec.path for rec in records if rec.is_anomalous} - set(raw))
    if missing:
        raise DataError(
            f"pseudo-label file {path} lacks {len(missing)} anomalous training video(s) "
            f"(first: {missing[:3]}); {REGENERATE_HINT}"
        )
    return {key: _parse_entry(path, key, value, frames_by_path[key]) for key, value in raw.items()}


def read_pseudo_label_file(path) -> dict[str, VideoPseudoLabels]:
    """Read ``path`` without a training list (the demo summary): every entry is validated as
    by :func:`read_pseudo_labels`, against its own ``num_frames``."""
    path = Path(path)
    raw = _load_json_object(path)
    return {key: _parse_entry(path, key, value, None) for key, value in raw.items()}


def _load_json_object(path: Path) -> dict:
    """The top-level object of a pseudo-label file; DataError for anything but a JSON object
    without NaN/Infinity tokens and duplicate video keys."""
    if not path.is_file():
        raise DataError(f"pseudo-label file {path} does not exist; {REGENERATE_HINT}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant,
                         object_pairs_hook=_no_duplicates)
    except (OSError, ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"pseudo-label file {path} is not valid JSON ({type(err).__name__}: {err}); "
                        f"{REGENERATE_HINT}") from err
    if not isinstance(raw, dict):
        raise DataError(f"pseudo-label file {path}: expected a JSON object keyed by video path, got a "
                        f"{type(raw).__name__}; {REGENERATE_HINT}")
    return raw


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number (a pseudo-label file holds finite numbers only)")


def _no_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate key(s) {dup[:3]} in one object (which entry counts is ambiguous)")
    return dict(pairs)


MAX_LABEL = 2**31 - 1  # class ids; a larger "label" is a damaged file, not a class


def _int_list(values, where, field, high, bound=None):
    """``values`` as a list of ints in [0, high], else DataError (bools, floats such as 0.5,
    strings and huge numbers are refused, never truncated or cast)."""
    if not isinstance(values, list) or not values:
        raise DataError(f"{where}: {field} must be a non-empty list of integers, got {_show(values)}; {REGENERATE_HINT}")
    for v in values:
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= high):
            raise DataError(f"{where}: {field} holds {_show(v)}; it must hold {bound or f'integers in [0, {high}]'}; "
                            f"{REGENERATE_HINT}")
    return values


def _show(value, width=60):
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def _parse_entry(path, key, value, list_frames) -> VideoPseudoLabels:
    """One video's entry, every field checked (``list_frames``: the training list's frame
    count, or None to check against the entry's own ``num_frames``)."""
    where = f"pseudo-label file {path}, video {key!r}"
    if not isinstance(value, dict) or not {"num_frames", "frame_inds", "labels"} <= set(value):
        raise DataError(f"{where}: expected an object with num_frames, frame_inds and labels; {REGENERATE_HINT}")
    written = value["num_frames"]
    if not (isinstance(written, int) and not isinstance(written, bool) and written > 0):
        raise DataError(f"{where}: num_frames must be a positive integer, got {_show(written)}; {REGENERATE_HINT}")
    if list_frames is not None and written != list_frames:
        raise DataError(
            f"{where}: written for {written} frames but the training list says {list_frames}; {REGENERATE_HINT}"
        )
    frames = written if list_frames is None else list_frames
    rows = value["frame_inds"]
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{where}: frame_inds must be a non-empty list of segments [S][T], got {_show(rows)}; "
                        f"{REGENERATE_HINT}")
    bound = f"frame indices >= 0 and below num_frames={frames}"
    rows = [_int_list(row, where, f"frame_inds[{s}]", frames - 1, bound) for s, row in enumerate(rows)]
    if len({len(row) for row in rows}) != 1:
        raise DataError(f"{where}: every segment of frame_inds needs the same number of frames, got "
                        f"{sorted({len(row) for row in rows})}; {REGENERATE_HINT}")
    labels = _int_list(value["labels"], where, "labels", MAX_LABEL)
    if len(labels) != len(rows):
        raise DataError(f"{where}: {len(labels)} labels for {len(rows)} segments of frame_inds; {REGENERATE_HINT}")
    frame_inds = np.asarray(rows, dtype=np.int64)
    if np.any(np.diff(frame_inds[:, 0]) <= 0):
        raise DataError(f"{where}: segments must be in time order (first frames rising); {REGENERATE_HINT}")
    scores = value.get("scores")
    if scores is not None:
        if not (isinstance(scores, list) and len(scores) == len(labels)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in scores)):
            raise DataError(f"{where}: scores must be a list of {len(labels)} numbers in [0, 1] (one per segment), "
                            f"got {_show(scores)}; {REGENERATE_HINT}")
        scores = np.asarray(scores, dtype=np.float64)
    return VideoPseudoLabels(int(frames), frame_inds, np.asarray(labels, dtype=np.int64), scores)


@torch.no_grad()
def generate_pseudo_labels(model, loader, text_tokens, cfg, logger):
    """Label every segment of every training video by ADV_TRAIN.PSEUDO_LABEL_RULE ->
    {path: VideoPseudoLabels} (normal videos: all 0; see the module doc).

    ``loader``: the deterministic train-as-test loader (datasets.build.build_train_as_test_loader).
    Gathered from all ranks; every rank returns the same dict. Logs the share of the anomalous
    videos' segments labelled 1 and warns when it is all or none of them.
    """
    from attacks.common import amp_dtype_from_config, eval_mode, make_forward
    from datasets.transforms import model_input
    from evaluation.scoring import class_probabilities, model_device
    from utils import dist
    from utils.logger import progress

    device = model_device(model)
    net = dist.unwrap_model(model)
    forward = make_forward(net, text_tokens, amp_dtype_from_config(cfg, device))
    rows = []
    with eval_mode(net):
        for batch in progress(loader, desc="pseudo labels", rank=dist.get_rank()):
            probs = class_probabilities(forward, model_input(batch["imgs"], device))
            classes, scores = probs.argmax(dim=-1), 1 - probs[:, 0]
            for i in range(classes.shape[0]):
                rows.append((batch["path"][i], int(batch["seg_start"][i]), int(batch["seg_len"][i]),
                             [int(f) for f in batch["frame_inds"][i]], int(classes[i]), float(scores[i])))
    all_rows = [r for part in dist.all_gather_object(rows) for r in part]
    frames = {r.path: r.num_frames for r in loader.dataset.records}
    anomalous = {r.path for r in loader.dataset.records if r.is_anomalous}
    by_video = _rows_by_video(all_rows)
    scores = {path: np.array([r[5] for r in segs]) for path, segs in by_video.items()}
    rule, quantile = cfg.ADV_TRAIN.PSEUDO_LABEL_RULE, cfg.ADV_TRAIN.PSEUDO_LABEL_QUANTILE
    chosen, threshold = apply_rule(scores, {p: [r[4] for r in segs] for p, segs in by_video.items()},
                                   anomalous, rule, quantile)
    labels = {path: VideoPseudoLabels(frames[path], np.array([r[3] for r in segs], dtype=np.int64), chosen[path],
                                      scores[path])
              for path, segs in by_video.items()}
    counts = summarise(labels, anomalous)
    rule_text = f"rule {rule}" + (f", threshold {threshold:.4f} = quantile {quantile} of the normal videos' "
                                  f"segment scores" if threshold is not None else "")
    logger.info(f"pseudo labels ({rule_text}): {counts['videos']} videos, {counts['anomalous_videos']} anomalous "
                f"with {counts['anomalous_video_segments']} segments, {counts['abnormal_segments']} of them "
                f"labelled abnormal ({_percent(counts['abnormal_fraction'])}); normal videos' segments are 0")
    if counts["anomalous_video_segments"] and counts["abnormal_segments"] in (0, counts["anomalous_video_segments"]):
        which = "none" if counts["abnormal_segments"] == 0 else "every one"
        logger.warning(f"pseudo labels: {which} of the anomalous videos' segments is labelled abnormal, so they say "
                       f"nothing beyond the video labels (ADV_TRAIN.PSEUDO_LABEL_RULE {rule}); the stage-1 model may "
                       f"be miscalibrated: try ADV_TRAIN.PSEUDO_LABEL_RULE normal_quantile")
    return labels


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.1f} %"




def _rows_by_video(rows):
    """Gathered rows (path, seg_start, ...) -> {path: rows sorted by start}; the duplicates a
    distributed sampler pads the last shard with are dropped."""
    videos = {}
    for row in rows:
        videos.setdefault(row[0], {})[row[1]] = row
    return {path: [segs[s] for s in sorted(segs)] for path, segs in videos.items()}
