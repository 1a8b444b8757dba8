"""Issue 15, class 3: every write failure is a clear OutputError naming the file and what to do,
and what was written before stays valid.

A full disk is simulated at the write that fails: the state file's bytes (the real torch.save
writing into a file that stops taking bytes), the weights (safetensors' own I/O error), the
fsync of results.json, np.savez of scores.npz, and an OSError(ENOSPC) escaping from a write
outside utils/io.py (a log line, metrics.csv) up to the entry script.
"""
import builtins
import errno
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors import SafetensorError

from tests.test_reliability_checkpoints import model_with, save, weights_value
from training import checkpoint as ckpt
from training import stage as stages
from utils.errors import OutputError
from utils.io import atomic_write_json

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, path, room):
        self.file, self.room = open(path, "wb", buffering=0), room

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def close(self):
        self.file.close()
        super().close()


def no_temp_files(folder):
    return not list(folder.rglob("*.tmp"))


def assert_previous_is_resumed(tmp_path):
    found = ckpt.find_auto_resume(tmp_path)
    assert found is not None and weights_value(found) == {1.0}
    assert ckpt.load_checkpoint(found, model_with(0.0))["step"] == 1


def test_disk_full_while_saving_the_state_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1.0, step=1)
    def full_open(path, mode="r", *args, **kwargs):  # only the writes fail; the checks still read
        return FullDisk(path, 300) if "w" in mode else builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt, "open", full_open, raising=False)
    with pytest.raises(OutputError) as caught:
        save(tmp_path, 2.0, step=2)
    message = str(caught.value)
    assert str(tmp_path / "checkpoints" / "last.state.pt") in message and "disk is full" in message
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    assert_previous_is_resumed(tmp_path)


def test_disk_full_while_saving_the_weights_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    save(tmp_path, 1.0, step=1)

    def full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"\0" * 10)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputError, match=r"last\.safetensors: No space left on device; the disk is full"):
        save(tmp_path, 2.0, step=2)
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    assert_previous_is_resumed(tmp_path)


def fake_stage(tmp_path):
    return SimpleNamespace(is_main=True, output=tmp_path, name="promptmil", started=0.0,
                           args=SimpleNamespace(config="c.yaml"), logger=SimpleNamespace(info=lambda *_: None))


def test_disk_full_writing_results_json_keeps_the_old_one(tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text('{"old": true}')
    monkeypatch.setattr("os.fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'results.json'}: .*free some space"):
        stages.write_results(fake_stage(tmp_path), {"test": {}})
    assert json.loads((tmp_path / "results.json").read_text()) == {"old": True}
    assert no_temp_files(tmp_path)


def test_disk_full_writing_scores_npz_keeps_the_old_one(tmp_path, monkeypatch):
    (tmp_path / "scores.npz").write_bytes(b"old scores")

    def full(handle, **arrays):
        handle.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    video = {"starts": [0], "lengths": [16], "scores": [0.5]}
    evals = {"clean": {"per_video": {"v": {"labels": np.zeros(16), "scores": np.zeros(16)}}}}
    with pytest.raises(OutputError, match=r"scores\.npz: No space left on device"):
        stages.write_scores(fake_stage(tmp_path), {"clean": {"v": video}}, evals)
    assert (tmp_path / "scores.npz").read_bytes() == b"old scores" and no_temp_files(tmp_path)


def test_a_folder_that_cannot_take_a_new_file_is_an_output_error(tmp_path, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OutputError, match=r"summary\.json: Permission denied; permission denied: choose a folder"):
        atomic_write_json(tmp_path / "summary.json", {})


def test_run_main_reports_a_full_disk_in_one_line(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "output/run/metrics.csv")

    with pytest.raises(SystemExit) as caught:
        stages.run_main(main)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "OutputError: cannot write output/run/metrics.csv" in err and "disk is full" in err


def test_run_main_does_not_hide_other_os_errors():
    """A missing file is the code's or the input's problem, reported where it is read, not here."""
    def main():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):
        stages.run_main(main)


# ---- the output folder's own paths: the log file, the checkpoint folder, a path too long -------
def test_a_log_file_that_is_a_folder_is_an_output_error(tmp_path):
    from utils.logger import create_logger

    (tmp_path / "log_rank0.txt").mkdir()
    with pytest.raises(OutputError, match=r"log_rank0\.txt.*folder stands where"):
        create_logger(tmp_path, 0, name="test_io_failures.folder")


def test_a_log_write_on_a_full_disk_is_one_warning_not_a_traceback_per_line(tmp_path, capsys):
    from utils.logger import create_logger

    log = create_logger(tmp_path, 1, name="test_io_failures.full")  # rank 1: the file handler only
    handler = log.handlers[-1]

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    handler.stream.close()
    handler.stream = Full()
    for i in range(3):
        log.info(f"line {i}")
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and "No space left on device" in err
    assert "Traceback" not in err and "Logging error" not in err
    handler.stream = open(handler.baseFilename, "a", encoding="utf-8")
    log.removeHandler(handler)
    handler.close()


def test_a_checkpoints_path_that_is_a_file_is_an_output_error(tmp_path):
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(OutputError, match=r"checkpoints.*a part of the path is a file"):
        save(tmp_path, 1.0, 1)


def test_an_output_path_longer_than_the_file_system_allows_is_an_output_error(tmp_path):
    from utils.outdir import prepare_output

    with pytest.raises(OutputError, match="longer than the file system allows"):
        prepare_output(tmp_path / ("x" * 300) / "run")
