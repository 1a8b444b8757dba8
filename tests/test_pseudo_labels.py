"""pseudo_labels.json: keyed by video path, atomic, validated against the training list."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datasets.sampling import train_clip_indices, video_segments
from utils.errors import DataError
from training.pseudo_labels import (VideoPseudoLabels, agreement, apply_rule, pseudo_label_path, read_pseudo_labels,
                                   summarise, write_pseudo_labels)


def record(path, num_frames, label):
    return SimpleNamespace(path=path, num_frames=num_frames, label=label, is_anomalous=label > 0)


RECORDS = [record("train/normal_0", 40, 0), record("train/abnormal_0", 50, 1), record("train/abnormal_1", 30, 2)]


def sample_labels():
    seg = lambda starts: np.array([[s + 2 * t for t in range(3)] for s in starts])  # noqa: E731  [S, T=3]
    return {
        "train/abnormal_0": VideoPseudoLabels(50, seg([0, 10, 20, 30, 40]), np.array([0, 1, 1, 0, 0])),
        "train/abnormal_1": VideoPseudoLabels(30, seg([0, 15]), np.array([1, 0])),
        "train/normal_0": VideoPseudoLabels(40, seg([0, 20]), np.array([0, 0])),
    }


def test_round_trip_keyed_by_path(tmp_path):
    path = tmp_path / "pseudo_labels.json"
    write_pseudo_labels(path, sample_labels())
    raw = json.loads(path.read_text())
    assert set(raw) == {"train/abnormal_0", "train/abnormal_1", "train/normal_0"}
    assert raw["train/abnormal_0"]["labels"] == [0, 1, 1, 0, 0]
    assert raw["train/abnormal_0"]["frame_inds"][1] == [10, 12, 14]
    # the list order does not matter: entries are found by path
    back = read_pseudo_labels(path, list(reversed(RECORDS)))
    np.testing.assert_array_equal(back["train/abnormal_1"].labels, [1, 0])
    np.testing.assert_array_equal(back["train/abnormal_0"].frame_inds, sample_labels()["train/abnormal_0"].frame_inds)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_clip_labels_from_the_segments_holding_its_frames():
    entry = sample_labels()["train/abnormal_0"]  # segments [0,10) [10,20) [20,30) [30,40) [40,50)
    same = torch.as_tensor(entry.frame_inds)
    assert entry.clip_labels(same).tolist() == [0, 1, 1, 0, 0]
    clips = torch.tensor([[9, 11, 13], [24, 26, 28], [44, 46, 49], [0, 1, 2], [28, 30, 32], [30, 35, 39]])
    assert entry.clip_labels(clips).tolist() == [1, 1, 0, 0, 1, 0]  # [28, 30, 32]: one frame in [20, 30)
    # class ids above 1 count as anomalous
    multi = VideoPseudoLabels(10, np.array([[0], [5]]), np.array([0, 3]))
    assert multi.clip_labels(torch.tensor([[6]])).tolist() == [1]


def test_clip_over_a_boundary_takes_the_anomalous_segment():
    """A short video's clip that runs from a normal segment into an abnormal one is abnormal,
    and the other way round, even where its centre is nearer the normal segment."""
    segs = video_segments(40, 5, 6)  # [0, 30) sampled 0..24, [30, 40) sampled 30..38
    inds = np.array([s.frame_inds for s in segs])
    clip = torch.tensor([[15, 21, 27, 33, 39]])  # centre 27: nearer segment 1's centre (34)
    assert VideoPseudoLabels(40, inds, np.array([1, 0])).clip_labels(clip).tolist() == [1]
    assert VideoPseudoLabels(40, inds, np.array([0, 1])).clip_labels(clip).tolist() == [1]
    assert VideoPseudoLabels(40, inds, np.array([0, 0])).clip_labels(clip).tolist() == [0]


def _frame_labels(num_frames, segments, labels):
    """Per-frame label [N] from the segments' extents (the dropped tail: the segment before)."""
    out = np.zeros(num_frames, dtype=np.int64)
    for seg, label in zip(segments, labels):
        out[seg.start:] = label  # later segments overwrite: each holds up to the next one's start
    return out


@pytest.mark.parametrize("num_frames", [40, 100, 300, 5000])
def test_sampled_clips_labelled_from_their_frames(num_frames):
    """Training clips from datasets.sampling on short (N < K * span) and long videos: label 1
    iff one of the clip's frames lies in a segment labelled anomalous."""
    K, T, step = 16, 5, 6
    segs = video_segments(num_frames, T, step)
    rng = np.random.default_rng(num_frames)
    for trial in range(20):
        labels = rng.integers(0, 2, len(segs)) * rng.integers(1, 3, len(segs))  # classes 0, 1, 2
        entry = VideoPseudoLabels(num_frames, np.array([s.frame_inds for s in segs]), labels)
        clips = train_clip_indices(num_frames, K, T, step, rng if trial else None)
        expected = (_frame_labels(num_frames, segs, labels)[clips] > 0).any(axis=1)
        assert entry.clip_labels(torch.from_numpy(clips)).tolist() == expected.astype(int).tolist()
    # the scored segments themselves get their own labels back
    assert entry.clip_labels(torch.as_tensor(entry.frame_inds)).tolist() == (labels > 0).astype(int).tolist()


def test_segments_out_of_order_refused(tmp_path):
    path = tmp_path / "p.json"
    labels = sample_labels()
    labels["train/abnormal_1"] = VideoPseudoLabels(30, np.array([[15, 17, 19], [0, 2, 4]]), np.array([1, 0]))
    write_pseudo_labels(path, labels)
    with pytest.raises(DataError, match="abnormal_1.*time order"):
        read_pseudo_labels(path, RECORDS)
    labels["train/abnormal_1"] = VideoPseudoLabels(30, np.array([[0, 2, 4], [15, 25, 30]]), np.array([1, 0]))
    write_pseudo_labels(path, labels)
    with pytest.raises(DataError, match="below num_frames=30"):
        read_pseudo_labels(path, RECORDS)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="genlabels"):
        read_pseudo_labels(tmp_path / "absent.json", RECORDS)


def test_file_from_another_list_is_refused(tmp_path):
    path = tmp_path / "p.json"
    labels = sample_labels()
    labels["train/other_video"] = VideoPseudoLabels(10, np.array([[0, 1, 2]]), np.array([1]))
    write_pseudo_labels(path, labels)
    with pytest.raises(DataError, match="not in the training list"):
        read_pseudo_labels(path, RECORDS)


def test_missing_anomalous_video_is_refused_but_normal_may_be_absent(tmp_path):
    path = tmp_path / "p.json"
    labels = sample_labels()
    del labels["train/normal_0"]
    write_pseudo_labels(path, labels)
    assert set(read_pseudo_labels(path, RECORDS)) == {"train/abnormal_0", "train/abnormal_1"}
    del labels["train/abnormal_1"]
    write_pseudo_labels(path, labels)
    with pytest.raises(DataError, match="lacks 1 anomalous"):
        read_pseudo_labels(path, RECORDS)


def test_frame_count_mismatch_is_refused(tmp_path):
    path = tmp_path / "p.json"
    write_pseudo_labels(path, sample_labels())
    changed = [record("train/normal_0", 40, 0), record("train/abnormal_0", 51, 1), record("train/abnormal_1", 30, 1)]
    with pytest.raises(DataError, match="51"):
        read_pseudo_labels(path, changed)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"train/abnormal_0": {"num_frames": 50, "frame_inds": [[0, 1], [2]], "labels": [0, 1]}}',
        '{"train/abnormal_0": {"num_frames": 50, "frame_inds": [[0, 1]], "labels": [0, 1]}}',
        '{"train/abnormal_0": {"num_frames": 50, "frame_inds": [], "labels": []}}',
        '{"train/abnormal_0": {"num_frames": 50, "labels": [1]}}',
        '{"train/abnormal_0": {"num_frames": 50, "frame_inds": [[0]], "labels": [-1]}}',
    ],
)
def test_malformed_files_raise_data_error(tmp_path, text):
    path = tmp_path / "p.json"
    path.write_text(text)
    records = [record("train/abnormal_0", 50, 1)]
    with pytest.raises(DataError, match="p.json"):
        read_pseudo_labels(path, records)


def test_default_path_is_in_output():
    cfg = SimpleNamespace(OUTPUT="out/run", ADV_TRAIN=SimpleNamespace(PSEUDO_LABEL_FILE=""))
    assert str(pseudo_label_path(cfg)) == "out/run/pseudo_labels.json"
    cfg.ADV_TRAIN.PSEUDO_LABEL_FILE = "elsewhere/p.json"
    assert str(pseudo_label_path(cfg)) == "elsewhere/p.json"


def test_summary_counts():
    summary = summarise(sample_labels())
    assert summary == {"videos": 3, "segments": 9, "anomalous_videos": 3, "anomalous_video_segments": 9,
                       "abnormal_segments": 3, "abnormal_fraction": 3 / 9}
    # only the anomalous videos' segments count: a normal video's segments are never "labelled abnormal"
    labels = sample_labels()
    labels["train/normal_0"].labels[:] = 1
    summary = summarise(labels, anomalous={"train/abnormal_0", "train/abnormal_1"})
    assert summary["anomalous_video_segments"] == 7 and summary["abnormal_segments"] == 3
    assert summary["abnormal_fraction"] == 3 / 7 and summary["segments"] == 9


def test_rules_argmax_and_normal_quantile():
    scores = {"n0": np.array([0.6, 0.7, 0.8, 0.65]), "a0": np.array([0.7, 0.9, 0.95]), "a1": np.array([0.55, 0.6])}
    classes = {k: (v > 0.5).astype(int) for k, v in scores.items()}
    anomalous = {"a0", "a1"}
    labels, thr = apply_rule(scores, classes, anomalous, "argmax", 0.9)
    assert thr is None and labels["a0"].tolist() == [1, 1, 1] and labels["n0"].tolist() == [0, 0, 0, 0]
    # miscalibrated (everything > 0.5): the quantile of the normal videos' scores still separates
    labels, thr = apply_rule(scores, classes, anomalous, "normal_quantile", 0.75)
    assert thr == pytest.approx(np.quantile(scores["n0"], 0.75))
    assert labels["a0"].tolist() == [0, 1, 1]
    assert labels["a1"].tolist() == [0, 1]  # below the threshold, but the top segment is always 1
    assert labels["n0"].tolist() == [0, 0, 0, 0]
    with pytest.raises(DataError, match="PSEUDO_LABEL_RULE"):
        apply_rule({"a0": scores["a0"]}, classes, {"a0"}, "normal_quantile", 0.9)


def test_agreement_with_true_intervals():
    labels = sample_labels()  # abnormal_0 segments start 0, 10, 20, 30, 40 (frames s, s+2, s+4)
    result = agreement(labels, {"train/abnormal_0": (10, 25), "train/normal_0": None})
    # truth [0, 1, 1, 0, 0] == labels: all five agree
    assert result == {"accuracy": 1.0, "recall": 1.0, "precision": 1.0, "segments": 5}
    assert agreement(labels, {}) is None


def test_scores_round_trip(tmp_path):
    path = tmp_path / "p.json"
    labels = sample_labels()
    labels["train/abnormal_1"].scores = np.array([0.9, 0.25])
    write_pseudo_labels(path, labels)
    back = read_pseudo_labels(path, RECORDS)
    np.testing.assert_allclose(back["train/abnormal_1"].scores, [0.9, 0.25])
    assert back["train/abnormal_0"].scores is None
