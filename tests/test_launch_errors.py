"""Issue 15, class 7: under torchrun the rank's one-line error is the last thing printed.

A FrameShieldError in a rank used to end with torchrun's 25-line ChildFailedError traceback
(after the one-line error) and exit code 1. runners/launch.sh now starts ``python -m
utils.dist`` (torchrun that reads each rank's error file back): the one-line error comes
last and the exit code stays 2. The unit tests build the launcher's failure objects from
real error files; one end-to-end run goes through runners/train.sh with torchrun on CPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from utils import dist as dist_utils

REPO = Path(__file__).resolve().parents[1]


def failure(tmp_path, rank, exitcode, message=None):
    """A ProcessFailure as torchrun's agent builds it, from the error file ``record_error``
    wrote (or from none: a crash or a signal)."""
    path = tmp_path / f"error_{rank}.json"
    if message is not None:
        os.environ[dist_utils.ERROR_FILE_ENV] = str(path)
        try:
            dist_utils.record_error(message)
        finally:
            del os.environ[dist_utils.ERROR_FILE_ENV]
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(path))


def test_record_error_writes_nothing_outside_torchrun(tmp_path, monkeypatch):
    monkeypatch.delenv(dist_utils.ERROR_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    dist_utils.record_error("ConfigError: x")
    assert list(tmp_path.iterdir()) == []


def test_record_error_is_readable_by_torchs_error_handler(tmp_path):
    # the layout must be the one torch's ErrorHandler writes: it copies the root cause's file
    # into the launcher's own error file and rewrites the error code there
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    child = failure(tmp_path, 0, 2, "ConfigError: TRAIN.LR must be > 0")
    data = json.loads(Path(child.error_file).read_text())
    ErrorHandler().override_error_code_in_rootcause_data(child.error_file, data, 2)
    assert data["message"]["errorCode"] == 2 and child.timestamp > 0


def test_frameshield_error_of_a_rank_is_the_last_line_with_exit_code_2(tmp_path):
    message = "ConfigError: TRAIN.LR must be > 0 (in --opts), got -1.0; ..."
    err = ChildFailedError("main.py", {0: failure(tmp_path, 0, 2, message), 1: failure(tmp_path, 1, 2, message)})
    text, code = dist_utils.describe_child_failure(err)
    assert code == 2
    assert text.splitlines()[-1] == f"error: {message} (rank 0)"
    assert len(text.splitlines()) == 1  # the same bad config in every rank is said once


def test_a_crash_or_a_signal_keeps_its_code_and_points_at_the_traceback(tmp_path):
    err = ChildFailedError("main.py", {1: failure(tmp_path, 1, 1)})
    text, code = dist_utils.describe_child_failure(err)
    assert code == 1 and "rank 1 failed: exit code 1" in text and "traceback" in text
    err = ChildFailedError("main.py", {0: failure(tmp_path, 0, -9)})
    text, code = dist_utils.describe_child_failure(err)
    assert code == 137 and "signal 9 (SIGKILL)" in text


def test_other_failed_ranks_are_listed_before_the_root_cause(tmp_path):
    first = failure(tmp_path, 0, 2, "DataError: frame folder missing")
    other = failure(tmp_path, 1, -15)
    other.timestamp = first.timestamp + 5  # rank 1 was stopped after rank 0 failed
    text, code = dist_utils.describe_child_failure(ChildFailedError("main.py", {0: first, 1: other}))
    lines = text.splitlines()
    assert code == 2 and lines[-1] == "error: DataError: frame folder missing (rank 0)"
    assert lines[0] == "[launcher] rank 1 also failed: killed by signal 15 (SIGTERM)"


@pytest.mark.slow
def test_train_runner_under_torchrun_ends_with_the_one_line_error(tmp_path):
    env = {**os.environ, "CONFIG": "configs/synthetic/synthetic_ci.yaml", "OUTPUT": str(tmp_path / "run"),
           "PRETRAINED": "", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "runners/train.sh", "1", "--opts", "TRAIN.LR", "-1"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ConfigError: TRAIN.LR") and last.endswith("(rank 0)"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
