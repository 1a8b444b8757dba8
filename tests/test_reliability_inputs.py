"""Issue 7, point 4: every bad input a user can hand the project ends in one of the
project's own errors (utils.errors), and the message names the file/line/key at fault AND
says what to do about it.

One test per bad input. Each builds the smallest broken input on disk, calls the public
function a stage calls, and checks (a) the error type, (b) the location it names, and (c) a
"what to do" phrase. The end-to-end versions (NaN loss in a real run, the runner's GPU
count) are in test_reliability_runs.py.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.loader_helpers import TMPL, make_dataset, tiny_cfg
from utils.errors import CheckpointError, ConfigError, DataError, FrameShieldError, ListFileError, TrainingError

REPO = Path(__file__).resolve().parents[1]


def check_message(err, error_type, names, todo):
    """``err`` is ``error_type``; its message holds every string of ``names`` and matches ``todo``."""
    assert isinstance(err, FrameShieldError), f"{type(err).__name__} is not a FrameShieldError: {err}"
    assert isinstance(err, error_type), f"expected {error_type.__name__}, got {type(err).__name__}: {err}"
    message = str(err)
    for name in names:
        assert str(name) in message, f"the message does not name {name!r}: {message}"
    assert re.search(todo, message, flags=re.IGNORECASE), f"the message does not say what to do ({todo}): {message}"


def raised(fn, *args, **kwargs):
    with pytest.raises(FrameShieldError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.fixture()
def data(tmp_path):
    make_dataset(tmp_path)
    return tmp_path


# ---- list files and labels CSV ---------------------------------------------------------------

@pytest.mark.parametrize("line", ["frames/v1 0 1x 1", "frames/v1 0 10 one", "frames/v1 20 10 1",
                                  "frames/v1 0 10 1 2 3 4 5 6 7", "frames/v1 0 0 1"])
def test_malformed_list_line(tmp_path, line):
    from datasets.lists import parse_list_file

    path = tmp_path / "train.txt"
    path.write_text(f"frames/v0 0 24 0\n{line}\n")
    err = raised(parse_list_file, path)
    check_message(err, ListFileError, [f"{path}:2"], r"fix (or delete|or remove)|fix the line")


def test_list_path_missing_on_disk(data):
    from datasets.build import build_test_loader

    (data / "test.txt").write_text("frames/v0 24 0 0 24\nframes/gone 30 1 5 9\n")
    err = raised(build_test_loader, tiny_cfg(data))
    check_message(err, DataError, [f"{data / 'test.txt'}:2", "frames/gone"], r"check DATA\.ROOT")


@pytest.mark.parametrize("entry", ["../../etc", "/etc", "frames/../../etc"])
def test_list_path_escaping_data_root(data, entry):
    from datasets.build import build_train_loader

    (data / "train.txt").write_text(f"frames/v0 0 24 0\n{entry} 0 24 1\n")
    err = raised(build_train_loader, tiny_cfg(data))
    check_message(err, ListFileError, [f"{data / 'train.txt'}:2", entry], r"DATA\.ALLOW_OUTSIDE_ROOT")


def test_labels_csv_with_wrong_columns(tmp_path):
    from datasets.lists import read_label_csv

    path = tmp_path / "labels.csv"
    path.write_text("id,label,extra\n0,normal,x\n1,abnormal,y\n")
    err = raised(read_label_csv, path)
    check_message(err, ListFileError, [f"{path}:1"], r"must be 'id,name'|write .*id,name")
    path.write_text("id,name\n0,normal\n1,abnormal,extra\n")
    err = raised(read_label_csv, path)
    check_message(err, ListFileError, [f"{path}:3"], r"id,name")


# ---- frames and videos ---------------------------------------------------------------------

def test_frame_folder_with_missing_frames(data):
    from datasets.build import build_test_loader

    (data / "frames" / "v2" / TMPL.format(4)).unlink()
    err = raised(lambda: list(build_test_loader(tiny_cfg(data))))
    check_message(err, DataError, ["v2", "frame 4", TMPL.format(4)], r"restore .*DATA\.REPLACE_BAD_FRAMES")


def test_frame_folder_shorter_than_the_list(data):
    from datasets.build import build_test_loader

    (data / "test.txt").write_text("frames/v0 40 0 0 40\n")
    err = raised(lambda: next(iter(build_test_loader(tiny_cfg(data)))))
    check_message(err, DataError, ["v0", "40 frames"], r"fix the frame count|re-extract|restore")


def test_corrupt_jpeg(data):
    from datasets.build import build_test_loader

    (data / "frames" / "v3" / TMPL.format(8)).write_bytes(b"\xff\xd8garbage")
    err = raised(lambda: list(build_test_loader(tiny_cfg(data))))
    check_message(err, DataError, ["v3", "frame 8", TMPL.format(8)], r"re-extract .*DATA\.REPLACE_BAD_FRAMES")


def test_zero_length_video(tmp_path):
    pytest.importorskip("decord")
    from datasets.frames import open_video

    (tmp_path / "empty.mp4").write_bytes(b"")
    err = raised(open_video, tmp_path / "empty.mp4", 5, TMPL)
    check_message(err, DataError, ["empty.mp4", "0 bytes"], r"re-download|re-encode|remove it from the list")


def test_zero_length_video_in_list(data):
    from datasets.lists import parse_list_file

    (data / "train.txt").write_text("frames/v0 0 24 0\nframes/v1 5 5 1\n")
    err = raised(parse_list_file, data / "train.txt")
    check_message(err, ListFileError, [f"{data / 'train.txt'}:2"], r"fix|remove|delete")


def test_video_shorter_than_one_clip(data):
    from datasets.build import build_train_loader

    (data / "train.txt").write_text("frames/v0 0 24 0\nframes/v1 0 2 1\n")
    err = raised(build_train_loader, tiny_cfg(data))
    check_message(err, DataError, [f"{data / 'train.txt'}:2", "frames/v1", "DATA.NUM_FRAMES"],
                  r"remove it from the list or lower DATA\.NUM_FRAMES")


# ---- config ---------------------------------------------------------------------------------

def parse_config(argv):
    from utils.config import build_arg_parser, get_config

    return get_config(build_arg_parser("test").parse_args(argv))


def test_yaml_typo_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("TRAIN:\n  EPOCHS: 3\n  WARMUP_EPOCH: 1\n")
    err = raised(parse_config, ["-cfg", str(path)])
    check_message(err, ConfigError, ["TRAIN.WARMUP_EPOCH", str(path)], r"did you mean TRAIN\.WARMUP_EPOCHS")


@pytest.mark.parametrize("opts, names, todo", [
    (["TRAIN.LR", "1e-3", "TRAIN.EPOCHS"], ["--opts", "TRAIN.EPOCHS"], r"KEY VALUE pairs"),
    (["TRAIN.EPOCHS", "three"], ["TRAIN.EPOCHS", "--opts"], r"expected an integer"),
    (["TRAIN.LR", "fast"], ["TRAIN.LR", "--opts"], r"expected a number"),
    (["TEST.SMOOTH", "maybe"], ["TEST.SMOOTH", "--opts"], r"expected true/false"),
])
def test_opts_odd_count_or_wrong_type(tmp_path, opts, names, todo):
    path = tmp_path / "run.yaml"
    path.write_text("SEED: 1\n")
    err = raised(parse_config, ["-cfg", str(path), "--opts", *opts])
    check_message(err, ConfigError, names, todo)


# ---- checkpoints ------------------------------------------------------------------------------

def tiny_model(frames=2):
    from models import xclip

    torch.manual_seed(0)
    return xclip.load(None, "tiny", T=frames)[0]


def test_checkpoint_of_another_architecture(tmp_path):
    from models.checkpoint_io import save_safetensors
    from training import checkpoint as ckpt

    other = tiny_model()
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("mit.")}  # another head
    state["visual.proj"] = torch.zeros(3, 3)
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "last.safetensors"
    save_safetensors(state, path)
    err = raised(ckpt.load_checkpoint, path, tiny_model())
    check_message(err, CheckpointError, [str(path), "visual.proj"], r"MODEL\.ARCH|another architecture")


def test_pretrained_of_another_architecture(tmp_path):
    from models import xclip
    from models.checkpoint_io import save_safetensors

    path = tmp_path / "resnet_or_other.safetensors"
    save_safetensors({"layer1.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, path)
    err = raised(xclip.load, str(path), "tiny", T=2)
    check_message(err, CheckpointError, [str(path)], r"CLIP|X-CLIP")


def test_truncated_pretrained_checkpoint(tmp_path):
    from models import xclip
    from models.checkpoint_io import save_safetensors

    path = tmp_path / "weights.safetensors"
    save_safetensors(tiny_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    err = raised(xclip.load, str(path), "tiny", T=2)
    check_message(err, CheckpointError, [str(path)], r"download it again|copy it again|re-download")


def test_truncated_training_checkpoint(tmp_path):
    from training import checkpoint as ckpt
    from utils.config import get_default_config

    model = tiny_model()
    ckpt.save_checkpoint(tmp_path, "last", model, None, None, 1, 3, 0.5, get_default_config())
    weights = tmp_path / "checkpoints" / "last.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])
    err = raised(ckpt.load_checkpoint, weights, tiny_model())
    check_message(err, CheckpointError, [str(weights), "truncated"], r"use an older checkpoint|AUTO_RESUME")


# ---- pseudo labels, training, GPUs -----------------------------------------------------------------

def test_pseudo_label_file_of_another_list(tmp_path):
    import numpy as np

    from datasets.lists import VideoRecord
    from training.pseudo_labels import VideoPseudoLabels, read_pseudo_labels, write_pseudo_labels

    path = tmp_path / "pseudo_labels.json"
    write_pseudo_labels(path, {"train/other": VideoPseudoLabels(40, np.array([[0, 1]]), np.array([1]))})
    records = [VideoRecord(path="train/mine", num_frames=40, label=1, intervals=[], line=1)]
    err = raised(read_pseudo_labels, path, records)
    check_message(err, DataError, [str(path), "train/other"], r"regenerate it with .*genlabels")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_names_the_step(bad):
    from tests.test_engine import ToyVideoModel, make_cfg, run_epoch, train_batch

    batches = [train_batch([1], 1), train_batch([0], 2), train_batch([1], 3)]
    batches[2]["imgs"][0, 0, 0, 0, 0, 0, 0] = bad
    err = raised(run_epoch, ToyVideoModel(), batches, make_cfg())
    check_message(err, TrainingError, ["micro-batch 3/3", "optimizer step 3"], r"lower TRAIN\.LR|TRAIN\.CLIP_GRAD")


def test_more_processes_than_gpus_in_python(monkeypatch):
    from utils import dist

    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    err = raised(dist.init_distributed, use_cuda=True)
    check_message(err, ConfigError, ["local rank 2", "only 2 GPU"], r"at most that many processes")
    dist.cleanup()


def test_more_gpus_than_present_in_the_runner(tmp_path):
    """launch.sh asks torch how many GPUs there are; a stand-in interpreter says 1."""
    shim = tmp_path / "python"
    probe = 'if [[ "$1" == "-c" ]]; then echo 1; exit 0; fi'  # the GPU count probe
    shim.write_text(f'#!/usr/bin/env bash\n{probe}\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(shim), "CONFIG": "configs/synthetic/synthetic_ci.yaml",
           "OUTPUT": str(tmp_path / "out"), "PRETRAINED": ""}
    proc = subprocess.run(["bash", "runners/train.sh", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "asked for 2 GPU(s) but only 1 visible" in proc.stderr
    assert re.search(r"NUM_GPUs .*at most 1|ask for at most 1", proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_output_folder_of_another_run(tmp_path):
    """Point 3: a stage refuses a folder holding a run with another config, naming the keys."""
    from utils.config import get_default_config, save_config
    from training.stage import check_output_folder

    cfg = get_default_config()
    save_config(cfg, tmp_path / "config.yaml")
    (tmp_path / "results.json").write_text("{}")
    assert check_output_folder(cfg, tmp_path, overwrite=False) is True  # the same run: resume
    cfg.defrost()
    cfg.TRAIN.LR = 1e-3
    err = raised(check_output_folder, cfg, tmp_path, overwrite=False)
    check_message(err, ConfigError, [str(tmp_path), "TRAIN.LR"], r"another --output, or pass --overwrite")
    assert check_output_folder(cfg, tmp_path, overwrite=True) is False
    (tmp_path / "config.yaml").unlink()
    err = raised(check_output_folder, cfg, tmp_path, overwrite=False)
    check_message(err, ConfigError, [str(tmp_path), "no config.yaml"], r"another --output, or pass --overwrite")
