"""The issue-15 probe's verdicts (benchmarks/probe_reliability.py): a classifier that called a
traceback or a hang 'clear' would make its before/after table worthless, so each rule is
pinned here on hand-made outputs (no subprocess)."""
from pathlib import Path

from benchmarks.probe_reliability import Box, Plan, classify, compare, snapshot

ERROR = "[2026-12-02 01:00:00 FrameShield](stage.py 370): ERROR ConfigError: TRAIN.LR must be positive, got -1"


def box(tmp_path):
    return Box(tmp_path, tmp_path, tmp_path)


def verdict(tmp_path, codes, outputs, plan=None, lost=""):
    return classify(plan or Plan([["x"]], names=("TRAIN.LR",)), codes, outputs, lost, box(tmp_path))[0]


def test_exit_2_with_the_projects_error_naming_the_key_is_clear(tmp_path):
    assert verdict(tmp_path, [2], ["INFO starting\n" + ERROR + "\n"]) == "clear"
    multi = "error: ConfigError: output folder run holds another run:\n  TRAIN.LR: 1 -> 2\nchoose another --output\n"
    assert verdict(tmp_path, [2], [multi]) == "clear"


def test_an_error_naming_something_else_or_followed_by_more_output_is_not_clear(tmp_path):
    assert verdict(tmp_path, [2], [ERROR.replace("TRAIN.LR", "a value")]) == "unclear"
    strict = Plan([["x"]], names=("TRAIN.LR",), strict_last=True)
    assert verdict(tmp_path, [2], [ERROR + "\nlauncher: a child failed\n"], strict) == "unclear"
    assert verdict(tmp_path, [1], [ERROR]) == "unclear"


def test_traceback_hang_oom_and_lost_win_over_exit_codes(tmp_path):
    tb = "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: bad\n" + ERROR
    assert verdict(tmp_path, [2], [tb]) == "traceback"
    assert verdict(tmp_path, [None], ["..."]) == "hang"
    assert verdict(tmp_path, [1], ["MemoryError\n"]) == "hang/oom"
    assert verdict(tmp_path, [2], [ERROR], lost="changed: victim.txt") == "lost"


def test_exit_0_is_handled_only_when_the_cases_check_passes(tmp_path):
    assert verdict(tmp_path, [0], ["done"]) == "silent"  # no check: the bad input was accepted
    assert verdict(tmp_path, [0], ["done"], Plan([["x"]], check=lambda b, o: None)) == "handled"
    assert verdict(tmp_path, [0], ["done"], Plan([["x"]], check=lambda b, o: "NaN scores")) == "silent"


def test_two_runs_one_refused_with_a_clear_error_is_clear(tmp_path):
    plan = Plan([["a"], ["b"]], names=("lock",))
    assert verdict(tmp_path, [2, 0], ["error: ConfigError: out is locked by a running run (lock)", "ok"], plan) == "clear"
    assert verdict(tmp_path, [0, 0], ["ok", "ok"], plan) == "silent"


def test_snapshot_sees_changes_outside_the_writable_folders_and_protected_files(tmp_path: Path):
    (tmp_path / "victim.txt").write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text("theirs")
    (tmp_path / "out" / "log.txt").write_text("any")
    plan = Plan([["x"]], protect=("out/config.yaml",))
    before = snapshot(box(tmp_path), plan)
    (tmp_path / "out" / "log.txt").write_text("changed: allowed")
    (tmp_path / "out" / "new.txt").write_text("new: allowed")
    assert compare(before, snapshot(box(tmp_path), plan), plan) == ""
    (tmp_path / "victim.txt").write_text("overwritten")
    (tmp_path / "out" / "config.yaml").unlink()
    (tmp_path / "elsewhere.txt").write_text("outside")
    lost = compare(before, snapshot(box(tmp_path), plan), plan)
    assert "changed: victim.txt" in lost and "deleted: out/config.yaml" in lost and "created outside: elsewhere.txt" in lost
