"""Strong attacks: budget and pixel range, determinism, no parameter gradients, APGD schedule,
best-point/restart bookkeeping, text-feature reuse, gradient statistics on a masked model."""
import pytest
import torch
from torch import nn

from tests.toy_models import ToyVideoModel, random_videos, text_tokens
from attacks import apgd as apgd_module, common, pgd as attacks, registry as rb, square as square_module
from attacks.apgd import apgd_checkpoints
from evaluation.sanity import input_gradient_stats
from utils.errors import ConfigError

EPS = 8 / 255
ATTACK_STEPS = {"pgd": 5, "apgd-ce": 5, "apgd-margin": 5, "square": 40, "transfer": 3}


class RoundingModel(nn.Module):
    """A deliberately gradient-masked model: the input is quantised to 5 levels first."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, video, text_tokens):
        return self.inner(torch.round(video * 4) / 4, text_tokens)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = ToyVideoModel(dropout=0.0)
    videos = random_videos(6, torch.Generator().manual_seed(1))
    videos[0] = 0.0  # clips at the pixel range limits
    videos[1] = 1.0
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    return model, videos, labels


def margins(model, videos, labels):
    model.eval()
    with torch.no_grad():
        return common.margin_objective(model(videos, text_tokens())["y"], labels)


@pytest.mark.parametrize("name", sorted(rb.ATTACKS))
def test_every_attack_stays_in_budget_and_pixel_range(setup, name):
    model, videos, labels = setup
    extra = {"source_model": ToyVideoModel(dropout=0.0)} if name == "transfer" else {}
    adv = rb.run_attack(name, model, videos, text_tokens(), labels, EPS, ATTACK_STEPS[name],
                        generator=torch.Generator().manual_seed(3), restarts=2, random_start=True, **extra)
    assert adv.shape == videos.shape and adv.dtype == videos.dtype
    assert (adv - videos).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - videos).abs().max() > EPS / 2  # it actually moved
    assert not adv.requires_grad


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-margin", "square"])
def test_attacks_raise_the_objective(setup, name):
    model, videos, labels = setup
    before = margins(model, videos, labels)
    adv = rb.run_attack(name, model, videos, text_tokens(), labels, EPS, ATTACK_STEPS[name],
                        generator=torch.Generator().manual_seed(0))
    after = margins(model, adv, labels)
    assert torch.all(after >= before - 1e-6) and after.mean() > before.mean()


def test_batched_pgd_equals_published_pgd(setup):
    model, videos, labels = setup
    published = attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=6)
    assert torch.equal(attacks.pgd(model, videos, text_tokens(), labels, EPS, steps=6), published)


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-margin", "square"])
def test_random_start_is_deterministic_with_a_seed(setup, name):
    model, videos, labels = setup

    def run(seed):
        return rb.run_attack(name, model, videos, text_tokens(), labels, EPS, ATTACK_STEPS[name],
                             generator=torch.Generator().manual_seed(seed), restarts=2, random_start=True)
    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", ["apgd-margin", "square"])
def test_no_parameter_gradients_and_mode_restored(setup, name):
    model, videos, labels = setup
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    rb.run_attack(name, model, videos, text_tokens(), labels, EPS, 3, generator=torch.Generator().manual_seed(0))
    assert model.training
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


def test_apgd_checkpoints_follow_the_paper():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, sec. 3.2)
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]


def test_apgd_restarts_keep_the_best_run_per_clip(setup):
    model, videos, labels = setup
    single = apgd_module.apgd(model, videos, text_tokens(), labels, EPS, steps=4, loss="margin")
    batched = apgd_module.apgd(model, videos, text_tokens(), labels, EPS, steps=4, loss="margin", restarts=3,
                      generator=torch.Generator().manual_seed(0))
    # restart 0 of the batched run starts at the clean clip like the single run; the others
    # can only improve a clip's objective
    assert torch.all(margins(model, batched, labels) >= margins(model, single, labels) - 1e-5)


def test_apgd_returns_the_best_point_not_the_last():
    """A model whose objective peaks inside the ball: the best point must be returned
    even though the momentum iterates overshoot it."""
    class Peak(nn.Module):
        def forward(self, video, tokens):
            z = -((video.flatten(1).mean(1) - 0.52) ** 2) * 1e4
            return {"y": torch.stack([torch.zeros_like(z), z], dim=1)}
    videos = torch.full((2, 2, 3, 4, 4), 0.5)
    labels = torch.zeros(2, dtype=torch.long)
    adv = apgd_module.apgd(Peak(), videos, None, labels, 0.1, steps=10, loss="margin")
    assert (adv.mean() - 0.52).abs() < 0.02


def test_square_uses_no_gradient(setup):
    model, videos, labels = setup
    calls = []
    original = torch.autograd.grad
    try:
        torch.autograd.grad = lambda *a, **k: calls.append(1) or original(*a, **k)
        square_module.square(model, videos, text_tokens(), labels, EPS, steps=5, generator=torch.Generator().manual_seed(0))
    finally:
        torch.autograd.grad = original
    assert calls == []


def test_square_fraction_schedule():
    assert square_module.square_fraction(0, 10000, 0.05) == 0.05
    assert square_module.square_fraction(11, 10000, 0.05) == 0.025
    assert square_module.square_fraction(9000, 10000, 0.05) == pytest.approx(0.05 / 2 ** 9)
    assert square_module.square_fraction(2, 100, 0.8) == 0.2  # rescaled: 2/100 of the queries = 200/10000, 2 halvings


def test_text_features_reused_for_a_trainable_text_tower():
    from clip import tokenize
    from models import xclip

    torch.manual_seed(0)
    model, _, _ = xclip.load(None, "tiny", T=2, fix_text=False)
    model.eval()
    tokens = tokenize(["normal", "abnormal"])
    videos = torch.rand(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    calls = []
    model.transformer.register_forward_hook(lambda *a: calls.append(1))
    forward = common.make_forward(model, tokens)
    assert len(calls) == 1
    logits = forward(videos)
    forward(videos)
    assert len(calls) == 1  # no new text-tower pass per attack step
    with torch.no_grad():
        torch.testing.assert_close(logits, model(videos, tokens)["y"], rtol=1e-5, atol=1e-5)


def test_autocast_option_runs_and_stays_in_budget(setup):
    model, videos, labels = setup
    adv = apgd_module.apgd(model, videos, text_tokens(), labels, EPS, steps=2, amp_dtype=torch.bfloat16)
    assert (adv - videos).abs().max() <= EPS + 1e-6 and adv.dtype == videos.dtype


def test_gradient_statistics_flag_a_masked_model(setup):
    model, videos, labels = setup
    healthy = input_gradient_stats(model, videos, text_tokens(), labels)
    assert healthy["zero_clips"] == 0 and healthy["nonfinite_clips"] == 0 and healthy["mean_abs"] > 0
    masked = input_gradient_stats(RoundingModel(model), videos, text_tokens(), labels)
    assert masked["zero_clips"] == len(videos)


def test_bad_arguments_are_refused(setup):
    model, videos, labels = setup
    with pytest.raises(ConfigError):
        apgd_module.apgd(model, videos, text_tokens(), labels, -1.0)
    with pytest.raises(ConfigError):
        attacks.pgd(model, videos, text_tokens(), labels, EPS, restarts=0)
    with pytest.raises(ConfigError):
        apgd_module.apgd(model, videos, text_tokens(), labels, EPS, loss="dlr")
    with pytest.raises(ValueError):
        square_module.square(model, videos, text_tokens(), labels[:3], EPS)
    with pytest.raises(ConfigError):
        rb.run_attack("transfer", model, videos, text_tokens(), labels, EPS, 2)
    with pytest.raises(ConfigError):
        rb.run_attack("fgsm", model, videos, text_tokens(), labels, EPS, 2)
