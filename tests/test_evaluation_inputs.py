"""Scores and annotations the evaluation reads (issue 15): NaN/Inf scores are refused with the
video named, and every path that reads a test list logs anomalous videos without anomalous
frames (the README promises it)."""
import logging

import numpy as np
import pytest

from evaluation.metrics import evaluate_result, evaluate_scores
from utils.errors import DataError


def write_list(tmp_path, lines):
    path = tmp_path / "test.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused_naming_the_video(tmp_path, bad):
    from datasets.lists import parse_list_file

    records = parse_list_file(write_list(tmp_path, ["frames/a 40 1 10 20", "frames/b 40 0 0 0"]))
    scores = {"a": np.array([0.1, bad, 0.3, 0.4]), "b": np.array([0.1, 0.2, 0.3, 0.4])}
    with pytest.raises(DataError, match=r"'a'.*NaN/Inf.*another one"):
        evaluate_scores(scores, records)


def test_evaluate_result_logs_anomalous_videos_without_frames(tmp_path, caplog):
    path = write_list(tmp_path, ["frames/a 40 1 0 10", "frames/b 40 1 10 20", "frames/c 40 0 0 0"])
    scores = {n: np.linspace(0, 1, 4) for n in "abc"}
    with caplog.at_level(logging.WARNING):
        evaluate_result(scores, path)
    assert "1 of 2 labelled-anomalous videos have no anomalous frame" in caplog.text
    assert "frames/a" in caplog.text


def test_infer_annotation_labels_log_an_anomalous_video_without_frames(tmp_path, caplog):
    from apps.intervals import annotation_labels

    path = write_list(tmp_path, ["frames/a 40 1 0 10", "frames/b 40 1 10 20"])
    log = logging.getLogger("test_evaluation_inputs")
    with caplog.at_level(logging.INFO, logger="test_evaluation_inputs"):
        labels = annotation_labels(path, tmp_path / "a", 40, log=log)
    assert labels is not None and labels.max() == 0
    assert "have no anomalous frame" in caplog.text and "frames/a" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test_evaluation_inputs"):
        annotation_labels(path, tmp_path / "b", 40, log=log)
    assert "no anomalous frame" not in caplog.text
