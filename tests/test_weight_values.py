"""Checkpoints whose weights would load silently but score nonsense are refused: NaN/Inf
values and integer/bool tensors for floating-point weights (issue 15, class 4), by the
loader that the training and test stages and infer.py share."""
import logging

import pytest
import torch

from models import xclip
from models.checkpoint_io import save_safetensors
from utils.config import get_default_config
from utils.errors import CheckpointError


def tiny_file(tmp_path, edit):
    torch.manual_seed(0)
    model, _, _ = xclip.load(None, "tiny", T=2)
    state = model.state_dict()
    edit(state)
    path = tmp_path / "weights.safetensors"
    save_safetensors(state, path)
    return path


def first_weight(state):
    return next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    def poison(state):
        state[first_weight(state)][0, 0] = bad

    path = tiny_file(tmp_path, poison)
    with pytest.raises(CheckpointError, match=r"NaN/Inf values in 1 tensor"):
        xclip.load(str(path), T=2)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_weights_are_refused(tmp_path, dtype):
    def cast(state):
        key = first_weight(state)
        state[key] = state[key].to(dtype)

    path = tiny_file(tmp_path, cast)
    with pytest.raises(CheckpointError, match="integer/bool tensors for floating-point weights"):
        xclip.load(str(path), T=2)


def test_the_stage_and_infer_loader_refuses_them_too(tmp_path):
    from training.stage import load_model

    def poison(state):
        state[first_weight(state)].fill_(float("nan"))

    path = tiny_file(tmp_path, poison)
    cfg = get_default_config()
    cfg.MODEL.ARCH, cfg.DATA.NUM_FRAMES, cfg.DATA.INPUT_SIZE = "tiny", 2, 64
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(cfg, str(path), "cpu", logging.getLogger("t"), verify=True)
