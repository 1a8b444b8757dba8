"""Issue 7, point 1, at the checkpoint level: a save of ``last`` that dies half way leaves
the previous ``last`` available (as ``last.previous``) for auto-resume, byte for byte; a
second failed save does not replace that good copy with the broken one; a complete save
cleans the copy up. (The same, with real SIGKILLs of real runs: test_reliability_runs.py.)
"""
import pytest
import torch
from safetensors.torch import load_file

from tests.toy_models import ToyVideoModel
from training import checkpoint as ckpt
from utils.config import get_default_config


def model_with(value):
    model = ToyVideoModel(dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def save(out, value, step):
    return ckpt.save_checkpoint(out, "last", model_with(value), None, None, epoch=step, step=step,
                                best_metric=0.5, cfg=get_default_config())


def die_after_the_weights(monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the weights, before the state file")

    monkeypatch.setattr(ckpt, "_atomic_torch_save", killed)


def weights_value(path):
    return {float(t.flatten()[0]) for t in load_file(path).values()}


def test_a_half_done_save_falls_back_to_the_previous_last(tmp_path, monkeypatch, caplog):
    save(tmp_path, 1.0, step=1)
    die_after_the_weights(monkeypatch)
    for value, step in ((2.0, 2), (3.0, 3)):  # two failed saves in a row
        with pytest.raises(KeyboardInterrupt):
            save(tmp_path, value, step)
        folder = tmp_path / "checkpoints"
        assert weights_value(folder / "last.safetensors") == {value}  # 'last' holds the new, unmatched weights
        assert not ckpt.verify_checkpoint(folder / "last")[0]
        found = ckpt.find_auto_resume(tmp_path)
        assert found == str(folder / "last.previous.safetensors"), found
        assert weights_value(found) == {1.0}  # the good copy survived both failures
        meta = ckpt.load_checkpoint(found, model_with(0.0))
        assert meta["step"] == 1
    assert "skipping checkpoint 'last'" in caplog.text
    monkeypatch.undo()

    save(tmp_path, 4.0, step=4)  # a complete save: valid again, copy removed
    assert ckpt.find_auto_resume(tmp_path) == str(folder / "last.safetensors")
    assert weights_value(folder / "last.safetensors") == {4.0}
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.manifest.json", "last.safetensors", "last.state.pt", "last.yaml"]


def test_a_complete_save_leaves_no_previous_copy(tmp_path):
    save(tmp_path, 1.0, step=1)
    save(tmp_path, 2.0, step=2)
    folder = tmp_path / "checkpoints"
    assert not list(folder.glob("*.previous.*"))
    assert ckpt.load_checkpoint(folder / "last.safetensors", model_with(0.0))["step"] == 2
