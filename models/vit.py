"""edgevit's own plain ViTs: a DeiT-style backbone with pluggable attention and optional conv stem.

These are the catalog models timm lacks (windowed, Linformer, Performer ViTs and the small
Fashion-MNIST ViT shipped with weights). They use only ops every target exports: convolution,
linear, LayerNorm, GELU, matmul, softmax, reshape/permute at rank <= 5.

Size options (ALBERT, Lan et al. 2020, applied to a ViT):

* ``share_layers=g``: cross-layer parameter sharing. ``depth`` blocks run, but only ``g`` distinct
  blocks hold parameters; each is applied ``depth // g`` times in a row (``g=1``: ALBERT's
  all-shared model, one block applied ``depth`` times). ``model.blocks`` holds the ``g`` distinct
  blocks, so ``parameters()``, ``state_dict()`` and saved weights hold each tensor once.
* ``embed_rank=r``: factorized patch embedding. The ``p x p x C`` patch pixels go to ``r``
  features (a bias-free ``p x p`` stride-``p`` convolution, ``patch_embed.proj``, still the one
  convolution that reads the image, so the fused-input rewrite folds mean/std into it) and then to
  the width ``D`` (a 1 x 1 convolution with bias, ``patch_embed.expand``): ``r (p^2 C + D) + D``
  parameters instead of ``p^2 C D + D``, fewer whenever ``r < p^2 C D / (p^2 C + D)``.

Training memory: :meth:`EdgeViT.set_grad_checkpointing` (timm's signature) recomputes each block's
activations in the backward pass instead of keeping them (``torch.utils.checkpoint``, non-reentrant).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from edgevit.errors import ConfigError
from edgevit.models.attention import get_attention

__all__ = ["ConvStem", "EdgeViT", "PatchEmbed"]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches embedded by one strided convolution.

    With ``rank`` (factorized embedding, ALBERT): a bias-free strided convolution to ``rank``
    channels (``proj``), then a 1 x 1 convolution to ``dim`` (``expand``).
    """

    def __init__(self, in_chans: int, dim: int, patch: int, rank: int | None = None) -> None:
        super().__init__()
        self.rank = rank
        if rank is None:
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
            self.expand = None
        else:
            if rank < 1:
                raise ConfigError(f"embed_rank must be a positive number of features, got {rank}")
            self.proj = nn.Conv2d(in_chans, rank, kernel_size=patch, stride=patch, bias=False)
            self.expand = nn.Conv2d(rank, dim, kernel_size=1)
        self.stride = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x if self.expand is None else self.expand(x)


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
    second window layer (Swin; with ``share_layers``, every second distinct block).

    ``share_layers`` (ALBERT cross-layer sharing: ``depth`` must be a multiple of it) and
    ``embed_rank`` (factorized patch embedding, ``stem="patch"`` only) are described in the module
    docstring; ``None`` (the default) gives the plain model with unchanged parameter names.
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
        share_layers: int | None = None,
        embed_rank: int | None = None,
    ) -> None:
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch_size}")
        if share_layers is not None and (share_layers < 1 or depth % share_layers):
            raise ConfigError(
                f"share_layers={share_layers} must be a positive divisor of depth={depth} "
                "(each distinct block is reused depth // share_layers times)"
            )
        if embed_rank is not None and stem != "patch":
            raise ConfigError(f"embed_rank factorizes the patch embedding; it needs stem='patch', not {stem!r}")
        self.num_classes, self.global_pool, self.embed_dim = num_classes, global_pool, embed_dim
        self.depth, self.share_layers, self.embed_rank = depth, share_layers, embed_rank
        # Each distinct block runs this many times in a row (1: no sharing).
        self.block_repeats = 1 if share_layers is None else depth // share_layers
        self.grad_checkpointing = False
        self.patch_embed = (
            PatchEmbed(in_chans, embed_dim, patch_size, embed_rank)
            if stem == "patch"
            else ConvStem(in_chans, embed_dim, patch_size)
        )
        self.grid = (h // patch_size, w // patch_size)
        self.num_prefix = 1 if global_pool == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix else None
        n = self.grid[0] * self.grid[1] + self.num_prefix
        self.pos_embed = nn.Parameter(torch.randn(1, n, embed_dim) * 0.02)
        attn_cls = get_attention(attention)
        kwargs = dict(attn_kwargs or {})
        blocks = []
        for i in range(depth if share_layers is None else share_layers):
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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations during backward instead of storing them (timm's
        method name and signature). Applies in training mode with autograd on; the forward
        values and the gradients are the same."""
        self.grad_checkpointing = bool(enable)

    def block_schedule(self) -> list[nn.Module]:
        """The ``depth`` blocks in the order they run (a shared block appears repeatedly)."""
        return [blk for blk in self.blocks for _ in range(self.block_repeats)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, C, h, w)
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if self.block_repeats == 1 and not recompute:
            return self.norm(self.blocks(x))  # the plain model: one call of the Sequential, as always
        for blk in self.blocks:
            for _ in range(self.block_repeats):
                x = checkpoint(blk, x, use_reentrant=False) if recompute else blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
