"""A tiny stand-in for X-CLIP with the same call signature, for the engine tests.

``model(video [N,T,3,H,W] in [0,1], text_tokens [C,L]) -> {"y": logits [N,C], ...}``.
Parameter names reuse the X-CLIP ones the optimizer treats specially
(``positional_embedding``, ``logit_scale``, ``*.bias``).
"""
import torch
from torch import nn

FRAMES, SIZE, CONTEXT, VOCAB = 2, 8, 4, 16


class ToyVideoModel(nn.Module):
    def __init__(self, dim=16, dropout=0.2):
        super().__init__()
        self.visual = nn.Sequential(
            nn.Flatten(1), nn.Linear(FRAMES * 3 * SIZE * SIZE, dim), nn.GELU(),
            nn.Dropout(dropout), nn.Linear(dim, dim))
        self.token_embedding = nn.Embedding(VOCAB, dim)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(CONTEXT, dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, video, text_tokens):
        feature_v = self.visual(video * 2 - 1)
        # tanh: without a non-linearity the parts shared by both prompts would cancel in
        # the softmax and get a zero gradient
        feature_t = torch.tanh((self.token_embedding(text_tokens) + self.positional_embedding).mean(dim=1))
        logits = self.logit_scale * feature_v @ feature_t.t()
        return {"y": logits, "feature_v": feature_v, "feature_t": feature_t}


def text_tokens():
    """Two 'class prompts' [2, CONTEXT]."""
    return torch.tensor([[1, 2, 3, 0], [1, 5, 7, 0]])


def random_videos(n, generator):
    return torch.rand(n, FRAMES, 3, SIZE, SIZE, generator=generator)
