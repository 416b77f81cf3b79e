"""Pluggable attention layers for edgevit's plain ViTs: the efficient-attention zoo.

Every layer takes tokens ``(B, N, C)`` laid out as ``num_prefix`` prefix tokens (class token)
followed by an ``H x W`` grid of patch tokens (raster order), and returns the same shape. All of
them keep tensors at rank <= 5 so that TFLite/XNNPACK delegates accept them, and every tensor
shape is fixed by the input size (no shape depends on the data).

    family            name                claimed cost       this code computes
    reference         full                O(N^2 d)           the same
    fixed-pattern     window              O(N w^2 d)         the same (rank-5 partition)
                      longformer          O(N w d)           gathered blocks: O(N (3w + P) d)
                      global_tokens       O(N (w + g) d)     gathered blocks: O(N (3w + g) d)
                      bigbird             O(N (w+r+g) b d)   gathered blocks: O(N (3+r+g) b d)
                      sparse_strided      O(N sqrt(N) d)     row + column blocks: O(N (H + W) d)
                      sparse_fixed        O(N sqrt(N) d)     row blocks + summary columns
                      axial               O(N (H + W) d)     the same (two passes)
    compressed        memory_compressed   O(N^2 d / s)       the same
    low-rank          linformer           O(N k d)           the same
                      nystromformer       O(N m d)           the same (+ O(m^3) pinv)
    kernel            linear              O(N d^2)           phi(Q) (phi(K)^T V)
                      performer           O(N m d)           phi(Q) (phi(K)^T V)
                      cosformer           O(N d^2)           phi(Q) (phi(K)^T V), 2d features
                      relu_linear         O(N d^2)           phi(Q) (phi(K)^T V)
    learned-pattern   reformer            O(N log N d)       hash + top-k sort + chunks: O(N^2 d / c + N 2c d)
                      sinkhorn            O(N b d)           blocks + soft sort P: O(N 2b d + N^2 d / b)
                      routing             O(N sqrt(N) d)     top-k clusters: O(N w d) + O(N k d)
    synthesizer       synthesizer_dense   O(N^2 d)           the same
                      synthesizer_random  O(N^2 d)           the same

Conventions shared by the sparse and learned patterns: the prefix (class) tokens are *global*
(they attend to every token and every token attends to them, as Longformer does for [CLS]); this
adds O(P N d). Sparse patterns are computed with **static gathers**: the token indices each query
block reads are constants of the graph (precomputed buffers), so the exported graph does the
sparse amount of work, not a masked dense product. ``impl="masked"`` gives the masked-dense form of
the same pattern (an additive N x N mask: O(N^2 d), exact same output) for comparison.
Reformer and routing gather with *data-dependent* indices (top-k) at fixed shapes.

Adding one: subclass :class:`TokenAttention` (implement :meth:`TokenAttention.attend` or
``forward``), decorate with :func:`register_attention`; :func:`describe_mechanisms` lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.errors import ConfigError

__all__ = [
    "MASK_VALUE",
    "AxialAttention",
    "BigBirdAttention",
    "CosFormerAttention",
    "FullAttention",
    "GlobalLocalAttention",
    "LinearAttention",
    "LinformerAttention",
    "LongformerAttention",
    "MemoryCompressedAttention",
    "NystromAttention",
    "PerformerAttention",
    "ReLULinearAttention",
    "ReformerAttention",
    "RoutingAttention",
    "SinkhornAttention",
    "SparseFixedAttention",
    "SparsePattern",
    "SparseStridedAttention",
    "StaticSparseAttention",
    "SynthesizerDenseAttention",
    "SynthesizerRandomAttention",
    "TokenAttention",
    "WindowAttention",
    "attention_names",
    "describe_mechanisms",
    "get_attention",
    "register_attention",
    "share_projections_across_layers",
]

MASK_VALUE = -1e4
"""Additive score for a forbidden pair: exp(-1e4) is 0 in fp32 and fp16, yet a fully masked row
stays finite (uniform), so padding rows never produce NaN gradients."""

_ATTENTIONS: dict[str, type[TokenAttention]] = {}


def register_attention(cls: type[TokenAttention]) -> type[TokenAttention]:
    """Class decorator adding a mechanism to the registry under ``cls.name``."""
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
    """Base: multi-head attention over prefix + grid tokens.

    Class attributes describe the mechanism: ``complexity`` is the cost its paper claims,
    ``implementation`` what this code computes (and its cost), ``family`` and ``paper`` place it,
    ``static_indices`` is False where gathers use data-dependent indices (sorting, top-k), and
    ``export_issues`` maps a target to the op that blocks it there (measured).
    """

    name: ClassVar[str]
    complexity: ClassVar[str]
    family: ClassVar[str] = "reference"
    paper: ClassVar[str] = ""
    implementation: ClassVar[str] = ""
    static_indices: ClassVar[bool] = True
    export_issues: ClassVar[dict[str, str]] = {}
    notes: ClassVar[str] = ""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], num_prefix: int = 1, **unknown: object):
        super().__init__()
        if unknown:
            raise ConfigError(
                f"attention {getattr(self, 'name', type(self).__name__)!r} has no option(s) "
                f"{', '.join(sorted(unknown))}"
            )
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.grid, self.num_prefix = tuple(grid), num_prefix
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self._config: dict[str, Any] = {}

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.grid[0] * self.grid[1]

    def config(self) -> dict[str, Any]:
        """The mechanism's own constructor options: ``type(m)(dim, heads, grid, prefix, **m.config())``
        rebuilds it (e.g. at another resolution)."""
        return dict(self._config)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _split_heads(self.qkv(x), 3, self.num_heads)  # each (B, heads, N, head_dim)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, n, h * d))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head attention: (B, h, N, d) x3 -> (B, h, N, d), before the output projection."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        return self.merge_heads(self.attend(q, k, v))


def _default_device() -> torch.device:
    """The device tensors are created on here (``with torch.device("meta"):`` builds on meta)."""
    return torch.empty(0).device


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for operands with the same leading (batch) dims, as one rank-3 ``bmm``: a rank-4/5
    ``matmul`` lowers to no-op ``expand_copy`` nodes that ExecuTorch's XNNPACK partitioner leaves
    outside the delegate."""
    lead = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.reshape(*lead, a.shape[-2], b.shape[-1])


def _head_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` for ``x`` (B, h, n, k) and a per-head weight ``w`` (h, k, m): the batch is folded
    into the rows, one ``bmm`` over heads (no broadcast, so no expand)."""
    b, h, n, k = x.shape
    out = torch.bmm(x.transpose(0, 1).reshape(h, b * n, k), w)  # (h, B*n, m)
    return out.reshape(h, b, n, -1).transpose(0, 1)


def _split_heads(y: torch.Tensor, parts: int, heads: int) -> list[torch.Tensor]:
    """(B, N, parts * C) laid out [q | k | v] -> ``parts`` tensors (B, heads, N, C / heads).
    Slices, not ``unbind``/``select`` (which XNNPACK's partitioner leaves outside)."""
    b, n, width = y.shape
    c = width // parts
    return [y[..., i * c:(i + 1) * c].reshape(b, n, heads, c // heads).transpose(1, 2) for i in range(parts)]


def _prefix_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Dense attention of the prefix (global) queries over all tokens; ``q`` is pre-scaled."""
    qp = q[:, :, :num_prefix]
    return _bmm(_bmm(qp, k.transpose(-2, -1)).softmax(dim=-1), v)


def _blocks_with_prefix(
    qb: torch.Tensor,
    kb: torch.Tensor,
    vb: torch.Tensor,
    kp: torch.Tensor | None,
    vp: torch.Tensor | None,
    mask: torch.Tensor | None = None,
    with_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention of query blocks over their key blocks plus shared extra keys.

    ``qb`` (B, H, nb, s, d) pre-scaled, ``kb``/``vb`` (B, H, nb, t, d), ``kp``/``vp`` (B, H, E, d)
    keys every query also sees (global/prefix tokens), ``mask`` additive (.., nb, s, t) on the
    block part. One softmax over both. Returns the output (B, H, nb, s, d) and, ``with_lse``, the
    scores' log-sum-exp (B, H, nb, s). Every tensor stays at rank <= 5.
    """
    b, h, nb, s, d = qb.shape
    t = kb.shape[-2]
    # Block products as rank-3 batched matmuls: a rank-5 matmul lowers to expand copies that
    # ExecuTorch's XNNPACK partitioner leaves outside the delegate.
    scores = (qb.reshape(-1, s, d) @ kb.reshape(-1, t, d).transpose(-2, -1)).reshape(b, h, nb, s, t)
    if mask is not None:
        scores = scores + mask
    if kp is not None and kp.shape[-2]:
        e = kp.shape[-2]
        extra = _bmm(qb.reshape(b, h, nb * s, d), kp.transpose(-2, -1)).reshape(b, h, nb, s, e)
        scores = torch.cat([scores, extra], dim=-1)
    lse = _logsumexp(scores, -1)[..., 0] if with_lse else None
    attn = scores.softmax(dim=-1)
    out = (attn[..., :t].reshape(-1, s, t) @ vb.reshape(-1, t, d)).reshape(b, h, nb, s, d)
    if kp is not None and kp.shape[-2]:
        out = out + _bmm(attn[..., t:].reshape(b, h, nb * s, -1), vp).reshape(b, h, nb, s, d)
    return out, lse


# ------------------------------------------------------------------------------------------
# Reference


@register_attention
class FullAttention(TokenAttention):
    """Reference softmax attention, computed with explicit matmuls (countable, delegate-friendly)."""

    name = "full"
    complexity = "O(N^2 d)"
    paper = "Vaswani et al. 2017, Attention Is All You Need; Dosovitskiy et al. 2021 (ViT)"
    implementation = "softmax(Q K^T / sqrt(d)) V with explicit matmuls: O(N^2 d)"

    def attend(self, q, k, v):
        attn = _bmm(q * self.scale, k.transpose(-2, -1))
        return _bmm(attn.softmax(dim=-1), v)


# ------------------------------------------------------------------------------------------
# Fixed patterns


@register_attention
class WindowAttention(TokenAttention):
    """Local attention inside non-overlapping ``window x window`` squares of the patch grid.

    With ``shift`` the grid is rolled by half a window first and a mask keeps tokens from
    attending across the wrap (Swin). Prefix tokens are not allowed (use average pooling).
    The partition is done with rank-5 reshapes instead of Swin's rank-6 view.
    """

    name = "window"
    complexity = "O(N w^2 d)"
    family = "fixed-pattern"
    paper = "Liu et al. 2021, Swin Transformer (shifted windows)"
    implementation = "rank-5 window partition, dense attention per window: O(N w^2 d)"
    notes = "no prefix tokens (use global_pool='avg'); shift masks the wrapped regions with -100 (Swin)"

    def __init__(self, dim, num_heads, grid, num_prefix=0, window: int = 7, shift: bool = False, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        if num_prefix:
            raise ValueError("window attention does not support prefix (class) tokens; use avg pooling")
        gh, gw = self.grid
        if gh % window or gw % window:
            raise ValueError(f"grid {gh}x{gw} is not divisible by window {window}")
        self.window = window
        self.shift = window // 2 if shift and min(gh, gw) > window else 0
        self._config = {"window": window, "shift": bool(shift)}
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


@dataclass(frozen=True)
class SparsePattern:
    """A static sparse pattern in gathered-block form.

    ``query_order`` (hp, L): the token each query slot computes (-1: padding); slots are grouped
    into ``L / block`` query blocks. ``key_index`` (hp, nb, K): the tokens each query block reads
    (-1: none). ``global_keys`` are read by every query, ``global_queries`` read every key.
    ``hp`` is 1 (all heads share the pattern) or the number of heads.
    """

    query_order: torch.Tensor
    key_index: torch.Tensor
    global_keys: tuple[int, ...]
    global_queries: tuple[int, ...]
    block: int


_PATTERN_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


class StaticSparseAttention(TokenAttention):
    """Base of the fixed sparse patterns computed as gathered blocks with static indices.

    A subclass sets its options, then calls :meth:`_compile`; it implements
    :meth:`build_pattern` (which tokens each query block reads) and :meth:`local_allowed` (the
    exact pattern, vectorised over broadcast index tensors ``h, i, j``). Global keys/queries are
    added by the base. Each query block computes ``q_blk @ k_gathered^T`` with an additive static
    mask that keeps exactly the allowed pairs (dropping padding and duplicate keys), one softmax
    over the block's keys and the global keys, and the global queries attend densely.
    Compiled buffers are cached and shared by layers with the same pattern.
    """

    family = "fixed-pattern"
    impl_choices: ClassVar[tuple[str, ...]] = ("gather", "masked")

    def __init__(self, dim, num_heads, grid, num_prefix=1, impl: str = "gather", **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        if impl not in self.impl_choices:
            raise ConfigError(f"{self.name}: impl must be one of {', '.join(self.impl_choices)}, got {impl!r}")
        self.impl = impl

    # -- to implement -------------------------------------------------------------------
    def build_pattern(self) -> SparsePattern:
        raise NotImplementedError

    def local_allowed(self, h: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- compiled form ------------------------------------------------------------------
    def _cache_key(self) -> tuple:
        return (type(self).__name__, self.grid, self.num_prefix, self.num_heads, self.impl,
                tuple(sorted((k, repr(v)) for k, v in self._config.items() if k != "impl")))

    def _compile(self) -> None:
        # Patterns are built on the CPU (they need values, which a meta build lacks) and moved.
        device = _default_device()
        key = self._cache_key()
        if key in _PATTERN_CACHE:
            compiled = _PATTERN_CACHE[key]
        else:
            with torch.device("cpu"):
                compiled = self._compile_uncached()
            if self.impl == "gather":  # small (O(N) indices); dense N x N masks are not kept
                if len(_PATTERN_CACHE) > 64:
                    _PATTERN_CACHE.clear()
                _PATTERN_CACHE[key] = compiled
        for name, tensor in compiled.items():
            if name.startswith("_"):
                setattr(self, name, tensor)
            else:
                self.register_buffer(name, tensor.to(device), persistent=False)
        self.nb, self.bs, self.nk = (int(x) for x in compiled["_shape"].tolist())

    def allowed_matrix(self) -> torch.Tensor:
        """(hp, N, N) bool: which (query, key) pairs the pattern allows, globals included."""
        p = self.build_pattern()
        hp = p.query_order.shape[0]
        n = self.num_tokens
        h = torch.arange(hp).view(hp, 1, 1)
        i = torch.arange(n).view(1, n, 1)
        j = torch.arange(n).view(1, 1, n)
        ok = self.local_allowed(h, i, j)
        if p.global_queries:
            ok = ok | torch.isin(i, torch.tensor(p.global_queries))
        if p.global_keys:
            ok = ok | torch.isin(j, torch.tensor(p.global_keys))
        return ok.expand(hp, n, n)

    def _compile_uncached(self) -> dict[str, torch.Tensor]:
        n, heads = self.num_tokens, self.num_heads
        p = self.build_pattern()
        if self.impl == "masked":
            ok = self.allowed_matrix()
            mask = torch.zeros(ok.shape).masked_fill(~ok, MASK_VALUE)
            return {"dense_mask": mask, "_shape": torch.tensor([0, 0, 0])}
        qo, ki, bs = p.query_order, p.key_index, p.block
        hp, length = qo.shape
        nb, k = ki.shape[1:]
        if length != nb * bs or hp not in (1, heads):
            raise ValueError(f"{self.name}: inconsistent pattern (L={length}, nb={nb}, block={bs}, hp={hp})")
        gk = torch.tensor(p.global_keys, dtype=torch.long)
        gq = torch.tensor(p.global_queries, dtype=torch.long)
        hh = torch.arange(hp).view(hp, 1, 1, 1)
        qi = qo.view(hp, nb, bs, 1)
        kj = ki.view(hp, nb, 1, k)
        ok = self.local_allowed(hh, qi.clamp(min=0), kj.clamp(min=0)) & (qi >= 0) & (kj >= 0)
        if len(gk):
            ok = ok & ~torch.isin(kj, gk)  # global keys are read through their own columns
        earlier = (ki.unsqueeze(-1) == ki.unsqueeze(-2)) & torch.ones(k, k, dtype=torch.bool).tril(-1)
        ok = ok & ~earlier.any(-1).unsqueeze(2)  # a key listed twice for a block counts once
        mask = torch.zeros(hp, nb, bs, k).masked_fill(~ok, MASK_VALUE)  # global columns: always allowed
        # Where each token's output lives in cat([block outputs (h*L), global outputs (h*Gq)]).
        out_index = torch.full((heads, n), -1, dtype=torch.long)
        for h in range(heads):
            order = qo[h % hp]
            valid = order >= 0
            counts = torch.bincount(order[valid], minlength=n)
            if (counts > 1).any():
                raise ValueError(f"{self.name}: a token appears twice in the query order")
            pos = torch.full((n,), -1, dtype=torch.long)
            pos[order[valid]] = torch.arange(length)[valid] + h * length
            if len(gq):
                pos[gq] = heads * length + h * len(gq) + torch.arange(len(gq))
            if (pos < 0).any():
                missing = torch.nonzero(pos < 0).flatten().tolist()[:5]
                raise ValueError(f"{self.name}: tokens {missing} have no query slot")
            out_index[h] = pos
        head_of = torch.arange(heads) % hp
        offsets = torch.arange(heads) * n
        q_index = (offsets[:, None] + qo[head_of].clamp(min=0)).reshape(-1)
        k_index = (offsets[:, None, None] + ki[head_of].clamp(min=0)).reshape(-1)
        return {
            "q_index": q_index,
            "k_index": k_index,
            "gk_index": gk,
            "gq_index": gq,
            "mask": mask,
            "out_index": out_index.reshape(-1),
            "_shape": torch.tensor([nb, bs, k]),
        }

    def attend(self, q, k, v):
        q = q * self.scale
        if self.impl == "masked":
            attn = _bmm(q, k.transpose(-2, -1)) + self.dense_mask
            return _bmm(attn.softmax(dim=-1), v)
        b, h, n, d = q.shape
        nb, bs, nk = self.nb, self.bs, self.nk
        qb = q.reshape(b, h * n, d).index_select(1, self.q_index).reshape(b, h, nb, bs, d)
        kb = k.reshape(b, h * n, d).index_select(1, self.k_index).reshape(b, h, nb, nk, d)
        vb = v.reshape(b, h * n, d).index_select(1, self.k_index).reshape(b, h, nb, nk, d)
        kg = k.index_select(2, self.gk_index) if len(self.gk_index) else None
        vg = v.index_select(2, self.gk_index) if len(self.gk_index) else None
        out, _ = _blocks_with_prefix(qb, kb, vb, kg, vg, self.mask)
        parts = [out.reshape(b, h * nb * bs, d)]
        if len(self.gq_index):
            qg = q.index_select(2, self.gq_index)
            og = _bmm(_bmm(qg, k.transpose(-2, -1)).softmax(dim=-1), v)
            parts.append(og.reshape(b, -1, d))
        return torch.cat(parts, dim=1).index_select(1, self.out_index).reshape(b, h, n, d)


def _per_head(value: int | Sequence[int], heads: int, what: str) -> tuple[int, ...]:
    values = (int(value),) if isinstance(value, int) else tuple(int(x) for x in value)
    if len(values) not in (1, heads) or min(values) < 1:
        raise ConfigError(f"{what} must be a positive int or one per head ({heads}), got {value!r}")
    return values


@register_attention
class LongformerAttention(StaticSparseAttention):
    """Longformer's sliding window over the patch sequence, with dilation (per head).

    Query patch ``i`` reads patch ``j`` when ``|i - j| <= radius * dilation`` and ``i - j`` is a
    multiple of the dilation; prefix tokens are global (Longformer's [CLS] rule) and
    ``global_tokens`` (patch indices) can be made global too. Dilation is a static permutation
    (patches grouped by ``index mod dilation``) followed by an undilated band, computed as query
    blocks of ``radius`` reading the previous, own and next block (3 x radius keys).
    """

    name = "longformer"
    complexity = "O(N w d)"
    paper = "Beltagy et al. 2020, Longformer: The Long-Document Transformer"
    implementation = "static gather of 3 blocks of `radius` keys per query block (+ globals): O(N (3w + G) d)"
    notes = "1-D window over raster-ordered patches; dilation per head; prefix tokens global"

    def __init__(self, dim, num_heads, grid, num_prefix=1, radius: int = 7, dilation: int | Sequence[int] = 1,
                 global_tokens: Sequence[int] = (), impl: str = "gather", **kw):
        super().__init__(dim, num_heads, grid, num_prefix, impl=impl, **kw)
        if radius < 1:
            raise ConfigError(f"{self.name}: radius must be >= 1, got {radius}")
        self.radius = int(radius)
        self.dilation = _per_head(dilation, num_heads, f"{self.name} dilation")
        m = self.grid[0] * self.grid[1]
        bad = [t for t in global_tokens if not 0 <= t < m]
        if bad:
            raise ConfigError(f"{self.name}: global_tokens {bad} are outside the {m} patches")
        self.global_patches = tuple(sorted({int(t) for t in global_tokens}))
        dilation_opt = self.dilation if len(self.dilation) > 1 else self.dilation[0]
        self._config = {"radius": self.radius, "dilation": dilation_opt, "impl": impl, **self._extra_config()}
        self._compile()

    def _extra_config(self) -> dict[str, Any]:
        return {"global_tokens": self.global_patches} if self.global_patches else {}

    def _globals(self) -> tuple[int, ...]:
        return tuple(range(self.num_prefix)) + tuple(self.num_prefix + t for t in self.global_patches)

    def build_pattern(self) -> SparsePattern:
        p, m, bs = self.num_prefix, self.grid[0] * self.grid[1], self.radius
        orders, keys = [], []
        for dl in self.dilation:
            qo: list[int] = []
            ko: list[list[int]] = []
            for g in range(dl):
                toks = list(range(p + g, p + m, dl))
                nbg = math.ceil(len(toks) / bs)
                padded = toks + [-1] * (nbg * bs - len(toks))
                for blk in range(nbg):
                    qo += padded[blk * bs:(blk + 1) * bs]
                    span = range((blk - 1) * bs, (blk + 2) * bs)  # previous, own and next block
                    ko.append([padded[t] if 0 <= t < len(padded) else -1 for t in span])
            orders.append(qo)
            keys.append(ko)
        nb = max(len(k) for k in keys)
        for qo, ko in zip(orders, keys):
            qo += [-1] * ((nb - len(ko)) * bs)
            ko += [[-1] * (3 * bs)] * (nb - len(ko))
        g = self._globals()
        return SparsePattern(torch.tensor(orders), torch.tensor(keys), g, g, bs)

    def local_allowed(self, h, i, j):
        dl = torch.tensor(self.dilation)[h]
        pi, pj = i - self.num_prefix, j - self.num_prefix
        diff = pi - pj
        return (pi >= 0) & (pj >= 0) & (diff.remainder(dl) == 0) & (diff.abs() <= self.radius * dl)


@register_attention
class GlobalLocalAttention(LongformerAttention):
    """Global tokens (ETC / Longformer): the prefix tokens and ``global_grid^2`` chosen patches
    (centres of a ``global_grid x global_grid`` partition of the grid, or explicit
    ``global_tokens``) read every token and are read by every token; the other tokens read the
    globals plus a sliding window of ``radius``."""

    name = "global_tokens"
    complexity = "O(N (w + g) d)"
    paper = "Ainslie et al. 2020, ETC (global-local attention); Beltagy et al. 2020, Longformer"
    implementation = "static gather of 3 radius-blocks + g global columns; g global rows dense: O(N (3w + g) d + g N d)"
    notes = "global patches at the centres of a global_grid x global_grid partition; prefix tokens global"

    def __init__(self, dim, num_heads, grid, num_prefix=1, radius: int = 7, dilation: int | Sequence[int] = 1,
                 global_grid: int = 2, global_tokens: Sequence[int] | None = None, impl: str = "gather", **kw):
        gh, gw = grid
        self._global_grid = int(global_grid)
        if global_tokens is None:
            if not 1 <= global_grid <= min(gh, gw):
                raise ConfigError(f"global_tokens: global_grid must be in 1..{min(gh, gw)}, got {global_grid}")
            rows = [gh * (2 * a + 1) // (2 * global_grid) for a in range(global_grid)]
            cols = [gw * (2 * a + 1) // (2 * global_grid) for a in range(global_grid)]
            global_tokens = [r * gw + c for r in rows for c in cols]
            self._explicit = False
        else:
            self._explicit = True
        super().__init__(dim, num_heads, grid, num_prefix, radius=radius, dilation=dilation,
                         global_tokens=global_tokens, impl=impl, **kw)

    def _extra_config(self) -> dict[str, Any]:
        if self._explicit:
            return {"global_tokens": self.global_patches}
        return {"global_grid": self._global_grid}


@register_attention
class BigBirdAttention(StaticSparseAttention):
    """BigBird: blocks of ``block`` tokens; each query block reads its neighbour blocks (window of
    3), ``random_blocks`` random blocks (fixed at construction, per head, seeded) and the global
    blocks; the first ``global_blocks`` blocks (which hold the class token) and the prefix tokens
    are global (BigBird-ITC)."""

    name = "bigbird"
    complexity = "O(N (w + r + g) b d)"
    paper = "Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences (ITC)"
    implementation = "static gather of (3 + r) blocks per query block + g global blocks: O(N (3 + r + g) b d)"
    notes = "random blocks drawn once per head at build time (a static buffer); only the first block(s) are global"

    def __init__(self, dim, num_heads, grid, num_prefix=1, block: int = 16, random_blocks: int = 2,
                 global_blocks: int = 1, seed: int = 0, impl: str = "gather", **kw):
        super().__init__(dim, num_heads, grid, num_prefix, impl=impl, **kw)
        if block < 1 or random_blocks < 0 or global_blocks < 0:
            raise ConfigError(f"bigbird: block >= 1, random_blocks >= 0, global_blocks >= 0 (got {block}, "
                              f"{random_blocks}, {global_blocks})")
        self.block, self.random_blocks, self.global_blocks = int(block), int(random_blocks), int(global_blocks)
        self.seed = seed
        nb = math.ceil(self.num_tokens / self.block)
        self.num_blocks = nb
        with torch.device("cpu"):
            self._rand = self._draw_random()
        self._config = {"block": self.block, "random_blocks": self.random_blocks, "global_blocks": self.global_blocks,
                        "seed": seed, "impl": impl}
        self._compile()

    def _draw_random(self) -> torch.Tensor:
        nb, g, r = self.num_blocks, self.global_blocks, self.random_blocks
        rand = torch.zeros(self.num_heads, nb, nb, dtype=torch.bool)
        for h in range(self.num_heads):
            gen = torch.Generator().manual_seed(self.seed * 1009 + h)
            for blk in range(g, nb):
                cands = [c for c in range(g, nb) if abs(c - blk) > 1]
                pick = torch.randperm(len(cands), generator=gen)[:r].tolist()
                for c in pick:
                    rand[h, blk, cands[c]] = True
        return rand

    def _globals(self) -> tuple[int, ...]:
        first_blocks = range(min(self.num_tokens, self.global_blocks * self.block))
        return tuple(sorted(set(range(self.num_prefix)) | set(first_blocks)))

    def build_pattern(self) -> SparsePattern:
        n, bs, nb, g, r = self.num_tokens, self.block, self.num_blocks, self.global_blocks, self.random_blocks
        seq = list(range(n)) + [-1] * (nb * bs - n)

        def tokens(blk: int) -> list[int]:
            return seq[blk * bs:(blk + 1) * bs] if 0 <= blk < nb else [-1] * bs

        orders, keys = [], []
        for h in range(self.num_heads):
            qo, ko = [], []
            for blk in range(g, nb):
                qo += tokens(blk)
                picks = torch.nonzero(self._rand[h, blk]).flatten().tolist()
                picks += [-1] * (r - len(picks))
                ko.append([t for c in (blk - 1, blk, blk + 1, *picks) for t in tokens(c)])
            orders.append(qo)
            keys.append(ko)
        gl = self._globals()
        return SparsePattern(torch.tensor(orders), torch.tensor(keys), gl, gl, bs)

    def local_allowed(self, h, i, j):
        bi, bj = i // self.block, j // self.block
        return ((bi - bj).abs() <= 1) | self._rand[h, bi, bj]


@register_attention
class SparseFixedAttention(StaticSparseAttention):
    """Sparse Transformer's *fixed* (blockwise) pattern, bidirectional: patches attend within their
    block of ``block`` consecutive patches (default: one grid row) and to the last ``summary``
    patches of every block (the summary columns), plus the prefix tokens."""

    name = "sparse_fixed"
    complexity = "O(N sqrt(N) d)"
    paper = "Child et al. 2019, Generating Long Sequences with Sparse Transformers (fixed pattern)"
    implementation = "own block by reshape/gather + (N/l) c summary columns: O(N (l + c N / l) d)"
    notes = "bidirectional (the paper's pattern is causal); block defaults to one grid row: l = sqrt(N) on a square"

    def __init__(self, dim, num_heads, grid, num_prefix=1, block: int | None = None, summary: int = 1,
                 impl: str = "gather", **kw):
        super().__init__(dim, num_heads, grid, num_prefix, impl=impl, **kw)
        self.block = int(block or self.grid[1])
        if not 1 <= summary <= self.block:
            raise ConfigError(f"sparse_fixed: summary must be in 1..block ({self.block}), got {summary}")
        self.summary = int(summary)
        self._config = {"block": block, "summary": self.summary, "impl": impl}
        self._compile()

    def build_pattern(self) -> SparsePattern:
        p, m, l, c = self.num_prefix, self.grid[0] * self.grid[1], self.block, self.summary
        nb = math.ceil(m / l)
        seq = [p + t for t in range(m)] + [-1] * (nb * l - m)
        qo = seq
        ko = [seq[b * l:(b + 1) * l] for b in range(nb)]
        summaries = [p + b * l + s for b in range(nb) for s in range(l - c, l) if b * l + s < m]
        gk = tuple(range(p)) + tuple(summaries)
        return SparsePattern(torch.tensor([qo]), torch.tensor([ko]), gk, tuple(range(p)), l)

    def local_allowed(self, h, i, j):
        pi, pj = i - self.num_prefix, j - self.num_prefix
        same_block = pi.div(self.block, rounding_mode="floor") == pj.div(self.block, rounding_mode="floor")
        return (pi >= 0) & (pj >= 0) & same_block


@register_attention
class SparseStridedAttention(TokenAttention):
    """Sparse Transformer's *strided* pattern on an image, bidirectional: a patch attends to its
    row (the local part, stride = row width as the paper uses for images) and to its column (the
    strided part) in one softmax, plus the prefix tokens. Rows and columns are reshapes and
    transposes of the grid, so cost is O(N (H + W) d) = O(N sqrt(N) d)."""

    name = "sparse_strided"
    complexity = "O(N sqrt(N) d)"
    family = "fixed-pattern"
    paper = "Child et al. 2019, Generating Long Sequences with Sparse Transformers (strided pattern)"
    implementation = "row scores + column scores (transposed grid) in one softmax: O(N (H + W) d)"
    notes = "bidirectional (the paper's pattern is causal); self appears in row and column and is counted once"

    def __init__(self, dim, num_heads, grid, num_prefix=1, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        gh, gw = self.grid
        same = torch.eye(gh, dtype=torch.bool).view(gh, 1, gh)  # column key r' == query row r: self
        self.register_buffer("self_mask", torch.zeros(gh, 1, gh).masked_fill(same, MASK_VALUE), persistent=False)

    def allowed_matrix(self) -> torch.Tensor:
        n, p, gw = self.num_tokens, self.num_prefix, self.grid[1]
        i = torch.arange(n).view(n, 1)
        j = torch.arange(n).view(1, n)
        pi, pj = i - p, j - p
        local = (pi >= 0) & (pj >= 0) & ((pi // gw == pj // gw) | (pi % gw == pj % gw))
        return (local | (i < p) | (j < p)).unsqueeze(0)

    def attend(self, q, k, v):
        b, h, n, d = q.shape
        p, (gh, gw) = self.num_prefix, self.grid
        q = q * self.scale
        qg = q[:, :, p:].reshape(b, h, gh, gw, d)
        kg = k[:, :, p:].reshape(b, h, gh, gw, d)
        vg = v[:, :, p:].reshape(b, h, gh, gw, d)
        s_row = _bmm(qg, kg.transpose(-2, -1))  # (B, h, gh, gw, gw)
        kt, vt = kg.transpose(2, 3), vg.transpose(2, 3)  # (B, h, gw, gh, d)
        s_col = _bmm(qg.transpose(2, 3), kt.transpose(-2, -1)).transpose(2, 3) + self.self_mask  # (.., gw, gh)
        parts = [s_row, s_col]
        if p:
            parts.append(_bmm(q[:, :, p:], k[:, :, :p].transpose(-2, -1)).reshape(b, h, gh, gw, p))
        attn = torch.cat(parts, dim=-1).softmax(dim=-1)
        out = _bmm(attn[..., :gw], vg) + _bmm(attn[..., gw:gw + gh].transpose(2, 3), vt).transpose(2, 3)
        if p:
            out = out + _bmm(attn[..., gw + gh:].reshape(b, h, gh * gw, p), v[:, :, :p]).reshape(b, h, gh, gw, d)
        out = out.reshape(b, h, gh * gw, d)
        if p:
            out = torch.cat([_prefix_attend(q, k, v, p), out], dim=2)
        return out


@register_attention
class AxialAttention(TokenAttention):
    """Axial attention: attention along rows, then (with a second QKV projection) along columns.
    Prefix tokens are read by every row/column and attend densely in each pass."""

    name = "axial"
    complexity = "O(N (H + W) d)"
    family = "fixed-pattern"
    paper = "Ho et al. 2019, Axial Attention in Multidimensional Transformers"
    implementation = "row pass then column pass (second qkv), grid reshapes/transposes: O(N (H + W) d)"
    notes = "two passes in one layer with their own QKV projections (one output projection)"

    def __init__(self, dim, num_heads, grid, num_prefix=1, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        self.qkv2 = nn.Linear(dim, dim * 3)

    def _axis(self, q, k, v, columns: bool) -> torch.Tensor:
        b, h, n, d = q.shape
        p, (gh, gw) = self.num_prefix, self.grid
        q = q * self.scale

        def grid_of(t: torch.Tensor) -> torch.Tensor:
            g = t[:, :, p:].reshape(b, h, gh, gw, d)
            return g.transpose(2, 3) if columns else g

        kp = k[:, :, :p] if p else None
        vp = v[:, :, :p] if p else None
        out, _ = _blocks_with_prefix(grid_of(q), grid_of(k), grid_of(v), kp, vp)
        if columns:
            out = out.transpose(2, 3)
        out = out.reshape(b, h, gh * gw, d)
        if p:
            out = torch.cat([_prefix_attend(q, k, v, p), out], dim=2)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.split_heads(x)
        rows = self._axis(q, k, v, columns=False).transpose(1, 2).reshape(b, n, c)
        q, k, v = _split_heads(self.qkv2(rows), 3, self.num_heads)
        return self.merge_heads(self._axis(q, k, v, columns=True))


# ------------------------------------------------------------------------------------------
# Memory-compressed and low-rank


@register_attention
class MemoryCompressedAttention(TokenAttention):
    """Memory-compressed attention: the patch keys and values are shortened by a strided 1-D
    convolution (kernel = stride = ``stride``) along the token sequence; prefix keys are kept.
    A sequence not divisible by the stride is zero-padded."""

    name = "memory_compressed"
    complexity = "O(N^2 d / s)"
    family = "compressed"
    paper = "Liu et al. 2018, Generating Wikipedia by Summarizing Long Sequences (memory-compressed attention)"
    implementation = "Conv1d(kernel=stride=s) on K and V, dense attention over N/s (+P) keys: O(N^2 d / s)"
    notes = "still quadratic: s only divides the constant; conv on raster-ordered patches (1-D, as in the paper)"

    def __init__(self, dim, num_heads, grid, num_prefix=1, stride: int = 4, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        if stride < 1:
            raise ConfigError(f"memory_compressed: stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.compress_k = nn.Conv1d(dim, dim, self.stride, stride=self.stride)
        self.compress_v = nn.Conv1d(dim, dim, self.stride, stride=self.stride)
        self._config = {"stride": self.stride}

    def _compress(self, t: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
        p = self.num_prefix
        m = t.shape[1] - p
        g = t[:, p:].transpose(1, 2)  # (B, C, M)
        pad = -m % self.stride
        if pad:
            g = F.pad(g, (0, pad))
        return torch.cat([t[:, :p], conv(g).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        y = self.qkv(x)
        q, k, v = y[..., :c], y[..., c:2 * c], y[..., 2 * c:]
        k, v = self._compress(k, self.compress_k), self._compress(v, self.compress_v)
        m = k.shape[1]
        q = q.reshape(b, n, h, d).transpose(1, 2)
        k = k.reshape(b, m, h, d).transpose(1, 2)
        v = v.reshape(b, m, h, d).transpose(1, 2)
        attn = _bmm(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        return self.merge_heads(_bmm(attn, v))


LINFORMER_SHARING = ("none", "headwise", "kv", "layerwise")


@register_attention
class LinformerAttention(TokenAttention):
    """Linformer: keys and values projected along the token axis from N to ``k``.

    ``sharing`` (the paper's options): ``"none"`` per-head E_i, F_i; ``"headwise"`` (default)
    E, F shared by the heads; ``"kv"`` one projection for keys and values; ``"layerwise"`` one
    projection for keys, values, heads and every layer (call
    :func:`share_projections_across_layers` on the built model to tie the layers).
    """

    name = "linformer"
    complexity = "O(N k d)"
    family = "low-rank"
    paper = "Wang et al. 2020, Linformer: Self-Attention with Linear Complexity"
    implementation = "E K and F V along tokens (N -> k), dense attention over k: O(N k d)"
    notes = "E, F are sized for N: the model is tied to its input resolution"

    def __init__(self, dim, num_heads, grid, num_prefix=1, k: int = 64, sharing: str = "headwise", **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        if sharing not in LINFORMER_SHARING:
            raise ConfigError(f"linformer: sharing must be one of {', '.join(LINFORMER_SHARING)}, got {sharing!r}")
        n = self.num_tokens
        self.k = min(k, n)
        self.sharing = sharing
        self._config = {"k": self.k, "sharing": sharing}
        if sharing == "none":
            self.e_heads = nn.Parameter(torch.randn(num_heads, n, self.k) / math.sqrt(self.k))
            self.f_heads = nn.Parameter(torch.randn(num_heads, n, self.k) / math.sqrt(self.k))
            return
        self.proj_k = nn.Linear(n, self.k, bias=False)
        nn.init.normal_(self.proj_k.weight, std=1.0 / math.sqrt(self.k))
        if sharing == "headwise":
            self.proj_v = nn.Linear(n, self.k, bias=False)
            nn.init.normal_(self.proj_v.weight, std=1.0 / math.sqrt(self.k))

    def attend(self, q, k, v):
        if self.sharing == "none":
            k = _head_matmul(k.transpose(-2, -1), self.e_heads)  # (B, h, d, k)
            v = _head_matmul(v.transpose(-2, -1), self.f_heads).transpose(-2, -1)  # (B, h, k, d)
        else:
            proj_v = self.proj_v if self.sharing == "headwise" else self.proj_k
            k = self.proj_k(k.transpose(-2, -1))  # (B, heads, d, k)
            v = proj_v(v.transpose(-2, -1)).transpose(-2, -1)  # (B, heads, k, d)
        attn = _bmm(q * self.scale, k)
        return _bmm(attn.softmax(dim=-1), v)


def share_projections_across_layers(model: nn.Module) -> int:
    """Tie the token projections of every ``sharing="layerwise"`` Linformer layer in ``model`` to
    the first one's (Linformer's layerwise sharing). Returns the number of layers tied."""
    layers = [m for m in model.modules() if isinstance(m, LinformerAttention) and m.sharing == "layerwise"]
    for m in layers[1:]:
        if m.proj_k.weight.shape != layers[0].proj_k.weight.shape:
            raise ConfigError("linformer layerwise sharing needs the same token count and k in every layer")
        m.proj_k = layers[0].proj_k
    return len(layers)


@register_attention
class NystromAttention(TokenAttention):
    """Nystromformer: softmax attention approximated with ``landmarks`` segment-mean landmarks,
    softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V, the pseudo-inverse by
    ``pinv_iterations`` Newton-Schulz steps. Landmarks are a static averaging matrix (any N).
    ``conv_kernel`` adds the paper's depthwise convolution of V along the tokens (0: off)."""

    name = "nystromformer"
    complexity = "O(N m d)"
    family = "low-rank"
    paper = "Xiong et al. 2021, Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention"
    implementation = "segment-mean landmarks (static m x N matrix), iterative pinv: O(N m d + m^3)"
    notes = "pinv initialised per sample and head (the reference code uses a batch-wide max)"

    def __init__(self, dim, num_heads, grid, num_prefix=1, landmarks: int = 32, pinv_iterations: int = 6,
                 conv_kernel: int = 0, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        n = self.num_tokens
        self.landmarks = m = min(int(landmarks), n)
        self.pinv_iterations = int(pinv_iterations)
        bounds = [math.floor(r * n / m) for r in range(m + 1)]
        avg = torch.zeros(m, n, device="cpu")
        for r in range(m):
            avg[r, bounds[r]:bounds[r + 1]] = 1.0 / (bounds[r + 1] - bounds[r])
        self.register_buffer("landmark_avg", avg.to(_default_device()), persistent=False)
        self.register_buffer("eye", torch.eye(m), persistent=False)
        self.conv = None
        if conv_kernel:
            self.conv = nn.Conv2d(num_heads, num_heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0),
                                  groups=num_heads, bias=False)
        self._config = {"landmarks": m, "pinv_iterations": self.pinv_iterations, "conv_kernel": int(conv_kernel)}

    def pinv(self, a: torch.Tensor) -> torch.Tensor:
        """Newton-Schulz (Razavi et al. 2014 order-3) iterations towards the Moore-Penrose inverse."""
        col = a.abs().sum(dim=-2).amax(dim=-1, keepdim=True).unsqueeze(-1)
        row = a.abs().sum(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)
        z = a.transpose(-2, -1) / (col * row)
        eye = self.eye
        for _ in range(self.pinv_iterations):
            az = _bmm(a, z)
            z = 0.25 * _bmm(z, 13 * eye - _bmm(az, 15 * eye - _bmm(az, 7 * eye - az)))
        return z

    def landmarks_of(self, x: torch.Tensor) -> torch.Tensor:
        """Segment means (B, h, N, d) -> (B, h, m, d), as x^T A^T (a plain matrix product)."""
        return (x.transpose(-2, -1) @ self.landmark_avg.T).transpose(-2, -1)

    def attend(self, q, k, v):
        q = q * self.scale
        ql, kl = self.landmarks_of(q), self.landmarks_of(k)  # (B, h, m, d)
        k1 = _bmm(q, kl.transpose(-2, -1)).softmax(dim=-1)
        k2 = _bmm(ql, kl.transpose(-2, -1)).softmax(dim=-1)
        k3 = _bmm(ql, k.transpose(-2, -1)).softmax(dim=-1)
        out = _bmm(k1, _bmm(self.pinv(k2), _bmm(k3, v)))
        if self.conv is not None:
            out = out + self.conv(v)
        return out


# ------------------------------------------------------------------------------------------
# Kernel (linear) attention: phi(Q) (phi(K)^T V)


def _linear_attend(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    kv = _bmm(kf.transpose(-2, -1), v)  # (B, h, f, d)
    den = _bmm(qf, kf.sum(dim=-2, keepdim=True).transpose(-2, -1))  # (B, h, N, 1)
    return _bmm(qf, kv) / (den + eps)


class _KernelAttention(TokenAttention):
    family = "kernel"
    eps: ClassVar[float] = 1e-6

    def feature_map(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def attend(self, q, k, v):
        qf, kf = self.feature_map(q, k)
        return _linear_attend(qf, kf, v, self.eps)


@register_attention
class LinearAttention(_KernelAttention):
    """Linear Transformer: phi(x) = elu(x) + 1, computed as phi(Q) (phi(K)^T V) / phi(Q) sum phi(K)."""

    name = "linear"
    complexity = "O(N d^2)"
    paper = "Katharopoulos et al. 2020, Transformers are RNNs (linear attention)"
    implementation = "phi(Q) (phi(K)^T V), phi = elu + 1: O(N d^2)"

    def feature_map(self, q, k):
        return F.elu(q) + 1, F.elu(k) + 1


@register_attention
class ReLULinearAttention(_KernelAttention):
    """EfficientViT's ReLU linear attention: phi = ReLU, phi(Q) (phi(K)^T V) / phi(Q) sum phi(K)."""

    name = "relu_linear"
    complexity = "O(N d^2)"
    paper = "Cai et al. 2023, EfficientViT: Lightweight Multi-Scale Attention (ReLU linear attention)"
    implementation = "phi(Q) (phi(K)^T V), phi = ReLU: O(N d^2)"
    notes = "without EfficientViT's multi-scale token aggregation convs; eps 1e-6 (fp16-safe) in the denominator"

    def feature_map(self, q, k):
        return F.relu(q), F.relu(k)


@register_attention
class CosFormerAttention(_KernelAttention):
    """cosFormer: ReLU features re-weighted by cos(pi/2 (i - j) / M), decomposed as
    cos(a_i) cos(a_j) + sin(a_i) sin(a_j) so it stays phi(Q) (phi(K)^T V) with 2d features.
    ``i``, ``j`` are raster positions (prefix first), ``M`` the token count."""

    name = "cosformer"
    complexity = "O(N d^2)"
    paper = "Qin et al. 2022, cosFormer: Rethinking Softmax in Attention"
    implementation = "[relu(Q) cos, relu(Q) sin] ([relu(K) cos, relu(K) sin]^T V): O(N 2d^2)"
    notes = "1-D re-weighting over raster order (the paper's formulation is for sequences)"

    def __init__(self, dim, num_heads, grid, num_prefix=1, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        n = self.num_tokens
        angle = (math.pi / 2) * torch.arange(n, dtype=torch.float32) / n
        self.register_buffer("cos_w", angle.cos().unsqueeze(-1), persistent=False)  # (N, 1)
        self.register_buffer("sin_w", angle.sin().unsqueeze(-1), persistent=False)

    def feature_map(self, q, k):
        q, k = F.relu(q), F.relu(k)
        return (torch.cat([q * self.cos_w, q * self.sin_w], dim=-1),
                torch.cat([k * self.cos_w, k * self.sin_w], dim=-1))


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
class PerformerAttention(_KernelAttention):
    """Performer FAVOR+: softmax kernel approximated by positive orthogonal random features.

    Computed as phi(Q) (phi(K)^T V) normalised by phi(Q) (phi(K)^T 1), so cost is linear in N.
    :meth:`redraw` samples new features (training); they are a buffer, so exports are static.
    """

    name = "performer"
    complexity = "O(N m d)"
    paper = "Choromanski et al. 2021, Rethinking Attention with Performers (FAVOR+)"
    implementation = "positive orthogonal random features, phi(Q) (phi(K)^T V): O(N m d)"
    notes = "features are a buffer (static in exports); redraw() samples new ones"
    eps = 0.0

    def __init__(self, dim, num_heads, grid, num_prefix=1, features: int = 64, seed: int = 0, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        self.features = features
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("omega", _orthogonal_features(features, self.head_dim, gen))
        self._config = {"features": features, "seed": seed}

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

    def feature_map(self, q, k):
        return self._phi(q, True), self._phi(k, False)


# ------------------------------------------------------------------------------------------
# Learned patterns


def _closest_divisor(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` (B, h, L, d) gathered along L by ``index`` (B, h, S): (B, h, S, d)."""
    return torch.gather(x, 2, index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


@register_attention
class ReformerAttention(TokenAttention):
    """Reformer LSH attention with shared QK: keys are the unit-normalised queries, hashed by
    random rotations (bucket = argmax [xR; -xR]); tokens are sorted by (bucket, position), cut
    into chunks of ``chunk`` and attend within their chunk and the previous one (wrapping); a
    token attends to itself only when nothing else is available (score -5e3). ``hashes`` rounds
    are combined by their log-sum-exp weights. Rotations are a buffer; :meth:`redraw` resamples.
    Sorting and gathering are data-dependent (top-k + gather + scatter) but every shape is static."""

    name = "reformer"
    complexity = "O(N log N d)"
    family = "learned-pattern"
    paper = "Kitaev et al. 2020, Reformer: The Efficient Transformer (LSH attention)"
    implementation = ("hash O(N n_b d) (n_b ~ N/c), top-k sort by (bucket, pos), gather, chunks over 2c keys, "
                      "scatter back: O(N^2 d / c + N log N + N 2c d)")
    static_indices = False
    notes = ("data-dependent top-k sort/gather/scatter; no extra mask between different buckets inside a chunk "
             "(as in the reference code)")

    def __init__(self, dim, num_heads, grid, num_prefix=1, chunk: int = 32, buckets: int | None = None,
                 hashes: int = 1, seed: int = 0, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        self.qkv = nn.Linear(dim, dim * 2)  # shared QK: queries and values only
        m = self.grid[0] * self.grid[1]
        self.chunk = min(int(chunk), m)
        self.length = math.ceil(m / self.chunk) * self.chunk
        nc = self.length // self.chunk
        self.buckets = int(buckets) if buckets else max(2, 2 * round(nc / 2))
        if self.buckets % 2:
            raise ConfigError(f"reformer: buckets must be even, got {self.buckets}")
        if hashes < 1:
            raise ConfigError(f"reformer: hashes must be >= 1, got {hashes}")
        self.hashes = int(hashes)
        self._config = {"chunk": self.chunk, "buckets": self.buckets, "hashes": self.hashes, "seed": seed}
        gen = torch.Generator().manual_seed(seed)
        rotations = torch.randn(num_heads, hashes, self.head_dim, self.buckets // 2, generator=gen)
        self.register_buffer("rotations", rotations)
        c = self.chunk
        look_back = nc > 1
        mask = torch.zeros(nc, c, 2 * c if look_back else c)
        mask[:, torch.arange(c), torch.arange(c)] = MASK_VALUE / 2  # self: only when nothing else
        slots = torch.arange(self.length).view(nc, c)
        keys = torch.cat([slots, slots.roll(1, dims=0)], dim=1) if look_back else slots
        mask = mask.masked_fill((keys >= m).unsqueeze(1), MASK_VALUE)  # padding sorts last: static slots
        self.register_buffer("chunk_mask", mask, persistent=False)

    @torch.no_grad()
    def redraw(self, generator: torch.Generator | None = None) -> None:
        self.rotations.copy_(torch.randn(self.rotations.shape, generator=generator))

    def split_heads(self, x):
        q, v = _split_heads(self.qkv(x), 2, self.num_heads)
        return q, F.normalize(q, dim=-1), v

    def hash_buckets(self, kn: torch.Tensor) -> torch.Tensor:
        """Bucket of every patch key per hash round: (B, h, M, d) -> (B, h, r, M)."""
        b, h, m, d = kn.shape
        r, half = self.hashes, self.buckets // 2
        rot = _head_matmul(kn, self.rotations.permute(0, 2, 1, 3).reshape(h, d, r * half))  # (B, h, M, r*nb/2)
        rot = rot.reshape(b, h, m, r, half).transpose(2, 3)  # (B, h, r, M, nb/2)
        return torch.cat([rot, -rot], dim=-1).argmax(dim=-1)

    def _look_back(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 1:
            return x
        return torch.cat([x, torch.cat([x[:, :, -1:], x[:, :, :-1]], dim=2)], dim=3)

    def attend(self, q, k, v):
        b, h, n, d = q.shape
        p, r, c, length = self.num_prefix, self.hashes, self.chunk, self.length
        m, nc = n - p, length // c
        q = q * self.scale
        buckets = self.hash_buckets(k[:, :, p:])
        if length > m:  # padding gets bucket `buckets`: it sorts after every real token
            pad = torch.full((b, h, r, length - m), self.buckets, dtype=buckets.dtype, device=buckets.device)
            buckets = torch.cat([buckets, pad], dim=-1)
        # Sort by (bucket, position) with top-k on a float key (exact below 2^24): TFLite's
        # converter lowers top-k, not argsort. Keys are unique, so the order is deterministic.
        pos = torch.arange(length, dtype=q.dtype, device=q.device)
        key = buckets.to(q.dtype) * length + pos
        order = (-key).topk(length, dim=-1).indices  # (B, h, r, L), ascending key

        def padded(t: torch.Tensor) -> torch.Tensor:
            t = t[:, :, p:]
            return F.pad(t, (0, 0, 0, length - m)) if length > m else t

        idx = order.reshape(b, h, r * length)
        sq = _take(padded(q), idx).reshape(b, h * r, nc, c, d)
        sk = _take(padded(k), idx).reshape(b, h * r, nc, c, d)
        sv = _take(padded(v), idx).reshape(b, h * r, nc, c, d)
        kp = vp = None
        if p:
            kp = k[:, :, :p].unsqueeze(2).expand(b, h, r, p, d).reshape(b, h * r, p, d)
            vp = v[:, :, :p].unsqueeze(2).expand(b, h, r, p, d).reshape(b, h * r, p, d)
        out, lse = _blocks_with_prefix(sq, self._look_back(sk), self._look_back(sv), kp, vp, self.chunk_mask,
                                       with_lse=r > 1)
        # Unsort: order is a permutation, so a plain (replacing) scatter puts every row back.
        out = torch.zeros(b, h, r, length, d, dtype=q.dtype, device=q.device).scatter(
            3, order.unsqueeze(-1).expand(b, h, r, length, d), out.reshape(b, h, r, length, d))[:, :, :, :m]
        if r > 1:
            lse = torch.zeros(b, h, r, length, dtype=q.dtype, device=q.device).scatter(
                3, order, lse.reshape(b, h, r, length))[:, :, :, :m]
            out = (out * lse.softmax(dim=2).unsqueeze(-1)).sum(dim=2)
        else:
            out = out[:, :, 0]
        if p:
            out = torch.cat([_prefix_attend(q, k, v, p), out], dim=2)
        return out


@register_attention
class SinkhornAttention(TokenAttention):
    """Sparse Sinkhorn attention: patches in blocks of ``block`` (the divisor of the patch count
    closest to it); a sorting network maps each block's summed keys to logits over blocks,
    ``iterations`` Sinkhorn normalisations (temperature ``temperature``) give a doubly stochastic
    (soft permutation) matrix P, and each query block attends to its own block and to the
    P-sorted block. All static: the sort is a matmul by P. Gumbel noise only in training."""

    name = "sinkhorn"
    complexity = "O(N b d)"
    family = "learned-pattern"
    paper = "Tay et al. 2020, Sparse Sinkhorn Attention"
    implementation = "block attention over 2b keys + soft sort P (nb x nb) @ blocks: O(N 2b d + N^2 d / b)"
    notes = "sorting network sized for nb blocks (tied to resolution); block embeddings from the keys"

    def __init__(self, dim, num_heads, grid, num_prefix=1, block: int = 16, iterations: int = 8,
                 temperature: float = 0.75, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        m = self.grid[0] * self.grid[1]
        self.block = _closest_divisor(m, int(block))
        self.num_blocks = m // self.block
        self.iterations, self.temperature = int(iterations), float(temperature)
        d = self.head_dim
        self.sort_net = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, self.num_blocks))
        self._config = {"block": int(block), "iterations": self.iterations, "temperature": self.temperature}

    def sort_matrix(self, kb: torch.Tensor) -> torch.Tensor:
        """Soft permutation (B, h, nb, nb) from key blocks (B, h, nb, b, d)."""
        logits = self.sort_net(kb.sum(dim=3))
        if self.training:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            logits = logits - torch.log(-torch.log(u))
        z = logits / self.temperature
        for _ in range(self.iterations):
            z = z - _logsumexp(z, -1)
            z = z - _logsumexp(z, -2)
        return z.exp()

    def attend(self, q, k, v):
        b, h, n, d = q.shape
        p, nb, bs = self.num_prefix, self.num_blocks, self.block
        q = q * self.scale
        qb = q[:, :, p:].reshape(b, h, nb, bs, d)
        kb = k[:, :, p:].reshape(b, h, nb, bs, d)
        vb = v[:, :, p:].reshape(b, h, nb, bs, d)
        perm = self.sort_matrix(kb)
        ks = _bmm(perm, kb.reshape(b, h, nb, bs * d)).reshape(b, h, nb, bs, d)
        vs = _bmm(perm, vb.reshape(b, h, nb, bs * d)).reshape(b, h, nb, bs, d)
        kp = k[:, :, :p] if p else None
        vp = v[:, :, :p] if p else None
        out, _ = _blocks_with_prefix(qb, torch.cat([kb, ks], dim=3), torch.cat([vb, vs], dim=3), kp, vp)
        out = out.reshape(b, h, nb * bs, d)
        if p:
            out = torch.cat([_prefix_attend(q, k, v, p), out], dim=2)
        return out


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    top = x.amax(dim=dim, keepdim=True)
    return top + (x - top).exp().sum(dim=dim, keepdim=True).log()


@register_attention
class RoutingAttention(TokenAttention):
    """Routing attention: unit-normalised queries and keys are routed to ``clusters`` shared
    k-means centroids (per head, updated by an exponential moving average while training); each
    centroid takes its ``window`` nearest queries and nearest keys (top-k: balanced clusters at a
    static shape), attention runs inside each cluster, and outputs are scattered back and
    averaged over the clusters a token was routed to. Defaults: sqrt(M) clusters of M/sqrt(M)."""

    name = "routing"
    complexity = "O(N sqrt(N) d)"
    family = "learned-pattern"
    paper = "Roy et al. 2021, Efficient Content-Based Sparse Attention with Routing Transformers"
    implementation = "top-k per centroid, gather, attention in k clusters of w, per-cluster scatter: O(N w d + N k d)"
    static_indices = False
    notes = ("data-dependent top-k/gather/scatter; a token no cluster picked gets a zero attention output; "
             "combine='scatter_add' saves the k x N buffer but TFLite's runtime rejects it")

    def __init__(self, dim, num_heads, grid, num_prefix=1, clusters: int | None = None, window: int | None = None,
                 decay: float = 0.999, combine: str = "scatter", seed: int = 0, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        if combine not in ("scatter", "scatter_add"):
            raise ConfigError(f"routing: combine must be 'scatter' or 'scatter_add', got {combine!r}")
        self.combine = combine
        m = self.grid[0] * self.grid[1]
        self.clusters = int(clusters) if clusters else max(1, round(math.sqrt(m)))
        self.window = min(m, int(window) if window else math.ceil(m / self.clusters))
        self.decay = float(decay)
        gen = torch.Generator().manual_seed(seed)
        centroids = F.normalize(torch.randn(num_heads, self.clusters, self.head_dim, generator=gen), dim=-1)
        self.register_buffer("centroids", centroids)
        self._config = {"clusters": self.clusters, "window": self.window, "decay": self.decay, "combine": combine,
                        "seed": seed}

    @torch.no_grad()
    def _update_centroids(self, qn: torch.Tensor, kn: torch.Tensor) -> None:
        x = torch.cat([qn, kn], dim=2)  # (B, h, 2M, d)
        assign = (x @ self.centroids.transpose(-2, -1)).argmax(dim=-1)
        onehot = F.one_hot(assign, self.clusters).to(x.dtype)  # (B, h, 2M, k)
        sums = (onehot.transpose(-2, -1) @ x).sum(dim=0)  # (h, k, d)
        counts = onehot.sum(dim=(0, 2)).unsqueeze(-1)  # (h, k, 1)
        mean = sums / counts.clamp(min=1)
        new = torch.where(counts > 0, self.decay * self.centroids + (1 - self.decay) * mean, self.centroids)
        self.centroids.copy_(F.normalize(new, dim=-1))

    def attend(self, q, k, v):
        b, h, n, d = q.shape
        p, kc, w = self.num_prefix, self.clusters, self.window
        m = n - p
        q = q * self.scale
        qs, ks, vs = q[:, :, p:], k[:, :, p:], v[:, :, p:]
        qn, kn = F.normalize(qs, dim=-1), F.normalize(ks, dim=-1)
        if self.training:
            self._update_centroids(qn, kn)
        cen = self.centroids.transpose(-2, -1)  # (h, d, k)
        # each centroid's w nearest queries and keys: (B, h, k*w)
        q_idx = _head_matmul(qn, cen).transpose(-2, -1).topk(w, dim=-1).indices.reshape(b, h, kc * w)
        k_idx = _head_matmul(kn, cen).transpose(-2, -1).topk(w, dim=-1).indices.reshape(b, h, kc * w)
        qb = _take(qs, q_idx).reshape(b, h, kc, w, d)
        kb = _take(ks, k_idx).reshape(b, h, kc, w, d)
        vb = _take(vs, k_idx).reshape(b, h, kc, w, d)
        kp = k[:, :, :p] if p else None
        vp = v[:, :, :p] if p else None
        out, _ = _blocks_with_prefix(qb, kb, vb, kp, vp)
        if self.combine == "scatter_add":  # O(N w d), but TFLite's runtime rejects its scatter
            index = q_idx.unsqueeze(-1)
            summed = torch.zeros_like(qs).scatter_add(2, index.expand(b, h, kc * w, d), out.reshape(b, h, kc * w, d))
            ones = torch.ones(b, h, kc * w, 1, dtype=q.dtype, device=q.device)
            counts = torch.zeros(b, h, m, 1, dtype=q.dtype, device=q.device).scatter_add(2, index, ones)
        else:  # one replacing scatter per cluster (indices unique within a cluster), summed: O(k N d)
            index = q_idx.reshape(b, h, kc, w, 1)
            full = torch.zeros(b, h, kc, m, d, dtype=q.dtype, device=q.device)
            summed = full.scatter(3, index.expand(b, h, kc, w, d), out).sum(dim=2)
            ones = torch.ones(b, h, kc, w, 1, dtype=q.dtype, device=q.device)
            counts = torch.zeros(b, h, kc, m, 1, dtype=q.dtype, device=q.device).scatter(3, index, ones).sum(dim=2)
        out = summed / counts.clamp(min=1)
        if p:
            out = torch.cat([_prefix_attend(q, k, v, p), out], dim=2)
        return out


# ------------------------------------------------------------------------------------------
# Synthesizer


@register_attention
class SynthesizerDenseAttention(TokenAttention):
    """Dense Synthesizer: each token predicts its own row of attention logits over the N
    positions, B_i = W2 relu(W1 x_i + b1) + b2 (per head W2: d -> N); output softmax(B) V."""

    name = "synthesizer_dense"
    complexity = "O(N^2 d)"
    family = "synthesizer"
    paper = "Tay et al. 2021, Synthesizer: Rethinking Self-Attention in Transformer Models (dense)"
    implementation = "per-token MLP to N logits, softmax, A V: O(N^2 d)"
    notes = "no query-key products, still quadratic; W2 is sized for N (tied to the resolution)"

    def __init__(self, dim, num_heads, grid, num_prefix=1, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        n, d = self.num_tokens, self.head_dim
        self.qkv = nn.Linear(dim, dim)  # values only
        self.hidden = nn.Linear(dim, dim)
        self.w2 = nn.Parameter(torch.randn(num_heads, d, n) * d**-0.5)
        self.b2 = nn.Parameter(torch.zeros(num_heads, 1, n))

    def forward(self, x):
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        hid = F.relu(self.hidden(x)).reshape(b, n, h, d).transpose(1, 2)
        attn = (_head_matmul(hid, self.w2) + self.b2).softmax(dim=-1)  # (B, h, N, N)
        v = self.qkv(x).reshape(b, n, h, d).transpose(1, 2)
        return self.merge_heads(_bmm(attn, v))


@register_attention
class SynthesizerRandomAttention(TokenAttention):
    """Random Synthesizer: input-independent attention weights softmax(R), R a learned (or, with
    ``trainable=False``, fixed) random (h, N, N) matrix, or R1 R2^T with ``rank``."""

    name = "synthesizer_random"
    complexity = "O(N^2 d)"
    family = "synthesizer"
    paper = "Tay et al. 2021, Synthesizer: Rethinking Self-Attention in Transformer Models (random)"
    implementation = "softmax(R) V with R (h, N, N) a parameter: O(N^2 d), h N^2 parameters"
    notes = "h N^2 parameters per layer (50M at N=4097): practical only at small N"

    def __init__(self, dim, num_heads, grid, num_prefix=1, trainable: bool = True, rank: int | None = None,
                 seed: int = 0, **kw):
        super().__init__(dim, num_heads, grid, num_prefix, **kw)
        n = self.num_tokens
        self.qkv = nn.Linear(dim, dim)  # values only
        gen = torch.Generator().manual_seed(seed)
        shapes = [(num_heads, n, n)] if rank is None else [(num_heads, n, rank), (num_heads, n, rank)]
        scale = 1.0 if rank is None else rank**-0.25
        tensors = [torch.randn(s, generator=gen) * scale for s in shapes]
        self.rank = rank
        for name, t in zip(("r1", "r2"), tensors):
            if trainable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        if rank is None:
            self.r2 = None
        self._config = {"trainable": trainable, "rank": rank, "seed": seed}

    def weights(self) -> torch.Tensor:
        logits = self.r1 if self.rank is None else self.r1 @ self.r2.transpose(-2, -1)
        return logits.softmax(dim=-1)

    def forward(self, x):
        b, n, c = x.shape
        v = self.qkv(x).reshape(b, n, self.num_heads, self.head_dim)  # (B, N, h, d)
        # weights (h, N, N) @ v per head, the batch folded into the columns: one bmm, no broadcast
        vh = v.permute(2, 1, 0, 3).reshape(self.num_heads, n, b * self.head_dim)
        out = torch.bmm(self.weights(), vh).reshape(self.num_heads, n, b, self.head_dim)
        return self.merge_heads(out.permute(2, 0, 1, 3))


AttentionFactory = Callable[..., TokenAttention]


def describe_mechanisms() -> list[dict[str, Any]]:
    """One dict per registered mechanism: ``name``, ``family``, ``paper``, ``complexity`` (as
    claimed), ``implementation`` (what the code computes and its cost), ``static_shapes`` (every
    shape fixed by the input size: True for all), ``static_indices`` (False where gathers use
    data-dependent indices), ``export`` ({target: "ok" | blocking op}: measured on the
    ``vit_fmnist_<name>`` catalog entries; CoreML converts here but predicts only on macOS) and
    ``notes``."""
    order = {f: i for i, f in enumerate(
        ("reference", "fixed-pattern", "compressed", "low-rank", "kernel", "learned-pattern", "synthesizer"))}
    rows = []
    for name in attention_names():
        cls = _ATTENTIONS[name]
        rows.append({
            "name": name,
            "family": cls.family,
            "paper": cls.paper,
            "complexity": cls.complexity,
            "implementation": cls.implementation,
            "static_shapes": True,
            "static_indices": cls.static_indices,
            "export": {t: cls.export_issues.get(t, "ok" if t != "coreml" else "ok (structural: runs only on macOS)")
                       for t in ("tflite", "onnx", "executorch", "coreml")},
            "notes": cls.notes,
        })
    return sorted(rows, key=lambda r: (order.get(r["family"], 99), r["name"]))
