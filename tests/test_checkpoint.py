"""Checkpoints: exact round trip, weights_only loading, damaged files detected and
skipped, kills during a save, unsafe pickles refused; the SIGTERM stop flag."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from tests.toy_models import ToyVideoModel, random_videos, text_tokens
from training import checkpoint as ckpt
from training import optim
from utils import signals
from utils.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
CFG = NS(TRAIN=NS(OPTIMIZER="adamw", LR=1e-2, WEIGHT_DECAY=0.01, LR_SCHEDULER="cosine",
                  EPOCHS=4, WARMUP_EPOCHS=1, LR_SCALING="none", LR_BASE_BATCH=0, BATCH_SIZE=1,
                  ACCUMULATION_STEPS=1, FUSED_OPTIMIZER=True))


def trained(steps=2, seed=0):
    torch.manual_seed(seed)
    model = ToyVideoModel(dropout=0.0)
    opt = optim.build_optimizer(CFG, model)
    sched = optim.build_scheduler(CFG, opt, steps_per_epoch=2)
    for step in range(steps):
        videos = random_videos(4, torch.Generator().manual_seed(step))
        model(videos, text_tokens())["y"].logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step_update(step + 1)
    return model, opt, sched


def save(tmp_path, tag, model, opt, sched, epoch=1, step=2, extra=None):
    from utils.config import get_default_config

    return ckpt.save_checkpoint(tmp_path, tag, model, opt, sched, epoch, step, 0.75,
                                get_default_config(), extra=extra)


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = trained(steps=3)
    path = save(tmp_path, "last", model, opt, sched, extra={"batch_in_epoch": 1, "note": "x"})
    assert path.endswith("checkpoints/last.safetensors")
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.manifest.json", "last.safetensors", "last.state.pt", "last.yaml"]
    state = torch.load(tmp_path / "checkpoints/last.state.pt", weights_only=True)
    assert state["epoch"] == 1 and "TRAIN" in state["config_yaml"]

    fresh, fresh_opt, fresh_sched = trained(steps=0, seed=5)
    meta = ckpt.load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert (meta["epoch"], meta["step"], meta["best_metric"]) == (1, 2, 0.75)
    assert meta["extra"] == {"batch_in_epoch": 1, "note": "x"}
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    assert fresh_sched.state_dict() == sched.state_dict()
    # continuing both gives identical parameters (optimizer moments restored)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m(random_videos(4, torch.Generator().manual_seed(9)), text_tokens())["y"].sum().backward()
        o.step()
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
    # weights only, for evaluation
    other = ToyVideoModel(dropout=0.0)
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last", other)["step"] == 2


def test_rng_states_round_trip():
    state = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_damaged_checkpoints_are_skipped_for_the_previous_one(tmp_path, caplog):
    model, opt, sched = trained()
    save(tmp_path, "epoch_0", model, opt, sched, epoch=0, step=2)
    save(tmp_path, "last", model, opt, sched, epoch=1, step=4)
    folder = tmp_path / "checkpoints"
    assert ckpt.find_auto_resume(tmp_path) == str(folder / "last.safetensors")

    data = (folder / "last.safetensors").read_bytes()
    (folder / "last.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    assert ckpt.find_auto_resume(tmp_path) == str(folder / "epoch_0.safetensors")
    assert "skipping checkpoint 'last'" in caplog.text and "truncated" in caplog.text
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_checkpoint(folder / "last.safetensors", ToyVideoModel())

    flipped = bytearray((folder / "epoch_0.state.pt").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # same size, different content
    (folder / "epoch_0.state.pt").write_bytes(bytes(flipped))
    ok, problem = ckpt.verify_checkpoint(folder / "epoch_0.state.pt")
    assert not ok and "SHA-256" in problem
    assert ckpt.find_auto_resume(tmp_path) is None


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = trained()
    save(tmp_path, "epoch_0", model, opt, sched, epoch=0, step=2)
    save(tmp_path, "last", model, opt, sched, epoch=0, step=2)
    model2, opt2, sched2 = trained(steps=3)

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(ckpt, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, "last", model2, opt2, sched2, epoch=1, step=4)
    monkeypatch.undo()
    found = ckpt.find_auto_resume(tmp_path)
    assert found.endswith("epoch_0.safetensors")  # 'last' has new weights but the old manifest
    (tmp_path / "checkpoints" / ".last.state.pt.k2x9_a1b.tmp").write_bytes(b"partial")
    (tmp_path / "checkpoints" / ".folder.abcdefgh.tmp").mkdir()  # a folder is never removed
    assert [p.name for p in ckpt.remove_stale_temp_files(tmp_path)] == [".last.state.pt.k2x9_a1b.tmp"]
    assert (tmp_path / "checkpoints" / ".folder.abcdefgh.tmp").is_dir()


KILLED_SAVER = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.test_checkpoint import trained, save
model, opt, sched = trained()
save({out!r}, "epoch_0", model, opt, sched, epoch=0, step=0)
print("ready", flush=True)
step = 1
while True:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save({out!r}, "last", model, opt, sched, epoch=step, step=step)
    step += 1
"""


@pytest.mark.parametrize("delay", [0.05, 0.4])
def test_sigkill_during_saves_never_leaves_an_accepted_bad_checkpoint(tmp_path, delay):
    code = KILLED_SAVER.format(root=str(ROOT), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = ckpt.find_auto_resume(tmp_path)
    assert found is not None
    meta = ckpt.load_checkpoint(found, ToyVideoModel(dropout=0.0))
    manifest = json.loads(Path(found.replace(".safetensors", ".manifest.json")).read_text())
    assert meta["step"] == manifest["step"]


def test_wrong_architecture_and_weights_only_file(tmp_path):
    model, opt, sched = trained()
    path = save(tmp_path, "best", model, opt, sched)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ckpt.load_checkpoint(path, ToyVideoModel(dim=8))
    (tmp_path / "checkpoints" / "best.state.pt").unlink()
    (tmp_path / "checkpoints" / "best.manifest.json").unlink()
    with pytest.raises(CheckpointError, match="weights only"):
        ckpt.load_checkpoint(path, ToyVideoModel(), opt)
    with pytest.raises(CheckpointError, match="do not exist"):
        ckpt.load_checkpoint(tmp_path / "nothing.safetensors", ToyVideoModel())


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_state_file_that_would_run_code_is_refused(tmp_path):
    model, opt, sched = trained()
    path = save(tmp_path, "last", model, opt, sched)
    folder = tmp_path / "checkpoints"
    marker = tmp_path / "pwned"
    torch.save({"epoch": 0, "payload": _RunsCommand(marker)}, folder / "last.state.pt")
    (folder / "last.manifest.json").unlink()  # a hand-made file has no manifest
    with pytest.raises(CheckpointError, match="cannot read"):
        ckpt.load_checkpoint(path, ToyVideoModel(dropout=0.0))
    assert not marker.exists()


def test_extra_must_be_weights_only_loadable(tmp_path):
    model, opt, sched = trained()
    with pytest.raises(TypeError, match="ndarray"):
        save(tmp_path, "last", model, opt, sched, extra={"scores": np.zeros(3)})
    assert not (tmp_path / "checkpoints" / "last.safetensors").exists()
    with pytest.raises(ValueError, match="tag"):
        save(tmp_path, "../x", model, opt, sched)


def test_sigterm_sets_the_stop_flag():
    signals.reset_stop()
    previous = signal.getsignal(signal.SIGTERM)
    signals.install_stop_handler()
    try:
        assert not signals.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if signals.stop_requested():
                break
            time.sleep(0.01)
        assert signals.stop_requested() and signals.stop_requested(sync=True)
        assert signals.stop_signal() == signal.SIGTERM
    finally:
        signals.uninstall_stop_handler()
        signals.reset_stop()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_checkpoint_file_names_every_file_of_a_tag(tmp_path):
    from training.checkpoint import SUFFIXES, checkpoint_file

    for given in ("best.safetensors", "best.state.pt", "best.manifest.json", "best.yaml", "best"):
        for suffix in SUFFIXES:
            assert checkpoint_file(tmp_path / given, suffix) == tmp_path / f"best{suffix}"
    with pytest.raises(ValueError, match="suffix"):
        checkpoint_file(tmp_path / "best", ".pth")
