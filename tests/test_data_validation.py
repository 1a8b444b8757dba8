"""Issue 15, class 6: frames and lists. A frame folder with a gap or two suffixes, a list
count far beyond the disk, intervals past the end, videos listed twice, anomalous videos
left without frames and links out of DATA.ROOT are each reported, naming the file (and the
line) and saying what to do, before any frame is decoded; nothing is scored silently short.

Each test builds the smallest broken input in ``tmp_path`` (tests/loader_helpers.py frames)
and calls what the stage or infer.py calls.
"""
import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.loader_helpers import TMPL, make_dataset, tiny_cfg, write_video
from tests.test_reliability_inputs import check_message, raised
from utils.errors import DataError, ListFileError


class Records(logging.Handler):
    """Collects the "FrameShield" logger's messages (it may not propagate to caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.messages)


@pytest.fixture()
def logged():
    log = logging.getLogger("FrameShield")
    handler, level = Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)


@pytest.fixture()
def data(tmp_path):
    make_dataset(tmp_path)
    return tmp_path


def gap_folder(folder, gap=11, last=20):
    """Frames 1..last as JPEGs without frame number ``gap`` (a 1-based folder, as extracted)."""
    write_video(folder, last + 1)
    (folder / TMPL.format(0)).unlink()
    (folder / TMPL.format(gap)).unlink()
    return folder


def mixed_folder(folder):
    """Frames 1..10 as .jpg, 11..20 as .png (the content is JPEG either way)."""
    write_video(folder, 21)
    (folder / TMPL.format(0)).unlink()
    for i in range(11, 21):
        (folder / TMPL.format(i)).rename(folder / TMPL.format(i).replace(".jpg", ".png"))
    return folder


# ---- infer.py: a frame folder is measured on disk -------------------------------------------

def test_infer_folder_with_gap_names_the_first_missing_frame(tmp_path):
    from datasets.video_probe import open_source

    folder = gap_folder(tmp_path / "clip")
    err = raised(open_source, folder, TMPL)
    check_message(err, DataError, [str(folder), "frame number 11", TMPL.format(11), "12..20"],
                  r"restore the missing frames, or set DATA\.REPLACE_BAD_FRAMES True")


def test_infer_folder_with_gap_scored_whole_with_replace_bad_frames(tmp_path, logged):
    from datasets.video_probe import open_source

    source = open_source(gap_folder(tmp_path / "clip"), TMPL, replace_bad=True)
    assert source.num_frames == 20  # frames 1..20, not the 10 before the gap
    frames = source.reader.read([9, 10, 11])
    assert frames.shape[0] == 3 and source.reader.replaced == 1
    assert "frame number 11" in logged.text


def test_infer_inference_passes_replace_bad_frames(monkeypatch, tmp_path):
    """apps.inference reads a folder with DATA.REPLACE_BAD_FRAMES (the flag of the loaders)."""
    import apps.inference as inference

    seen = {}

    def fake_open_source(video, tmpl, fps, replace_bad=False):
        seen["replace_bad"] = replace_bad
        raise DataError("stop here")

    monkeypatch.setattr(inference, "open_source", fake_open_source)
    cfg = tiny_cfg(tmp_path, **{"DATA.REPLACE_BAD_FRAMES": True})
    with pytest.raises(DataError, match="stop here"):
        inference.infer_video(None, None, cfg, tmp_path, tmp_path / "out",
                              inference.InferenceOptions(threshold=0.5, threshold_source="test"))
    assert seen == {"replace_bad": True}


def test_infer_folder_with_mixed_suffixes(tmp_path):
    from datasets.video_probe import open_source

    folder = mixed_folder(tmp_path / "clip")
    err = raised(open_source, folder, TMPL)
    check_message(err, DataError, [str(folder), "mixed suffixes", ".png", "frame number 11"],
                  r"give every frame the template's name|convert them")


def test_infer_contiguous_folder_unchanged(tmp_path):
    from datasets.video_probe import open_source

    write_video(tmp_path / "clip", 7)
    (tmp_path / "clip" / "notes.txt").write_text("not a frame")
    assert open_source(tmp_path / "clip", TMPL).num_frames == 7


# ---- the loaders: a list line's frames are checked on disk when the loader is built -------------

@pytest.mark.parametrize("count", [200_000, 99_999_999])
def test_test_list_count_far_beyond_disk_fails_at_build(data, count):
    from datasets.build import build_test_loader

    (data / "test.txt").write_text(f"frames/v0 24 0 0 24\nframes/v1 {count} 1 5 9\n")
    err = raised(build_test_loader, tiny_cfg(data))
    check_message(err, DataError, [f"{data / 'test.txt'}:2", f"{count} frames", "30 files"],
                  r"fix the frame count")


def test_train_list_with_gap_fails_at_build_naming_line_and_frame(data):
    from datasets.build import build_train_loader

    (data / "frames" / "v1" / TMPL.format(7)).unlink()
    err = raised(build_train_loader, tiny_cfg(data))
    check_message(err, DataError, [f"{data / 'train.txt'}:2", "frame 7", TMPL.format(7), "1 of the 30"],
                  r"restore the missing frames.*DATA\.REPLACE_BAD_FRAMES True")


def test_list_gap_allowed_with_replace_bad_frames_is_logged(data, logged):
    from datasets.build import build_test_loader

    (data / "frames" / "v1" / TMPL.format(7)).unlink()
    build_test_loader(tiny_cfg(data, **{"DATA.REPLACE_BAD_FRAMES": True}))
    assert "frame 7" in logged.text and "REPLACE_BAD_FRAMES" in logged.text


def test_list_over_mixed_suffix_folder_names_the_suffix(data):
    from datasets.build import build_test_loader

    mixed_folder(data / "frames" / "m")
    (data / "test.txt").write_text("frames/m 20 0 0 20\n")
    err = raised(build_test_loader, tiny_cfg(data, **{"DATA.REPLACE_BAD_FRAMES": True}))
    check_message(err, DataError, [f"{data / 'test.txt'}:1", "mixed suffixes", ".png", "frame number 11"],
                  r"template's name")


def test_video_file_count_beyond_file_fails_at_build(data):
    pytest.importorskip("decord")
    from datasets.build import build_test_loader
    from tests.test_frames import _random_frames, _write_mp4

    _write_mp4(data / "clip.mp4", _random_frames(8))
    (data / "test.txt").write_text("clip.mp4 99999999 0 0 10\n")
    err = raised(build_test_loader, tiny_cfg(data))
    check_message(err, DataError, [f"{data / 'test.txt'}:1", "clip.mp4", "only 8"], r"fix the frame count")


# ---- test-list content -----------------------------------------------------------------------

def test_interval_starting_past_the_end_is_an_error(tmp_path):
    from datasets.lists import parse_list_file

    path = tmp_path / "test.txt"
    path.write_text("a 100 0 0 100\nb 100 1 120 130\n")
    err = raised(parse_list_file, path, kind="test")
    check_message(err, ListFileError, [f"{path}:2", "120-130", "100 frames"], r"fix the interval or the frame count")


def test_interval_ending_past_the_end_is_logged_with_line(tmp_path, logged):
    from datasets.lists import parse_list_file

    path = tmp_path / "test.txt"
    path.write_text("a 100 0 0 100\nb 100 1 80 130\n")
    records = parse_list_file(path, kind="test")
    assert records[1].intervals == [(80, 130)]
    assert f"{path}: 1 interval(s) end after" in logged.text and "line 2 (b: 80-130, 100 frames)" in logged.text


@pytest.mark.parametrize("second", ["a 100 1 10 20", "a 100 0 0 100", "a 90 0 0 90"])
def test_test_list_video_twice_is_an_error(tmp_path, second):
    from datasets.lists import parse_list_file

    path = tmp_path / "test.txt"
    path.write_text(f"a 100 0 0 100\nb 50 1 5 9\n{second}\n")
    err = raised(parse_list_file, path)
    check_message(err, ListFileError, [f"{path}:3", "'a'", "line 1"], r"delete one of the two lines")


def test_train_list_same_entry_with_two_labels_is_an_error(tmp_path):
    from datasets.lists import parse_list_file

    path = tmp_path / "train.txt"
    path.write_text("a 0 100 0\nb 0 50 1\na 0 100 1\n")
    err = raised(parse_list_file, path)
    check_message(err, ListFileError, [f"{path}:3", "label 1 vs 0", "line 1"], r"delete one")


def test_train_list_repeated_entry_is_logged_and_ranges_of_one_folder_are_not(tmp_path, logged):
    from datasets.lists import parse_list_file

    path = tmp_path / "train.txt"
    path.write_text("a 0 100 0\na 100 200 1\na 0 100 0\n")
    assert len(parse_list_file(path)) == 3
    assert f"{path}: 1 line(s) repeat" in logged.text and "3 (= line 1: a)" in logged.text
    assert "2 (" not in logged.text


def test_test_loader_logs_anomalous_videos_without_frames(data, logged):
    from datasets.build import build_test_loader

    # v1 is anomalous but its only interval starts at frame 0: no frame counts under the published rule
    (data / "test.txt").write_text("frames/v0 24 0 0 24\nframes/v1 30 1 0 10\nframes/v3 26 1 8 13\n")
    build_test_loader(tiny_cfg(data))
    assert "1 of 2 labelled-anomalous videos have no anomalous frame" in logged.text
    assert "frames/v1" in logged.text


# ---- links out of DATA.ROOT ------------------------------------------------------------------

def test_folder_link_leading_outside_root_refused(data, tmp_path_factory):
    from datasets.build import build_test_loader

    outside = tmp_path_factory.mktemp("outside")
    write_video(outside / "secret", 24)
    os.symlink(outside / "secret", data / "frames" / "link")
    (data / "test.txt").write_text("frames/v0 24 0 0 24\nframes/link 24 0 0 24\n")
    err = raised(build_test_loader, tiny_cfg(data))
    check_message(err, ListFileError, [f"{data / 'test.txt'}:2", "frames/link", "symbolic link"],
                  r"DATA\.ALLOW_OUTSIDE_ROOT True")
    assert len(build_test_loader(tiny_cfg(data, **{"DATA.ALLOW_OUTSIDE_ROOT": True})).dataset.records) == 2


def test_links_inside_root_and_a_linked_root_allowed(data, tmp_path_factory):
    from datasets.build import build_test_loader

    os.symlink(data / "frames" / "v0", data / "frames" / "alias")
    (data / "test.txt").write_text("frames/alias 24 0 0 24\n")
    linked_root = tmp_path_factory.mktemp("links") / "root"
    os.symlink(data, linked_root)
    for root in (data, linked_root):
        assert len(build_test_loader(tiny_cfg(data, **{"DATA.ROOT": str(root)})).dataset) > 0


def test_frame_file_link_leading_outside_root_refused(data, tmp_path_factory):
    from datasets.build import build_test_loader

    outside = tmp_path_factory.mktemp("outside")
    write_video(outside / "w", 6)
    frame = data / "frames" / "v0" / TMPL.format(3)
    frame.unlink()
    os.symlink(outside / "w" / TMPL.format(3), frame)
    err = raised(build_test_loader, tiny_cfg(data))
    check_message(err, DataError, [f"{data / 'test.txt'}:1", TMPL.format(3), "symbolic link"],
                  r"DATA\.ALLOW_OUTSIDE_ROOT True")


# ---- datasets.make_lists counts what the loaders can read -------------------------------------

@pytest.mark.parametrize("damage, message", [("gap", "frame number 11 is missing"), ("mixed", "mixes image suffixes")])
def test_make_lists_refuses_gap_and_mixed_suffix_folders(tmp_path, damage, message):
    from datasets.make_lists import scan_videos

    folder = tmp_path / "videos" / "clip"
    gap_folder(folder) if damage == "gap" else mixed_folder(folder)
    err = raised(scan_videos, tmp_path, "videos")
    check_message(err, DataError, [str(folder), message], r"restore .* or renumber|convert or rename")


# ---- other members of the class ---------------------------------------------------------------

def test_list_path_with_a_nul_byte(tmp_path):
    from datasets.lists import parse_list_file

    path = tmp_path / "test.txt"
    path.write_text("a 100 0 0 100\nfra\x00mes/v0 24 0 0 24\n")
    err = raised(parse_list_file, path)  # was: ValueError: embedded null byte, when the loader was built
    check_message(err, ListFileError, [f"{path}:2", "control character"], r"damaged.*fix or delete the line")


def test_utf16_list_file_says_save_as_utf8(tmp_path):
    from datasets.lists import parse_list_file

    path = tmp_path / "test.txt"
    path.write_bytes("a 100 0 0 100\n".encode("utf-16"))
    check_message(raised(parse_list_file, path), ListFileError, [str(path), "UTF-16"], r"save it again as UTF-8")


def test_empty_frame_folder_in_a_list(data):
    from datasets.build import build_test_loader

    (data / "frames" / "empty").mkdir()
    (data / "test.txt").write_text("frames/v0 24 0 0 24\nframes/empty 24 0 0 24\n")
    err = raised(build_test_loader, tiny_cfg(data))
    check_message(err, DataError, [f"{data / 'test.txt'}:2", "frames/empty", "is empty"],
                  r"extract the video's frames into it, or remove it from the list")


def test_frame_size_change_between_reads(tmp_path):
    """infer.py reads a video chunk by chunk: a size change between chunks is caught too."""
    from datasets.video_probe import open_source
    from tests.test_frames import _random_frames, write_folder

    write_folder(tmp_path / "clip", _random_frames(4))
    write_folder(tmp_path / "small", _random_frames(4, h=16, w=16), first=4)
    for frame in (tmp_path / "small").iterdir():
        frame.rename(tmp_path / "clip" / frame.name)
    reader = open_source(tmp_path / "clip", TMPL).reader
    reader.read([0, 1])
    err = raised(reader.read, [4, 5])
    check_message(err, DataError, [str(tmp_path / "clip"), "differ in size"], r"resize them to one size")


# ---- property: whatever a folder holds, the checks either refuse it or vouch for every frame ----

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.sets(st.tuples(st.integers(0, 12), st.sampled_from([".jpg", ".png", ".txt"])), max_size=14),
       claimed=st.integers(1, 16), allow_gaps=st.booleans())
def test_folder_checks_refuse_or_vouch(tmp_path, files, claimed, allow_gaps):
    import tempfile

    from datasets.frame_folders import check_frame_folder, contiguous_frame_count

    folder = tempfile.mkdtemp(dir=tmp_path)
    for number, suffix in files:
        (tmp_path / folder / TMPL.format(number).replace(".jpg", suffix)).write_bytes(b"")
    names = set(os.listdir(folder))
    try:
        count = contiguous_frame_count(folder, TMPL, allow_gaps)
    except DataError:
        count = None
    if count is not None:
        first = 0 if TMPL.format(0) in names else 1
        assert TMPL.format(first) in names and TMPL.format(first + count - 1) in names
        assert not any(n.endswith(".png") for n in names)  # a second suffix is always refused
        if not allow_gaps:
            assert all(TMPL.format(first + i) in names for i in range(count))
            assert TMPL.format(first + count) not in names
    try:
        check_frame_folder(folder, claimed, TMPL, allow_gaps=allow_gaps)
    except DataError:
        return
    first = 0 if TMPL.format(0) in names else 1
    present = [TMPL.format(first + i) in names for i in range(claimed)]
    assert present[0] and present[-1] and (allow_gaps or all(present))


def test_test_list_shorter_than_the_disk_is_logged(data, logged):
    from datasets.build import build_test_loader

    (data / "test.txt").write_text("frames/v0 24 0 0 24\nframes/v1 20 1 5 9\n")  # v1 holds 30 frames
    build_test_loader(tiny_cfg(data))
    assert "1 video(s) hold more frames on disk than their line gives" in logged.text
    assert "lines 2 (frames/v1)" in logged.text


@pytest.mark.parametrize("mask, message", [([0, 1, 1, 0], "has 4 values but the video has 5 frames"),
                                           ([0, 2, 1, 0, 0], "must hold only 0 and 1"),
                                           ([[0, 1, 1, 0, 0]], "must be a non-empty 1-D array")])
def test_make_lists_frame_mask_errors_say_what_to_do(tmp_path, mask, message):
    import numpy as np

    from datasets.make_lists import make_lists

    write_video(tmp_path / "videos" / "clip", 5)
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "clip.npy", np.array(mask))
    err = raised(make_lists, tmp_path, ["videos"], tmp_path / "masks", out_test=tmp_path / "test.txt")
    check_message(err, DataError, ["clip", message], r"re-extract|regenerate|save it as one row")
