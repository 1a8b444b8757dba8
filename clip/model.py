"""CLIP building blocks written for this project (parameter names match OpenAI's files).

Layout: every sequence tensor is batch-first ``[N, L, width]``; attention runs through
``torch.nn.functional.scaled_dot_product_attention``. Attention modules keep the parameter
names of ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``)
so published state dicts load key for key.
"""
import math

# stochastic depth as X-CLIP uses it (timm's DropPath), re-exported for models/
from timm.layers import DropPath  # noqa: F401
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def heads_for_width(width: int) -> int:
    """CLIP's rule: one attention head per 64 channels, at least one."""
    return max(1, width // 64)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input dtype (as in CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                           self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI trained CLIP with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``[N, L, width]`` with nn.MultiheadAttention's names."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        out = out.transpose(1, 2).reshape(n, length, width)
        return self.out_proj(out)


class MLP(nn.Module):
    """CLIP feed-forward: c_fc (4x) -> QuickGELU -> c_proj."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; x [N, L, width]."""

    def __init__(self, width: int, heads: int, causal: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.causal = causal
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm(width)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln_1(x), causal=self.causal))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply blocks in order; with ``use_checkpoint`` recompute activations in backward."""
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class Transformer(nn.Module):
    """A stack of residual attention blocks (``resblocks.N``); x [N, L, width]."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False,
                 use_checkpoint: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.use_checkpoint = use_checkpoint
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, causal=causal) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.resblocks, x, self.use_checkpoint)


def init_clip_transformer(transformer: Transformer) -> None:
    """OpenAI's initialisation of a CLIP transformer (std scaled by width and depth)."""
    width, layers = transformer.width, max(1, transformer.layers)
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class TextEncoder(nn.Module):
    """CLIP text tower (causal transformer, features at the end-of-text token).

    Holds no parameters itself: it reads them from the owning model so that the
    published top-level key names (``transformer.*``, ``token_embedding``, ...) stay.
    """

    @staticmethod
    def encode(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """tokens LongTensor [C, context] -> features [C, embed_dim]."""
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.transformer(x)
        x = model.ln_final(x)
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ model.text_projection


def patch_grid(input_resolution: int, patch_size: int) -> int:
    if input_resolution % patch_size:
        raise ValueError(f"input resolution {input_resolution} is not a multiple of "
                         f"patch size {patch_size}")
    return input_resolution // patch_size


class VisionTransformer(nn.Module):
    """Plain CLIP ViT: image [N,3,H,W] -> projected class feature [N, output_dim]."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int,
                 heads: int, output_dim: int):
        super().__init__()
        init_vit(self, input_resolution, patch_size, width, output_dim, lambda: Transformer(width, layers, heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = embed_patches(self, x)
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


def init_vit(vit: nn.Module, input_resolution: int, patch_size: int, width: int,
             output_dim: int, make_transformer) -> None:
    """Give ``vit`` CLIP's ViT parameters around ``make_transformer()``: conv1 (patch
    embedding, no bias), class_embedding, positional_embedding, ln_pre, transformer,
    ln_post, proj. The transformer is built in that order, so a seeded random init draws
    the same numbers as it always has."""
    grid = patch_grid(input_resolution, patch_size)
    scale = width ** -0.5
    vit.input_resolution = input_resolution
    vit.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
    vit.class_embedding = nn.Parameter(scale * torch.randn(width))
    vit.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
    vit.ln_pre = LayerNorm(width)
    vit.transformer = make_transformer()
    vit.ln_post = LayerNorm(width)
    vit.proj = nn.Parameter(scale * torch.randn(width, output_dim))


def embed_patches(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images [N,3,H,W] -> ln_pre(class token + patch tokens + positions) [N, 1+P, width]."""
    x = vit.conv1(images.to(vit.conv1.weight.dtype))
    x = x.flatten(2).transpose(1, 2)
    cls = vit.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + vit.positional_embedding.to(x.dtype)
    return vit.ln_pre(x)


class CLIP(nn.Module):
    """Image-text CLIP with a ViT image tower (used for plain CLIP files and tests)."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int,
                 vision_width: int, vision_patch_size: int, context_length: int,
                 vocab_size: int, transformer_width: int, transformer_heads: int,
                 transformer_layers: int):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width,
                                        vision_layers, heads_for_width(vision_width), embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers,
                                       transformer_heads, causal=True)
        init_text_tower(self, vocab_size, context_length, transformer_width, embed_dim)
        init_clip_transformer(self.visual.transformer)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return TextEncoder.encode(self, tokens)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor):
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def init_text_tower(model: nn.Module, vocab_size: int, context_length: int,
                    width: int, embed_dim: int) -> None:
    """Create and initialise the text-tower parameters and logit_scale on ``model``.

    ``model.transformer`` must already exist. The keys are the published top-level names.
    """
    model.token_embedding = nn.Embedding(vocab_size, width)
    model.positional_embedding = nn.Parameter(torch.empty(context_length, width))
    model.ln_final = LayerNorm(width)
    model.text_projection = nn.Parameter(torch.empty(width, embed_dim))
    model.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    nn.init.normal_(model.token_embedding.weight, std=0.02)
    nn.init.normal_(model.positional_embedding, std=0.01)
    nn.init.normal_(model.text_projection, std=width ** -0.5)
    init_clip_transformer(model.transformer)
