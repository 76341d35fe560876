"""A plain Vision Transformer: patch embedding, cls token, learned positions, pre-LN blocks.

The pieces are separate so a subclass can add a noise-level (time) token beside the cls token:
`embed` turns normalised pixels into tokens (cls first, positions added), `encode` runs the blocks
and the final LayerNorm, `features` maps [0, 1] pixels to the cls feature, `head` classifies it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalize

# Truncated normal with std 0.02, cut at +-2 absolute (torch's default bounds), as ViT/MAE/MoCo-v3 do.
INIT_STD = 0.02


def default_patch_size(image_size: int) -> int:
    """2 for tiny images (8×8 digits), 4 up to CIFAR/MNIST sizes, 16 (ViT-B/16 style) above."""
    if image_size <= 16:
        return 2
    if image_size <= 64:
        return 4
    return 16


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (fused kernels where available)."""

    def __init__(self, width: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"vit: 'width' ({width}) must be divisible by 'heads' ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qkv_bias: bool = True):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_linear_like(module: nn.Module) -> None:
    """The ViT initialisation: trunc-normal(0.02) weights, zero biases, unit LayerNorms. The patch
    embedding is a linear map of each patch, so it is initialised like one."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VisionTransformer(nn.Module):
    """ViT classifier on [0, 1] pixels; the logits come from a linear head on the cls token."""

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, mean: Sequence[float],
                 std: Sequence[float], patch_size: int, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"vit: 'patch_size' ({patch_size}) must divide 'image_size' ({image_size})")
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.num_patches = (image_size // patch_size) ** 2
        self.normalize = Normalize(mean, std)
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self._init_weights()

    @property
    def feature_dim(self) -> int:
        return self.width

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        init_linear_like(self)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) -> tokens (B, 1 + num_patches, width), cls first."""
        if z.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"vit: expected {self.image_size}x{self.image_size} images, got {tuple(z.shape)}")
        patches = self.patch_embed(z).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], -1, -1).to(patches.dtype)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the transformer blocks and the final LayerNorm over a token sequence."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the cls feature h, shape (B, width)."""
        return self.encode(self.embed(self.normalize(x)))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
