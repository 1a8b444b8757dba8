"""Multi-frame integration transformer: per-frame features [B,T,D] -> video feature [B,D]."""
import torch
from torch import nn

from clip.model import ResidualAttentionBlock, heads_for_width


class MultiframeIntegrationTransformer(nn.Module):
    """Adds a temporal position embedding, runs CLIP blocks over T, residual, mean over T."""

    def __init__(self, num_frames: int, embed_dim: int, layers: int = 1):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(1, num_frames, embed_dim))
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(embed_dim, heads_for_width(embed_dim)) for _ in range(layers))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        for module in self.resblocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> [B, D]."""
        if x.shape[1] != self.positional_embedding.shape[1]:
            raise ValueError(f"MIT was built for T={self.positional_embedding.shape[1]} "
                             f"frames but got {x.shape[1]}")
        h = x + self.positional_embedding.to(x.dtype)
        for block in self.resblocks:
            h = block(h)
        return (h.to(x.dtype) + x).mean(dim=1)
