"""The token reducers of :mod:`edgevit.compress.tokens` (torch modules; imported when a model is
reduced). Each maps ``(B, prefix + N, C)`` tokens to ``(B, prefix + N', C)`` with ``N'`` fixed
when it is built."""

from __future__ import annotations

import torch
from torch import nn

from edgevit.errors import ConfigError

__all__ = ["TokenMerge", "TokenPool", "TokenReducedBlocks", "TokenTopK"]


class _Reducer(nn.Module):
    def __init__(self, prefix: int, tokens: int) -> None:
        super().__init__()
        self.prefix, self.tokens = prefix, tokens

    @property
    def out_tokens(self) -> int:  # pragma: no cover - every reducer defines it
        raise NotImplementedError


class TokenPool(_Reducer):
    """2 x 2 average pooling of the ``h x w`` patch grid (prefix tokens kept): two means over one
    axis of a rank-4 / rank-3 view, no transpose."""

    def __init__(self, prefix: int, grid: tuple[int, int]) -> None:
        h, w = grid
        if h % 2 or w % 2:
            raise ConfigError(f"token pooling halves the patch grid; a {h} x {w} grid is not even "
                              "(pool at an earlier layer, or fewer times)")
        super().__init__(prefix, h * w)
        self.grid = (h, w)

    @property
    def out_grid(self) -> tuple[int, int]:
        return self.grid[0] // 2, self.grid[1] // 2

    @property
    def out_tokens(self) -> int:
        return self.tokens // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h, w = self.grid
        patches = x[:, self.prefix :]
        rows = patches.reshape(b * (h // 2), 2, w // 2, 2 * c).mean(dim=1)  # (B*h/2, w/2, 2C)
        pooled = rows.reshape(b * (h // 2), w // 2, 2, c).mean(dim=2).reshape(b, (h // 2) * (w // 2), c)
        return torch.cat([x[:, : self.prefix], pooled], dim=1) if self.prefix else pooled


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class TokenMerge(_Reducer):
    """ToMe bipartite soft matching with a fixed ``r`` (plain average of the merged pair)."""

    def __init__(self, prefix: int, tokens: int, r: int) -> None:
        super().__init__(prefix, tokens)
        if r > tokens // 2:
            raise ConfigError(f"token merging can merge at most half of the {tokens} tokens per layer, got r={r}")
        self.r = r
        self.register_buffer("slots", torch.arange(tokens // 2), persistent=False)

    @property
    def out_tokens(self) -> int:
        return self.tokens - self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        n, r = self.tokens, self.r
        patches = x[:, self.prefix :]
        if n % 2:  # the last token stays out of the matching
            patches, rest = patches[:, :-1], patches[:, -1:]
        pairs = patches.reshape(b, n // 2, 2, c)
        a, bb = pairs[:, :, 0], pairs[:, :, 1]  # (B, n/2, C) each
        scores = torch.bmm(_normalized(a), _normalized(bb).transpose(1, 2))  # (B, Na, Nb)
        best, partner = scores.max(dim=-1)  # (B, Na)
        order = best.topk(n // 2, dim=-1).indices  # all of A, best-matched first (a top-k: converters lower it)
        merged_idx, kept_idx = order[:, :r], order[:, r:]
        kept = a.gather(1, kept_idx[..., None].expand(-1, -1, c))
        src = a.gather(1, merged_idx[..., None].expand(-1, -1, c))  # (B, r, C)
        dst = partner.gather(1, merged_idx)  # (B, r): which B token each merges into
        onehot = (dst[..., None] == self.slots).to(x.dtype)  # (B, r, Nb): one_hot without its range assert
        sums = bb + torch.bmm(onehot.transpose(1, 2), src)
        counts = 1.0 + onehot.sum(dim=1)[..., None]  # (B, Nb, 1)
        out = [x[:, : self.prefix]] if self.prefix else []
        out += [kept, sums / counts]
        if n % 2:
            out.append(rest)
        return torch.cat(out, dim=1)


class TokenTopK(_Reducer):
    """EViT-style keep-and-fuse: the ``keep`` patch tokens most similar (cosine) to the class token
    stay, the others are fused into one token (their mean). Needs a class token."""

    def __init__(self, prefix: int, tokens: int, keep: int) -> None:
        super().__init__(prefix, tokens)
        if prefix < 1:
            raise ConfigError("top-k keep-and-fuse ranks tokens by the class token; this model has none "
                              "(use pool or merge)")
        if not 1 <= keep < tokens:
            raise ConfigError(f"top-k keep-and-fuse keeps 1 to {tokens - 1} of {tokens} tokens, got {keep}")
        self.keep = keep

    @property
    def out_tokens(self) -> int:
        return self.keep + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        patches = x[:, self.prefix :]
        score = (_normalized(patches) * _normalized(x[:, :1])).sum(dim=-1)  # (B, N)
        order = score.topk(self.tokens, dim=-1).indices  # all tokens, most similar first
        kept = patches.gather(1, order[:, : self.keep, None].expand(-1, -1, c))
        dropped = patches.gather(1, order[:, self.keep :, None].expand(-1, -1, c))
        return torch.cat([x[:, : self.prefix], kept, dropped.mean(dim=1, keepdim=True)], dim=1)


class TokenReducedBlocks(nn.Sequential):
    """The model's blocks (same children, same state-dict keys) with a parameter-free token
    reducer run before some of them; the reducers are kept outside the module tree, so a
    checkpoint of the reduced model loads into the unreduced one and back."""

    def __init__(self, blocks: nn.Sequential, reducers: dict[int, nn.Module]) -> None:
        super().__init__(*blocks)
        self.reducers = dict(reducers)  # a plain dict attribute: not submodules, no parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self):
            if i in self.reducers:
                x = self.reducers[i](x)
            x = block(x)
        return x
