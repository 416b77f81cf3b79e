"""edgevit's own plain ViTs: a DeiT-style backbone with pluggable attention and optional conv stem.

These are the catalog models timm lacks (windowed, Linformer, Performer ViTs and the small
Fashion-MNIST ViT shipped with weights). They use only ops every target exports: convolution,
linear, LayerNorm, GELU, matmul, softmax, reshape/permute at rank <= 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from edgevit.models.attention import get_attention

__all__ = ["ConvStem", "EdgeViT", "PatchEmbed"]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches embedded by one strided convolution."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.stride = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvStem(nn.Module):
    """A small convolutional stem: stride-2 3x3 convs with BatchNorm + GELU (log2(stride) of them)."""

    def __init__(self, in_chans: int, dim: int, stride: int, width: int = 24) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_chans
        n = max(1, stride.bit_length() - 1)
        for i in range(n):
            out = dim if i == n - 1 else width * 2**i
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out)]
            if i < n - 1:
                layers.append(nn.GELU())
            ch = out
        self.proj = nn.Sequential(*layers)
        self.stride = 2**n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EdgeViT(nn.Module):
    """A plain ViT whose attention is chosen by name (see :mod:`edgevit.models.attention`).

    ``global_pool='token'`` uses a class token, ``'avg'`` averages the patch tokens (required by
    window attention). ``attn_kwargs`` go to the attention layer; ``alternate_shift`` shifts every
    second window layer (Swin).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        attention: str = "full",
        attn_kwargs: Mapping[str, Any] | None = None,
        global_pool: str = "token",
        stem: str = "patch",
        alternate_shift: bool = False,
    ) -> None:
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch_size}")
        self.num_classes, self.global_pool, self.embed_dim = num_classes, global_pool, embed_dim
        self.patch_embed = (
            PatchEmbed(in_chans, embed_dim, patch_size) if stem == "patch" else ConvStem(in_chans, embed_dim, patch_size)
        )
        self.grid = (h // patch_size, w // patch_size)
        self.num_prefix = 1 if global_pool == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix else None
        n = self.grid[0] * self.grid[1] + self.num_prefix
        self.pos_embed = nn.Parameter(torch.randn(1, n, embed_dim) * 0.02)
        attn_cls = get_attention(attention)
        kwargs = dict(attn_kwargs or {})
        blocks = []
        for i in range(depth):
            kw = dict(kwargs)
            if alternate_shift:
                kw["shift"] = i % 2 == 1
            blocks.append(Block(embed_dim, attn_cls(embed_dim, num_heads, self.grid, self.num_prefix, **kw), mlp_ratio))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.apply(self._init)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # Linear layers with a bias get ViT's init; bias-free ones (Linformer's E/F) keep theirs.
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, C, h, w)
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
