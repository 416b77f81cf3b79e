"""``edgevit prune`` as a function: prune a trained model, fine-tune it (optionally distilling from
a teacher), save and register it, and optionally export it.

>>> from edgevit.compress.prune import prune
>>> r = prune("vit_fmnist_tiny", weights="runs/distill/vit_fmnist_tiny.safetensors",
...           heads=0.3, mlp=0.3, finetune_epochs=2, data="fashion-mnist", out="runs/prune")  # doctest: +SKIP
>>> r.name, r.params_before, r.params_after                                                  # doctest: +SKIP

How heads and MLP units are scored and cut, and how pruned checkpoints are stored: see
:mod:`edgevit.compress.structured`, whose public names are importable from here too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevit.compress.distill import load_teacher, resolve_checkpoint_model, teacher_loss
from edgevit.compress.loop import Hooks, LoopConfig, evaluate, fit
from edgevit.compress.structured import (
    HEAD_PRUNABLE_ATTENTION,
    IMPORTANCE,
    METADATA_PLAN_KEY,
    SCOPES,
    BlockPlan,
    PrunePlan,
    apply_plan,
    head_scores,
    load_pruned,
    plan_pruning,
    prunable_blocks,
    prune_model,
    read_plan,
    register_pruned,
    save_pruned,
    unit_scores,
)
from edgevit.errors import ConfigError, OutputExistsError

__all__ = [
    "BlockPlan",
    "HEAD_PRUNABLE_ATTENTION",
    "IMPORTANCE",
    "METADATA_PLAN_KEY",
    "PrunePlan",
    "PruneResult",
    "SCOPES",
    "apply_plan",
    "head_scores",
    "load_pruned",
    "plan_pruning",
    "prunable_blocks",
    "prune",
    "prune_model",
    "read_plan",
    "register_pruned",
    "save_pruned",
    "unit_scores",
]


# ----------------------------------------------------------------------------------------------
# edgevit prune


@dataclass(frozen=True)
class PruneResult:
    """A pruning run: the registered name, files, and the figures before / after / fine-tuned."""

    name: str
    base: str
    weights: str
    record: str
    plan: PrunePlan
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    top1_before: float | None = None
    top1_pruned: float | None = None
    top1_finetuned: float | None = None
    finetune_history: tuple[Any, ...] = ()
    seconds: float = 0.0
    exports: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "weights": self.weights,
            "record": self.record,
            "plan": self.plan.to_dict(),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_reduction": 1 - self.params_after / self.params_before,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_reduction": 1 - self.macs_after / self.macs_before,
            "top1_before": self.top1_before,
            "top1_pruned": self.top1_pruned,
            "top1_finetuned": self.top1_finetuned,
            "finetune_history": [h.to_dict() for h in self.finetune_history],
            "seconds": round(self.seconds, 1),
            "exports": list(self.exports),
            "warnings": list(self.warnings),
        }


def prune(
    model: str,
    weights: str | os.PathLike | None = None,
    *,
    heads: float = 0.3,
    mlp: float = 0.3,
    importance: str = "l1",
    scope: str = "layer",
    pretrained: bool = False,
    data: Any = None,
    finetune_epochs: int = 0,
    teacher: str | os.PathLike | None = None,
    teacher_weights: str | os.PathLike | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    lr: float = 5e-4,
    batch_size: int = 128,
    weight_decay: float = 0.05,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    out: str | os.PathLike = "edgevit-prune",
    name: str | None = None,
    force: bool = False,
    export_targets: Sequence[str] = (),
    threads: int | None = None,
    progress: bool = False,
    on_epoch_end: Any = None,
) -> PruneResult:
    """Prune catalog model ``model`` (with ``weights`` or ``pretrained``), optionally fine-tune it on
    ``data`` for ``finetune_epochs`` (with ``teacher``: distillation from it, e.g. the unpruned
    model), save it to ``out/<name>.safetensors`` + ``.json``, register it as ``name``
    (``<model>_pruned``) and optionally export it to ``export_targets`` (fp32).
    """
    import torch

    from edgevit.measure.profile import profile_model
    from edgevit.models import create_model

    start = time.perf_counter()
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    if finetune_epochs and data is None:
        raise ConfigError("fine-tuning needs data: pass --data DATASET|DIR with --finetune-epochs")
    if weights is None and not pretrained and not Path(model).is_file():
        raise ConfigError(f"pruning a randomly initialised {model} is meaningless; pass --weights FILE")
    if Path(model).is_file():  # a checkpoint (e.g. one already pruned)
        weights, model = model, resolve_checkpoint_model(model)
    if name is None:
        from edgevit.models.sources import source_slug

        name = f"{source_slug(model)}_pruned"
    out_dir = Path(out)
    target = out_dir / f"{name}.safetensors"
    if target.exists() and not force:
        raise OutputExistsError(target)
    warnings: list[str] = []
    float_model = create_model(model, pretrained=pretrained, weights=weights)
    spec = float_model.edgevit_spec
    if spec.source.startswith("pruned:"):
        raise ConfigError(f"{model} is already pruned; prune its base model with the combined ratios instead")
    before = profile_model(float_model, spec.input_size, device="cpu")
    ds = None
    if data is not None:
        from edgevit.data import Dataset, load_dataset

        ds = data if isinstance(data, Dataset) else load_dataset(data, image_size=spec.input_size,
                                                                  color_mode=spec.color_mode)
        if train_limit or test_limit:
            ds = ds.subset(train_limit, test_limit)
    top1_before = evaluate(float_model, ds.test_images, ds.test_labels, spec)[0] if ds is not None else None

    pruned, plan = prune_model(float_model, heads, mlp, importance=importance, scope=scope, base=spec.name)
    after = profile_model(pruned, spec.input_size, device="cpu")
    top1_pruned = evaluate(pruned, ds.test_images, ds.test_labels, spec)[0] if ds is not None else None
    history: list[Any] = []
    if finetune_epochs:
        tch = load_teacher(teacher, teacher_weights) if teacher is not None else None
        torch.manual_seed(seed)
        loop = LoopConfig(epochs=finetune_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          warmup_epochs=0.2, seed=seed, threads=threads, progress=progress, desc=f"fine-tune {name}")
        hooks = Hooks(loss=teacher_loss(tch, temperature, alpha if tch else 0.0), on_epoch_end=on_epoch_end)
        history = fit(pruned, ds, loop, hooks, spec=spec)
    pruned.eval()
    top1_finetuned = history[-1].test_top1 if history else None
    figures = {
        "params_before": before.params, "params_after": after.params,
        "macs_before": before.macs, "macs_after": after.macs,
        "top1_before": top1_before, "top1_pruned": top1_pruned, "top1_finetuned": top1_finetuned,
        "dataset": ds.summary() if ds is not None else None,
        "finetune": {"epochs": finetune_epochs, "lr": lr, "teacher": os.fspath(teacher) if teacher else None,
                     "history": [h.to_dict() for h in history]},
        "source_weights": os.fspath(weights) if weights is not None else spec.embedded_weights,
    }
    wpath, record = save_pruned(pruned, plan, target, name=name, extra=figures)
    registered = register_pruned(wpath, name=name)
    exports = []
    for tgt in export_targets:
        from edgevit.converters import export

        res = export(registered, tgt, "fp32", out=out_dir, pretrained=True, force=force)
        exports.append({"target": tgt, "path": str(res.path), "bytes": res.bytes, "seconds": round(res.seconds, 2),
                        "verification": res.verification.summary() if res.verification else None})
    return PruneResult(
        name=registered, base=spec.name, weights=str(wpath), record=str(record), plan=plan,
        params_before=before.params, params_after=after.params, macs_before=before.macs, macs_after=after.macs,
        top1_before=top1_before, top1_pruned=top1_pruned, top1_finetuned=top1_finetuned,
        finetune_history=tuple(history), seconds=time.perf_counter() - start, exports=tuple(exports),
        warnings=tuple(warnings),
    )
