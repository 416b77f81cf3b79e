"""The edge forms of the timm attention, windowing, normalisation and pooling modules that
:func:`edgevit.converters.rewrites.edge_rewrite` swaps in: each computes what the module it replaces
computes (up to float reassociation) in ops a runtime's delegate takes whole -- batched matmuls
instead of fused attention, windows at rank <= 5, LayerNorm as means by matmul, pooling that keeps
its dimensions. Each is built from the module it replaces (``Form(src)``) and raises
:class:`RewriteSkipped` when that module is one it cannot reproduce exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.errors import ConfigError


class RewriteSkipped(Exception):
    """A rule matched a module it cannot rewrite exactly (the module is kept, the reason reported)."""


# ------------------------------------------------------------------------------------------------
# Shared pieces


def split_heads(x: torch.Tensor, heads: int, transpose: bool = False) -> torch.Tensor:
    """(B, N, heads * d) -> (B * heads, N, d), or (B * heads, d, N) with ``transpose``."""
    b, n, c = x.shape
    x = x.reshape(b, n, heads, c // heads)
    x = x.permute(0, 2, 3, 1) if transpose else x.permute(0, 2, 1, 3)
    return x.reshape(b * heads, *x.shape[2:])


def merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B * heads, N, d) -> (B, N, heads * d)."""
    bh, n, d = x.shape
    return x.reshape(bh // heads, heads, n, d).permute(0, 2, 1, 3).reshape(bh // heads, n, heads * d)


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.requires_grad_(False)
    return layer


def _attention_bias(module: nn.Module) -> torch.Tensor:
    """The (heads, Nq, Nk) relative-position bias LeViT / EfficientFormerV2 gather each call."""
    with torch.no_grad():
        return module.attention_biases[:, module.attention_bias_idxs].detach().clone()


def softmax_with_bias(scores: torch.Tensor, bias: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Softmax over keys of (B * heads, Nq, Nk) scores plus a constant (groups, Nq, Nk) bias, where
    groups is a multiple of heads (windows x heads for Swin), added batch-wise at rank 4."""
    if bias is not None:
        bh, nq, nk = scores.shape
        g = bias.shape[0]
        scores = (scores.reshape(bh // g, g, nq, nk) + bias).reshape(bh, nq, nk)
    return scores.softmax(dim=-1)


# ------------------------------------------------------------------------------------------------
# ViT / DeiT / MobileViT attention (timm.layers.Attention)


class BmmAttention(nn.Module):
    """timm ``Attention`` as separate q/k/v projections and rank-3 batched matmuls per head.

    The query weights carry the 1/sqrt(d) scale (or it is applied after ``q_norm`` where the
    model normalises queries); the key is produced already transposed, (B*h, d, N), by its
    head split, so no separate transpose runs.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.head_dim = src.num_heads, src.head_dim
        a = src.num_heads * src.head_dim
        w, b = src.qkv.weight.detach(), (src.qkv.bias.detach() if src.qkv.bias is not None else None)
        self.q_norm, self.k_norm = src.q_norm, src.k_norm
        self.scale_after_norm = not isinstance(src.q_norm, nn.Identity)
        s = 1.0 if self.scale_after_norm else src.scale
        self.scale = src.scale
        self.q = linear_from(w[:a] * s, None if b is None else b[:a] * s)
        self.k = linear_from(w[a : 2 * a], None if b is None else b[a : 2 * a])
        self.v = linear_from(w[2 * a :], None if b is None else b[2 * a :])
        self.norm, self.gate, self.proj = src.norm, getattr(src, "gate", None), src.proj
        self.attn_drop, self.proj_drop = src.attn_drop, src.proj_drop

    def _heads(self, x: torch.Tensor, norm: nn.Module, transpose: bool) -> torch.Tensor:
        if isinstance(norm, nn.Identity):
            return split_heads(x, self.num_heads, transpose)
        b, n, _ = x.shape
        x = norm(x.reshape(b, n, self.num_heads, self.head_dim)).reshape(b, n, -1)
        return split_heads(x, self.num_heads, transpose)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ConfigError("the edge attention rewrite handles unmasked self-attention only")
        b, n, _ = x.shape
        q = self._heads(self.q(x), self.q_norm, False)
        if self.scale_after_norm:
            q = q * self.scale
        k = self._heads(self.k(x), self.k_norm, True)
        v = split_heads(self.v(x), self.num_heads)
        attn = self.attn_drop(torch.bmm(q, k).softmax(dim=-1))
        out = merge_heads(torch.bmm(attn, v), self.num_heads)
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(self.norm(out)))


def _qkv_split(qkv: nn.Linear, scale: float) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """A fused [q | k | v] projection as three linears, the query carrying ``scale``."""
    a = qkv.weight.shape[0] // 3
    w, b = qkv.weight.detach(), (qkv.bias.detach() if qkv.bias is not None else None)
    return (
        linear_from(w[:a] * scale, None if b is None else b[:a] * scale),
        linear_from(w[a : 2 * a], None if b is None else b[a : 2 * a]),
        linear_from(w[2 * a :], None if b is None else b[2 * a :]),
    )


class BmmTokenAttention(nn.Module):
    """edgevit's reference ``FullAttention`` (models/attention.py) as rank-3 per-head matmuls."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        self.q, self.k, self.v = _qkv_split(src.qkv, src.scale)
        self.proj = src.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(x), self.num_heads)
        k = split_heads(self.k(x), self.num_heads, transpose=True)
        v = split_heads(self.v(x), self.num_heads)
        return self.proj(merge_heads(torch.bmm(torch.bmm(q, k).softmax(dim=-1), v), self.num_heads))


class BmmMapAttention(BmmTokenAttention):
    """FastViT's ``Attention`` over the pixels of an NCHW map, as rank-3 per-head matmuls."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__(src)
        self.attn_drop, self.proj_drop = src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q = split_heads(self.q(t), self.num_heads)
        k = split_heads(self.k(t), self.num_heads, transpose=True)
        v = split_heads(self.v(t), self.num_heads)
        attn = self.attn_drop(torch.bmm(q, k).softmax(dim=-1))
        out = self.proj_drop(self.proj(merge_heads(torch.bmm(attn, v), self.num_heads)))
        return out.transpose(1, 2).reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------------
# Swin: windows at rank <= 5, cyclic shift as slices + cat, bias and shift mask as one constant


def roll2d(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """``torch.roll(x, (sh, sw), dims=(1, 2))`` as slices + concatenation (delegate-friendly)."""
    h, w = x.shape[1], x.shape[2]
    sh, sw = sh % h, sw % w
    if sh:
        x = torch.cat([x[:, h - sh :], x[:, : h - sh]], dim=1)
    if sw:
        x = torch.cat([x[:, :, w - sw :], x[:, :, : w - sw]], dim=2)
    return x


def window_partition_rank4(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nH * nW, wh * ww, C), windows in Swin's order, with rank-4 tensors."""
    b, h, w, c = x.shape
    x = x.reshape(b * (h // wh), wh, w // ww, ww * c).permute(0, 2, 1, 3)
    return x.reshape(-1, wh * ww, c)


def window_reverse_rank4(x: torch.Tensor, wh: int, ww: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition_rank4`: (B * nH * nW, wh * ww, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.reshape(-1, w // ww, wh, ww * c).permute(0, 2, 1, 3)
    return x.reshape(-1, h, w, c)


class WindowBmmAttention(nn.Module):
    """Swin ``WindowAttention`` with its relative-position bias and (for shifted blocks) the
    shift mask precomputed as one constant (windows * heads, N, N), per-head rank-3 matmuls."""

    def __init__(self, src: nn.Module, mask: torch.Tensor | None) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        a = src.qkv.weight.shape[0] // 3
        w, b = src.qkv.weight.detach(), (src.qkv.bias.detach() if src.qkv.bias is not None else None)
        self.q = linear_from(w[:a] * src.scale, None if b is None else b[:a] * src.scale)
        self.k = linear_from(w[a : 2 * a], None if b is None else b[a : 2 * a])
        self.v = linear_from(w[2 * a :], None if b is None else b[2 * a :])
        self.proj, self.attn_drop, self.proj_drop = src.proj, src.attn_drop, src.proj_drop
        with torch.no_grad():
            bias = src._get_rel_pos_bias()[0].detach()  # (heads, N, N)
            if mask is not None:  # (nW, N, N) -> (nW, heads, N, N) -> (nW * heads, N, N)
                bias = (mask[:, None].to(bias.dtype) + bias[None]).flatten(0, 1)
        self.register_buffer("bias", bias.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(x), self.num_heads)
        k = split_heads(self.k(x), self.num_heads, transpose=True)
        v = split_heads(self.v(x), self.num_heads)
        attn = self.attn_drop(softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads))
        return self.proj_drop(self.proj(merge_heads(torch.bmm(attn, v), self.num_heads)))


class EdgeSwinBlock(nn.Module):
    """timm ``SwinTransformerBlock`` (B, H, W, C) -> (B, H, W, C) with rank <= 4 windowing."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        h, w = src.input_resolution
        (wh, ww), (sh, sw) = tuple(src.window_size), tuple(src.shift_size)
        if h % wh or w % ww:
            raise RewriteSkipped(f"input {h}x{w} is not a whole number of {wh}x{ww} windows")
        if getattr(src, "dynamic_mask", False):
            raise RewriteSkipped("dynamic masks (input size changes at run time) are not rewritten")
        self.resolution, self.window, self.shift = (h, w), (wh, ww), (sh, sw)
        mask = src.attn_mask if any(self.shift) else None
        self.norm1, self.norm2, self.mlp = src.norm1, src.norm2, src.mlp
        self.drop_path1, self.drop_path2 = src.drop_path1, src.drop_path2
        self.attn = WindowBmmAttention(src.attn, mask)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if (h, w) != self.resolution:
            raise ConfigError(f"edge Swin block built for {self.resolution}, got input {h}x{w}")
        (wh, ww), (sh, sw) = self.window, self.shift
        if sh or sw:
            x = roll2d(x, -sh, -sw)
        x = window_reverse_rank4(self.attn(window_partition_rank4(x, wh, ww)), wh, ww, h, w)
        if sh or sw:
            x = roll2d(x, sh, sw)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(b, -1, c)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)


class EdgePatchMerging(nn.Module):
    """timm Swin ``PatchMerging`` with a rank-5 (not rank-6) space-to-depth."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.norm, self.reduction = src.norm, src.reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            b, h, w, c = x.shape
        # timm: (B, H/2, 2r, W/2, 2s, C) -> (B, H/2, W/2, s, r, C); here B and H/2 are merged.
        x = x.reshape(b * h // 2, 2, w // 2, 2, c).permute(0, 2, 3, 1, 4).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class BmmTokenWindowAttention(nn.Module):
    """edgevit's ``WindowAttention`` (models/attention.py; the windowed ViT): rank-4 windows,
    the shift as slices + concatenation, the shift mask as a (windows * heads, N, N) constant."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.grid, self.window, self.shift = src.num_heads, tuple(src.grid), src.window, src.shift
        self.q, self.k, self.v = _qkv_split(src.qkv, src.scale)
        self.proj = src.proj
        bias = None
        if src.mask is not None:  # (1, nW, 1, N, N) -> (nW * heads, N, N)
            m = src.mask.detach()[0, :, 0]
            bias = m[:, None].expand(m.shape[0], self.num_heads, *m.shape[1:]).reshape(-1, *m.shape[1:])
        self.register_buffer("bias", None if bias is None else bias.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        (gh, gw), ws, s = self.grid, self.window, self.shift
        x = x.reshape(b, gh, gw, c)
        if s:
            x = roll2d(x, -s, -s)
        win = window_partition_rank4(x, ws, ws)
        q = split_heads(self.q(win), self.num_heads)
        k = split_heads(self.k(win), self.num_heads, transpose=True)
        v = split_heads(self.v(win), self.num_heads)
        attn = softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads)
        out = window_reverse_rank4(self.proj(merge_heads(torch.bmm(attn, v), self.num_heads)), ws, ws, gh, gw)
        if s:
            out = roll2d(out, s, s)
        return out.reshape(b, n, c)


# ------------------------------------------------------------------------------------------------
# EfficientViT: ReLU linear attention phi(Q) (phi(K)^T V), kept in the channels-first layout


class EdgeLinearSelfAttention(nn.Module):
    """MobileViTv2's separable linear self-attention without ``expand_as``: the context vector
    (B, d, P, 1) multiplies the values (B, d, P, N) by broadcasting, the same product, which TFLite
    converts (the expanded form fails: ``'tfl.mul' op operands don't have broadcast-compatible
    shapes``). Cross-attention calls (``x_prev``) go to the original module."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.embed_dim = src.embed_dim
        self.qkv_proj, self.out_proj = src.qkv_proj, src.out_proj
        self.attn_drop, self.out_drop = src.attn_drop, src.out_drop
        self._cross = [src]  # a plain list: not a submodule, its weights are the shared ones above

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor | None = None) -> torch.Tensor:
        if x_prev is not None:
            return self._cross[0](x, x_prev)
        query, key, value = self.qkv_proj(x).split([1, self.embed_dim, self.embed_dim], dim=1)
        context = (key * self.attn_drop(torch.softmax(query, dim=-1))).sum(dim=-1, keepdim=True)
        return self.out_drop(self.out_proj(torch.relu(value) * context))


class BmmLiteMLA(nn.Module):
    """EfficientViT ``LiteMLA``: out = phi(Q) (phi(K)^T [V 1]) normalised by its last column.

    Computed transposed, on (B * groups, dim, H * W) slices of the channels-first map: the key is
    the only operand that needs a transpose and the output is already in the map's layout. The
    all-ones row of V^T is a zero pad plus a constant one-hot row (TFLite's XNNPACK delegate takes
    PAD but not PADV2, a pad with value 1). Cost stays linear in the number of pixels.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.dim, self.eps = src.dim, src.eps
        self.qkv, self.aggreg, self.kernel_func, self.proj = src.qkv, src.aggreg, src.kernel_func, src.proj
        last = torch.zeros(1, src.dim + 1, 1)
        last[0, -1, 0] = 1.0
        self.register_buffer("ones_row", last, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        d = self.dim
        qkv = qkv.reshape(-1, 3 * d, h * w)  # (B * groups, 3d, HW)
        q_t = self.kernel_func(qkv[:, :d])  # (G, d, HW)
        k = self.kernel_func(qkv[:, d : 2 * d]).permute(0, 2, 1)  # (G, HW, d)
        v_t = F.pad(qkv[:, 2 * d :], (0, 0, 0, 1)) + self.ones_row  # (G, d + 1, HW), last row ones
        out_t = torch.bmm(torch.bmm(v_t, k), q_t)  # (G, d + 1, HW)
        out_t = out_t[:, :d] / (out_t[:, d:] + self.eps)
        return self.proj(out_t.reshape(b, -1, h, w))


# ------------------------------------------------------------------------------------------------
# LeViT


def fold_linear_norm(src: nn.Module) -> nn.Linear:
    """LeViT ``LinearNorm`` (Linear + BatchNorm1d) as one Linear (eval-mode statistics)."""
    lin, bn = src.linear, src.bn
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    w = lin.weight.detach() * s[:, None]
    b = (bn.bias - bn.running_mean * s).detach()
    if lin.bias is not None:
        b = b + lin.bias.detach() * s
    return linear_from(w, b)


def _levit_linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    layer = module if isinstance(module, nn.Linear) else fold_linear_norm(module)
    return layer.weight.detach(), (layer.bias.detach() if layer.bias is not None else torch.zeros(layer.out_features))


class BmmLevitAttention(nn.Module):
    """LeViT ``Attention`` (token mode) with q/k/v regrouped from the per-head qkv layout."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if src.use_conv:
            raise RewriteSkipped("convolutional LeViT attention is not rewritten")
        h, kd, vd = src.num_heads, src.key_dim, src.val_dim
        w, b = _levit_linear(src.qkv)
        w, b = w.reshape(h, 2 * kd + vd, -1), b.reshape(h, 2 * kd + vd)
        self.num_heads = h
        self.q = linear_from(w[:, :kd].reshape(h * kd, -1) * src.scale, b[:, :kd].reshape(-1) * src.scale)
        self.k = linear_from(w[:, kd : 2 * kd].reshape(h * kd, -1), b[:, kd : 2 * kd].reshape(-1))
        self.v = linear_from(w[:, 2 * kd :].reshape(h * vd, -1), b[:, 2 * kd :].reshape(-1))
        self.register_buffer("bias", _attention_bias(src), persistent=False)
        self.proj = src.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(x), self.num_heads)
        k = split_heads(self.k(x), self.num_heads, transpose=True)
        v = split_heads(self.v(x), self.num_heads)
        attn = softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads)
        return self.proj(merge_heads(torch.bmm(attn, v), self.num_heads))


class EdgeSubsample(nn.Module):
    """LeViT ``Downsample`` (strided token subsampling) as pad + reshape + unit-stride slices."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if src.pool is not None:
            raise RewriteSkipped("pooling downsample is already delegate-friendly")
        self.stride, self.resolution = src.stride, tuple(src.resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        s, (h, w) = self.stride, self.resolution
        x = x.reshape(b, h, w, c)
        ph, pw = -h % s, -w % s
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        x = x.reshape(b * (h + ph) // s, s, (w + pw) // s, s * c)[:, :1, :, :c]
        return x.reshape(b, -1, c)


class BmmLevitAttentionDownsample(nn.Module):
    """LeViT ``AttentionDownsample`` (token mode): queries from the subsampled tokens."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if src.use_conv:
            raise RewriteSkipped("convolutional LeViT attention is not rewritten")
        h, kd, vd = src.num_heads, src.key_dim, src.val_dim
        w, b = _levit_linear(src.kv)
        w, b = w.reshape(h, kd + vd, -1), b.reshape(h, kd + vd)
        self.num_heads = h
        self.k = linear_from(w[:, :kd].reshape(h * kd, -1), b[:, :kd].reshape(-1))
        self.v = linear_from(w[:, kd:].reshape(h * vd, -1), b[:, kd:].reshape(-1))
        subsample, q_lin = src.q[0], src.q[1]
        qw, qb = _levit_linear(q_lin)
        self.subsample = EdgeSubsample(subsample) if subsample.pool is None else subsample
        self.q = linear_from(qw * src.scale, qb * src.scale)
        self.register_buffer("bias", _attention_bias(src), persistent=False)
        self.proj = src.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(self.subsample(x)), self.num_heads)
        k = split_heads(self.k(x), self.num_heads, transpose=True)
        v = split_heads(self.v(x), self.num_heads)
        attn = softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads)
        return self.proj(merge_heads(torch.bmm(attn, v), self.num_heads))


# ------------------------------------------------------------------------------------------------
# EfficientFormerV2 (channels-first attention with talking heads)


class BmmAttention2d(nn.Module):
    """EfficientFormerV2 ``Attention2d`` with rank-3 per-head matmuls and a constant bias."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.scale, self.resolution = src.num_heads, src.scale, tuple(src.resolution)
        self.stride_conv, self.upsample = src.stride_conv, src.upsample
        self.q, self.k, self.v, self.v_local = src.q, src.k, src.v, src.v_local
        self.talking_head1, self.talking_head2 = HeadMix.of(src.talking_head1), HeadMix.of(src.talking_head2)
        self.act, self.proj = src.act, src.proj
        self.register_buffer("bias", _attention_bias(src)[None], persistent=False)  # (1, h, N, N)

    def _channels_to_heads(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        b, c, h, w = x.shape  # -> (B * heads, N, c / heads) or (B * heads, c / heads, N)
        x = x.reshape(b * self.num_heads, c // self.num_heads, h * w)
        return x if transpose else x.permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        q = self._channels_to_heads(self.q(x), False)
        k = self._channels_to_heads(self.k(x), True)
        v = self.v(x)
        v_local = self.v_local(v)
        v = self._channels_to_heads(v, False)
        n = q.shape[1]
        attn = torch.bmm(q, k).reshape(b, self.num_heads, n, n) * self.scale + self.bias
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        out = torch.bmm(attn.reshape(b * self.num_heads, n, n), v)  # (B * h, N, d)
        out = out.permute(0, 2, 1).reshape(b, -1, *self.resolution) + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(self.act(out))


class BmmAttention2dDownsample(BmmAttention2d):
    """EfficientFormerV2 ``Attention2dDownsample``: local-global queries at half resolution."""

    def __init__(self, src: nn.Module) -> None:
        nn.Module.__init__(self)
        self.num_heads, self.scale, self.resolution = src.num_heads, src.scale, tuple(src.resolution2)
        self.q, self.k, self.v, self.v_local = src.q, src.k, src.v, src.v_local
        self.act, self.proj = src.act, src.proj
        self.register_buffer("bias", _attention_bias(src)[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self._channels_to_heads(self.q(x), False)
        k = self._channels_to_heads(self.k(x), True)
        v = self.v(x)
        v_local = self.v_local(v)
        v = self._channels_to_heads(v, False)
        nq, nk = q.shape[1], k.shape[2]
        attn = (torch.bmm(q, k).reshape(b, self.num_heads, nq, nk) * self.scale + self.bias).softmax(dim=-1)
        out = torch.bmm(attn.reshape(b * self.num_heads, nq, nk), v)
        out = out.permute(0, 2, 1).reshape(b, -1, *self.resolution) + v_local
        return self.proj(self.act(out))


# ------------------------------------------------------------------------------------------------
# Normalisation and pooling


class LinearMeanLayerNorm(nn.Module):
    """LayerNorm over the last dim with mean and variance from a one-output linear layer.

    mean = x @ (1/C), var = ((x - mean)^2) @ (1/C): every op (linear, sub, mul, add, rsqrt) is
    one XNNPACK's ExecuTorch partitioner takes, at any rank.
    """

    def __init__(self, src: nn.LayerNorm) -> None:
        super().__init__()
        if len(src.normalized_shape) != 1:
            raise RewriteSkipped(f"normalises over {tuple(src.normalized_shape)}, not one dim")
        c = src.normalized_shape[0]
        self.eps = src.eps
        self.register_buffer("average", torch.full((1, c), 1.0 / c), persistent=False)
        self.weight = src.weight if src.elementwise_affine else None
        self.bias = src.bias if src.elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.average)
        y = centred * torch.rsqrt(F.linear(centred * centred, self.average) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


class ConvMeanLayerNorm2d(nn.Module):
    """timm ``LayerNorm2d`` (channels of an NCHW map) with the means as 1x1 convolutions."""

    def __init__(self, src: nn.LayerNorm) -> None:
        super().__init__()
        c = src.normalized_shape[0]
        self.eps = src.eps
        self.register_buffer("average", torch.full((1, c, 1, 1), 1.0 / c), persistent=False)
        self.weight = src.weight if src.elementwise_affine else None
        self.bias = src.bias if src.elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.conv2d(x, self.average)
        y = centred * torch.rsqrt(F.conv2d(centred * centred, self.average) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class KeepDimsAvgPool(nn.Module):
    """timm ``FastAdaptiveAvgPool`` as the NCHW keep-dims mean over (2, 3) that XNNPACK runs."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.flatten = src.flatten
        self.channels_last = tuple(src.dim) == (1, 2)
        if tuple(src.dim) not in ((1, 2), (2, 3)):
            raise RewriteSkipped(f"pools over dims {src.dim}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = x.mean((2, 3), keepdim=True)
        return x.flatten(1) if self.flatten else (x.permute(0, 2, 3, 1) if self.channels_last else x)


class KeepDimsAvgPool1d(nn.Module):
    """``nn.AdaptiveAvgPool1d(1)`` over (B, C, L) (transformers' Swin pooler) as the rank-4
    keep-dims mean over (2, 3) that XNNPACK runs, instead of unsqueeze + 2-D pool + squeeze."""

    def __init__(self, src: nn.AdaptiveAvgPool1d) -> None:
        super().__init__()
        size = src.output_size
        if (size[0] if isinstance(size, (tuple, list)) else size) != 1:
            raise RewriteSkipped(f"pools to {size}, not 1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) or unbatched (C, L)
        return x.reshape(-1, 1, x.shape[-1], 1).mean((2, 3), keepdim=True).reshape(*x.shape[:-1], 1)


class RowsLinear(nn.Module):
    """A linear layer applied to its input flattened to (rows, features) and reshaped back."""

    def __init__(self, src: nn.Linear) -> None:
        super().__init__()
        self.linear = src

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.linear(x)
        return self.linear(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.linear.out_features)

    # Models that read their linear layers' parameters directly (timm's SwinV2 builds the qkv bias
    # from ``qkv.bias`` pieces and calls ``F.linear(x, qkv.weight, bias)``) see the wrapped ones.
    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features


# ------------------------------------------------------------------------------------------------
# CaiT / XCiT attention (timm.models.cait, timm.models.xcit)


class HeadMix(nn.Module):
    """Talking heads: a (heads x heads) mixing of (B, heads, N, N) attention maps, as one batched
    matmul of the weight over (B, heads, N * N) plus the bias. The 1x1-convolution form of the
    same product computes wrong numbers on ExecuTorch's XNNPACK around a softmax (CaiT cosine 0.84,
    EfficientFormerV2-S1 0.90 with non-degenerate weights); this one is exact there."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().reshape(weight.shape[0], weight.shape[1]).clone())
        heads = weight.shape[0]
        b = bias.detach().clone() if bias is not None else torch.zeros(heads, dtype=weight.dtype)
        self.register_buffer("bias", b.reshape(1, heads, 1))

    @classmethod
    def of(cls, layer: nn.Module) -> HeadMix:
        """From a ``Linear(heads, heads)`` or a 1x1 ``Conv2d(heads, heads)``."""
        return cls(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, m = x.shape
        return (torch.matmul(self.weight, x.reshape(b, h, n * m)) + self.bias).reshape(b, h, n, m)


class BmmClassAttention(nn.Module):
    """CaiT's ``ClassAttn`` (also XCiT's class-attention layers): the class token attends to all
    tokens; rank-3 per-head matmuls, the scale folded into the query weights."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        q = src.q
        self.q = linear_from(q.weight.detach() * src.scale, None if q.bias is None else q.bias.detach() * src.scale)
        self.k, self.v, self.proj = src.k, src.v, src.proj
        self.attn_drop, self.proj_drop = src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(x[:, :1]), self.num_heads)  # (B * h, 1, d)
        k = split_heads(self.k(x), self.num_heads, transpose=True)
        v = split_heads(self.v(x), self.num_heads)
        attn = self.attn_drop(torch.bmm(q, k).softmax(dim=-1))
        return self.proj_drop(self.proj(merge_heads(torch.bmm(attn, v), self.num_heads)))


class BmmTalkingHeadAttention(nn.Module):
    """CaiT's ``TalkingHeadAttn``: per-head matmuls; the two head-mixing linear layers (before and
    after the softmax) as :class:`HeadMix` batched matmuls over the (B, heads, N, N) scores."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        self.q, self.k, self.v = _qkv_split(src.qkv, src.scale)
        self.talk_before, self.talk_after = HeadMix.of(src.proj_l), HeadMix.of(src.proj_w)
        self.proj, self.attn_drop, self.proj_drop = src.proj, src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.num_heads
        q = split_heads(self.q(x), h)
        k = split_heads(self.k(x), h, transpose=True)
        v = split_heads(self.v(x), h)
        scores = self.talk_before(torch.bmm(q, k).reshape(b, h, n, n))
        attn = self.attn_drop(self.talk_after(scores.softmax(dim=-1)))
        return self.proj_drop(self.proj(merge_heads(torch.bmm(attn.reshape(b * h, n, n), v), h)))


def _inverse_norm(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """1 / max(|row|, eps) for the rows of (G, R, N), as (G, R, 1): ``F.normalize``'s divisor. The
    sum of squares is N x the rank-4 keep-dims mean XNNPACK runs (its partitioner takes no sum)."""
    g, r, n = x.shape
    squares = (x * x).reshape(g * r, 1, n, 1).mean((2, 3), keepdim=True).reshape(g, r, 1) * n
    return torch.rsqrt(torch.clamp_min(squares, eps * eps))


class BmmCrossCovarianceAttention(nn.Module):
    """XCiT's ``XCA``: softmax(temperature * q^ k^T) over (d x d) channel covariances per head,
    q and k L2-normalised over the tokens; rank-3 matmuls on (B * h, d, N) slices, the key's
    normalisation applied to the columns of q^ k instead of to k."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        self.q, self.k, self.v = _qkv_split(src.qkv, 1.0)
        self.temperature = src.temperature  # (h, 1, 1), a learnt parameter
        self.proj, self.attn_drop, self.proj_drop = src.proj, src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        q_t = split_heads(self.q(x), h, transpose=True)  # (B * h, d, N)
        k_tokens = self.k(x)
        k_norm = _inverse_norm(split_heads(k_tokens, h, transpose=True)).reshape(b * h, 1, d)
        scores = torch.bmm(q_t * _inverse_norm(q_t), split_heads(k_tokens, h)) * k_norm  # (B * h, d, d)
        attn = self.attn_drop((scores.reshape(b, h, d, d) * self.temperature).softmax(dim=-1))
        out = torch.bmm(attn.reshape(b * h, d, d), split_heads(self.v(x), h, transpose=True))  # (B * h, d, N)
        return self.proj_drop(self.proj(out.reshape(b, c, n).transpose(1, 2)))  # channels (head, d) as timm
