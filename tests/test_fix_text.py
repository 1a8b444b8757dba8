"""MODEL.FIX_TEXT freezes what X-CLIP's published fix_text freezes; MODEL.TRAIN_VIDEO_HEAD
trains head_video and logit_scale on top of it.

The published rule, restated here independently of models.xclip: with fix_text a parameter
trains iff its name contains 'visual.', 'mit', 'prompts' or '_head'.
"""
import logging

import pytest
import torch
import torch.nn.functional as F

from clip import tokenize
from models import xclip
from training import checkpoint as ckpt
from training import optim
from utils.config import get_default_config
from utils.errors import CheckpointError

VIDEO_HEAD = {"head_video.weight", "head_video.bias", "logit_scale"}


def published_trainable(name):
    return "visual." in name or "mit" in name or "prompts" in name or "_head" in name


def tiny(**kwargs):
    torch.manual_seed(0)
    model, _, _ = xclip.load(None, "tiny", T=2, **kwargs)
    return model


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_fix_text_trains_exactly_the_published_set():
    model = tiny(fix_text=True)
    names = {n for n, _ in model.named_parameters()}
    assert trainable(model) == {n for n in names if published_trainable(n)}
    frozen = names - trainable(model)
    text_tower = {n for n in names if n.startswith(xclip.TEXT_TOWER_PREFIXES)}
    assert frozen == text_tower | VIDEO_HEAD  # head_video: "head_video" does not contain "_head"
    # the parts X-CLIP trains are all there
    for part in ("visual.conv1.weight", "mit.positional_embedding", "prompts_generator.alpha",
                 "prompts_visual_proj", "prompts_visual_ln.weight"):
        assert part in trainable(model)


def test_train_video_head_adds_head_video_and_logit_scale():
    model = tiny(fix_text=True, train_video_head=True)
    names = {n for n, _ in model.named_parameters()}
    assert trainable(model) == {n for n in names if published_trainable(n)} | VIDEO_HEAD


@pytest.mark.parametrize("train_video_head", [False, True])
def test_without_fix_text_everything_trains(train_video_head):
    model = tiny(fix_text=False, train_video_head=train_video_head)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("train_video_head", [False, True])
def test_gradients_and_optimizer_follow_the_trainable_set(train_video_head):
    model = tiny(train_video_head=train_video_head).train()
    out = model(torch.rand(2, 2, 3, 64, 64), tokenize(["normal", "abnormal"]))
    F.cross_entropy(out["y"], torch.tensor([0, 1])).backward()
    for name in VIDEO_HEAD:
        grad = dict(model.named_parameters())[name].grad
        assert (grad is not None and grad.abs().sum() > 0) == train_video_head
    cfg = get_default_config()
    opt = optim.build_optimizer(cfg, model)
    in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if n in trainable(model)}


def test_config_key_reaches_the_model_through_the_stage_loader():
    from training.stage import load_model

    cfg = get_default_config()
    cfg.MODEL.ARCH, cfg.DATA.NUM_FRAMES, cfg.DATA.INPUT_SIZE = "tiny", 2, 64
    assert cfg.MODEL.FIX_TEXT is True and cfg.MODEL.TRAIN_VIDEO_HEAD is False  # published defaults
    torch.manual_seed(0)
    assert not VIDEO_HEAD & trainable(load_model(cfg, None, "cpu", logging.getLogger("t")))
    cfg.MODEL.TRAIN_VIDEO_HEAD = True
    torch.manual_seed(0)
    assert VIDEO_HEAD <= trainable(load_model(cfg, None, "cpu", logging.getLogger("t")))


def test_resume_with_another_trainable_set_is_refused(tmp_path):
    """An optimizer state saved with TRAIN_VIDEO_HEAD True does not load into the published set."""
    cfg = get_default_config()
    model = tiny(train_video_head=True)
    opt = optim.build_optimizer(cfg, model)
    sched = optim.build_scheduler(cfg, opt, steps_per_epoch=2)
    path = ckpt.save_checkpoint(tmp_path, "last", model, opt, sched, 1, 2, 0.5, cfg)
    fresh = tiny()
    fresh_opt = optim.build_optimizer(cfg, fresh)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        ckpt.load_checkpoint(path, fresh, fresh_opt, optim.build_scheduler(cfg, fresh_opt, steps_per_epoch=2))
