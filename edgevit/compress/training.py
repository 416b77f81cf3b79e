"""Train (or fine-tune) any catalog model on a labelled dataset, reproducibly and resumably.

>>> from edgevit.compress.training import train
>>> result = train("vit_fmnist_tiny", "fashion-mnist", epochs=8, out="runs/fmnist")  # doctest: +SKIP
>>> result.test_top1                                                                 # doctest: +SKIP

The recipe is the one training loop's (:func:`edgevit.compress.loop.fit`: AdamW with timm's
parameter groups, warm-up + cosine learning rate per step, seeded augmentation); this module adds
the run around it: the model built from its catalog entry, its head sized to the dataset,
checkpoints, resume and the finished weights and record.

Reproducibility: the seed fixes the initial weights (``torch.manual_seed``) and every epoch's
shuffling and augmentation (a ``torch.Generator`` seeded from ``(seed, epoch)``); deterministic
algorithms are requested while training. The learning rate is a pure function of the step.
After each epoch ``out/checkpoint.safetensors`` (model weights and the flattened AdamW state)
and ``out/checkpoint.json`` (epoch, step, history, configuration) are written atomically, so
``resume=True`` continues exactly where an interrupted run stopped. The finished model is
``out/<model>.safetensors`` (loadable with ``create_model(name, weights=FILE)``) beside
``out/<model>.json``, the training record.
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
    AUGMENTATIONS,
    CHECKPOINT,
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
from edgevit.errors import ConfigError, DataError, OutputExistsError

if TYPE_CHECKING:
    from edgevit.data import Dataset

__all__ = [
    "AUGMENTATIONS",
    "EpochRecord",
    "TrainConfig",
    "TrainResult",
    "enable_grad_checkpointing",
    "evaluate",
    "to_model_input",
    "train",
]

@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced: the weights, the record, the per-epoch history."""

    model: str
    dataset: str
    classes: tuple[str, ...]
    weights: str
    record: str
    history: tuple[EpochRecord, ...]
    seconds: float
    device: str
    threads: int
    config: TrainConfig
    resumed_from_epoch: int = 0
    warnings: tuple[str, ...] = field(default=())

    @property
    def test_top1(self) -> float:
        return self.history[-1].test_top1 if self.history else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "weights": self.weights,
            "record": self.record,
            "test_top1": self.test_top1,
            "epochs": len(self.history),
            "history": [h.to_dict() for h in self.history],
            "seconds": self.seconds,
            "device": self.device,
            "threads": self.threads,
            "resumed_from_epoch": self.resumed_from_epoch,
            "config": self.config.to_dict(),
            "warnings": list(self.warnings),
        }


# ----------------------------------------------------------------------------------------------


def describe_training_data(ds: Dataset, spec: Any, data: Any = None, train_limit: int | None = None,
                           test_limit: int | None = None) -> tuple[list[str], list[str]]:
    """What training on ``ds`` will do, in words: the split sizes and how the split was made, the
    class names, and the conversion from the data's images to ``spec``'s input. The second list
    warns when the model's input does not suit the data (colour photos into a small grayscale
    model), naming better catalog choices."""
    from edgevit.data.datasets import sample_image_properties

    lines: list[str] = []
    warnings: list[str] = []
    folder = Path(os.fspath(data)) if isinstance(data, (str, os.PathLike)) and Path(os.fspath(data)).is_dir() else None
    if folder is not None and any((folder / n).is_dir() for n in ("train", "training")):
        how = "its train/ and test/ folders"
    elif folder is not None:
        how = "every 5th image of each class held out for testing (no train/ and test/ folders)"
    else:
        how = "the dataset's own train/test split"
    limits = ", ".join(f"{k} limited to the first {v:,}" for k, v in (("train", train_limit), ("test", test_limit)) if v)
    lines.append(f"data: {ds.name}: {len(ds.train_labels):,} train / {len(ds.test_labels):,} test images, {how}"
                 + (f" ({limits})" if limits else ""))
    shown = ", ".join(ds.classes[:12]) + (f", ... ({len(ds.classes)} in all)" if len(ds.classes) > 12 else "")
    lines.append(f"classes ({len(ds.classes)}): {shown}")
    target = f"{spec.input_size[0]}x{spec.input_size[1]} {'grayscale' if spec.color_mode == 'L' else 'RGB'}"
    props = sample_image_properties(folder) if folder is not None else None
    if props is not None:
        colour, (w, h) = props
        source = f"{'colour' if colour else 'grayscale'} images (e.g. {w}x{h})"
        lines.append(f"conversion: {source} -> {target} for {spec.name} (shorter side resized, centre-cropped)")
    else:
        shape = ds.image_shape
        source = f"{shape[1]}x{shape[0]} {'RGB' if len(shape) == 3 else 'grayscale'}"
        same = (tuple(shape[:2]) == tuple(spec.input_size)) and ((len(shape) == 3) == (spec.color_mode == "RGB"))
        lines.append(f"conversion: none ({source} is {spec.name}'s input)" if same else
                     f"conversion: {source} -> {target} for {spec.name} (resized, colour converted, per batch)")
        colour, (w, h) = len(shape) == 3, (shape[1], shape[0])
    if spec.color_mode == "L" and colour and max(w, h) >= 2 * max(spec.input_size):
        warnings.append(
            f"{spec.name} takes {target} images; your data is colour at {w}x{h}, so colour and most detail are "
            f"thrown away. A model for photos suits it better: {', '.join(_photo_models())}")
    return lines, warnings


def _photo_models(n: int = 3) -> list[str]:
    """Small RGB catalog transformers with trained weights, cheapest first."""
    from edgevit.models import get_spec, list_models

    specs = [get_spec(m) for m in list_models(builtin_only=True)]
    fits = [s for s in specs if s.color_mode == "RGB" and s.has_pretrained and s.gmacs > 0 and s.attention != "cnn"]
    return [s.name for s in sorted(fits, key=lambda s: s.gmacs)[:n]]


def train(
    model_name: str,
    data: str | os.PathLike | Dataset = "fashion-mnist",
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.0,
    augment: str | bool = "auto",
    seed: int = 0,
    out: str | os.PathLike = "edgevit-train",
    resume: bool = False,
    force: bool = False,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    deterministic: bool = True,
    grad_checkpointing: bool = False,
    progress: bool | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    on_data: Callable[[list[str], list[str]], None] | None = None,
) -> TrainResult:
    """Train catalog model ``model_name`` on ``data`` and write its weights to ``out``.

    ``data`` is a dataset name (``fashion-mnist``, ``digits``), an image folder (read at the
    model's input size and colour mode) or a :class:`edgevit.data.Dataset`. The classifier head
    is sized to the dataset's classes. ``weights`` (a checkpoint) or ``pretrained`` initialise
    the model before training (a head of another size is replaced, with a warning).
    ``augment`` is one of :data:`AUGMENTATIONS` (``True``/``False`` mean ``auto``/``none``):
    ``auto`` crops and flips training sets under 10,000 images and only flips larger ones.
    ``train_limit``/``test_limit`` keep the first N images of each split. ``threads`` defaults to
    all cores, ``device`` to CUDA when available. ``grad_checkpointing`` recomputes the blocks'
    activations in the backward pass (less memory, more compute; the same losses) and needs a
    model with ``set_grad_checkpointing`` (:class:`ConfigError` otherwise). ``progress`` shows a
    tqdm bar (default: when stderr is a terminal). ``on_data(lines, warnings)`` is called once the
    data is loaded, before training, with :func:`describe_training_data`'s account of it.
    ``on_epoch_end`` is called with each epoch's record after its checkpoint is written. ``resume`` continues from ``out/checkpoint.*`` with the same
    settings; without it an existing checkpoint in ``out`` is only replaced with ``force``.
    """
    import torch

    from edgevit.data import Dataset, load_dataset
    from edgevit.models import create_model, get_spec
    from edgevit.models.weights import load_state_dict, save_weights

    start = time.perf_counter()
    spec = get_spec(model_name)
    data_name = data.name if isinstance(data, Dataset) else os.fspath(data)
    config = TrainConfig(
        model=model_name, data=data_name, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
        augment={True: "auto", False: "none"}.get(augment, augment), seed=seed, train_limit=train_limit, test_limit=test_limit,
        weights=os.fspath(weights) if weights is not None else None, pretrained=pretrained,
        grad_checkpointing=grad_checkpointing,
    )
    threads = threads or os.cpu_count() or 1
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
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
    if len(ds.train_labels) == 0:
        raise DataError(f"{ds.name}: the training split is empty")
    if len(ds.test_labels) == 0:
        raise DataError(f"{ds.name}: the test split is empty; add a test/ folder or more images per class")

    data_lines, warnings = describe_training_data(ds, spec, data, train_limit, test_limit)
    if on_data is not None:
        on_data(data_lines, list(warnings))
    with torch_settings(threads, deterministic):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        model = create_model(model_name, pretrained=pretrained, num_classes=ds.num_classes)
        if weights is not None:
            warnings += load_initial_weights(model, load_state_dict(weights), os.fspath(weights))
        if grad_checkpointing:
            enable_grad_checkpointing(model, model_name)
        model.to(device).train()

        resume_state = None
        elapsed_before = 0.0
        if resume:
            resume_state = load_checkpoint(out_dir, config)
            elapsed_before = float(resume_state[0].get("seconds", 0.0))
        out_dir.mkdir(parents=True, exist_ok=True)

        def save(m, opt, state: dict[str, Any]) -> None:
            save_checkpoint(out_dir, m, opt, dict(state, config=config.to_dict(), classes=list(ds.classes),
                                                  seconds=elapsed_before + time.perf_counter() - start))

        loop = LoopConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing, augment=config.augment, seed=seed, threads=threads, device=device,
            deterministic=deterministic, progress=progress, desc=f"{model_name} on {ds.name}",
        )
        history = fit(model, ds, loop, Hooks(checkpoint=save, on_epoch_end=on_epoch_end), spec=spec,
                      resume_state=resume_state)
        first_epoch = int(resume_state[0]["epoch"]) if resume_state else 0

        model.eval()
        seconds = elapsed_before + time.perf_counter() - start
        from edgevit.models.sources import source_slug

        weights_path = out_dir / f"{source_slug(model_name)}.safetensors"  # timm:NAME -> NAME
        record_path = out_dir / f"{source_slug(model_name)}.json"
        record_doc = {
            "model": model_name,
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
            "torch": torch.__version__,
        }
        meta = {"model": model_name, "dataset": ds.name, "test_top1": f"{history[-1].test_top1:.4f}",
                "classes": json.dumps(list(ds.classes))}
        model_cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(weights_path, lambda p: save_weights(model_cpu_state, p, metadata=meta))
        atomic_write(record_path, lambda p: p.write_text(json.dumps(record_doc, indent=1) + "\n"))

    return TrainResult(
        model=model_name,
        dataset=ds.name,
        classes=ds.classes,
        weights=str(weights_path),
        record=str(record_path),
        history=tuple(history),
        seconds=seconds,
        device=device,
        threads=threads,
        config=config,
        resumed_from_epoch=first_epoch,
        warnings=tuple(warnings),
    )

