"""Cross-frame communication ViT (X-CLIP's image tower with message tokens).

Each frame of a video is a ViT token sequence. Before every block, the class tokens of
the T frames of a video exchange information through a small attention over time
(``message_*``); the resulting message token is appended to its frame's sequence for the
block's spatial attention and then dropped again.
"""
import torch
from torch import nn

from clip.model import (MLP, DropPath, embed_patches, init_clip_transformer, init_vit, run_blocks,
                        LayerNorm, SelfAttention)


class CrossFrameAttentionBlock(nn.Module):
    """One X-CLIP vision block; input/output x [B*T, L, width] (frames of a video adjacent)."""

    def __init__(self, width: int, heads: int, num_frames: int, drop_path: float = 0.0):
        super().__init__()
        self.num_frames = num_frames
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = SelfAttention(width, heads)
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.drop_path = DropPath(drop_path)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm(width)
        nn.init.trunc_normal_(self.message_fc.weight, std=0.02)
        nn.init.zeros_(self.message_fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, length, width = x.shape
        t = self.num_frames
        if frames % t:
            raise ValueError(f"{frames} frames is not a multiple of T={t}")
        message = self.message_fc(x[:, 0]).view(frames // t, t, width)  # [B, T, width]
        message = message + self.drop_path(self.message_attn(self.message_ln(message)))
        x = torch.cat([x, message.reshape(frames, 1, width)], dim=1)  # [B*T, L+1, width]
        x = x + self.drop_path(self.attn(self.ln_1(x)))
        x = x[:, :length]
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class CrossFrameTransformer(nn.Module):
    """Stack of cross-frame blocks (``resblocks.N``); drop-path rises linearly to ``droppath``."""

    def __init__(self, width: int, layers: int, heads: int, num_frames: int,
                 droppath: float = 0.0, use_checkpoint: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.use_checkpoint = use_checkpoint
        rates = [droppath * i / max(1, layers - 1) for i in range(layers)]  # linspace(0, d, L)
        self.resblocks = nn.ModuleList(
            CrossFrameAttentionBlock(width, heads, num_frames, rate) for rate in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.resblocks, x, self.use_checkpoint)


class CrossFrameCommunicationTransformer(nn.Module):
    """Normalised frames [B*T,3,H,W] -> (class features [B*T, D], patch tokens [B*T, P, width]).

    Frames of one video must be adjacent (B-major), as ``video.reshape(B*T, ...)`` gives.
    """

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int,
                 heads: int, output_dim: int, num_frames: int, droppath: float = 0.0,
                 use_checkpoint: bool = False):
        super().__init__()
        init_vit(self, input_resolution, patch_size, width, output_dim,
                 lambda: CrossFrameTransformer(width, layers, heads, num_frames, droppath, use_checkpoint))
        init_clip_transformer(self.transformer)

    def forward(self, frames: torch.Tensor):
        x = embed_patches(self, frames)
        x = self.transformer(x)
        cls = self.ln_post(x[:, 0]) @ self.proj
        return cls, x[:, 1:]
