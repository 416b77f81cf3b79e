"""Token reduction that survives export: fewer tokens at chosen layers of a plain ViT, static shapes.

:func:`reduce_tokens` changes a plain ViT (timm ``VisionTransformer``/DeiT, edgevit's
:class:`~edgevit.models.vit.EdgeViT` with full attention) in place so that, before each chosen
block, the patch tokens are reduced by a fixed amount. The number of tokens after every reduction
is known when the model is built, so an exported graph has static shapes. Methods:

* ``pool`` -- 2 x 2 average pooling of the patch grid (stride 2: a quarter of the tokens), prefix
  tokens (class, distillation) kept. Reshapes, slices and means only: the whole graph stays inside
  XNNPACK (TFLite and ExecuTorch).
* ``merge`` -- ToMe-style bipartite soft matching with a fixed ``r``: the patch tokens are split
  into alternate sets A and B, each A token's most similar B token (cosine) is found, and the
  ``r`` best-matched A tokens are averaged into their B partners. Needs arg-max, top-k and gather,
  which no delegate of the targets here takes: they run on the runtime's own kernels.
* ``topk`` -- EViT-style keep-and-fuse: keep the ``keep`` patch tokens most similar to the class
  token, fuse the others into one token (their mean). Top-k and gather leave the delegate as for
  ``merge``.

The spelling ``method:L1,L2[:amount]`` is shared by Python and the CLI
(``--option tokens=pool:6``, ``tokens=merge:1,2,3:16``, ``tokens=topk:4:0.5``); layers count
blocks from 0 and the reduction runs *before* each named block. ``amount`` is ``r`` for ``merge``
(tokens merged away per reduction, default a quarter of the patch tokens) and the kept fraction
for ``topk`` (default 0.5); ``pool`` takes none.

The reduction changes the model's math: :func:`recover` fine-tunes the reduced model by
distillation from the unreduced one with the compression loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgevit.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgevit.compress.loop import EpochRecord, LoopConfig
    from edgevit.data.datasets import Dataset
    from edgevit.models._registry import ModelSpec

__all__ = [
    "TOKEN_METHODS",
    "TOKEN_OPTION",
    "TokenReduction",
    "recover",
    "reduce_tokens",
    "speedup_estimate",
    "token_counts",
]

TOKEN_METHODS = ("pool", "merge", "topk")
TOKEN_OPTION = "tokens"


@dataclass(frozen=True)
class TokenReduction:
    """Which reduction :func:`reduce_tokens` applies: ``method`` before each block in ``at``.

    ``amount``: ``merge`` -- tokens merged away per reduction (``r``); ``topk`` -- fraction of
    the patch tokens kept (0 < keep < 1); ``pool`` -- none.
    """

    method: str
    at: tuple[int, ...]
    amount: float | None = None

    def __post_init__(self) -> None:
        if self.method not in TOKEN_METHODS:
            import difflib

            close = difflib.get_close_matches(str(self.method), TOKEN_METHODS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"token reduction method must be one of {', '.join(TOKEN_METHODS)}, "
                              f"got {self.method!r}{hint}")
        at = tuple(self.at)
        if not at or any(not isinstance(i, int) or i < 0 for i in at) or len(set(at)) != len(at):
            raise ConfigError(f"token reduction layers must be distinct block indices >= 0, got {list(self.at)}")
        object.__setattr__(self, "at", tuple(sorted(at)))
        if self.method == "pool" and self.amount is not None:
            raise ConfigError("token reduction 'pool' takes no amount (it halves the grid in each direction)")
        if self.method == "merge" and self.amount is not None and (self.amount < 1 or self.amount != int(self.amount)):
            raise ConfigError(f"token merging needs a whole number r >= 1 of tokens to merge, got {self.amount}")
        if self.method == "topk" and self.amount is not None and not 0 < self.amount < 1:
            raise ConfigError(f"top-k keep-and-fuse needs a kept fraction between 0 and 1, got {self.amount}")

    @classmethod
    def parse(cls, text: str | TokenReduction) -> TokenReduction:
        """``method:L1,L2[:amount]`` (the ``--option tokens=...`` spelling)."""
        if isinstance(text, TokenReduction):
            return text
        parts = str(text).strip().split(":")
        example = "e.g. pool:6, merge:1,2,3:16 or topk:4:0.5"
        if len(parts) not in (2, 3):
            raise ConfigError(f"token reduction {text!r} is not method:layers[:amount] ({example})")
        try:
            at = tuple(int(v) for v in parts[1].split(",") if v.strip())
            amount = float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise ConfigError(f"token reduction {text!r}: layers must be integers and amount a number ({example})") from None
        return cls(parts[0].strip().lower(), at, amount)

    def spelling(self) -> str:
        amount = "" if self.amount is None else f":{self.amount:g}"
        return f"{self.method}:{','.join(map(str, self.at))}{amount}"


# ------------------------------------------------------------------------------------------------
# Which models


def _vit_facts(model: nn.Module) -> tuple[tuple[int, int], int]:
    """(patch grid, prefix tokens) of a plain ViT this module can reduce, else ConfigError."""
    from edgevit.models.vit import EdgeViT

    if isinstance(model, EdgeViT):
        if model.block_repeats != 1:
            raise ConfigError("token reduction needs one block per layer; this EdgeViT shares layers")
        kinds = {type(b.attn).__name__ for b in model.blocks}
        if not kinds <= {"FullAttention", "BmmTokenAttention"}:
            raise ConfigError(f"token reduction needs attention that works for any number of tokens (full); "
                              f"this EdgeViT has {', '.join(sorted(kinds))}")
        return tuple(model.grid), model.num_prefix
    from edgevit.models._timm import import_timm

    import_timm()
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        if getattr(model, "dynamic_img_size", False):
            _static_grid(model)
        if model.global_pool == "map":
            raise ConfigError("token reduction is not supported with attention-pool ('map') heads")
        return tuple(model.patch_embed.grid_size), int(model.num_prefix_tokens)
    raise ConfigError(f"token reduction applies to plain ViTs (timm VisionTransformer/DeiT, edgevit's EdgeViT); "
                      f"got {type(model).__name__}")


def _static_grid(model: nn.Module) -> None:
    """A timm ViT built with ``dynamic_img_size`` switched to its static path at its native grid
    (what the export's edge rewrite ``static_pos_embed`` does too: the identity at that size)."""
    from timm.layers import Format

    embed = model.patch_embed
    grid = tuple(getattr(embed, "grid_size", None) or ())
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos = getattr(model, "pos_embed", None)
    if pos is None or len(grid) != 2 or pos.shape[1] != grid[0] * grid[1] + prefix or embed.dynamic_img_pad:
        raise ConfigError("token reduction needs a static patch grid; this timm ViT's position embedding does not "
                          "match its native grid (build it without dynamic_img_size)")
    model.dynamic_img_size = False
    embed.flatten, embed.output_fmt, embed.strict_img_size = True, Format.NCHW, True


def reduce_tokens(model: nn.Module, reduction: TokenReduction | str | None = None, *, at: Any = None,
                  method: str = "pool", amount: float | None = None) -> nn.Module:
    """Reduce the tokens of the plain ViT ``model`` in place (and return it).

    ``reduction`` is a :class:`TokenReduction` or its spelling (``"pool:6"``); or give ``at``
    (block indices), ``method`` and ``amount``. The model's parameters and state-dict keys are
    unchanged; the number of tokens after each reduction is fixed (static shapes). The report is
    kept on the model as ``edgevit_tokens`` (see :func:`token_counts`). The reducers run where the
    model calls its ``blocks`` as one Sequential (inference, export, plain training); do not turn
    on gradient checkpointing afterwards (timm and EdgeViT then call the blocks one by one).
    """
    if reduction is None:
        if at is None:
            raise ConfigError("reduce_tokens needs a reduction ('pool:6') or the layers 'at'")
        reduction = TokenReduction(method, tuple(at) if not isinstance(at, int) else (at,), amount)
    reduction = TokenReduction.parse(reduction)
    if getattr(model, "edgevit_tokens", None):
        raise ConfigError("this model's tokens are already reduced")
    if getattr(model, "grad_checkpointing", False):  # its block-by-block path would pass the reducers by
        raise ConfigError("token reduction runs inside the blocks' Sequential; turn gradient checkpointing off first")
    from edgevit.compress._token_layers import TokenMerge, TokenPool, TokenReducedBlocks, TokenTopK

    grid, prefix = _vit_facts(model)
    depth = len(model.blocks)
    if reduction.at[-1] >= depth:
        raise ConfigError(f"token reduction layer {reduction.at[-1]} is outside the model's {depth} blocks (0..{depth - 1})")
    reducers: dict[int, nn.Module] = {}
    tokens = grid[0] * grid[1]
    counts = [tokens + prefix]
    for layer in reduction.at:
        if reduction.method == "pool":
            reducer = TokenPool(prefix, grid)
            grid = reducer.out_grid
        elif reduction.method == "merge":
            r = int(reduction.amount) if reduction.amount is not None else max(1, tokens // 4)
            reducer, grid = TokenMerge(prefix, tokens, r), None
        else:
            keep = max(1, round(tokens * (reduction.amount if reduction.amount is not None else 0.5)))
            reducer, grid = TokenTopK(prefix, tokens, keep), None
        tokens = reducer.out_tokens
        reducers[layer] = reducer
        counts.append(tokens + prefix)
    model.blocks = TokenReducedBlocks(model.blocks, reducers)
    model.edgevit_tokens = {"reduction": reduction.spelling(), "tokens": counts,
                            "layers": list(reduction.at), "depth": depth,
                            "token_blocks": _token_blocks(counts, reduction.at, depth)}
    return model


def _token_blocks(counts: list[int], at: tuple[int, ...], depth: int) -> float:
    """Fraction of the unreduced model's (tokens x blocks) that remains."""
    total, current, k = 0, counts[0], 0
    for i in range(depth):
        if k < len(at) and at[k] == i:
            k += 1
            current = counts[k]
        total += current
    return round(total / (counts[0] * depth), 4)


def token_counts(model: nn.Module) -> list[int] | None:
    """Tokens entering the first block and after each reduction (``None``: not reduced)."""
    facts = getattr(model, "edgevit_tokens", None)
    return list(facts["tokens"]) if facts else None


# ------------------------------------------------------------------------------------------------
# Recovery fine-tune


def recover(
    model: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    config: LoopConfig,
    *,
    spec: ModelSpec | None = None,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> list[EpochRecord]:
    """Fine-tune the token-reduced ``model`` by distillation from the unreduced ``teacher``
    (soft targets at ``temperature``, weight ``alpha``; the rest is cross-entropy on the labels)
    with the compression loop (:func:`edgevit.compress.loop.fit`); the teacher sees the same
    augmented batch. Returns the loop's per-epoch records (test top-1 after every epoch)."""
    import torch

    from edgevit.compress.distill import distillation_loss
    from edgevit.compress.loop import Hooks, fit

    spec = spec or getattr(model, "edgevit_spec", None)
    if spec is None:
        raise ConfigError("recover needs the model's spec (input size, mean/std): pass spec=")
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)

    def loss(out: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = teacher(batch.inputs_for(spec))
        value = distillation_loss(out, target, batch.labels, alpha=alpha, temperature=temperature)
        return value, out

    return fit(model, data, config, Hooks(loss=loss), spec=spec)


def speedup_estimate(model: nn.Module) -> float | None:
    """1 / the remaining fraction of token-blocks: the block-work speed-up if cost is linear in tokens."""
    facts = getattr(model, "edgevit_tokens", None)
    return None if not facts else round(1.0 / facts["token_blocks"], 3)
