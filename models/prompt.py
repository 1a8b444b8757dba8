"""Video-specific prompt generator: text features attend to a video's visual tokens."""
import torch
import torch.nn.functional as F
from torch import nn

from clip.model import QuickGELU, heads_for_width


class CrossAttention(nn.Module):
    """Multi-head attention of queries [B,C,D] over keys/values [B,P,D] (q/k/v without bias)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, query, key, value) -> torch.Tensor:
        b, n, d = query.shape
        out = F.scaled_dot_product_attention(
            self._split(self.q_proj(query)), self._split(self.k_proj(key)),
            self._split(self.v_proj(value)))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class PromptGeneratorLayer(nn.Module):
    """``x + cross_attn(norm1(x), visual)`` then ``x + mlp(norm3(x))``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), QuickGELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), visual, visual)
        return x + self.dropout(self.mlp(self.norm3(x)))


class VideoSpecificPrompt(nn.Module):
    """text [B,C,D], visual [B,P,D] -> prompt offsets ``alpha * decoded text`` [B,C,D]."""

    def __init__(self, layers: int = 2, embed_dim: int = 512, alpha: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = nn.ModuleList(
            PromptGeneratorLayer(embed_dim, heads_for_width(embed_dim)) for _ in range(layers))
        self.alpha = nn.Parameter(torch.full((embed_dim,), float(alpha)))
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        return self.alpha * text
