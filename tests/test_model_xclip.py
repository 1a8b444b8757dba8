"""X-CLIP forward behaviour on the tiny preset: shapes, normalisation, gradients, cache."""
import pytest
import torch
import torch.nn.functional as F

from clip import tokenize
from models import xclip

T = 3


@pytest.fixture(scope="module")
def tokens():
    return tokenize(["normal", "abnormal"])


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    model, _, _ = xclip.load(None, "tiny", T=kwargs.pop("T", T), **kwargs)
    return model


def video(batch=2, frames=T, seed=1):
    return torch.rand(batch, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_attributes(tokens):
    model = tiny()
    assert model.input_resolution == 64 and model.num_frames == T
    out = model(video(), tokens)
    assert out["y"].shape == (2, 2)
    assert out["feature_v"].shape == (2, 64) and out["feature_t"].shape == (2, 2, 64)
    torch.testing.assert_close(out["feature_v"].norm(dim=-1), torch.ones(2))
    expected = model.logit_scale.exp() * (out["feature_v"][:, None] * out["feature_t"]).sum(-1)
    torch.testing.assert_close(out["y"], expected)
    with torch.no_grad():
        from_features = model.forward_with_text_features(video(), model.encode_text(tokens))
    torch.testing.assert_close(from_features["y"], out["y"].detach())


def test_normalisation_is_internal_and_not_saved(tokens):
    model = tiny()
    assert "pixel_mean" not in model.state_dict() and "pixel_std" not in model.state_dict()
    v = video()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 1, 3, 1, 1) / 255
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 1, 3, 1, 1) / 255
    torch.testing.assert_close(model.normalize(v), (v - mean) / std)
    with pytest.raises(TypeError):
        model((v * 255).to(torch.uint8), tokens)
    with pytest.raises(ValueError, match="T=3"):
        model(video(frames=4), tokens)
    model.double()
    assert model.pixel_mean.dtype == torch.float64


def test_gradients_reach_every_trainable_parameter(tokens):
    for fix_text in (True, False):
        model = tiny(fix_text=fix_text, droppath=0.1).train()
        text_params = [n for n, p in model.named_parameters() if n.startswith(
            xclip.TEXT_TOWER_PREFIXES)]
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        # published fix_text: the text tower, logit_scale and head_video (tests/test_fix_text.py)
        video_head = {"logit_scale", "head_video.weight", "head_video.bias"}
        assert frozen == (set(text_params) | video_head if fix_text else set())
        v = video().requires_grad_(True)
        out = model(v, tokens)
        F.cross_entropy(out["y"], torch.tensor([0, 1])).backward()
        missing = [n for n, p in model.named_parameters()
                   if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
        # (sum over the tensor: token_embedding only gets gradients on the rows used)
        assert missing == []
        assert v.grad is not None and v.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_same_result(tokens):
    plain, ckpt = tiny(seed=3), tiny(seed=3, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, ckpt):
        model.train()
        v = video().requires_grad_(True)
        y = model(v, tokens)["y"]
        y.sum().backward()
        results.append((y.detach(), v.grad, model.visual.conv1.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_runs_under_autocast(tokens):
    model = tiny()
    v = video()
    reference = model(v, tokens)["y"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(v, tokens)["y"]
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), reference, rtol=0.1, atol=0.15)


def test_text_cache_invalidation(tokens):
    model = tiny()
    first = model.cached_text_features(tokens)
    assert first.grad_fn is None and not first.requires_grad
    assert model.cached_text_features(tokens) is first
    other = tokenize(["normal", "abnormal", "fight"])
    assert model.cached_text_features(other).shape[0] == 3
    assert model.cached_text_features(tokens) is not first  # recomputed after a change
    again = model.cached_text_features(tokens)
    # loading weights invalidates
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["text_projection"] = state["text_projection"] * 2
    model.load_state_dict(state)
    torch.testing.assert_close(model.cached_text_features(tokens), again * 2)
    # an in-place edit of a text weight invalidates
    with torch.no_grad():
        model.ln_final.bias.add_(1.0)
    assert not torch.allclose(model.cached_text_features(tokens), again * 2)
    # and the cache follows .to()
    model.double()
    assert model._text_cache is None


def test_text_features_not_cached_when_text_is_trained(tokens):
    model = tiny(fix_text=False)
    model(video(), tokens)
    assert model._text_cache is None
    unfrozen_by_hand = tiny()
    unfrozen_by_hand.text_projection.requires_grad_(True)
    unfrozen_by_hand(video(), tokens)["y"].sum().backward()
    assert unfrozen_by_hand._text_cache is None
    assert unfrozen_by_hand.text_projection.grad is not None


def test_tiny_model_learns_a_colour_cue(tokens):
    """End-to-end training sanity: 15 AdamW steps separate red clips from random ones."""
    model = tiny().train()
    clips = video(batch=4)
    labels = torch.tensor([0, 1, 0, 1])
    clips[labels == 1, :, 0] = 1.0  # "abnormal" clips have a saturated red channel
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(clips, tokens)["y"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert (model(clips, tokens)["y"].argmax(-1) == labels).all()
