"""Stage 2's inner-attack options (training.adv_attack): the published attack by default,
the start points (uniform, previous perturbation), the step schedule, and the catastrophic
overfitting check."""
import logging

import pytest
import torch

from attacks.pgd import pgd
from attacks.settings import attack_settings, pgd_kwargs
from tests.test_engine import K, T, HW, ToyVideoModel, make_cfg, train_batch
from training import engine, steps
from training.adv_attack import PerturbationMemory, TrainAttack, scheduled_steps
from utils.config import get_default_config, merge_opts
from utils.errors import ConfigError


def clips_of(batch):
    return batch["imgs"][:, 0].reshape(-1, T, 3, HW, HW)


def test_defaults_are_the_published_attack():
    cfg = make_cfg(**{"ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 3, "TRAIN.EPOCHS": 5})
    attack = TrainAttack(cfg)
    for epoch in range(5):
        assert attack.settings(epoch) == pgd_kwargs(attack_settings(cfg, "train"))
    batch = train_batch([1, 0], 3)
    model, clips = ToyVideoModel(), clips_of(batch)
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    adv = attack(model, clips, None, labels, [("a", 0), ("b", 0)], epoch=0)
    torch.testing.assert_close(adv, pgd(model, clips, None, labels, eps=8 / 255, steps=3))


@pytest.mark.parametrize("steps_,epochs", [(3, 12), (10, 4), (2, 2), (5, 1)])
def test_ramp_rises_from_one_to_the_configured_steps(steps_, epochs):
    ramp = [scheduled_steps(steps_, "ramp", e, epochs) for e in range(epochs)]
    assert ramp == sorted(ramp)
    assert ramp[-1] == steps_
    assert ramp[0] == (1 if epochs > 1 else steps_)
    assert [scheduled_steps(steps_, "constant", e, epochs) for e in range(epochs)] == [steps_] * epochs


def test_ramp_uses_the_published_step_rule_for_its_steps_and_a_fixed_step_when_set():
    cfg = make_cfg(**{"ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 4, "TRAIN.EPOCHS": 4,
                      "ADV_TRAIN.ATTACK_SCHEDULE": "ramp"})
    first = TrainAttack(cfg).settings(0)
    assert first["steps"] == 1 and first["step_size"] == pytest.approx(2.5 * 8 / 255)
    cfg.ADV_TRAIN.ATTACK_STEP_SIZE = 10.0
    assert TrainAttack(cfg).settings(0)["step_size"] == pytest.approx(10 / 255)


def test_uniform_start_is_fgsm_with_random_start():
    cfg = make_cfg(**{"ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 1, "ADV_TRAIN.ATTACK_INIT": "uniform",
                      "ADV_TRAIN.ATTACK_STEP_SIZE": 10.0})
    batch = train_batch([1, 0], 4)
    model, clips = ToyVideoModel(), clips_of(batch)
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    attack = TrainAttack(cfg, generator=torch.Generator().manual_seed(0))
    adv = attack(model, clips, None, labels, [("a", 0), ("b", 0)], epoch=0)
    expected = pgd(model, clips, None, labels, eps=8 / 255, steps=1, step_size=10 / 255, random_start=True,
                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adv, expected)
    assert (adv - clips).abs().max() <= 8 / 255 + 1e-6
    assert not torch.allclose(adv, pgd(model, clips, None, labels, eps=8 / 255, steps=1, step_size=10 / 255))


def test_previous_start_reuses_each_videos_last_perturbation():
    cfg = make_cfg(**{"ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 0, "ADV_TRAIN.ATTACK_INIT": "previous"})
    batch = train_batch([1, 0], 5)
    model, clips = ToyVideoModel(), clips_of(batch)
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    attack = TrainAttack(cfg, generator=torch.Generator().manual_seed(1))
    keys = [("a", 0), ("b", 0)]
    first = attack(model, clips, None, labels, keys, epoch=0)  # 0 steps: the (uniform) start itself
    assert (first - clips).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(first, clips)
    second = attack(model, clips, None, labels, keys, epoch=1)
    assert (second - first).abs().max() <= 8 / 255 / 254 + 1e-6  # int8 storage: half a level
    # video "b" seen again alone (other position in the batch) keeps its own perturbation
    alone = attack(model, clips[K:], None, labels[K:], [("b", 0)], epoch=2)
    assert (alone - first[K:]).abs().max() <= 8 / 255 / 254 + 1e-6
    # a new video starts uniform, not from another video's perturbation
    fresh = attack(model, clips[:K], None, labels[:K], [("c", 0)], epoch=2)
    assert (fresh - first[:K]).abs().max() > 8 / 255 / 10


def test_memory_ignores_a_perturbation_of_another_shape():
    memory = PerturbationMemory()
    clean = torch.rand(2 * K, T, 3, HW, HW)
    memory.remember(clean + 0.01, clean, [("a", 0), ("b", 0)], eps=0.02)
    assert len(memory) == 2
    other = torch.rand(K, T + 1, 3, HW, HW)  # another clip length
    start = memory.starts(other, [("a", 0)], eps=0.02, generator=torch.Generator().manual_seed(0))
    assert (start - other).abs().max() <= 0.02 + 1e-6
    assert not torch.allclose(start - other, torch.full_like(other, 0.01), atol=1e-3)


def test_step_runs_the_overfitting_check_once_per_epoch_and_warns_on_a_gap(caplog):
    cfg = make_cfg(**{"ADV_TRAIN.LOSS": "ce", "ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 1,
                      "ADV_TRAIN.OVERFIT_CHECK_STEPS": 5, "ADV_TRAIN.OVERFIT_GAP": -1.0})
    model = ToyVideoModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    attack = TrainAttack(cfg, logger=logging.getLogger("test_adv_attack"))
    step = steps.make_advtrain_step(None, attack)
    with caplog.at_level(logging.INFO, logger="test_adv_attack"):
        for index in range(3):
            step(model, train_batch([1, 0], index), None, cfg, torch.device("cpu"),
                 engine.MicroStep(True, True, optimizer, epoch=0, index=index))
    assert len(attack.checks) == 1
    row = attack.checks[0]
    assert row["epoch"] == 1 and {"clean_acc", "train_attack_acc", "pgd5_acc", "gap"} <= set(row)
    assert all(0 <= row[k] <= 1 for k in ("clean_acc", "train_attack_acc", "pgd5_acc"))
    assert row["overfitting"]  # any gap exceeds a negative threshold
    assert "catastrophic overfitting" in caplog.text and "ADV_TRAIN.OVERFIT_GAP" in caplog.text
    cfg.ADV_TRAIN.OVERFIT_GAP = 1.0
    attack.check_overfitting(model, clips_of(train_batch([1, 0], 9)), clips_of(train_batch([1, 0], 9)), None,
                             torch.tensor([1, 1, 1, 0, 0, 0]), epoch=1)
    assert not attack.checks[-1]["overfitting"]
    assert model.training


def test_no_check_by_default():
    cfg = make_cfg(**{"ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 1})
    attack = TrainAttack(cfg)
    clips = clips_of(train_batch([1, 0], 2))
    assert attack.check_overfitting(ToyVideoModel(), clips, clips, None, torch.zeros(2 * K, dtype=torch.long), 0) is None
    assert attack.checks == []


@pytest.mark.parametrize("pair", [["ADV_TRAIN.ATTACK_INIT", "fgsm"], ["ADV_TRAIN.ATTACK_SCHEDULE", "cyclic"],
                                  ["ADV_TRAIN.OVERFIT_CHECK_STEPS", "-1"]])
def test_bad_values_are_config_errors(pair):
    from utils.config import _validate

    cfg = get_default_config()
    merge_opts(cfg, pair)
    with pytest.raises(ConfigError, match=pair[0].split(".")[1]):
        _validate(cfg)


def test_pgd_start_is_projected_into_the_ball():
    clips = torch.rand(3, T, 3, HW, HW)
    far = clips + 1.0
    adv = pgd(ToyVideoModel(), clips, None, torch.zeros(3, dtype=torch.long), eps=0.05, steps=0, start=far)
    torch.testing.assert_close(adv, (clips + 0.05).clamp(0, 1))


def test_free_update_moves_the_memory_in_the_training_backward_pass():
    from training.losses import advtrain_loss

    cfg = make_cfg(**{"ADV_TRAIN.LOSS": "ce", "ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 0,
                      "ADV_TRAIN.ATTACK_INIT": "previous", "ADV_TRAIN.FREE_UPDATE": True})
    model = ToyVideoModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    attack = TrainAttack(cfg, generator=torch.Generator().manual_seed(2))
    step = steps.make_advtrain_step(None, attack)
    batch = train_batch([1, 0], 6)
    clips, keys, eps = clips_of(batch), [(p, 0) for p in batch["path"]], 8 / 255
    labels = torch.tensor([[1, 1, 1], [0, 0, 0]])
    loss, _ = step(model, batch, None, cfg, torch.device("cpu"), engine.MicroStep(True, True, optimizer))
    before = attack.memory.starts(clips, keys, eps)  # the start the step trained on
    loss.backward()
    after = attack.memory.starts(clips, keys, eps)
    moved = after - before
    assert (after - clips).abs().max() <= eps + 1e-6
    assert (moved.abs() > eps / 4).float().mean() > 0.3  # a signed step, clipped to the ball

    def ce(x):
        return advtrain_loss(model(x, None)["y"].reshape(2, K, 2), batch["label"], labels, "ce",
                             cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE)[0].item()
    assert ce(after) > ce(before)  # the move ascends the training loss


def test_free_update_needs_the_memory():
    from utils.config import _validate

    cfg = get_default_config()
    merge_opts(cfg, ["ADV_TRAIN.FREE_UPDATE", "True"])
    with pytest.raises(ConfigError, match="ATTACK_INIT"):
        _validate(cfg)
