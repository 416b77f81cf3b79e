"""Pluggable attention layers for edgevit's plain ViTs, selected by name.

Every layer takes tokens ``(B, N, C)`` laid out as ``num_prefix`` prefix tokens (class token)
followed by an ``H x W`` grid of patch tokens, and returns the same shape. All of them keep
tensors at rank <= 5 so that TFLite/XNNPACK delegates accept them.

    full        softmax(Q K^T / sqrt(d)) V                       O(N^2)
    window      Swin-style local 2-D windows, optionally shifted  O(N w^2)
    linformer   keys/values projected along N to k (Wang 2020)    O(N k)
    performer   FAVOR+ positive orthogonal random features        O(N m)

Adding one: subclass :class:`TokenAttention`, decorate with :func:`register_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FullAttention",
    "LinformerAttention",
    "PerformerAttention",
    "TokenAttention",
    "WindowAttention",
    "attention_names",
    "get_attention",
    "register_attention",
]

_ATTENTIONS: dict[str, type[TokenAttention]] = {}


def register_attention(cls: type[TokenAttention]) -> type[TokenAttention]:
    _ATTENTIONS[cls.name] = cls
    return cls


def attention_names() -> list[str]:
    return sorted(_ATTENTIONS)


def get_attention(name: str) -> type[TokenAttention]:
    if name not in _ATTENTIONS:
        from edgevit.errors import UnknownNameError

        raise UnknownNameError(name, _ATTENTIONS, hint="(attention mechanisms)")
    return _ATTENTIONS[name]


class TokenAttention(nn.Module):
    """Base: multi-head attention over prefix + grid tokens. ``complexity`` is the claimed cost."""

    name: ClassVar[str]
    complexity: ClassVar[str]

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], num_prefix: int = 1, **_: object):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.grid, self.num_prefix = tuple(grid), num_prefix
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (B, heads, N, head_dim)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, n, h * d))


@register_attention
class FullAttention(TokenAttention):
    """Reference softmax attention, computed with explicit matmuls (countable, delegate-friendly)."""

    name = "full"
    complexity = "O(N^2 d)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        return self.merge_heads(attn.softmax(dim=-1) @ v)


@register_attention
class WindowAttention(TokenAttention):
    """Local attention inside non-overlapping ``window x window`` squares of the patch grid.

    With ``shift`` the grid is rolled by half a window first and a mask keeps tokens from
    attending across the wrap (Swin). Prefix tokens are not allowed (use average pooling).
    The partition is done with rank-5 reshapes instead of Swin's rank-6 view.
    """

    name = "window"
    complexity = "O(N w^2 d)"

    def __init__(self, dim, num_heads, grid, num_prefix=0, window: int = 7, shift: bool = False, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        if num_prefix:
            raise ValueError("window attention does not support prefix (class) tokens; use avg pooling")
        gh, gw = self.grid
        if gh % window or gw % window:
            raise ValueError(f"grid {gh}x{gw} is not divisible by window {window}")
        self.window = window
        self.shift = window // 2 if shift and min(gh, gw) > window else 0
        if self.shift:
            self.register_buffer("mask", self._shift_mask(), persistent=False)
        else:
            self.mask = None

    def _shift_mask(self) -> torch.Tensor:
        gh, gw, ws, s = *self.grid, self.window, self.shift
        region = torch.zeros(gh, gw)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                region[hs, wsl] = cnt
                cnt += 1
        win = self._partition(region[None, :, :, None])[..., 0]  # (nW, ws*ws)
        diff = win[:, None, :] - win[:, :, None]
        mask = torch.zeros_like(diff).masked_fill(diff != 0, -100.0)
        return mask[None, :, None]  # (1, nW, 1, N, N)

    def _partition(self, x: torch.Tensor) -> torch.Tensor:
        b, gh, gw, c = x.shape
        ws = self.window
        x = x.reshape(b * (gh // ws), ws, gw // ws, ws, c).permute(0, 2, 1, 3, 4)
        return x.reshape(-1, ws * ws, c)

    def _reverse(self, x: torch.Tensor, b: int) -> torch.Tensor:
        gh, gw = self.grid
        ws, c = self.window, x.shape[-1]
        x = x.reshape(b * (gh // ws), gw // ws, ws, ws, c).permute(0, 2, 1, 3, 4)
        return x.reshape(b, gh, gw, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        gh, gw = self.grid
        x = x.reshape(b, gh, gw, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = self._partition(x)  # (B*nW, ws*ws, C)
        q, k, v = self.split_heads(win)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, heads, N, N)
        if self.mask is not None:
            nw, m = self.mask.shape[1], attn.shape[-1]
            attn = (attn.reshape(b, nw, self.num_heads, m, m) + self.mask).reshape(-1, self.num_heads, m, m)
        out = self.merge_heads(attn.softmax(dim=-1) @ v)
        out = self._reverse(out, b)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return out.reshape(b, n, c)


@register_attention
class LinformerAttention(TokenAttention):
    """Linformer: keys and values projected along the token axis from N to ``k`` (shared by heads)."""

    name = "linformer"
    complexity = "O(N k d)"

    def __init__(self, dim, num_heads, grid, num_prefix=1, k: int = 64, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        n = grid[0] * grid[1] + num_prefix
        self.k = min(k, n)
        self.proj_k = nn.Linear(n, self.k, bias=False)
        self.proj_v = nn.Linear(n, self.k, bias=False)
        nn.init.normal_(self.proj_k.weight, std=1.0 / math.sqrt(self.k))
        nn.init.normal_(self.proj_v.weight, std=1.0 / math.sqrt(self.k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        k = self.proj_k(k.transpose(-2, -1))  # (B, heads, d, k)
        v = self.proj_v(v.transpose(-2, -1)).transpose(-2, -1)  # (B, heads, k, d)
        attn = (q * self.scale) @ k
        return self.merge_heads(attn.softmax(dim=-1) @ v)


def _orthogonal_features(m: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """m x d Gaussian-norm rows, orthogonal within each block of d (Choromanski et al. 2021)."""
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=generator)
        q, _ = torch.linalg.qr(g)
        blocks.append(q.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)
    return w * norms


@register_attention
class PerformerAttention(TokenAttention):
    """Performer FAVOR+: softmax kernel approximated by positive orthogonal random features.

    Computed as phi(Q) (phi(K)^T V) normalised by phi(Q) (phi(K)^T 1), so cost is linear in N.
    :meth:`redraw` samples new features (training); they are a buffer, so exports are static.
    """

    name = "performer"
    complexity = "O(N m d)"

    def __init__(self, dim, num_heads, grid, num_prefix=1, features: int = 64, seed: int = 0, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        self.features = features
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("omega", _orthogonal_features(features, self.head_dim, gen))

    @torch.no_grad()
    def redraw(self, generator: torch.Generator | None = None) -> None:
        self.omega.copy_(_orthogonal_features(self.features, self.head_dim, generator))

    def _phi(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        x = x * self.head_dim**-0.25
        proj = x @ self.omega.T  # (B, h, N, m)
        sq = 0.5 * (x * x).sum(dim=-1, keepdim=True)
        # Subtracting a max keeps exp() in range; it cancels in the normalisation.
        if is_query:
            stab = proj.amax(dim=-1, keepdim=True)
        else:
            stab = proj.amax(dim=(-2, -1), keepdim=True)
        return torch.exp(proj - sq - stab) + 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        qp, kp = self._phi(q, True), self._phi(k, False)
        kv = kp.transpose(-2, -1) @ v  # (B, h, m, d)
        num = qp @ kv
        den = qp @ kp.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, N, 1)
        return self.merge_heads(num / den)


AttentionFactory = Callable[..., TokenAttention]
