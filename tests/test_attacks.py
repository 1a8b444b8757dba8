"""PGD: budget, direction, no parameter gradients, determinism, published update."""
import pytest
import torch

from tests.toy_models import ToyVideoModel, random_videos, text_tokens
from attacks import pgd as attacks
from utils.errors import ConfigError

EPS = 8 / 255


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = ToyVideoModel()
    gen = torch.Generator().manual_seed(1)
    videos = random_videos(6, gen)
    videos[0] = 0.0  # clips at the pixel range limits
    videos[1] = 1.0
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    return model, videos, labels


def p_abnormal(model, videos):
    with torch.no_grad():
        return model(videos, text_tokens())["y"].softmax(-1)[:, 1]


def test_within_eps_and_pixel_range(setup):
    model, videos, labels = setup
    adv = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=5)
    assert (adv - videos).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - videos).abs().max() > EPS / 2  # it actually moved


def test_moves_abnormal_probability_in_stated_directions(setup):
    model, videos, labels = setup
    model.eval()
    before = p_abnormal(model, videos)
    adv = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=10)
    after = p_abnormal(model, adv)
    normal = labels == 0
    assert torch.all(after[normal] > before[normal])
    assert torch.all(after[~normal] < before[~normal])


def test_no_parameter_gradients_and_mode_restored(setup):
    model, videos, labels = setup
    model.train()
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    adv = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=3)
    assert modes == [False] * 3 and model.training
    assert all(p.grad is None for p in model.parameters())
    assert not adv.requires_grad and not videos.requires_grad
    # existing gradients are left untouched
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.eval()
    attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=2)
    assert not model.training
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def published_update(model, videos, labels, eps, steps):
    """The update of the published main_attack.py, written out step by step."""
    step = 2.5 * eps / steps
    coef = torch.where(labels == 0, torch.ones(len(labels)), -torch.ones(len(labels)))
    adv = videos.clone()
    for _ in range(steps):
        adv.requires_grad_()
        cost = torch.dot(coef, model(adv, text_tokens())["y"].softmax(-1)[:, 1])
        cost.backward()
        adv = adv.detach() + step * adv.grad.sign()
        adv = torch.clamp(videos + torch.clamp(adv - videos, -eps, eps), 0, 1)
    return adv


def test_deterministic_and_equal_to_published_update(setup):
    model, videos, labels = setup
    model.eval()
    first = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=4)
    second = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=4)
    assert torch.equal(first, second)
    assert torch.equal(first, published_update(model, videos, labels, EPS, 4))


def test_random_start_restarts_and_generator(setup):
    model, videos, labels = setup
    run = lambda seed, **kw: attacks.pgd(  # noqa: E731
        model, videos, text_tokens(), labels, EPS, steps=2, random_start=True,
        generator=torch.Generator().manual_seed(seed), **kw)
    single = run(3)
    assert torch.equal(single, run(3))
    assert not torch.equal(single, run(4))
    assert (single - videos).abs().max() <= EPS + 1e-6
    best = run(3, restarts=3)  # its first restart is `single`
    assert (best - videos).abs().max() <= EPS + 1e-6
    coef = torch.where(labels == 0, 1.0, -1.0)
    model.eval()
    assert torch.all(coef * p_abnormal(model, best) >= coef * p_abnormal(model, single))
    # restart 0 starts at the clean clip when there is no random start; the others are random
    unrandom = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=2, restarts=2,
                           generator=torch.Generator().manual_seed(3))
    clean_start = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=2)
    model.eval()
    assert torch.all(coef * p_abnormal(model, unrandom) >= coef * p_abnormal(model, clean_start))


def test_forward_fn_chunks_and_zero_steps(setup):
    model, videos, labels = setup
    model.eval()
    calls = []

    def forward_fn(x):
        calls.append(x.shape[0])
        return model(x, text_tokens())["y"]

    via_fn = attacks.pgd(model, videos, None, labels, EPS, steps=2, forward=forward_fn)
    assert calls == [6, 6]
    whole = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=2)
    assert torch.equal(via_fn, whole)
    chunked = attacks.pgd_in_chunks(model, videos, text_tokens(), labels, batch_size=4,
                                    eps=EPS, steps=2)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert torch.equal(attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=0), videos)


def test_settings_from_config():
    from types import SimpleNamespace as NS

    from attacks.settings import attack_settings, describe

    cfg = NS(ATTACK=NS(EPS=-1.0, STEPS=10, STEP_SIZE=-1.0, RANDOM_START=False, RESTARTS=1),
             ADV_TRAIN=NS(EPS=2.0))
    settings = attack_settings(cfg)
    assert settings["eps"] == pytest.approx(2 / 255) and settings["step_size"] == pytest.approx(2.5 * 2 / 255 / 10)
    assert settings["eps_key"].startswith("ADV_TRAIN.EPS") and "2/255 (from ADV_TRAIN.EPS" in describe(settings)
    cfg.ADV_TRAIN.EPS = 4.0  # the published way to change the budget reaches the attack
    assert attack_settings(cfg)["eps"] == pytest.approx(4 / 255)
    cfg.ATTACK.RESTARTS = 2
    with pytest.raises(ConfigError, match="RANDOM_START"):
        attack_settings(cfg)
    cfg.ATTACK.RESTARTS = 1
    cfg.ATTACK.EPS, cfg.ATTACK.STEP_SIZE = 0.5, 0.25
    assert attack_settings(cfg, "train")["eps"] == pytest.approx(4 / 255)  # training attacks at ADV_TRAIN.EPS
    settings = attack_settings(cfg)
    assert settings["eps_key"] == "ATTACK.EPS"
    assert settings["eps"] == pytest.approx(0.5 / 255)
    assert settings["step_size"] == pytest.approx(0.25 / 255)
