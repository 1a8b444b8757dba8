"""CLIP / X-CLIP building blocks against their plain formulations."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip.model import CLIP, DropPath, LayerNorm, SelfAttention, heads_for_width
from models import xclip
from models.prompt import CrossAttention

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"


def plain_attention(q, k, v, causal=False):
    """softmax(q k^T / sqrt(d)) v with an explicit mask; q,k,v [N, H, L, d]."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        length = q.shape[-2]
        mask = torch.ones(length, length, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_plain_formulation(causal):
    torch.manual_seed(0)
    attn = SelfAttention(128, 2)
    x = torch.randn(3, 9, 128)
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.view(3, 9, 2, 64).transpose(1, 2)  # noqa: E731
    expected = plain_attention(split(q), split(k), split(v), causal)
    expected = attn.out_proj(expected.transpose(1, 2).reshape(3, 9, 128))
    torch.testing.assert_close(attn(x, causal=causal), expected, rtol=1e-5, atol=1e-5)
    # and nn.MultiheadAttention with the same weights (same parameter names)
    mha = torch.nn.MultiheadAttention(128, 2, batch_first=True)
    mha.load_state_dict(attn.state_dict())
    mask = torch.ones(9, 9, dtype=torch.bool).triu(1) if causal else None
    torch.testing.assert_close(attn(x, causal=causal),
                               mha(x, x, x, attn_mask=mask, need_weights=False)[0],
                               rtol=1e-5, atol=1e-5)


def test_cross_attention_matches_plain_formulation():
    torch.manual_seed(0)
    ca = CrossAttention(128, 2)
    query, visual = torch.randn(2, 3, 128), torch.randn(2, 7, 128)
    split = lambda t: t.view(t.shape[0], t.shape[1], 2, 64).transpose(1, 2)  # noqa: E731
    out = plain_attention(split(ca.q_proj(query)), split(ca.k_proj(visual)),
                          split(ca.v_proj(visual)))
    expected = ca.proj(out.transpose(1, 2).reshape(2, 3, 128))
    torch.testing.assert_close(ca(query, visual, visual), expected, rtol=1e-5, atol=1e-5)


def test_drop_path():
    drop = DropPath(0.5)
    x = torch.ones(400, 3)
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    y = drop(x)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 2.0) and torch.all(y[~kept] == 0)  # whole samples dropped
    assert 100 < kept.sum() < 300


def test_drop_path_is_timms_as_in_x_clip():
    from timm.layers import DropPath as TimmDropPath

    assert DropPath is TimmDropPath


def test_layernorm_keeps_input_dtype():
    ln = LayerNorm(8)
    assert ln(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_heads_rule():
    assert heads_for_width(64) == 1 and heads_for_width(768) == 12 and heads_for_width(32) == 1


def _manifest(name):
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference manifest {path} not available")
    return json.loads(path.read_text())


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _count(shapes):
    return len(shapes), sum(math.prod(s) for s in shapes.values())


def test_xclip_vitb32_preset_has_published_layout():
    model, state_dict, path = xclip.load(None, "ViT-B/32", T=5)
    assert path is None and model.input_resolution == 224 and model.num_frames == 5
    shapes = {k: list(v.shape) for k, v in state_dict.items()}
    assert _count(shapes) == (445, 196_846_849)
    assert shapes == _manifest("xclip_vitb32_T5_keys.json")


def test_xclip_vitb16_preset_has_k400_16_8_layout():
    with torch.device("meta"):
        model = xclip.build_model(None, xclip.ARCH_PRESETS["ViT-B/16"], T=8)
    assert _shapes(model) == _manifest("xclip_vitb16_T8_keys.json")


def test_clip_vitb32_layout():
    arch = dict(xclip.ARCH_PRESETS["ViT-B/32"])
    with torch.device("meta"):
        model = CLIP(arch["embed_dim"], arch["image_resolution"], arch["vision_layers"],
                     arch["vision_width"], arch["vision_patch_size"], arch["context_length"],
                     arch["vocab_size"], arch["transformer_width"], 8,
                     arch["transformer_layers"])
    shapes = _shapes(model)
    assert _count(shapes) == (302, 151_277_313)
    assert shapes == _manifest("clip_vitb32_keys.json")
    assert set(_manifest("clip_vitb32_jit_extra_keys.json")) == set(xclip.TORCHSCRIPT_EXTRAS)


def test_vitl14_preset_dimensions():
    with torch.device("meta"):
        model = xclip.build_model(None, xclip.ARCH_PRESETS["ViT-L/14"], T=8)
    sd = model.state_dict()
    assert sd["visual.conv1.weight"].shape == (1024, 3, 14, 14)
    assert sd["text_projection"].shape == (768, 768)
    assert model.visual.transformer.resblocks[0].attn.heads == 16
