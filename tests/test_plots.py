"""Plots are written as PNG files atomically, with the intervals the labels hold."""
import numpy as np
import pytest

from utils import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_anomaly_intervals():
    assert plots.anomaly_intervals([0, 1, 1, 0, 0, 1]) == [(1, 3), (5, 6)]
    assert plots.anomaly_intervals([1, 1]) == [(0, 2)]
    assert plots.anomaly_intervals(np.zeros(4, np.uint8)) == []


def test_roc_and_score_curves_are_pngs(tmp_path):
    fpr, tpr = np.array([0, 0.5, 1]), np.array([0, 0.8, 1])
    roc = plots.plot_roc(tmp_path / "roc.png", {"clean": (fpr, tpr, 0.65),
                                                "adversarial": (fpr, fpr, 0.5)})
    assert roc.read_bytes()[:8] == PNG_MAGIC
    labels = np.zeros(50, np.uint8)
    labels[10:20] = 1
    per_video = {"dir/a b": {"scores": np.linspace(0, 1, 50), "labels": labels},
                 "n": {"scores": np.full(50, 0.2), "labels": np.zeros(50, np.uint8)}}
    adversarial = {"dir/a b": {"scores": np.linspace(1, 0, 50), "labels": labels}}
    paths = plots.plot_videos(tmp_path / "plots", per_video, adversarial, limit=1)
    assert [p.name for p in paths] == ["scores_dir_a_b.png"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # nothing left half-written


def test_plot_failure_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_score_curve(tmp_path / "bad.png", np.zeros(5), np.zeros(5),
                               adversarial_scores=np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_safe_file_name():
    assert plots.safe_file_name("../x/y z") == "x_y_z"
    assert plots.safe_file_name("...") == "video"


def test_write_stage_plots_from_evaluations(tmp_path):
    from evaluation.metrics import evaluate_scores

    lists = pytest.importorskip("datasets.lists")
    list_file = tmp_path / "test.txt"
    list_file.write_text("d/n1 40 0 0 40\nd/a1 64 1 10 30\n")
    records = lists.parse_list_file(list_file)
    clean = evaluate_scores({"n1": [0.1, 0.2], "a1": [0.2, 0.9, 0.1]}, records)
    adversarial = evaluate_scores({"n1": [0.8, 0.9], "a1": [0.1, 0.1, 0.1]}, records)
    paths = plots.write_stage_plots(tmp_path / "plots", {"clean": clean, "adversarial": adversarial},
                                    title="toy", limit=None)
    assert sorted(p.name for p in paths) == ["roc.png", "scores_a1.png", "scores_n1.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)
