"""AdamW parameter groups and the warmup + cosine schedule."""
import math
from types import SimpleNamespace as NS

import pytest
import torch

from tests.toy_models import ToyVideoModel
from training import optim
from utils.errors import ConfigError


def make_cfg(**train):
    values = dict(OPTIMIZER="adamw", LR=1e-3, WEIGHT_DECAY=0.001, LR_SCHEDULER="cosine",
                  EPOCHS=10, WARMUP_EPOCHS=2, LR_SCALING="none", LR_BASE_BATCH=0, BATCH_SIZE=1,
                  ACCUMULATION_STEPS=1)
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
    assert all(lr == pytest.approx(expected) for lr in sched.get_last_lr())
    sched.step_update(50)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-5)
    sched.step_update(70)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-5)


def test_schedule_matches_timm_cosine():
    timm_cosine = pytest.importorskip("timm.scheduler.cosine_lr")
    params = [torch.nn.Parameter(torch.zeros(2))]
    ours_opt, timm_opt = torch.optim.AdamW(params, lr=8e-6), torch.optim.AdamW(params, lr=8e-6)
    ours = optim.WarmupCosineScheduler(ours_opt, total_steps=40, warmup_steps=7)
    reference = timm_cosine.CosineLRScheduler(timm_opt, t_initial=40, lr_min=8e-8, warmup_lr_init=0,
                                              warmup_t=7, cycle_limit=1, t_in_epochs=False)
    for t in range(45):
        ours.step_update(t)
        reference.step_update(t)
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(timm_opt.param_groups[0]["lr"],
                                                               rel=1e-9, abs=1e-15)


def test_state_round_trip_and_steps_per_epoch():
    model = ToyVideoModel()
    opt = optim.build_optimizer(make_cfg(), model)
    sched = optim.build_scheduler(make_cfg(), opt, steps_per_epoch=3)
    sched.step_update(17)
    state = sched.state_dict()
    opt2 = optim.build_optimizer(make_cfg(), model)
    sched2 = optim.build_scheduler(make_cfg(), opt2, steps_per_epoch=3)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_step == 17
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
