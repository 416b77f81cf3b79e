"""Structured pruning of Vision Transformers: whole attention heads and MLP hidden units.

The pruning itself, with no training: plans, importance scores, cutting a model to a plan, and
pruned checkpoints (save, load, register). :mod:`edgevit.compress.prune` adds the whole run
(fine-tuning through the training loop, export).

>>> from edgevit.compress.structured import prune_model, save_pruned
>>> model, plan = prune_model(model, heads=0.3, mlp=0.3)                  # doctest: +SKIP
>>> save_pruned(model, plan, "runs/prune/vit_fmnist_tiny_pruned.safetensors")  # doctest: +SKIP

What is removed is removed physically: the ``qkv`` projection loses the query, key and value rows
of every pruned head and the output projection its input columns (the head count drops, the head
width stays); an MLP loses rows of ``fc1`` and columns of ``fc2``. The result is an ordinary
module with smaller ``nn.Linear`` layers, so parameters, MACs, file size and latency all fall,
and every exporter handles it as it handles the original.

Importance scores (data-free, magnitude based; computed per block):

* a head ``h``: the L1 norm of its columns of the output projection times the L1 norm of its
  value rows of ``qkv`` (``||W_proj[:, h]||_1 * ||W_v[h]||_1``): how strongly what the head reads
  can reach the residual stream. The attention pattern itself is not looked at.
* an MLP hidden unit ``j``: ``||fc1.weight[j, :]||_1 * ||fc2.weight[:, j]||_1`` (input weights
  times output weights).

``scope="layer"`` (default) removes ``round(ratio * n)`` of the lowest-scoring heads (units) from
every block, keeping at least one; ``scope="global"`` ranks all blocks together, each score
divided by its block's mean score, so blocks may end with different widths. Fine-tuning
afterwards (optionally with a teacher: distillation) recovers most of the loss.

A pruned model is saved as ``<name>.safetensors`` (its weights; the pruning plan in the file's
metadata) plus ``<name>.json`` (the plan and the figures). :func:`register_pruned` adds it to the
model catalog at run time (``<model>_pruned`` by default), so ``create_model``, ``export``,
``profile`` and ``train`` take it by name like any catalog entry.

Supported: edgevit's :class:`~edgevit.models.vit.EdgeViT` (head pruning for the attention
mechanisms whose only per-head state is ``qkv``/``proj``: full, window, linear, relu_linear,
cosformer, performer; MLP pruning for all) and timm's ``VisionTransformer`` family (ViT, DeiT,
DeiT distilled).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "BlockPlan",
    "HEAD_PRUNABLE_ATTENTION",
    "IMPORTANCE",
    "METADATA_PLAN_KEY",
    "PrunePlan",
    "SCOPES",
    "apply_plan",
    "head_scores",
    "load_pruned",
    "plan_pruning",
    "prunable_blocks",
    "read_plan",
    "prune_model",
    "register_pruned",
    "save_pruned",
    "unit_scores",
]

PLAN_FORMAT = 1
IMPORTANCE = ("l1",)
SCOPES = ("layer", "global")
METADATA_PLAN_KEY = "edgevit_pruned"
# edgevit attention mechanisms whose only per-head parameters are the rows of qkv / columns of proj.
HEAD_PRUNABLE_ATTENTION = ("full", "window", "linear", "relu_linear", "cosformer", "performer")


@dataclass(frozen=True)
class BlockPlan:
    """What one transformer block keeps: head indices and MLP hidden-unit indices (ascending)."""

    heads: tuple[int, ...]
    units: tuple[int, ...]
    heads_before: int
    units_before: int

    def to_dict(self) -> dict[str, Any]:
        return {"heads": list(self.heads), "units": list(self.units), "heads_before": self.heads_before,
                "units_before": self.units_before}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockPlan:
        return cls(tuple(int(i) for i in d["heads"]), tuple(int(i) for i in d["units"]), int(d["heads_before"]),
                   int(d["units_before"]))


@dataclass(frozen=True)
class PrunePlan:
    """A complete pruning: the base catalog model, its classes and each block's kept heads/units."""

    base: str
    num_classes: int
    blocks: tuple[BlockPlan, ...]
    heads_ratio: float
    mlp_ratio: float
    importance: str = "l1"
    scope: str = "layer"
    format: int = PLAN_FORMAT

    @property
    def heads_kept(self) -> int:
        return sum(len(b.heads) for b in self.blocks)

    @property
    def heads_total(self) -> int:
        return sum(b.heads_before for b in self.blocks)

    @property
    def units_kept(self) -> int:
        return sum(len(b.units) for b in self.blocks)

    @property
    def units_total(self) -> int:
        return sum(b.units_before for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "base": self.base,
            "num_classes": self.num_classes,
            "heads_ratio": self.heads_ratio,
            "mlp_ratio": self.mlp_ratio,
            "importance": self.importance,
            "scope": self.scope,
            "heads_removed": self.heads_total - self.heads_kept,
            "heads_total": self.heads_total,
            "units_removed": self.units_total - self.units_kept,
            "units_total": self.units_total,
            "blocks": [b.to_dict() for b in self.blocks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunePlan:
        if int(d.get("format", 0)) != PLAN_FORMAT:
            raise ModelError(f"pruning plan format {d.get('format')} is not supported (expected {PLAN_FORMAT})")
        return cls(
            base=str(d["base"]), num_classes=int(d["num_classes"]),
            blocks=tuple(BlockPlan.from_dict(b) for b in d["blocks"]),
            heads_ratio=float(d["heads_ratio"]), mlp_ratio=float(d["mlp_ratio"]),
            importance=str(d.get("importance", "l1")), scope=str(d.get("scope", "layer")),
        )


# ----------------------------------------------------------------------------------------------
# Model families


@dataclass
class _Block:
    """Adapter over one transformer block: its attention (qkv/proj/num_heads/head_dim) and MLP."""

    path: str
    attn: Any
    mlp: Any
    kind: str  # "edgevit" | "timm"

    @property
    def num_heads(self) -> int:
        return int(self.attn.num_heads)

    @property
    def head_dim(self) -> int:
        return int(self.attn.head_dim)

    @property
    def hidden(self) -> int:
        return int(self.mlp.fc1.out_features)

    def head_prunable(self) -> str | None:
        """None when this block's heads can be pruned, else why not."""
        if self.kind == "edgevit":
            name = getattr(self.attn, "name", type(self.attn).__name__)
            if name not in HEAD_PRUNABLE_ATTENTION:
                return (f"{name} attention keeps per-head state beyond qkv/proj; head pruning supports "
                        f"{', '.join(HEAD_PRUNABLE_ATTENTION)} (prune MLP units only with heads=0)")
            if self.attn.qkv.out_features != 3 * self.num_heads * self.head_dim:
                return f"{name} attention's qkv is not laid out as (q, k, v) x heads"
            return None
        from torch import nn

        if getattr(self.attn, "gate", None) is not None:
            return "timm attention with a gate is not supported"
        if not isinstance(getattr(self.attn, "norm", nn.Identity()), nn.Identity):
            return "timm attention with scale_norm is not supported"
        return None


def prunable_blocks(model: nn.Module) -> list[_Block]:
    """The transformer blocks of ``model`` whose heads and MLP units can be pruned."""
    from torch import nn

    from edgevit.models.attention import TokenAttention
    from edgevit.models.vit import EdgeViT

    blocks = getattr(model, "blocks", None)
    if isinstance(model, EdgeViT):
        return [_Block(f"blocks.{i}", b.attn, b.mlp, "edgevit") for i, b in enumerate(model.blocks)
                if isinstance(b.attn, TokenAttention)]
    if blocks is not None and type(model).__module__.startswith("timm.models.") and "VisionTransformer" in [
        c.__name__ for c in type(model).__mro__
    ]:
        out = []
        for i, b in enumerate(blocks):
            attn, mlp = getattr(b, "attn", None), getattr(b, "mlp", None)
            ok = (attn is not None and hasattr(attn, "qkv") and hasattr(attn, "proj") and hasattr(attn, "num_heads")
                  and mlp is not None and isinstance(getattr(mlp, "fc1", None), nn.Linear)
                  and isinstance(getattr(mlp, "fc2", None), nn.Linear)
                  and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity))
            if not ok:
                raise ConfigError(f"block {i} of {type(model).__name__} is not a plain attention + MLP block")
            out.append(_Block(f"blocks.{i}", attn, mlp, "timm"))
        return out
    raise ConfigError(
        f"structured pruning supports edgevit's EdgeViT and timm's VisionTransformer/DeiT, not {type(model).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# Importance


def head_scores(block: _Block) -> torch.Tensor:
    """``||W_proj[:, h]||_1 * ||W_v[h]||_1`` for every head ``h`` of the block (float64)."""
    h, d = block.num_heads, block.head_dim
    proj = block.attn.proj.weight.detach().double().abs()  # (dim, h*d)
    out = proj.reshape(proj.shape[0], h, d).sum(dim=(0, 2))
    qkv = block.attn.qkv.weight.detach().double().abs()  # (3*h*d, dim)
    v = qkv[2 * h * d : 3 * h * d].reshape(h, d, -1).sum(dim=(1, 2))
    return out * v


def unit_scores(block: _Block) -> torch.Tensor:
    """``||fc1.weight[j, :]||_1 * ||fc2.weight[:, j]||_1`` for every hidden unit ``j`` (float64)."""
    fc1 = block.mlp.fc1.weight.detach().double().abs().sum(dim=1)
    fc2 = block.mlp.fc2.weight.detach().double().abs().sum(dim=0)
    return fc1 * fc2


def _keep_top(scores: torch.Tensor, remove: int) -> tuple[int, ...]:
    """Indices of the ``len(scores) - remove`` highest scores, ascending (ties: the lower index stays)."""
    n = len(scores)
    keep = n - max(0, min(remove, n - 1))
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    return tuple(sorted(order[:keep]))


def _global_keep(scores: list[torch.Tensor], ratio: float) -> list[tuple[int, ...]]:
    """Rank every block's scores (each divided by its block's mean) together; remove the lowest
    ``round(ratio * total)``, never a block's last one."""
    normalised = [(float(s[i]) / max(float(s.mean()), 1e-30), b, i) for b, s in enumerate(scores) for i in range(len(s))]
    remove = round(ratio * len(normalised))
    kept = [set(range(len(s))) for s in scores]
    for _, b, i in sorted(normalised, key=lambda t: (t[0], t[1], t[2])):
        if remove == 0:
            break
        if len(kept[b]) > 1:
            kept[b].discard(i)
            remove -= 1
    return [tuple(sorted(k)) for k in kept]


def _check_ratio(name: str, ratio: float) -> None:
    if not 0 <= ratio < 1:
        raise ConfigError(f"--{name} must be a fraction in [0, 1) (e.g. 0.3 removes 30%), got {ratio}")


def plan_pruning(
    model: nn.Module,
    heads: float = 0.3,
    mlp: float = 0.3,
    *,
    importance: str = "l1",
    scope: str = "layer",
    base: str | None = None,
    num_classes: int | None = None,
) -> PrunePlan:
    """Choose the heads and units to keep (see the module docstring for the scores and scopes)."""
    _check_ratio("heads", heads)
    _check_ratio("mlp", mlp)
    if importance not in IMPORTANCE:
        raise ConfigError(f"importance must be one of {', '.join(IMPORTANCE)}, got {importance!r}")
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    blocks = prunable_blocks(model)
    if heads > 0:
        for b in blocks:
            why = b.head_prunable()
            if why:
                raise ConfigError(f"{b.path}: cannot prune heads: {why}")
    hs = [head_scores(b) for b in blocks]
    us = [unit_scores(b) for b in blocks]
    if scope == "layer":
        kept_heads = [_keep_top(s, round(heads * len(s))) for s in hs]
        kept_units = [_keep_top(s, round(mlp * len(s))) for s in us]
    else:
        kept_heads = _global_keep(hs, heads)
        kept_units = _global_keep(us, mlp)
    spec = getattr(model, "edgevit_spec", None)
    if base is None:
        if spec is None:
            raise ConfigError("pass base= (the catalog name) for a model that does not come from the catalog")
        base = spec.name
    if num_classes is None:
        head = getattr(model, "head", None)
        num_classes = int(getattr(head, "out_features", 0) or getattr(model, "num_classes", 0))
    return PrunePlan(
        base=base, num_classes=int(num_classes),
        blocks=tuple(BlockPlan(kh, ku, b.num_heads, b.hidden) for b, kh, ku in zip(blocks, kept_heads, kept_units)),
        heads_ratio=heads, mlp_ratio=mlp, importance=importance, scope=scope,
    )


# ----------------------------------------------------------------------------------------------
# Surgery


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    import torch
    from torch import nn

    w = linear.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    bias = linear.bias.detach() if linear.bias is not None else None
    if bias is not None and rows is not None:
        bias = bias[rows]
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Cut ``model``'s layers down to ``plan`` in place (weights of kept heads/units are kept)."""
    import torch

    blocks = prunable_blocks(model)
    if len(blocks) != len(plan.blocks):
        raise ModelError(f"the plan has {len(plan.blocks)} blocks but the model {len(blocks)}")
    for b, bp in zip(blocks, plan.blocks):
        if b.num_heads != bp.heads_before or b.hidden != bp.units_before:
            raise ModelError(
                f"{b.path}: the plan expects {bp.heads_before} heads and {bp.units_before} MLP units, the model has "
                f"{b.num_heads} and {b.hidden}"
            )
        if len(bp.heads) < b.num_heads:
            h, d = b.num_heads, b.head_dim
            keep = torch.tensor(bp.heads, dtype=torch.long)
            within = (keep[:, None] * d + torch.arange(d)[None, :]).reshape(-1)  # columns of kept heads
            rows = torch.cat([s * h * d + within for s in range(3)])  # q, k, v sections
            b.attn.qkv = _sliced_linear(b.attn.qkv, rows=rows)
            b.attn.proj = _sliced_linear(b.attn.proj, cols=within)
            b.attn.num_heads = len(bp.heads)
            if b.kind == "timm":
                b.attn.attn_dim = len(bp.heads) * d
        if len(bp.units) < b.hidden:
            keep = torch.tensor(bp.units, dtype=torch.long)
            b.mlp.fc1 = _sliced_linear(b.mlp.fc1, rows=keep)
            b.mlp.fc2 = _sliced_linear(b.mlp.fc2, cols=keep)
    model.edgevit_prune_plan = plan  # type: ignore[attr-defined]
    return model


def prune_model(
    model: nn.Module,
    heads: float = 0.3,
    mlp: float = 0.3,
    *,
    importance: str = "l1",
    scope: str = "layer",
    base: str | None = None,
) -> tuple[nn.Module, PrunePlan]:
    """Plan and apply pruning to ``model`` (in place); returns the model and its plan."""
    plan = plan_pruning(model, heads, mlp, importance=importance, scope=scope, base=base)
    return apply_plan(model, plan), plan


def _build_pruned(plan: PrunePlan, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    """The pruned architecture (random weights): the base built, then cut to the plan."""
    from edgevit.models import get_spec

    spec = get_spec(plan.base)
    model = spec.builder(num_classes=plan.num_classes, pretrained=False)
    apply_plan(model, plan)
    if num_classes is not None and num_classes != plan.num_classes:
        raise ModelError(
            f"a pruned {plan.base} predicts {plan.num_classes} classes; it cannot be rebuilt with {num_classes}"
        )
    return model


# ----------------------------------------------------------------------------------------------
# Saving, loading, registering


def save_pruned(model: nn.Module, plan: PrunePlan, path: str | os.PathLike, name: str | None = None,
                extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``path`` (safetensors: weights; the plan in its metadata) and the JSON beside it."""
    from edgevit.models.weights import save_weights
    from edgevit.compress.loop import atomic_write

    p = Path(path)
    if p.suffix != ".safetensors":
        p = p.with_suffix(".safetensors")
    name = name or f"{plan.base}_pruned"
    meta = {"model": name, METADATA_PLAN_KEY: plan.to_json(), "base": plan.base}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda t: save_weights(state, t, metadata=meta))
    doc = {"model": name, "weights": str(p.resolve()), "plan": plan.to_dict(), **(extra or {})}
    record = p.with_suffix(".json")
    atomic_write(record, lambda t: t.write_text(json.dumps(doc, indent=1) + "\n"))
    return p, record


def read_plan(path: Path) -> tuple[PrunePlan, str]:
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        return PrunePlan.from_dict(doc["plan"]), str(doc.get("model") or f"{doc['plan']['base']}_pruned")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelError(f"{path} is not a valid safetensors file: {exc}") from None
    if METADATA_PLAN_KEY not in meta:
        raise ModelError(f"{path} holds no pruning plan: it was not written by `edgevit prune`")
    plan = PrunePlan.from_dict(json.loads(meta[METADATA_PLAN_KEY]))
    return plan, meta.get("model") or f"{plan.base}_pruned"


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model from its safetensors file (architecture from the plan inside)."""
    from edgevit.models.weights import load_weights

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such file")
    plan, _ = read_plan(p)
    model = _build_pruned(plan)
    load_weights(model, p)
    model.eval()
    return model


def register_pruned(path: str | os.PathLike, name: str | None = None) -> str:
    """Add the pruned model saved at ``path`` (its ``.safetensors``, or the ``.json`` beside it) to
    the model catalog for this process and return its name.

    The entry's builder rebuilds the pruned shapes; its embedded weights are the file, so
    ``create_model(name, pretrained=True)`` and ``export(name, target, pretrained=True)`` load
    them. Registering the same name again with another plan replaces the entry.
    """
    from edgevit.models import get_spec, is_builtin, list_models, register_model
    from edgevit.measure.profile import profile_model

    p = Path(path)
    if p.suffix == ".json":
        doc = json.loads(p.read_text())
        p = Path(doc["weights"])
    if not p.is_file():
        raise ModelError(f"{p}: no such pruned checkpoint")
    plan, saved_name = read_plan(p)
    name = name or saved_name
    base = get_spec(plan.base)
    weights = str(p.resolve())
    if name in list_models():
        existing = get_spec(name)
        if is_builtin(name) or not existing.source.startswith("pruned:"):
            raise ConfigError(f"{name} is a catalog model; register the pruned model under another name")
        if existing.embedded_weights == weights and getattr(existing.builder, "plan", None) == plan:
            return name

    def build(num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
        return _build_pruned(plan, num_classes)

    build.plan = plan  # type: ignore[attr-defined]
    spec = dataclasses.replace(
        base, name=name, builder=build, hub_id=None, timm_name=None, embedded_weights=weights,
        source=f"pruned:{plan.base}", params_m=0.0, gmacs=0.0,
        description=(f"{plan.base} with {plan.heads_total - plan.heads_kept}/{plan.heads_total} heads and "
                     f"{plan.units_total - plan.units_kept}/{plan.units_total} MLP units pruned ({plan.importance})"),
        known_issues=dict(base.known_issues),
    )
    register_model(spec, replace=True)
    r = profile_model(name)
    register_model(dataclasses.replace(spec, params_m=round(r.params_m, 4), gmacs=float(f"{r.gmacs:.4g}")), replace=True)
    return name
