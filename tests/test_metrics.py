"""The published frame-level metric against hand computations."""
import math

import numpy as np
import pytest

from evaluation import metrics
from utils.errors import DataError


def test_segments_spread_with_half_up_rounding():
    frames = metrics.segment_scores_to_frames([1, 2, 3], 10)  # r = 3.33: [0,3) [3,7) [7,10)
    assert frames.tolist() == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    # r = 2.5: segment 0 ends at floor(2.5 + 0.5) = 3 (Python's round(2.5) would give 2)
    assert metrics.segment_scores_to_frames([1, 2], 5).tolist() == [1, 1, 1, 2, 2]
    # r = 0.5: segments 0 and 2 cover [0,1) and [1,2); segments 1 and 3 cover nothing
    assert metrics.segment_scores_to_frames([1, 2, 3, 4], 2).tolist() == [1, 3]
    assert metrics.segment_scores_to_frames([0.5], 3).dtype == np.float32


def test_no_segment_or_no_frame_is_a_clear_error():
    with pytest.raises(DataError, match="no segment"):
        metrics.segment_scores_to_frames([], 10)
    with pytest.raises(DataError, match="0 frames"):
        metrics.segment_scores_to_frames([0.1], 0)


def test_smooth_windows_with_remainder():
    curve = np.arange(70, dtype=np.float32)  # 32 windows of 2 frames + 6 remaining frames
    smoothed = metrics.smooth_windows(curve)
    assert smoothed[:4].tolist() == [0.5, 0.5, 2.5, 2.5]
    assert smoothed[62:64].tolist() == [62.5, 62.5]
    assert smoothed[64:].tolist() == [66.5] * 6


def test_smooth_windows_short_video_becomes_its_mean():
    assert metrics.smooth_windows(np.array([0.6, 0.6, 0.2, 0.2], np.float32)).tolist() == \
        pytest.approx([0.4] * 4)
    exact = np.arange(64, dtype=np.float64)
    assert metrics.smooth_windows(exact)[:2].tolist() == [0.5, 0.5]


def test_unwrap_published_wrappings():
    scores = np.array([0.1, 0.2, 0.3])
    for wrapped in (scores, [scores], scores[None, :], scores[:, None], list(scores)):
        assert metrics.unwrap_scores(wrapped).tolist() == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="shape"):
        metrics.unwrap_scores(np.zeros((3, 2)), "v")


TEST_LIST = """a/normal1 40 0 0 40
b/ano1 64 1 32 48
c/short 10 1 0 5
"""
# ano1: 4 segments over 64 frames (16 each), frames 32..47 anomalous (score 0.3)
# normal1: 2 segments over 40 frames; short: 10 frames, its interval starts at 0 so it
# does not count, and its two segments (0.6, 0.2) are smoothed to their mean 0.4.
SCORES = {
    "normal1": [0.25, 0.15],
    "ano1": [np.array([0.1, 0.2, 0.3, 0.35])],
    "short": np.array([[0.6], [0.2]]),
}


@pytest.fixture
def test_list(tmp_path):
    pytest.importorskip("datasets.lists")
    path = tmp_path / "test.txt"
    path.write_text(TEST_LIST)
    return path


def test_evaluate_result_hand_computed(test_list):
    auc_all, auc_ano = metrics.evaluate_result(SCORES, test_list)
    # 16 positives at 0.3; negatives: 72 below 0.3, 16 at 0.35 (ano1), 10 at 0.4 (short)
    assert auc_all == pytest.approx(72 / 98)
    assert auc_ano == pytest.approx(32 / 48)


def test_evaluate_without_smoothing_and_ap(test_list):
    from datasets.lists import parse_list_file

    result = metrics.evaluate_scores(SCORES, parse_list_file(test_list), smooth=False)
    # short unsmoothed: 5 frames at 0.6 above, 5 at 0.2 below the positives
    assert result["auc_all"] == pytest.approx(77 / 98)
    assert result["num_frames"] == 114 and result["num_videos"] == 3
    smoothed = metrics.evaluate_scores(SCORES, parse_list_file(test_list))
    # ranking: 10 x 0.4 (neg), 16 x 0.35 (neg), 16 x 0.3 (pos), then lower ones
    assert smoothed["ap"] == pytest.approx(16 / 42)
    assert smoothed["short_videos"] == ["short"]
    assert any("fewer than 32 frames" in m for m in smoothed["messages"])
    assert smoothed["per_video"]["short"]["scores"].tolist() == pytest.approx([0.4] * 10)


def test_start_zero_rule_and_its_option(test_list):
    # count_start_zero (datasets.lists.frame_labels) also counts intervals starting at 0
    # that do not span the whole video: short's frames 0..4 (score 0.4) become anomalous,
    # normal1's "0 40" stays normal. 21 positives; 93 negatives overall, 53 in ano1+short.
    auc_all, auc_ano = metrics.evaluate_result(SCORES, test_list, count_start_zero=True)
    assert auc_all == pytest.approx((16 * 72 + 5 * (88 + 2.5)) / (21 * 93))
    assert auc_ano == pytest.approx((16 * 32 + 5 * (48 + 2.5)) / (21 * 53))


def test_missing_unused_and_full_path_keys(test_list, caplog):
    from datasets.lists import parse_list_file

    scores = {"/data/b/ano1": SCORES["ano1"], "short": SCORES["short"], "other": [0.5]}
    result = metrics.evaluate_scores(scores, parse_list_file(test_list))
    assert result["missing"] == ["normal1"] and result["unused"] == ["other"]
    assert "normal1" in caplog.text and "other" in caplog.text
    # 16 positives at 0.3; 58 negatives: ano1 32 below and 16 above, short 10 above
    assert result["auc_all"] == pytest.approx(32 / 58)


def test_no_anomalous_frame_gives_nan_with_message(tmp_path):
    pytest.importorskip("datasets.lists")
    path = tmp_path / "test.txt"
    path.write_text("a/n1 40 0 0 40\nb/n2 20 0 0 20\n")
    result_all, result_ano = metrics.evaluate_result({"n1": [0.1, 0.2], "n2": [0.3]}, path)
    assert math.isnan(result_all) and math.isnan(result_ano)
    from datasets.lists import parse_list_file

    result = metrics.evaluate_scores({"n1": [0.1], "n2": []}, parse_list_file(path))
    assert result["missing"] == ["n2"]
    assert any("no anomalous frame" in m for m in result["messages"])
    assert math.isnan(result["ap"]) and result["roc"] is None
