"""AdamW parameter groups and the warmup + cosine schedule."""
import math
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from tests.toy_models import ToyVideoModel, random_videos, text_tokens
from training import optim
from utils.errors import ConfigError


def make_cfg(**train):
    values = dict(OPTIMIZER="adamw", LR=1e-3, WEIGHT_DECAY=0.001, LR_SCHEDULER="cosine",
                  EPOCHS=10, WARMUP_EPOCHS=2, LR_SCALING="none", LR_BASE_BATCH=0, BATCH_SIZE=1,
                  ACCUMULATION_STEPS=1, FUSED_OPTIMIZER=True)
    values.update(train)
    return NS(TRAIN=NS(**values))


def test_groups_decay_and_frozen_parameters():
    model = ToyVideoModel()
    model.token_embedding.weight.requires_grad_(False)  # a frozen "text tower"
    opt = optim.build_optimizer(make_cfg(), model)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in opt.param_groups[0]["params"]}
    no_decay = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert decay == {"visual.1.weight", "visual.4.weight"}
    assert no_decay == {"visual.1.bias", "visual.4.bias", "positional_embedding", "logit_scale"}
    assert opt.param_groups[0]["weight_decay"] == 0.001 and opt.param_groups[1]["weight_decay"] == 0
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    assert isinstance(opt, torch.optim.AdamW)


def test_model_declared_no_decay_names():
    model = ToyVideoModel()
    model.no_weight_decay = lambda: {"visual.1.weight"}
    groups = optim.parameter_groups(model, 0.1, 1.0)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model.visual[4].weight), id(model.token_embedding.weight)}


def test_schedule_values():
    model = ToyVideoModel()
    opt = optim.build_optimizer(make_cfg(), model)
    sched = optim.build_scheduler(make_cfg(), opt, steps_per_epoch=5)  # 50 steps, 10 warmup
    assert opt.param_groups[0]["lr"] == 0.0  # warmup starts from 0
    sched.step_update(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    sched.step_update(10)
    expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 10 / 50))
    assert all(g["lr"] == pytest.approx(expected) for g in opt.param_groups)
    sched.step_update(50)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-5)
    sched.step_update(70)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-5)


def former_schedule(lr, t, total, warmup, min_ratio=0.01):
    """The hand-written schedule this project used before timm's (kept as the reference)."""
    if t < warmup:
        return lr * (t / warmup)
    if t >= total:
        return lr * min_ratio
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / total)))


def published_schedule(lr, t, total, warmup):
    """X-CLIP/FrameShield's schedule written out: timm's formula with lr_min = LR / 100."""
    lr_min = lr / 100
    if t < warmup:
        return 0 + t * (lr / warmup)
    if t >= total:
        return lr_min
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / total))


@pytest.mark.parametrize("lr,epochs,warmup_epochs,steps", [(8e-6, 40, 5, 3), (1e-3, 24, 1, 7), (5e-4, 12, 0, 5),
                                                           (2e-4, 6, 1, 1), (1e-3, 1, 0, 4)])
def test_schedule_is_timms_and_agrees_with_the_former_one(lr, epochs, warmup_epochs, steps):
    from timm.scheduler.cosine_lr import CosineLRScheduler

    cfg = make_cfg(LR=lr, EPOCHS=epochs, WARMUP_EPOCHS=warmup_epochs)
    opt = optim.build_optimizer(cfg, ToyVideoModel())
    sched = optim.build_scheduler(cfg, opt, steps_per_epoch=steps)
    assert isinstance(sched, CosineLRScheduler)
    total, warmup = epochs * steps, warmup_epochs * steps
    assert opt.param_groups[0]["lr"] == (0.0 if warmup else lr)
    for t in range(total + 3):
        sched.step_update(t)
        for group in opt.param_groups:
            assert group["lr"] == published_schedule(lr, t, total, warmup)  # bit for bit
            old = former_schedule(lr, t, total, warmup)
            assert abs(group["lr"] - old) <= 2 * np.finfo(float).eps * old  # <= 2 ulp from the former


def test_former_scheduler_state_still_loads():
    """A checkpoint saved by the hand-written scheduler resumes: its state is ignored, the LR
    comes from the optimizer state and the schedule from the config."""
    cfg = make_cfg()
    opt = optim.build_optimizer(cfg, ToyVideoModel())
    sched = optim.build_scheduler(cfg, opt, steps_per_epoch=5)
    sched.load_state_dict({"base_lrs": [1e-3, 1e-3], "last_step": 17, "total_steps": 50, "warmup_steps": 10,
                           "min_lr_ratio": 0.01})
    assert not hasattr(sched, "last_step") and sched.t_initial == 50
    sched.step_update(18)
    assert opt.param_groups[0]["lr"] == published_schedule(1e-3, 18, 50, 10)


def test_state_round_trip_and_steps_per_epoch():
    model = ToyVideoModel()
    opt = optim.build_optimizer(make_cfg(), model)
    sched = optim.build_scheduler(make_cfg(), opt, steps_per_epoch=3)
    sched.step_update(17)
    state = sched.state_dict()
    opt2 = optim.build_optimizer(make_cfg(), model)
    sched2 = optim.build_scheduler(make_cfg(), opt2, steps_per_epoch=3)
    sched2.load_state_dict(state)
    sched2.step_update(18)
    sched.step_update(18)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert sched2.state_dict() == sched.state_dict()
    assert optim.optimizer_steps_per_epoch(10, 8) == 2
    assert optim.optimizer_steps_per_epoch(16, 8) == 2
    assert optim.optimizer_steps_per_epoch(5, 1) == 5


def test_unsupported_settings_are_config_errors():
    with pytest.raises(ConfigError, match="TRAIN.OPTIMIZER"):
        optim.build_optimizer(make_cfg(OPTIMIZER="sgd"), ToyVideoModel())
    opt = optim.build_optimizer(make_cfg(), ToyVideoModel())
    with pytest.raises(ConfigError, match="TRAIN.LR_SCHEDULER"):
        optim.build_scheduler(make_cfg(LR_SCHEDULER="step"), opt, 3)


def test_global_batch_and_opt_in_linear_lr_scaling():
    from tests.cfg_helpers import apply_overrides
    from training.optim import global_batch, scaled_lr
    from utils.config import get_default_config

    cfg = apply_overrides(get_default_config(), {"TRAIN.BATCH_SIZE": 8, "TRAIN.ACCUMULATION_STEPS": 2, "TRAIN.LR": 1e-5})
    assert global_batch(cfg, 4) == 64
    assert scaled_lr(cfg, 4) == 1e-5  # default: the LR as given, whatever the world size (published)
    cfg.TRAIN.LR_SCALING = "linear"
    assert scaled_lr(cfg, 1) == pytest.approx(1e-5)
    assert scaled_lr(cfg, 4) == pytest.approx(4e-5)  # base = the one-process batch (16)
    cfg.TRAIN.LR_BASE_BATCH = 8
    assert scaled_lr(cfg, 4) == pytest.approx(8e-5)  # 64 / 8
    model = torch.nn.Linear(3, 2)
    optimizer = optim.build_optimizer(cfg, model, world_size=4)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(8e-5)] * len(optimizer.param_groups)


def test_fused_adamw_is_the_default_update_up_to_rounding():
    models, optimizers = [], []
    for fused in (True, False):
        torch.manual_seed(0)
        model = ToyVideoModel(dropout=0.0)
        opt = optim.build_optimizer(make_cfg(FUSED_OPTIMIZER=fused), model)
        assert all(bool(g["fused"]) is fused for g in opt.param_groups)
        models.append(model), optimizers.append(opt)
    start = {k: v.clone() for k, v in models[0].state_dict().items()}
    for step in range(5):
        for model, opt in zip(models, optimizers):
            videos = random_videos(4, torch.Generator().manual_seed(step))
            model(videos, text_tokens())["y"].logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad()
    moved = False
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
        moved |= not torch.equal(a, start[name])
    assert moved  # the steps changed the weights, so their agreement means something
