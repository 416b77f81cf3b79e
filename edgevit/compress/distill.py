"""Knowledge distillation: train a small catalog model (the student) to imitate a larger one.

>>> from edgevit.compress.distill import distill
>>> r = distill("runs/teacher/vit_fmnist_full.safetensors", "vit_fmnist_tiny", "fashion-mnist",
...             temperature=4.0, alpha=0.7, epochs=4, out="runs/distill")        # doctest: +SKIP

The loss (Hinton et al. 2015) for a student with logits ``s``, a teacher with logits ``t``,
temperature ``T`` and weight ``alpha``::

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

(KL summed over classes, averaged over the batch; ``T^2`` keeps the soft term's gradients on the
scale of the hard term's as ``T`` grows.) ``alpha = 0`` is plain training.

Students with DeiT's *distillation token* (timm's ``deit_*_distilled_*``: a second token read by
a second head, ``head_dist``) are trained as in Touvron et al. 2021: the class head learns from
the labels and the distillation head from the teacher, either ``hard`` (DeiT's default:
``0.5 * CE(cls, y) + 0.5 * CE(dist, argmax t)``) or ``soft`` (``(1 - alpha) * CE(cls, y) + alpha
* T^2 * KL`` on the distillation head). At inference the two heads are averaged (timm). edgevit's
own EdgeViT students have no distillation token: they use the soft-target loss above (a
distillation token would need a second prefix token and head in :class:`edgevit.models.vit.EdgeViT`).

The training is the one loop's (:func:`edgevit.compress.loop.fit`: AdamW with timm's parameter
groups, warm-up + cosine learning rate per step, the same seeded augmentation, checkpoints after
each epoch with resume); :func:`teacher_loss` is the loss hook that brings the teacher in, on any
module (a pruned model, a quantization-aware graph). Teacher and student each get their own
preprocessing (input size, colour mode, mean/std) of the *same* augmented uint8 batch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgevit.compress.loop import (
    CHECKPOINT,
    Batch,
    EpochRecord,
    Hooks,
    LoopConfig,
    TrainConfig,
    atomic_write,
    enable_grad_checkpointing,
    evaluate,
    fit,
    load_checkpoint,
    load_initial_weights,
    pick_device,
    save_checkpoint,
    to_model_input,
    torch_settings,
)
from edgevit.errors import ConfigError, DataError, ModelError, OutputExistsError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgevit.data import Dataset
    from edgevit.models import ModelSpec

__all__ = [
    "DISTILL_TOKEN_MODES",
    "DistillResult",
    "Teacher",
    "deit_distillation_loss",
    "distill",
    "distillation_loss",
    "has_distillation_token",
    "load_teacher",
    "resolve_checkpoint_model",
    "teacher_loss",
]

DISTILL_TOKEN_MODES = ("hard", "soft")


# ----------------------------------------------------------------------------------------------
# Losses


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`` (batch mean)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits.detach() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1.0 - alpha) * ce


def deit_distillation_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    mode: str = "hard",
    temperature: float = 4.0,
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DeiT's loss for a student with a distillation token: the class head learns the labels, the
    distillation head the teacher (``hard``: its argmax, weighted 1/2 each; ``soft``: the
    temperature-scaled KL with weight ``alpha``)."""
    import torch.nn.functional as F

    if mode not in DISTILL_TOKEN_MODES:
        raise ConfigError(f"distillation-token mode must be one of {', '.join(DISTILL_TOKEN_MODES)}, got {mode!r}")
    if mode == "hard":
        return 0.5 * F.cross_entropy(cls_logits, labels, label_smoothing=label_smoothing) + 0.5 * F.cross_entropy(
            dist_logits, teacher_logits.detach().argmax(dim=-1)
        )
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(dist_logits / t, dim=-1), F.log_softmax(teacher_logits.detach() / t, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(cls_logits, labels, label_smoothing=label_smoothing)


def has_distillation_token(model: nn.Module) -> bool:
    """True for students with DeiT's distillation token and head (timm ``VisionTransformerDistilled``)."""
    return hasattr(model, "head_dist") and callable(getattr(model, "set_distilled_training", None))


# ----------------------------------------------------------------------------------------------
# Teachers


@dataclass
class Teacher:
    """A frozen model whose logits the student imitates (``model`` in eval mode, its ``spec`` for
    preprocessing)."""

    name: str
    model: nn.Module
    spec: ModelSpec
    weights: str

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


def resolve_checkpoint_model(path: str | os.PathLike) -> str:
    """The catalog name a checkpoint belongs to: the ``model`` field edgevit writes into its
    safetensors metadata (``edgevit train`` / ``distill`` / ``prune``), or the training record
    ``<file>.json`` beside it. A pruned checkpoint registers its architecture first."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such checkpoint")
    meta: dict[str, str] = {}
    if p.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(p), "pt") as f:
                meta = dict(f.metadata() or {})
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise ModelError(f"{p} is not a valid safetensors file: {exc}") from None
    if "edgevit_pruned" in meta:
        from edgevit.compress.structured import register_pruned

        return register_pruned(p)
    name = meta.get("model")
    record = p.with_suffix(".json")
    if name is None and record.is_file():
        try:
            name = json.loads(record.read_text()).get("model")
        except (OSError, json.JSONDecodeError):
            name = None
    if not name:
        raise ModelError(
            f"{p} does not say which model it belongs to (no 'model' in its metadata, no {record.name}); "
            "pass the catalog name and the file separately (--teacher NAME --teacher-weights FILE)"
        )
    return name


def load_teacher(
    teacher: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    device: str = "cpu",
) -> Teacher:
    """A teacher from a catalog name plus ``weights`` (or ``pretrained``), or from a checkpoint
    written by edgevit (its model name is read from the file)."""
    from edgevit.models import create_model, get_spec

    text = os.fspath(teacher)
    if weights is None and not pretrained and (Path(text).suffix in (".safetensors", ".pt", ".pth") or Path(text).is_file()):
        weights = text
        text = resolve_checkpoint_model(text)
    if weights is None and not pretrained:
        spec = get_spec(text)
        if not spec.has_pretrained:
            raise ConfigError(
                f"teacher {text} has no weights: a randomly initialised teacher teaches nothing. Pass "
                "--teacher-weights FILE (e.g. from `edgevit train`) or a checkpoint as --teacher"
            )
        pretrained = True
    model = create_model(text, pretrained=pretrained, weights=weights)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device).eval()
    return Teacher(name=text, model=model, spec=model.edgevit_spec, weights=model.edgevit_weights)


# ----------------------------------------------------------------------------------------------
# The loop


def _loss_for(
    out: Any,
    y: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    alpha: float,
    distill_token: str,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits used for the training accuracy) for one batch."""
    import torch.nn.functional as F

    if isinstance(out, tuple):  # (class head, distillation head)
        cls_logits, dist_logits = out
        logits = (cls_logits + dist_logits) / 2
        if teacher_logits is None:
            loss = 0.5 * (F.cross_entropy(cls_logits, y, label_smoothing=label_smoothing)
                          + F.cross_entropy(dist_logits, y, label_smoothing=label_smoothing))
        else:
            loss = deit_distillation_loss(cls_logits, dist_logits, teacher_logits, y, distill_token, temperature,
                                          alpha, label_smoothing)
        return loss, logits
    if teacher_logits is None:
        return F.cross_entropy(out, y, label_smoothing=label_smoothing), out
    return distillation_loss(out, teacher_logits, y, temperature, alpha, label_smoothing), out


def teacher_loss(
    teacher: Teacher | None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    distill_token: str = "hard",
    label_smoothing: float = 0.0,
) -> Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor]]:
    """The loss hook (:class:`edgevit.compress.loop.Hooks` ``loss``) that distils ``teacher`` into
    the model :func:`edgevit.compress.loop.fit` trains: the teacher sees the same augmented batch
    through its own preprocessing. Without a teacher it is the labels' cross-entropy."""
    if distill_token not in DISTILL_TOKEN_MODES:
        raise ConfigError(f"distill_token must be one of {', '.join(DISTILL_TOKEN_MODES)}, got {distill_token!r}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")

    def loss(out: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        teacher_logits = teacher.logits(batch.inputs_for(teacher.spec)) if teacher is not None else None
        return _loss_for(out, batch.labels, teacher_logits, temperature, alpha, distill_token, label_smoothing)

    return loss


# ----------------------------------------------------------------------------------------------
# edgevit distill


@dataclass(frozen=True)
class DistillResult:
    """What a distillation run produced (the student's weights and record, per-epoch history)."""

    student: str
    teacher: str
    teacher_weights: str
    teacher_top1: float
    dataset: str
    classes: tuple[str, ...]
    weights: str
    record: str
    history: tuple[EpochRecord, ...]
    seconds: float
    temperature: float
    alpha: float
    distill_token: str | None
    config: TrainConfig
    device: str = "cpu"
    threads: int = 1
    resumed_from_epoch: int = 0
    warnings: tuple[str, ...] = field(default=())

    @property
    def test_top1(self) -> float:
        return self.history[-1].test_top1 if self.history else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "student": self.student,
            "teacher": self.teacher,
            "teacher_weights": self.teacher_weights,
            "teacher_top1": self.teacher_top1,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "weights": self.weights,
            "record": self.record,
            "test_top1": self.test_top1,
            "epochs": len(self.history),
            "history": [h.to_dict() for h in self.history],
            "seconds": self.seconds,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "distill_token": self.distill_token,
            "device": self.device,
            "threads": self.threads,
            "resumed_from_epoch": self.resumed_from_epoch,
            "config": self.config.to_dict(),
            "warnings": list(self.warnings),
        }


def _check_teacher(teacher: Teacher, ds: Dataset) -> None:
    import torch

    x = to_model_input(torch.from_numpy(np.array(ds.test_images[:1], copy=True)), teacher.spec)
    n = int(teacher.logits(x).shape[-1])
    if n != ds.num_classes:
        raise ConfigError(
            f"teacher {teacher.name} predicts {n} classes but {ds.name} has {ds.num_classes}; train or fine-tune "
            f"the teacher on {ds.name} first (`edgevit train {teacher.name} --data {ds.name}`)"
        )


def distill(
    teacher: str | os.PathLike,
    student: str,
    data: str | os.PathLike | Dataset = "fashion-mnist",
    *,
    teacher_weights: str | os.PathLike | None = None,
    teacher_pretrained: bool = False,
    student_weights: str | os.PathLike | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    distill_token: str = "hard",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.0,
    augment: str | bool = "auto",
    seed: int = 0,
    out: str | os.PathLike = "edgevit-distill",
    resume: bool = False,
    force: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    grad_checkpointing: bool = False,
    progress: bool | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> DistillResult:
    """Distil ``teacher`` into catalog model ``student`` on ``data``; write ``out/<student>.safetensors``.

    ``teacher`` is a catalog name (with ``teacher_weights`` FILE or ``teacher_pretrained``) or a
    checkpoint written by edgevit. ``student_weights`` initialises the student (otherwise it starts
    from the seed's random init, exactly as ``edgevit train`` would). ``distill_token`` applies to
    students with DeiT's distillation token only. ``grad_checkpointing`` applies to the student (the
    teacher runs without gradients). Other options as in :func:`edgevit.compress.training.train`.
    Checkpoints go to ``out/checkpoint.*`` after every epoch; ``resume`` continues from there.
    """
    import torch

    from edgevit.data import Dataset, load_dataset
    from edgevit.models import create_model, get_spec
    from edgevit.models.weights import load_state_dict, save_weights
    start = time.perf_counter()
    spec = get_spec(student)
    data_name = data.name if isinstance(data, Dataset) else os.fspath(data)
    config = TrainConfig(
        model=student, data=data_name, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
        augment={True: "auto", False: "none"}.get(augment, augment), seed=seed, train_limit=train_limit,
        test_limit=test_limit, weights=os.fspath(student_weights) if student_weights is not None else None,
        grad_checkpointing=grad_checkpointing,
    )
    if distill_token not in DISTILL_TOKEN_MODES:
        raise ConfigError(f"--distill-token must be one of {', '.join(DISTILL_TOKEN_MODES)}, got {distill_token!r}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    threads = threads or os.cpu_count() or 1
    device = pick_device(device)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a folder")
    if not resume and (out_dir / f"{CHECKPOINT}.json").exists() and not force:
        raise OutputExistsError(out_dir / f"{CHECKPOINT}.json")
    if progress is None:
        progress = sys.stderr.isatty()

    ds = data if isinstance(data, Dataset) else load_dataset(data, image_size=spec.input_size, color_mode=spec.color_mode)
    if train_limit or test_limit:
        ds = ds.subset(train_limit, test_limit)
    if len(ds.train_labels) == 0 or len(ds.test_labels) == 0:
        raise DataError(f"{ds.name}: the training and test splits must both hold images")

    distill_conf = {"teacher": os.fspath(teacher), "teacher_weights": os.fspath(teacher_weights) if teacher_weights else None,
                    "temperature": temperature, "alpha": alpha, "distill_token": distill_token}
    warnings: list[str] = []
    with torch_settings(threads, deterministic=True):
        # The student first, right after seeding: the same initial weights as `edgevit train`.
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        model = create_model(student, num_classes=ds.num_classes)
        if student_weights is not None:
            warnings += load_initial_weights(model, load_state_dict(student_weights), os.fspath(student_weights))
        if grad_checkpointing:
            enable_grad_checkpointing(model, student)
        model.to(device)
        tch = load_teacher(teacher, teacher_weights, teacher_pretrained, device=device)
        _check_teacher(tch, ds)
        teacher_top1, _ = evaluate(tch.model, ds.test_images, ds.test_labels, tch.spec, device=device)
        token = has_distillation_token(model)
        if token:
            model.set_distilled_training(True)
        elif distill_token != "hard":
            warnings.append(f"{student} has no distillation token; --distill-token {distill_token} is ignored")

    resume_state = None
    elapsed_before = 0.0
    if resume:
        state, tensors = load_checkpoint(out_dir, config)
        saved = state.get("distillation", {})
        diff = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in distill_conf.items() if saved.get(k) != v]
        if diff:
            raise ConfigError("resume must use the distillation settings of the run it continues: " + "; ".join(diff))
        resume_state = (state, tensors)
        elapsed_before = float(state.get("seconds", 0.0))
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(m, opt, state: dict[str, Any]) -> None:
        save_checkpoint(out_dir, m, opt, dict(state, config=config.to_dict(), classes=list(ds.classes),
                                               distillation=distill_conf,
                                               seconds=elapsed_before + time.perf_counter() - start))

    loop = LoopConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, augment=config.augment, seed=seed, threads=threads, device=device,
        progress=progress, desc=f"{student} <- {tch.name}",
    )
    hooks = Hooks(loss=teacher_loss(tch, temperature, alpha, distill_token, label_smoothing), checkpoint=save,
                  on_epoch_end=on_epoch_end)
    history = fit(model, ds, loop, hooks, spec=spec, resume_state=resume_state)
    if token:
        model.set_distilled_training(False)
    model.eval()
    seconds = elapsed_before + time.perf_counter() - start
    from edgevit.models.sources import source_slug

    weights_path = out_dir / f"{source_slug(student)}.safetensors"  # timm:NAME -> NAME
    record_path = out_dir / f"{source_slug(student)}.json"
    record_doc = {
        "model": student,
        "dataset": ds.summary(),
        "num_classes": ds.num_classes,
        "classes": list(ds.classes),
        "input_size": list(spec.input_size),
        "color_mode": spec.color_mode,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "test_top1": history[-1].test_top1,
        "epochs": len(history),
        "history": [h.to_dict() for h in history],
        "seconds": round(seconds, 1),
        "device": device,
        "threads": threads,
        "config": config.to_dict(),
        "distillation": dict(distill_conf, teacher_model=tch.name, teacher_top1=teacher_top1,
                             distillation_token=token,
                             loss="alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)"
                             if not token else f"DeiT distillation token ({distill_token})"),
        "torch": torch.__version__,
    }
    meta = {"model": student, "dataset": ds.name, "test_top1": f"{history[-1].test_top1:.4f}",
            "classes": json.dumps(list(ds.classes)), "teacher": tch.name}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(weights_path, lambda p: save_weights(state, p, metadata=meta))
    atomic_write(record_path, lambda p: p.write_text(json.dumps(record_doc, indent=1) + "\n"))
    return DistillResult(
        student=student, teacher=tch.name, teacher_weights=tch.weights, teacher_top1=teacher_top1, dataset=ds.name,
        classes=ds.classes, weights=str(weights_path), record=str(record_path), history=tuple(history),
        seconds=seconds, temperature=temperature, alpha=alpha, distill_token=distill_token if token else None,
        config=config, device=device, threads=threads,
        resumed_from_epoch=int(resume_state[0]["epoch"]) if resume_state else 0, warnings=tuple(warnings),
    )
