"""MobileViT's unfold/fold in delegate-friendly forms (timm ``MobileVitBlock``, ``MobileVitV2Block``).

Registered in :mod:`edgevit.converters.rewrites` (rules ``mobilevit_block`` and
``mobilevit_v2_block``, run before the attention rules; switched with the ``attention`` form
``bmm`` like the other attention rules) and applied by every converter's ``prepare()``.

MobileViT (v1) attends, for each pixel position ``p`` inside a ``ph x pw`` patch, over the
``N = nh * nw`` patches. timm unfolds the ``(B, C, H, W)`` map into ``(B * P, N, C)`` tokens with
two rank-4 transposes and folds back with two more, then each attention splits heads with its own
transposes. On a channels-last runtime (TFLite, XNNPACK) the map already sits in memory as
``(B, nh, ph, nw, pw, C)``: :class:`EdgeMobileVitBlock` keeps the tokens as ``(B, N, P, C)``
(space-to-depth: one swap of ``ph`` and ``nw``) and lets each attention's head split do the
``P``-grouping for free: ``(B, N, P * heads, d) -> (B, P * heads, N, d)`` is the transpose a ViT
attention runs anyway. The LayerNorms, the MLP and the projections act on the last axis whatever
the layout, so the math is unchanged: the same products and sums, in the same order per token.

MobileViTv2's transformer (GroupNorm over the whole map, 1x1 convolutions, a separable linear
attention whose only cross-position step is a softmax and a sum over the patches ``N`` of each
in-patch position ``P``) needs no unfolding at all: :class:`EdgeMobileVitV2Block` runs it on the
``(B, C, H, W)`` map itself. Only the one-channel query is unfolded for the softmax, and the
context vector of each in-patch position is summed over the map and broadcast back by
reshapes of rank <= 5 (no ``BROADCAST_TO``, no ``expand``).

Measured (TFLite fp32, XNNPACK, 2 threads, interleaved on a busy 2-core x86 machine;
``benchmarks/mobilevit_rewrite.py``): MobileViT-XXS goes from 55 to 43 TRANSPOSE operators, but
its latency change stays inside this machine's noise (after/before 0.79 to 1.12 over eight
interleaved runs, median about 1.0): an ablation that drops the unfold/fold
entirely (wrong math, same shapes) is no faster, while dropping the transformers makes the model
2.5x faster; the time is in the attention/MLP/LayerNorm of the 2 x 2-patch transformers, not in
the reshapes. MobileViTv2-0.5's TFLite graph runs whole inside XNNPACK with 519 operators, 1
partition (the attention-only edge form: 642 through ``edgevit export``; converted directly with
``litert_torch.convert`` it left 42 ``BROADCAST_TO`` from ``group_norm`` outside, 22 partitions). On ExecuTorch the v2 map form is not applied (the rule is
TFLite's, see ``converters/rewrites.py``): XNNPACK there takes neither the channel means nor the
sums (70 partitions, against 40 with the attention-only rule); v1 lowers whole either way
(655 -> 601 nodes, 1 partition).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EdgeMobileVitBlock",
    "EdgeMobileVitV2Block",
    "KeepDimsGroupNorm1",
    "MapLinearSelfAttention",
    "MapLinearTransformerBlock",
    "MobileVitRewriteError",
    "PatchTokenBlock",
    "fold_tokens",
    "unfold_tokens",
]


class MobileVitRewriteError(ValueError):
    """A MobileViT block this rewrite cannot take exactly (the rule keeps it and reports why)."""


def _identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


# ------------------------------------------------------------------------------------------------
# MobileViT (v1): tokens as (B, N, P, C)


class PatchTokenBlock(nn.Module):
    """timm's pre-norm ViT ``Block`` on ``(B, N, P, C)`` tokens: attention over ``N`` for each ``P``.

    q/k/v are three linears (the query carries 1/sqrt(d)); heads are split as
    ``(B, N, P * h, d) -> (B * P * h, N, d)`` (the key straight to ``(B * P * h, d, N)``), so the
    rank-4 head transposes also group the tokens by in-patch position.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        attn = src.attn
        for part in ("ls1", "ls2", "drop_path1", "drop_path2"):
            module = getattr(src, part, None)
            if not _identity(module) and not type(module).__name__ == "DropPath":
                raise MobileVitRewriteError(f"block part {part} ({type(module).__name__}) is not handled")
        if not all(_identity(getattr(attn, n, None)) for n in ("q_norm", "k_norm", "norm")):
            raise MobileVitRewriteError("attention with q/k normalisation is not handled")
        if getattr(attn, "gate", None) is not None:
            raise MobileVitRewriteError("gated attention is not handled")
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        a = self.num_heads * self.head_dim
        w = attn.qkv.weight.detach()
        b = attn.qkv.bias.detach() if attn.qkv.bias is not None else None
        self.q = _linear(w[:a] * attn.scale, None if b is None else b[:a] * attn.scale)
        self.k = _linear(w[a : 2 * a], None if b is None else b[a : 2 * a])
        self.v = _linear(w[2 * a :], None if b is None else b[2 * a :])
        self.proj, self.norm1, self.norm2, self.mlp = attn.proj, src.norm1, src.norm2, src.mlp
        self.drop_path1, self.drop_path2 = src.drop_path1, src.drop_path2

    def _heads(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        b, n, p, _ = x.shape
        x = x.reshape(b, n, p * self.num_heads, self.head_dim)
        x = x.permute(0, 2, 3, 1) if transpose else x.permute(0, 2, 1, 3)
        return x.reshape(b * p * self.num_heads, *x.shape[2:])

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, p, c = x.shape
        q, k, v = self._heads(self.q(x), False), self._heads(self.k(x), True), self._heads(self.v(x), False)
        out = torch.bmm(torch.bmm(q, k).softmax(dim=-1), v)  # (B * P * h, N, d)
        out = out.reshape(b, p * self.num_heads, n, self.head_dim).permute(0, 2, 1, 3).reshape(b, n, p, c)
        return self.proj(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attention(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def unfold_tokens(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P, C) with N = (H / ph) * (W / pw) patches, P = ph * pw positions.

    Channels-last first (the layout a channels-last runtime already holds), then one rank-4 swap
    of the in-patch rows with the patch columns: a space-to-depth.
    """
    b, c, h, w = x.shape
    nh, nw = h // ph, w // pw
    x = x.permute(0, 2, 3, 1).reshape(b * nh, ph, nw, pw * c).transpose(1, 2)  # (B*nh, nw, ph, pw*C)
    return x.reshape(b, nh * nw, ph * pw, c)


def fold_tokens(x: torch.Tensor, ph: int, pw: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`unfold_tokens`: (B, N, P, C) -> (B, C, H, W)."""
    b, _, _, c = x.shape
    nh, nw = h // ph, w // pw
    x = x.reshape(b * nh, nw, ph, pw * c).transpose(1, 2)  # (B*nh, ph, nw, pw*C)
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


class EdgeMobileVitBlock(nn.Module):
    """timm ``MobileVitBlock`` with its transformer on ``(B, N, P, C)`` tokens (see module doc)."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.conv_kxk, self.conv_1x1, self.norm = src.conv_kxk, src.conv_1x1, src.norm
        self.conv_proj, self.conv_fusion = src.conv_proj, src.conv_fusion
        self.patch_size = tuple(src.patch_size)
        self.transformer = nn.Sequential(*[PatchTokenBlock(block) for block in src.transformer])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        ph, pw = self.patch_size
        _, _, h, w = x.shape
        new_h, new_w = math.ceil(h / ph) * ph, math.ceil(w / pw) * pw
        interpolate = (new_h, new_w) != (h, w)
        if interpolate:  # as timm: resize to whole patches and back
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        tokens = self.norm(self.transformer(unfold_tokens(x, ph, pw)))
        x = fold_tokens(tokens, ph, pw, new_h, new_w)
        if interpolate:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        x = self.conv_proj(x)
        if self.conv_fusion is not None:
            x = self.conv_fusion(torch.cat((shortcut, x), dim=1))
        return x


# ------------------------------------------------------------------------------------------------
# MobileViTv2: the transformer on the (B, C, H, W) map


class KeepDimsGroupNorm1(nn.Module):
    """``GroupNorm`` with one group as keep-dims means over (C, H, W) and a (1, C, 1, 1) affine:
    the same statistics, without the ``BROADCAST_TO`` that TFLite's lowering of ``group_norm``
    leaves outside XNNPACK."""

    def __init__(self, src: nn.GroupNorm) -> None:
        super().__init__()
        if src.num_groups != 1:
            raise MobileVitRewriteError(f"GroupNorm with {src.num_groups} groups (only 1 is handled)")
        self.eps = src.eps
        c = src.num_channels
        weight = src.weight.detach() if src.affine else torch.ones(c)
        bias = src.bias.detach() if src.affine else torch.zeros(c)
        self.weight = nn.Parameter(weight.reshape(1, c, 1, 1).clone())
        self.bias = nn.Parameter(bias.reshape(1, c, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(1, 2, 3), keepdim=True)
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias


class MapLinearSelfAttention(nn.Module):
    """MobileViTv2's separable self-attention on the (B, C, H, W) map of ``ph x pw`` patches.

    For each in-patch position p: scores = softmax over the patches of the one-channel query;
    context[p] = sum over the patches of key * scores; out = relu(value) * context[p]. Only the
    query is unfolded (one channel); key and value stay maps, channels-last for the sums and
    the broadcast product.
    """

    def __init__(self, src: nn.Module, patch_size: tuple[int, int]) -> None:
        super().__init__()
        self.embed_dim, self.patch_size = src.embed_dim, patch_size
        self.qkv_proj, self.out_proj = src.qkv_proj, src.out_proj
        self.attn_drop, self.out_drop = src.attn_drop, src.out_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ph, pw = self.patch_size
        nh, nw, d = h // ph, w // pw, self.embed_dim
        query, key, value = self.qkv_proj(x).split([1, d, d], dim=1)
        # softmax over the patches of each in-patch position: (B, 1, H, W) -> (B, P, N) and back
        q = query.reshape(b, nh, ph, nw, pw).permute(0, 2, 4, 1, 3).reshape(b, ph * pw, nh * nw)
        q = self.attn_drop(torch.softmax(q, dim=-1))
        scores = q.reshape(b, ph, pw, nh, nw).permute(0, 3, 1, 4, 2).reshape(b, 1, h, w)
        weighted = (key * scores).permute(0, 2, 3, 1)  # (B, H, W, d)
        context = weighted.reshape(b, nh, ph * w * d).sum(dim=1)  # (B, ph * W * d)
        context = context.reshape(b, ph, nw, pw * d).sum(dim=2)  # (B, ph, pw * d)
        v = torch.relu(value).permute(0, 2, 3, 1)  # (B, H, W, d)
        if b == 1:  # rank-4 broadcast
            out = v.reshape(nh, ph, nw, pw * d) * context.reshape(1, ph, 1, pw * d)
        else:
            out = v.reshape(b, nh, ph, nw, pw * d) * context.reshape(b, 1, ph, 1, pw * d)
        out = out.reshape(b, h, w, d).permute(0, 3, 1, 2)
        return self.out_drop(self.out_proj(out))


class MapLinearTransformerBlock(nn.Module):
    """timm ``LinearTransformerBlock`` (self-attention) on the (B, C, H, W) map."""

    def __init__(self, src: nn.Module, patch_size: tuple[int, int]) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(src.norm1), _norm(src.norm2)
        self.attn = MapLinearSelfAttention(src.attn, patch_size)
        self.mlp, self.drop_path1, self.drop_path2 = src.mlp, src.drop_path1, src.drop_path2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _norm(src: nn.Module) -> nn.Module:
    if type(src).__name__ == "GroupNorm1" or type(src) is nn.GroupNorm:
        return KeepDimsGroupNorm1(src)
    raise MobileVitRewriteError(f"transformer norm {type(src).__name__} is not handled (GroupNorm1 is)")


class EdgeMobileVitV2Block(nn.Module):
    """timm ``MobileVitV2Block`` with its transformer on the map: no unfold, no fold (module doc)."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.patch_size = tuple(src.patch_size)
        self.conv_kxk, self.conv_1x1, self.conv_proj = src.conv_kxk, src.conv_1x1, src.conv_proj
        self.transformer = nn.Sequential(*[MapLinearTransformerBlock(b, self.patch_size) for b in src.transformer])
        self.norm = _norm(src.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        ph, pw = self.patch_size
        new_h, new_w = math.ceil(h / ph) * ph, math.ceil(w / pw) * pw
        if (new_h, new_w) != (h, w):  # as timm: resize to whole patches (and stay there)
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=True)
        x = self.conv_1x1(self.conv_kxk(x))
        x = self.norm(self.transformer(x))
        return self.conv_proj(x)
