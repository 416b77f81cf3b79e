"""The edge forms of Hugging Face transformers' modules (ViT-family self-attention, Swin / SwinV2
layers and patch merging) that :func:`edgevit.converters.rewrites.edge_rewrite` swaps in; the
timm forms they share pieces with are in :mod:`edgevit.converters.rewrites_forms`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.converters.rewrites_forms import (
    RewriteSkipped,
    linear_from,
    merge_heads,
    roll2d,
    softmax_with_bias,
    split_heads,
    window_partition_rank4,
    window_reverse_rank4,
)
from edgevit.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# Hugging Face transformers: ViT-family self-attention, Swin / SwinV2 layers and patch merging


class HfBmmAttention(nn.Module):
    """transformers' ViT / DeiT / DINOv2 ... self-attention (``q_proj``/``k_proj``/``v_proj``/
    ``o_proj`` with an eager or SDPA attention interface) as rank-3 per-head matmuls.

    Same call signature and return structure, ``(output, attention weights)``; the weights are
    ``None`` (as with SDPA), so ``output_attentions`` records nothing for rewritten layers. An
    attention mask is honoured: a float mask is added to the scores, a boolean one keeps True.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if not all(isinstance(getattr(src, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise RewriteSkipped("expected q_proj/k_proj/v_proj/o_proj linear layers")
        if getattr(src, "is_causal", False):
            raise RewriteSkipped("causal attention is not rewritten")
        self.num_heads = src.num_attention_heads
        s, q = src.scaling, src.q_proj
        self.q = linear_from(q.weight.detach() * s, None if q.bias is None else q.bias.detach() * s)
        self.k, self.v, self.proj = src.k_proj, src.v_proj, src.o_proj

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
        h = self.num_heads
        q = split_heads(self.q(hidden_states), h)
        k = split_heads(self.k(hidden_states), h, transpose=True)
        v = split_heads(self.v(hidden_states), h)
        scores = torch.bmm(q, k)
        if attention_mask is not None:
            bh, nq, nk = scores.shape
            scores4 = scores.reshape(bh // h, h, nq, nk)
            if attention_mask.dtype == torch.bool:
                scores4 = scores4.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores4 = scores4 + attention_mask
            scores = scores4.reshape(bh, nq, nk)
        out = merge_heads(torch.bmm(scores.softmax(dim=-1), v), h)
        return self.proj(out), None


def _hf_shift_mask(hp: int, wp: int, window: int, shift: int) -> torch.Tensor:
    """transformers' Swin shifted-window mask for a padded (hp, wp) map: (windows, N, N) with
    -100 between tokens of different cyclic-shift regions, 0 within one."""
    def regions(size: int) -> torch.Tensor:
        i = torch.arange(size)
        return (i >= size - window).long() + (i >= size - shift).long()

    ids = (regions(hp)[:, None] * 3 + regions(wp)[None, :]).to(torch.float32)
    ids = window_partition_rank4(ids[None, :, :, None], window, window)[..., 0]  # (windows, N)
    return torch.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0)


class _HfWindowLayer(nn.Module):
    """Shared windowing of transformers' Swin / SwinV2 layers: zero padding to whole windows, the
    cyclic shift as slices + concatenation, windows at rank 4, and the constant per-window score
    bias (relative positions + shift mask) as one (windows * heads, N, N) tensor.

    The bias is precomputed for the layer's built resolution; another resolution (odd feature
    maps, where transformers' ``input_resolution`` rounds down) gets its own, computed once.
    """

    num_heads: int
    window: int
    shift: int

    def _init_bias(self, rel_bias: torch.Tensor, mask_scale: float, resolution: tuple[int, int],
                   always_partition: bool) -> None:
        rel_bias = rel_bias.detach().clone(memory_format=torch.contiguous_format)
        self.register_buffer("rel_bias", rel_bias, persistent=False)  # (h, N, N)
        self.mask_scale = mask_scale
        self._other_biases: dict[tuple, torch.Tensor] = {}
        self.built_geometry = None
        try:
            geometry = self._geometry(*resolution, always_partition)
        except ConfigError:
            self.register_buffer("bias", None, persistent=False)
        else:
            self.built_geometry = geometry
            self.register_buffer("bias", self._make_bias(*geometry), persistent=False)

    def _geometry(self, h: int, w: int, always_partition: bool = True) -> tuple[int, int, int, int]:
        """(window, shift, padded height, padded width) for an h x w map."""
        window, shift = self.window, self.shift
        if not always_partition and min(h, w) <= window:  # transformers' set_shift_and_window_size
            window, shift = min(h, w), 0
        if window * window != self.rel_bias.shape[-1]:
            raise ConfigError(f"a {h}x{w} map needs {window}x{window} windows, but the layer's relative-position "
                              f"bias is for {self.rel_bias.shape[-1]} tokens")
        return window, shift, -(-h // window) * window, -(-w // window) * window

    def _make_bias(self, window: int, shift: int, hp: int, wp: int) -> torch.Tensor:
        with torch.no_grad():
            if not shift:
                return self.rel_bias.clone()
            mask = _hf_shift_mask(hp, wp, window, shift).to(self.rel_bias)
            return (self.mask_scale * mask[:, None] + self.rel_bias[None]).flatten(0, 1).contiguous()

    def _bias_for(self, geometry: tuple[int, int, int, int]) -> torch.Tensor:
        if geometry == self.built_geometry:
            return self.bias
        key = (geometry, self.rel_bias.device, self.rel_bias.dtype)  # the cache is no buffer: .to() skips it
        if key in self._other_biases:
            return self._other_biases[key]
        bias = self._make_bias(*geometry)
        if not torch.compiler.is_compiling():  # never keep a traced tensor
            self._other_biases[key] = bias
        return bias

    def _scores(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-head scores (B * nW * h, N, N) before the bias, values (B * nW * h, N, d))."""
        raise NotImplementedError

    def _windowed_attention(self, x: torch.Tensor, h: int, w: int, always_partition: bool = True) -> torch.Tensor:
        """(B, h, w, C) normalised map -> attention output (B, h * w, C), before the residual."""
        b, _, _, c = x.shape
        geometry = self._geometry(h, w, always_partition)
        window, shift, hp, wp = geometry
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            x = roll2d(x, -shift, -shift)
        scores, v = self._scores(window_partition_rank4(x, window, window))
        attn = self.attn_drop(softmax_with_bias(scores, self._bias_for(geometry), self.num_heads))
        out = self.proj_drop(self.proj(merge_heads(torch.bmm(attn, v), self.num_heads)))
        out = window_reverse_rank4(out, window, window, hp, wp)
        if shift:
            out = roll2d(out, shift, shift)
        if (hp, wp) != (h, w):
            out = out[:, :h, :w]
        return out.reshape(b, h * w, c)


class EdgeHfSwinLayer(_HfWindowLayer):
    """transformers' ``SwinLayer`` (pre-norm; dot-product window attention with a learnt
    relative-position table): same signature, ``(hidden_states, None)`` out."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        attn = src.attention
        self.num_heads, self.window, self.shift = attn.num_attention_heads, int(src.window_size), int(src.shift_size)
        self.resolution = tuple(int(r) for r in src.input_resolution)
        s, q = attn.scaling, attn.q_proj
        self.q = linear_from(q.weight.detach() * s, None if q.bias is None else q.bias.detach() * s)
        self.k, self.v, self.proj = attn.k_proj, attn.v_proj, attn.o_proj
        self.attn_drop, self.proj_drop = nn.Identity(), src.dropout
        self.layernorm_before, self.layernorm_after, self.mlp = src.layernorm_before, src.layernorm_after, src.mlp
        self.dropout, self.drop_path = src.dropout, src.drop_path
        with torch.no_grad():
            rel = attn.relative_position_bias()[0]
        # Built for transformers' default call (always_partition=False: the window shrinks to a
        # map no larger than it, without shift).
        self._init_bias(rel, 1.0, self.resolution, always_partition=False)

    def _scores(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = split_heads(self.q(windows), self.num_heads)
        k = split_heads(self.k(windows), self.num_heads, transpose=True)
        return torch.bmm(q, k), split_heads(self.v(windows), self.num_heads)

    def forward(self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int], always_partition: bool = False,
                **kwargs) -> tuple[torch.Tensor, None]:
        h, w = int(input_dimensions[0]), int(input_dimensions[1])
        b, _, c = hidden_states.shape
        x = self.layernorm_before(hidden_states).reshape(b, h, w, c)
        x = hidden_states + self.drop_path(self._windowed_attention(x, h, w, always_partition))
        return x + self.dropout(self.mlp(self.layernorm_after(x))), None


class EdgeHfSwinV2Layer(_HfWindowLayer):
    """transformers' ``Swinv2Layer`` (post-norm; cosine window attention with a per-head logit
    scale and a continuous relative-position bias, precomputed here): same signature and outputs.

    The cosine normalisation runs on tokens: per-head sums of squares and their expansion back to
    channels are two small linear layers, the logit scale folded into the second. transformers
    adds the shift mask twice (``-200`` between regions); so does this form, to stay equal.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        sa = src.attention.self
        self.num_heads, self.window, self.shift = sa.num_attention_heads, int(src.window_size), int(src.shift_size)
        self.resolution = tuple(int(r) for r in src.input_resolution)
        self.q, self.k, self.v = sa.query, sa.key, sa.value
        self.proj, self.proj_drop, self.attn_drop = src.attention.output.dense, src.attention.output.dropout, sa.dropout
        self.layernorm_before, self.layernorm_after = src.layernorm_before, src.layernorm_after
        self.intermediate, self.output, self.drop_path = src.intermediate, src.output, src.drop_path
        h, c = self.num_heads, sa.all_head_size
        head_of = torch.arange(c) // (c // h)
        member = (head_of[None, :] == torch.arange(h)[:, None]).float()  # (h, C)
        with torch.no_grad():
            scale = torch.clamp(sa.logit_scale.detach(), max=math.log(1.0 / 0.01)).exp().reshape(h)
            table = sa.continuous_position_bias_mlp(sa.relative_coords_table).view(-1, h)
            n = sa.window_size[0] * sa.window_size[1]
            rel = 16 * torch.sigmoid(table[sa.relative_position_index.view(-1)].view(n, n, h).permute(2, 0, 1))
        self.register_buffer("head_sum", member, persistent=False)  # sums of squares per head
        # contiguous: ExecuTorch's constant passes lose track of strided (transposed) buffers
        self.register_buffer("q_expand", (member.t() * scale[None, :]).contiguous(), persistent=False)
        self.register_buffer("k_expand", member.t().contiguous(), persistent=False)
        self._init_bias(rel, 2.0, self.resolution, always_partition=True)  # SwinV2 fixes its window at init

    def _cosine(self, x: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        inv = torch.rsqrt(torch.clamp_min(F.linear(x * x, self.head_sum), 1e-24))  # F.normalize's eps 1e-12
        return x * F.linear(inv, expand)

    def _scores(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = split_heads(self._cosine(self.q(windows), self.q_expand), self.num_heads)
        k = split_heads(self._cosine(self.k(windows), self.k_expand), self.num_heads, transpose=True)
        return torch.bmm(q, k), split_heads(self.v(windows), self.num_heads)

    def forward(self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int],
                output_attentions: bool | None = False) -> tuple[torch.Tensor, ...]:
        h, w = int(input_dimensions[0]), int(input_dimensions[1])
        b, _, c = hidden_states.shape
        attn = self._windowed_attention(hidden_states.reshape(b, h, w, c), h, w)
        x = hidden_states + self.drop_path(self.layernorm_before(attn))
        out = x + self.drop_path(self.layernorm_after(self.output(self.intermediate(x))))
        return (out, None) if output_attentions else (out,)


class EdgeHfPatchMerging(nn.Module):
    """transformers' Swin / SwinV2 patch merging with a rank-5 space-to-depth instead of four
    strided slices (same channel order); Swin normalises then reduces, SwinV2 the reverse."""

    def __init__(self, src: nn.Module, norm_first: bool) -> None:
        super().__init__()
        self.norm, self.reduction, self.norm_first = src.norm, src.reduction, norm_first

    def forward(self, input_feature: torch.Tensor, input_dimensions: tuple[int, int]) -> torch.Tensor:
        h, w = int(input_dimensions[0]), int(input_dimensions[1])
        b, _, c = input_feature.shape
        x = input_feature.reshape(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # (B * H/2, row, W/2, col, C) -> (B * H/2, W/2, col, row, C): channels in transformers' order
        x = x.reshape(b * h // 2, 2, w // 2, 2, c).permute(0, 2, 3, 1, 4).reshape(b, -1, 4 * c)
        return self.reduction(self.norm(x)) if self.norm_first else self.norm(self.reduction(x))
