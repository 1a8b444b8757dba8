"""List files (every format and malformed line), labels CSV, frame-level ground truth, root confinement."""
import logging
from pathlib import Path

import numpy as np
import pytest

from datasets.lists import (
    VideoRecord,
    anomalous_without_frames,
    frame_labels,
    ground_truth,
    parse_list_file,
    read_label_csv,
    resolve_video_path,
)
from utils.errors import DataError, FrameShieldError, ListFileError


def write(tmp_path, text, name="list.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_train_four_columns(tmp_path):
    path = write(tmp_path, "SHANGHAI_TRAIN/frames/01_0014 0 265 1\nUCF/Abuse001 10 110 7\n")
    first, second = parse_list_file(path)
    assert (first.path, first.num_frames, first.label, first.start_frame, first.line) == (
        "SHANGHAI_TRAIN/frames/01_0014", 265, 1, 0, 1)
    assert first.intervals == [] and first.is_anomalous
    assert (second.num_frames, second.label, second.start_frame, second.line) == (100, 7, 10, 2)


def test_train_three_and_five_columns(tmp_path):
    path = write(tmp_path, "a 100 0\nb 50 1 7 9\n")
    a, b = parse_list_file(path)
    assert (a.num_frames, a.label, a.is_anomalous) == (100, 0, False)
    assert (b.num_frames, b.label, b.intervals, b.start_frame) == (50, 1, [], 0)


def test_test_five_columns_including_normal_and_msad_labels(tmp_path):
    path = write(tmp_path, "SHANGHAI_Test/frames/01_0015 433 1 86 373\n01_001 765 0 0 765\n"
                           "MSAD_normal_testing_1 736 5 0 736\n")
    anomaly, normal, msad = parse_list_file(path)
    assert anomaly.intervals == [(86, 373)] and anomaly.num_frames == 433 and anomaly.label == 1
    assert normal.intervals == [(0, 765)] and not normal.is_anomalous
    assert msad.label == 5


def test_ucf_seven_columns_with_minus_one(tmp_path):
    path = write(tmp_path, "Arrest/Arrest001 2000 3 100 200 300 400\nNormal/N1 900 0 -1 -1 -1 -1\n"
                           "Burglary/B 500 4 10 20 -1 -1\n")
    two, none, one = parse_list_file(path)
    assert two.intervals == [(100, 200), (300, 400)]
    assert none.intervals == [] and one.intervals == [(10, 20)]


def test_tad_video_file_name_blank_lines_whitespace_crlf_comments(tmp_path):
    text = "# TAD test list\r\n\r\nframes/abnormal/01_Accident_006.mp4 266 1 75 110   \r\n\t\n  \nb.avi 10 0 0 10\r\n"
    records = parse_list_file(write(tmp_path, text))
    assert [r.path for r in records] == ["frames/abnormal/01_Accident_006.mp4", "b.avi"]
    assert [r.line for r in records] == [3, 6]


def test_five_columns_kind_rule(tmp_path):
    only_five = write(tmp_path, "a 100 1 10 20\n")
    assert parse_list_file(only_five)[0].intervals == [(10, 20)]  # auto: test list
    assert parse_list_file(only_five, kind="train")[0].intervals == []
    mixed = write(tmp_path, "a 0 100 1\nb 100 1 -5 3\n", "mixed.txt")
    records = parse_list_file(mixed)  # a 4-column line makes it a train list: x columns ignored
    assert records[1].intervals == [] and records[1].num_frames == 100
    with pytest.raises(ListFileError, match="mixed.txt:1"):
        parse_list_file(mixed, kind="test")
    with pytest.raises(ValueError):
        parse_list_file(mixed, kind="val")


@pytest.mark.parametrize(
    "text, kind, line, match",
    [
        ("a 1 2\nb 0 10 1 2 3 4 5 6\n", "auto", 2, "mixes train"),
        ("a 100 1 0 50\nb 10\n", "auto", 2, "5 or 7 columns"),
        ("a 10 0\nb 1 2 3 4 5 6\n", "train", 2, "3, 4 or 5 columns"),
        ("a 100 1 0 50 60\n", "auto", 1, "5 or 7 columns"),
        ("a 0 1x 1\n", "auto", 1, "end frame.*'1x'"),
        ("a 0 10 one\n", "auto", 1, "label"),
        ("a 1.5 0\n", "auto", 1, "number of frames"),
        ("a 20 10 1\n", "auto", 1, "before start"),
        ("a -3 10 1\n", "auto", 1, "start frame"),
        ("a 5 5 1\n", "auto", 1, "positive"),
        ("a -10 0\n", "auto", 1, "positive"),
        ("a 10 -1\n", "auto", 1, r"label .*>= 0"),
        ("a 1000000000 0\n", "auto", 1, "implausibly many"),
        ("ok 100 1 50 60\na 100 1 50 40\n", "auto", 2, "before its start"),
        ("a 100 1 -1 40\n", "auto", 1, "-1 -1"),
        ("a 100 1 1 2 3 x\n", "auto", 1, "column 7"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, text, kind, line, match):
    path = write(tmp_path, text)
    with pytest.raises(ListFileError, match=match) as err:
        parse_list_file(path, kind=kind)
    assert f"{path}:{line}" in str(err.value)


def test_missing_empty_and_binary_list_files(tmp_path):
    with pytest.raises(ListFileError, match="not found.*DATA.TRAIN_FILE"):
        parse_list_file(tmp_path / "nope.txt")
    with pytest.raises(ListFileError, match="no entries"):
        parse_list_file(write(tmp_path, "\n  \n"))
    with pytest.raises(ListFileError, match="folder"):
        parse_list_file(tmp_path)
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ListFileError, match="UTF-8"):
        parse_list_file(binary)
    with pytest.raises(ListFileError, match="DATA.TRAIN_FILE"):
        parse_list_file("")


def test_label_csv(tmp_path):
    assert read_label_csv(Path(__file__).parents[1] / "configs" / "labels_2.csv") == ["normal", "abnormal"]
    assert read_label_csv(write(tmp_path, "\ufeffid,name\r\n1,abnormal\r\n0,normal\r\n", "l.csv")) == [
        "normal", "abnormal"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("class,label\n0,normal\n", "header must be 'id,name'"),
        ("id,name,extra\n0,normal,x\n", "header"),
        ("id,name\n0,normal,x\n", r":2: .*2 columns"),
        ("id,name\n0\n", r":2: .*2 columns"),
        ("id,name\nzero,normal\n", r":2: class id"),
        ("id,name\n0,normal\n0,abnormal\n", r":3: class id 0 appears twice"),
        ("id,name\n0,normal\n2,abnormal\n", "0..1"),
        ("id,name\n", "no classes"),
        ("id,name\n0, \n", "empty name"),
    ],
)
def test_label_csv_errors(tmp_path, text, match):
    with pytest.raises(ListFileError, match=match):
        read_label_csv(write(tmp_path, text, "l.csv"))


def test_frame_labels_published_rule_and_switch():
    anomaly = VideoRecord("a", 10, 1, [(2, 5)])
    assert frame_labels(anomaly).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert frame_labels(anomaly).dtype == np.uint8
    normal = VideoRecord("n", 6, 0, [(0, 6)])
    starts_at_zero = VideoRecord("z", 6, 1, [(0, 3)])
    past_end = VideoRecord("p", 6, 1, [(4, 9)])
    assert not frame_labels(normal).any() and not frame_labels(normal, count_start_zero=True).any()
    assert not frame_labels(starts_at_zero).any()  # published: start 0 is ignored
    assert frame_labels(starts_at_zero, count_start_zero=True).tolist() == [1, 1, 1, 0, 0, 0]
    assert frame_labels(past_end).tolist() == [0, 0, 0, 0, 1, 1]
    two = VideoRecord("u", 8, 3, [(1, 2), (6, 8)])
    assert frame_labels(two).tolist() == [0, 1, 0, 0, 0, 0, 1, 1]


def test_anomalous_without_frames_is_logged(caplog):
    records = [VideoRecord("z", 6, 1, [(0, 3)]), VideoRecord("a", 6, 1, [(2, 3)]), VideoRecord("n", 6, 0, [(0, 6)])]
    # A logger of the test's own: the project's "FrameShield" logger may have been set
    # up (propagate=False) by an earlier test in the same process.
    log = logging.getLogger("test_lists.anomalous")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert anomalous_without_frames(records, logger=log) == ["z"]
    assert "1 of 2" in caplog.text and "z" in caplog.text
    assert anomalous_without_frames(records, count_start_zero=True) == []
    truth = ground_truth(records, count_start_zero=True)
    assert set(truth) == {"z", "a", "n"} and truth["z"].sum() == 3


def test_resolve_video_path_confined_to_root(tmp_path):
    root = tmp_path / "data"
    (root / "videos" / "v1").mkdir(parents=True)
    assert resolve_video_path(root, "videos/v1", must_exist=True) == root / "videos" / "v1"
    assert resolve_video_path(root, "videos/../videos/v1") == root / "videos" / "v1"
    for bad in ["../secret", "videos/../../secret", str(tmp_path / "elsewhere")]:
        with pytest.raises(ListFileError, match="ALLOW_OUTSIDE_ROOT"):
            resolve_video_path(root, bad, source="test.txt:4")
    assert resolve_video_path(root, "../other", allow_outside_root=True) == tmp_path / "other"
    with pytest.raises(DataError, match="test.txt:2.*videos/v2"):
        resolve_video_path(root, "videos/v2", must_exist=True, source="test.txt:2")
    # an empty DATA.ROOT means the working folder
    assert str(resolve_video_path("", "a/b")) == "a/b"
    with pytest.raises(FrameShieldError):
        resolve_video_path("", "../x")
