"""X-CLIP video model and its checkpoint-compatible loader.

``XCLIP.forward(video [B,T,3,H,W] in [0,1], text_tokens [C,77]) -> dict(y, feature_v, feature_t)``.
``load(model_path, name, ...)`` builds the model from any supported checkpoint file (or a
preset with random weights when ``model_path`` is None), inferring the architecture from
the state dict.
"""
import logging
import re

import torch
import torch.nn.functional as F
from torch import nn

from clip.model import LayerNorm, TextEncoder, Transformer, heads_for_width, init_text_tower
from models.cct import CrossFrameCommunicationTransformer
from models.mit import MultiframeIntegrationTransformer
from models.prompt import VideoSpecificPrompt
from utils.errors import CheckpointError

# Per-channel pixel statistics on the 0-255 scale (X-CLIP's data pipeline), used in [0,1].
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

TEXT_TOWER_PREFIXES = ("transformer.", "token_embedding.", "positional_embedding",
                       "ln_final.", "text_projection")
# X-CLIP's published ``fix_text``: a parameter stays trainable iff its name contains one of
# these (substring match, as published); everything else is frozen. That freezes the text
# tower and also ``logit_scale`` and ``head_video.*`` ("head_video" does not contain "_head").
FIX_TEXT_TRAINABLE = ("visual.", "mit", "prompts", "_head")
# What ``train_video_head`` keeps trainable on top of the published rule.
VIDEO_HEAD_PARAMS = ("head_video.", "logit_scale")


def fix_text_trainable(name: str, train_video_head: bool = False) -> bool:
    """Whether parameter ``name`` is trained under ``fix_text`` (published rule, + video head)."""
    if any(part in name for part in FIX_TEXT_TRAINABLE):
        return True
    return train_video_head and name.startswith(VIDEO_HEAD_PARAMS)

# Architecture dimensions of the presets (OpenAI's for the ViTs).
ARCH_PRESETS = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_layers=12),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, context_length=77, vocab_size=49408,
                     transformer_width=768, transformer_layers=12),
    "tiny": dict(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=64,
                 vision_patch_size=8, context_length=77, vocab_size=49408,
                 transformer_width=64, transformer_layers=1),
}


class XCLIP(nn.Module):
    """CLIP text tower + cross-frame ViT + MIT + video-specific prompts (+ head_video)."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int,
                 vision_width: int, vision_patch_size: int, context_length: int,
                 vocab_size: int, transformer_width: int, transformer_layers: int,
                 T: int = 8, droppath: float = 0.0, mit_layers: int = 1,
                 prompts_alpha: float = 1e-1, prompts_layers: int = 2,
                 use_checkpoint: bool = False, fix_text: bool = True,
                 train_video_head: bool = False):
        """``fix_text``: freeze what X-CLIP's published ``fix_text`` freezes (the text tower,
        ``logit_scale`` and ``head_video``; see ``fix_text_trainable``); False trains every
        parameter. ``train_video_head``: with ``fix_text``, train ``head_video`` and
        ``logit_scale`` too (no effect without ``fix_text``, which trains everything)."""
        super().__init__()
        self.input_resolution = image_resolution
        self.num_frames = T
        self.context_length = context_length
        self.fix_text = fix_text
        self.prompts_generator = VideoSpecificPrompt(prompts_layers, embed_dim, prompts_alpha)
        self.mit = MultiframeIntegrationTransformer(T, embed_dim, mit_layers)
        self.visual = CrossFrameCommunicationTransformer(
            image_resolution, vision_patch_size, vision_width, vision_layers,
            heads_for_width(vision_width), embed_dim, T, droppath, use_checkpoint)
        self.transformer = Transformer(transformer_width, transformer_layers,
                                       heads_for_width(transformer_width), causal=True,
                                       use_checkpoint=use_checkpoint)
        init_text_tower(self, vocab_size, context_length, transformer_width, embed_dim)
        self.prompts_visual_ln = LayerNorm(vision_width)
        self.prompts_visual_proj = nn.Parameter(vision_width ** -0.5
                                                * torch.randn(vision_width, embed_dim))
        # Identity start: a file without head_video (X-CLIP K400) computes what X-CLIP does.
        self.head_video = nn.Linear(embed_dim, embed_dim)
        nn.init.eye_(self.head_video.weight)
        nn.init.zeros_(self.head_video.bias)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 1, 3, 1, 1) / 255,
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 1, 3, 1, 1) / 255,
                             persistent=False)
        self._text_cache = None
        if fix_text:
            for name, param in self.named_parameters():
                if not fix_text_trainable(name, train_video_head):
                    param.requires_grad_(False)

    # ----- text features and their cache -----
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [C, context] -> text features [C, D]."""
        return TextEncoder.encode(self, tokens)

    def _text_tower_params(self):
        return [p for n, p in self.named_parameters() if n.startswith(TEXT_TOWER_PREFIXES)]

    def cached_text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features of a frozen text tower, recomputed only when something changed.

        The cache key holds the token ids, the device and the in-place version counters of
        the text weights, so new class names, ``.to()``, ``load_state_dict`` or any in-place
        weight edit all invalidate it. Features are computed without autograd, in float32.
        """
        params = self._text_tower_params()
        key_versions = tuple(p._version for p in params)
        cache = self._text_cache
        if (cache is not None and cache["versions"] == key_versions
                and cache["features"].device == tokens.device
                and torch.equal(cache["tokens"], tokens.detach().cpu())):
            return cache["features"]
        with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
            features = self.encode_text(tokens).float()
        self._text_cache = {"tokens": tokens.detach().cpu().clone(), "features": features,
                            "versions": key_versions}
        return features

    def clear_text_cache(self) -> None:
        self._text_cache = None

    def _apply(self, fn, *args, **kwargs):
        self._text_cache = None
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._text_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----- video side -----
    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """[B,T,3,H,W] in [0,1] -> mean/std normalised (float32)."""
        if not torch.is_floating_point(video):
            raise TypeError(f"video must be float in [0,1], got dtype {video.dtype}")
        return (video.float() - self.pixel_mean) / self.pixel_std

    def encode_video(self, video: torch.Tensor):
        """Normalised video [B,T,3,H,W] -> (video features [B,D], prompt tokens [B,T,P,D])."""
        b, t, c, h, w = video.shape
        cls, patches = self.visual(video.reshape(b * t, c, h, w))
        patches = self.prompts_visual_ln(patches) @ self.prompts_visual_proj.to(patches.dtype)
        cls = cls.view(b, t, -1)
        video_features = self.head_video(self.mit(cls))
        return video_features, patches.view(b, t, -1, cls.shape[-1])

    def forward(self, video: torch.Tensor, text_tokens: torch.Tensor) -> dict:
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B,T,3,H,W], got {tuple(video.shape)}")
        _, t, _, h, w = video.shape
        if t != self.num_frames or h != self.input_resolution or w != self.input_resolution:
            raise ValueError(
                f"model expects T={self.num_frames} frames of {self.input_resolution}x"
                f"{self.input_resolution}, got T={t} of {h}x{w}")
        text_frozen = self.fix_text and not any(p.requires_grad
                                                for p in self._text_tower_params())
        if text_frozen:
            text = self.cached_text_features(text_tokens)
        else:  # trained text tower (or one unfrozen by hand): never serve stale features
            text = self.encode_text(text_tokens)
        return self.forward_with_text_features(video, text)

    def forward_with_text_features(self, video: torch.Tensor, text: torch.Tensor) -> dict:
        """The forward pass from precomputed text features ``text`` [C, D] (e.g. for attacks).

        video [B,T,3,H,W] in [0,1] -> dict(y [B,C], feature_v [B,D], feature_t [B,C,D]).
        """
        b = video.shape[0]
        video_features, visual_tokens = self.encode_video(self.normalize(video))
        visual_tokens = visual_tokens.mean(dim=1)  # [B, P, D]
        text = text.unsqueeze(0).expand(b, -1, -1)
        text = text + self.prompts_generator(text, visual_tokens)
        feature_v = F.normalize(video_features, dim=-1)
        feature_t = F.normalize(text, dim=-1)
        logits = self.logit_scale.exp() * torch.einsum("bd,bcd->bc", feature_v, feature_t)
        return {"y": logits, "feature_v": feature_v, "feature_t": feature_t}


# ----- architecture inference and loading -----
def _count_blocks(state_dict: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_architecture(state_dict: dict) -> dict:
    """Model dimensions from a CLIP / X-CLIP state dict (never from a config)."""
    if "visual.layer1.0.conv1.weight" in state_dict:
        raise CheckpointError("checkpoint holds a ResNet CLIP image tower; only ViT models "
                              "are supported")
    required = ["visual.conv1.weight", "visual.positional_embedding", "text_projection",
                "positional_embedding", "token_embedding.weight", "ln_final.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise CheckpointError(f"checkpoint is not a CLIP/X-CLIP ViT state dict: missing "
                              f"keys {missing}")
    conv = state_dict["visual.conv1.weight"]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    arch = dict(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=conv.shape[-1] * grid,
        vision_layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
        vision_width=conv.shape[0],
        vision_patch_size=conv.shape[-1],
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=state_dict["ln_final.weight"].shape[0],
        transformer_layers=_count_blocks(state_dict, "transformer.resblocks."),
    )
    return arch


XCLIP_ONLY_PATTERNS = [re.compile(p) for p in (
    r"visual\.transformer\.resblocks\.\d+\.message_(fc|ln|attn)\.",
    r"mit\.", r"prompts_generator\.", r"prompts_visual_ln\.", r"prompts_visual_proj$",
    r"head_video\.")]
HEAD_PATTERN = re.compile(r"head_video\.")
TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _allowed_missing(key: str, is_xclip_file: bool) -> bool:
    if is_xclip_file:
        return bool(HEAD_PATTERN.match(key))
    return any(p.match(key) for p in XCLIP_ONLY_PATTERNS)


def prepare_state_dict(state_dict: dict, T: int, logger=None) -> dict:
    """Drop TorchScript extras / DDP prefixes and fit mit.positional_embedding to T frames."""
    sd = {k: v for k, v in state_dict.items()
          if not (k in TORCHSCRIPT_EXTRAS and torch.is_tensor(v) and v.ndim == 0)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    pos = sd.get("mit.positional_embedding")
    if pos is not None and pos.shape[1] != T:
        if logger:
            logger.info(f"interpolating mit.positional_embedding from T={pos.shape[1]} to T={T}")
        resized = F.interpolate(pos.float().transpose(1, 2), size=T, mode="linear",
                                align_corners=True)
        sd["mit.positional_embedding"] = resized.transpose(1, 2).to(pos.dtype).contiguous()
    return sd


def load_weights_strict(model: XCLIP, state_dict: dict) -> None:
    """Load with an explicit allow-list of missing keys; anything else raises CheckpointError."""
    is_xclip_file = any(k.startswith("mit.") for k in state_dict)
    expected = model.state_dict()
    missing = [k for k in expected
               if k not in state_dict and not _allowed_missing(k, is_xclip_file)]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                   for k, v in state_dict.items()
                   if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:20]}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:20]}"
                        + (" ..." if len(unexpected) > 20 else ""))
    if wrong_shape:
        problems.append(f"shape mismatches {wrong_shape[:20]}")
    if problems:
        raise CheckpointError("checkpoint does not match the X-CLIP architecture: "
                              + "; ".join(problems))
    check_weight_values(state_dict, expected)
    model.load_state_dict(state_dict, strict=False)


def check_weight_values(state_dict: dict, expected: dict) -> None:
    """Refuse weights that would load silently but score nonsense: integer or bool tensors
    for floating-point parameters (load_state_dict would cast them) and NaN/Inf values."""
    wrong_type = [f"{k} ({v.dtype})" for k, v in state_dict.items()
                  if k in expected and expected[k].is_floating_point() and not v.is_floating_point()]
    if wrong_type:
        raise CheckpointError(f"checkpoint holds integer/bool tensors for floating-point weights: {wrong_type[:10]}"
                              " (a damaged or converted file); use the original checkpoint")
    nonfinite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(f"checkpoint holds NaN/Inf values in {len(nonfinite)} tensor(s), e.g. {nonfinite[:5]} "
                              "(a training run that diverged?); use an earlier checkpoint")


def build_model(state_dict: dict | None, arch: dict, T: int = 8, droppath: float = 0.0,
                use_checkpoint: bool = False, prompts_alpha: float = 1e-1,
                prompts_layers: int = 2, mit_layers: int = 1, fix_text: bool = True,
                logger=None, train_video_head: bool = False) -> XCLIP:
    """Build X-CLIP with ``arch`` dims; depth of MIT/prompt decoder follows the state dict."""
    if state_dict is not None:
        mit_layers = _count_blocks(state_dict, "mit.resblocks.") or mit_layers
        prompts_layers = _count_blocks(state_dict, "prompts_generator.decoder.") or prompts_layers
    model = XCLIP(**arch, T=T, droppath=droppath, mit_layers=mit_layers,
                  prompts_alpha=prompts_alpha, prompts_layers=prompts_layers,
                  use_checkpoint=use_checkpoint, fix_text=fix_text, train_video_head=train_video_head)
    if state_dict is not None:
        load_weights_strict(model, prepare_state_dict(state_dict, T, logger))
    return model


def load(model_path, name: str = "ViT-B/32", device="cpu", T: int = 8, droppath: float = 0.0,
         use_checkpoint: bool = False, logger=None, prompts_alpha: float = 1e-1,
         prompts_layers: int = 2, mit_layers: int = 1, fix_text: bool = True,
         train_video_head: bool = False):
    """Build X-CLIP from ``model_path`` (architecture inferred) or the preset ``name``.

    ``fix_text`` / ``train_video_head``: which parameters train (MODEL.FIX_TEXT and
    MODEL.TRAIN_VIDEO_HEAD; see ``XCLIP.__init__``).

    Returns ``(model, model.state_dict(), model_path)``; the model is float32, in eval mode,
    on ``device``.
    """
    logger = logger or logging.getLogger(__name__)
    options = dict(T=T, droppath=droppath, use_checkpoint=use_checkpoint,
                   prompts_alpha=prompts_alpha, prompts_layers=prompts_layers,
                   mit_layers=mit_layers, fix_text=fix_text, train_video_head=train_video_head,
                   logger=logger)
    if model_path is None:
        if name not in ARCH_PRESETS:
            raise CheckpointError(f"unknown model preset {name!r}; choose one of "
                                  f"{sorted(ARCH_PRESETS)}")
        logger.info(f"no weights given: building {name} with random weights "
                    f"(nothing is downloaded)")
        model = build_model(None, ARCH_PRESETS[name], **options)
    else:
        from models.checkpoint_io import read_state_dict

        state_dict, meta = read_state_dict(model_path)
        state_dict = prepare_state_dict(state_dict, T, logger)
        try:
            arch = infer_architecture(state_dict)
        except CheckpointError as err:
            raise CheckpointError(f"{model_path}: {err}") from None
        logger.info(f"loading {meta.get('format', 'checkpoint')} {model_path}: {arch}")
        try:
            model = build_model(state_dict, arch, **options)
        except CheckpointError as err:
            raise CheckpointError(f"{model_path}: {err}") from None
    model = model.float().to(device).eval()
    return model, model.state_dict(), model_path
