"""Train (or fine-tune) any catalog model on a labelled dataset, reproducibly and resumably.

>>> from edgevit.compress.training import train
>>> result = train("vit_fmnist_tiny", "fashion-mnist", epochs=8, out="runs/fmnist")  # doctest: +SKIP
>>> result.test_top1                                                                 # doctest: +SKIP

The recipe: AdamW (no weight decay on norms, biases and position embeddings), linear warm-up
then cosine decay of the learning rate per step, optional label smoothing, light augmentation
(random crop from a zero-padded image, horizontal flip where the dataset allows it; by default
both for small training sets, flip only from 10,000 images up, where short schedules learn
faster without the crop). Images
arrive from :mod:`edgevit.data` as uint8; the model's own preprocessing from its catalog entry
(colour mode, input size, mean/std) is applied here, in :func:`to_model_input`, and nowhere else.

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

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgevit.errors import ConfigError, DataError, ModelError, OutputExistsError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgevit.data import Dataset
    from edgevit.models import ModelSpec

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

CHECKPOINT_FORMAT = 1
AUGMENTATIONS = ("auto", "none", "flip", "crop", "crop+flip")
SMALL_DATASET = 10_000
_CHECKPOINT = "checkpoint"
# Configuration fields a resumed run must share with the run it continues.
_RESUME_FIELDS = (
    "model", "data", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing",
    "augment", "seed", "train_limit", "test_limit",
)


@dataclass(frozen=True)
class TrainConfig:
    """Validated training options (see :func:`train` for their meaning)."""

    model: str
    data: str
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    augment: str = "auto"
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    weights: str | None = None
    pretrained: bool = False
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"),
            (self.train_limit is None or self.train_limit >= 1, f"train_limit must be >= 1, got {self.train_limit}"),
            (self.test_limit is None or self.test_limit >= 1, f"test_limit must be >= 1, got {self.test_limit}"),
            (not (self.pretrained and self.weights), "pass either pretrained=True or weights=FILE, not both"),
            (isinstance(self.grad_checkpointing, bool),
             f"grad_checkpointing must be True or False, got {self.grad_checkpointing!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_top1: float
    test_loss: float
    test_top1: float
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
# Input pipeline


def to_model_input(
    images: torch.Tensor,
    spec: ModelSpec,
    generator: torch.Generator | None = None,
    flip: bool = False,
    pad: int = 0,
) -> torch.Tensor:
    """uint8 images ``(B, H, W[, C])`` -> the float NCHW batch ``spec``'s model takes.

    Optional augmentation first (random crop from a ``pad``-pixel zero border, random horizontal
    flip; both drawn from ``generator``), then colour conversion to the spec's mode, resize to
    its input size (bilinear, antialiased) when the data has another size, scaling to [0, 1]
    and normalisation with the spec's mean/std.
    """
    import torch
    import torch.nn.functional as F

    x = images if images.ndim == 4 else images.unsqueeze(-1)  # (B, H, W, C)
    b, h, w, _ = x.shape
    if pad > 0:
        padded = F.pad(x, (0, 0, pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        x = padded[torch.arange(b)[:, None, None], rows, cols]  # (B, H, W, C)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(2), x)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, C, H, W)
    channels = x.shape[1]
    if spec.color_mode == "RGB" and channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif spec.color_mode == "L" and channels == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    if (h, w) != tuple(spec.input_size):
        x = F.interpolate(x, size=tuple(spec.input_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def _pad_for(shape: tuple[int, ...]) -> int:
    return max(1, round(min(shape[0], shape[1]) / 14))


def evaluate(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    spec: ModelSpec | None = None,
    batch_size: int = 500,
    device: str = "cpu",
    label_smoothing: float = 0.0,
) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of ``model`` on uint8 ``images`` and their labels."""
    import torch
    import torch.nn.functional as F

    spec = spec or model.edgevit_spec
    x_all = torch.from_numpy(np.array(images, copy=True)) if not isinstance(images, torch.Tensor) else images
    y_all = torch.from_numpy(np.array(labels, dtype=np.int64, copy=True)) if not isinstance(labels, torch.Tensor) else labels
    if len(x_all) == 0:
        raise DataError("the test split is empty; there is nothing to evaluate on")
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x_all), batch_size):
            x = to_model_input(x_all[i : i + batch_size], spec).to(device)
            y = y_all[i : i + batch_size].to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / len(x_all), loss_sum / len(x_all)


# ----------------------------------------------------------------------------------------------
# Optimizer, schedule, checkpoints


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "dist_token"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from peak/25 to ``peak`` over ``warmup`` steps, then cosine to peak/1000."""
    floor = peak * 1e-3
    if warmup and step < warmup:
        return peak / 25 + (peak - peak / 25) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {
        f"optimizer.{idx}.{key}": value
        for idx, state in sd["state"].items()
        for key, value in state.items()
    }
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_checkpoint(out: Path, model, opt, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    opt_tensors, groups = _flatten_optimizer(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {"epoch": str(state["epoch"]), "format": str(CHECKPOINT_FORMAT)}
    _atomic_write(out / f"{_CHECKPOINT}.safetensors", lambda p: save_file(tensors, str(p), metadata=meta))
    doc = dict(state, optimizer_param_groups=groups, format=CHECKPOINT_FORMAT)
    _atomic_write(out / f"{_CHECKPOINT}.json", lambda p: p.write_text(json.dumps(doc, indent=1)))


def _load_checkpoint(out: Path, config: TrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta_path, tensor_path = out / f"{_CHECKPOINT}.json", out / f"{_CHECKPOINT}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise ConfigError(f"nothing to resume: {out} has no {_CHECKPOINT}.json/.safetensors; drop --resume to start")
    try:
        state = json.loads(meta_path.read_text())
        with safe_open(str(tensor_path), "pt") as f:
            tensor_epoch = int((f.metadata() or {}).get("epoch", -1))
        tensors = load_file(str(tensor_path))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelError(f"the checkpoint in {out} cannot be read ({exc}); start again without --resume") from None
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelError(f"{tensor_path} is not a valid checkpoint ({exc}); start again without --resume") from None
    if state.get("format") != CHECKPOINT_FORMAT or tensor_epoch != state.get("epoch"):
        raise ModelError(f"the checkpoint files in {out} do not belong together; start again without --resume")
    saved = state.get("config", {})
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(config, k)!r}" for k in _RESUME_FIELDS
            if saved.get(k) != getattr(config, k)]
    if diff:
        raise ConfigError(
            "resume must use the settings of the run it continues (the schedule depends on them): "
            + "; ".join(diff)
        )
    return state, tensors


# ----------------------------------------------------------------------------------------------
# Process-wide settings, restored afterwards


@contextlib.contextmanager
def _torch_settings(threads: int, deterministic: bool) -> Iterator[None]:
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_bench = torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark = old_bench


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """Turn on gradient (activation) checkpointing: the blocks' activations are recomputed in the
    backward pass instead of kept, trading about a third more compute for much less memory. The
    model must offer ``set_grad_checkpointing(enable)`` (timm's models and edgevit's EdgeViT do)."""
    setter = getattr(model, "set_grad_checkpointing", None)
    if not callable(setter):
        raise ConfigError(
            f"{name} ({type(model).__name__}) does not support gradient checkpointing (it has no "
            f"set_grad_checkpointing method); train it without gradient checkpointing "
            f"(drop --grad-checkpointing)"
        )
    setter(True)


def _pick_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return device


# ----------------------------------------------------------------------------------------------


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
    tqdm bar (default: when stderr is a terminal). ``on_epoch_end`` is called with each epoch's record after its
    checkpoint is written. ``resume`` continues from ``out/checkpoint.*`` with the same
    settings; without it an existing checkpoint in ``out`` is only replaced with ``force``.
    """
    import torch
    import torch.nn.functional as F

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
    device = _pick_device(device)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a folder")
    if not resume and (out_dir / f"{_CHECKPOINT}.json").exists() and not force:
        raise OutputExistsError(out_dir / f"{_CHECKPOINT}.json")
    if progress is None:
        progress = sys.stderr.isatty()

    ds = data if isinstance(data, Dataset) else load_dataset(data, image_size=spec.input_size, color_mode=spec.color_mode)
    if train_limit or test_limit:
        ds = ds.subset(train_limit, test_limit)
    if len(ds.train_labels) == 0:
        raise DataError(f"{ds.name}: the training split is empty")
    if len(ds.test_labels) == 0:
        raise DataError(f"{ds.name}: the test split is empty; add a test/ folder or more images per class")

    warnings: list[str] = []
    with _torch_settings(threads, deterministic):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        model = create_model(model_name, pretrained=pretrained, num_classes=ds.num_classes)
        if weights is not None:
            warnings += _load_initial_weights(model, load_state_dict(weights), os.fspath(weights))
        if grad_checkpointing:
            enable_grad_checkpointing(model, model_name)
        model.to(device).train()

        steps_per_epoch = math.ceil(len(ds.train_labels) / batch_size)
        total_steps = epochs * steps_per_epoch
        # Warm-up lasts ``warmup_epochs`` but at most a fifth of the run (short runs still decay).
        warmup_steps = min(total_steps // 5, round(warmup_epochs * steps_per_epoch))
        opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))

        history: list[EpochRecord] = []
        first_epoch, step = 0, 0
        if resume:
            state, tensors = _load_checkpoint(out_dir, config)
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            opt.load_state_dict(_unflatten_optimizer(
                {k: v.to(device) for k, v in tensors.items() if k.startswith("optimizer.")},
                state["optimizer_param_groups"]))
            first_epoch, step = int(state["epoch"]), int(state["step"])
            history = [EpochRecord(**h) for h in state["history"]]
            elapsed_before = float(state.get("seconds", 0.0))
        else:
            elapsed_before = 0.0
        out_dir.mkdir(parents=True, exist_ok=True)

        train_x = torch.from_numpy(np.array(ds.train_images, copy=True))
        train_y = torch.from_numpy(np.array(ds.train_labels, dtype=np.int64, copy=True))
        aug = config.augment
        if aug == "auto":
            aug = "crop+flip" if len(train_y) < SMALL_DATASET else "flip"
        pad = _pad_for(ds.image_shape) if "crop" in aug else 0
        flip = "flip" in aug and ds.flip_ok
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=step, unit="step", file=sys.stderr, dynamic_ncols=True,
                       desc=f"{model_name} on {ds.name}")
        try:
            for epoch in range(first_epoch, epochs):
                t0 = time.perf_counter()
                gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                order = torch.randperm(len(train_y), generator=gen)
                model.train()
                loss_sum, correct, seen = 0.0, 0, 0
                for i in range(steps_per_epoch):
                    idx = order[i * batch_size : (i + 1) * batch_size]
                    x = to_model_input(train_x[idx], spec, generator=gen, flip=flip, pad=pad).to(device)
                    y = train_y[idx].to(device)
                    current_lr = _lr_at(step, total_steps, warmup_steps, lr)
                    for group in opt.param_groups:
                        group["lr"] = current_lr
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                    if not torch.isfinite(loss):
                        raise ModelError(
                            f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step}; lower the "
                            f"learning rate (now {lr})"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                    opt.step()
                    step += 1
                    loss_sum += float(loss.detach()) * len(idx)
                    correct += int((logits.argmax(dim=1) == y).sum())
                    seen += len(idx)
                    if bar is not None:
                        bar.update(1)
                        if i % 20 == 0:
                            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}")
                test_top1, test_loss = evaluate(model, ds.test_images, ds.test_labels, spec, device=device,
                                                label_smoothing=label_smoothing)
                record = EpochRecord(
                    epoch=epoch + 1, train_loss=loss_sum / seen, train_top1=correct / seen,
                    test_loss=test_loss, test_top1=test_top1, lr=current_lr,
                    seconds=time.perf_counter() - t0,
                )
                history.append(record)
                _save_checkpoint(out_dir, model, opt, {
                    "epoch": epoch + 1, "step": step, "history": [h.to_dict() for h in history],
                    "config": config.to_dict(), "classes": list(ds.classes),
                    "seconds": elapsed_before + time.perf_counter() - start,
                })
                if bar is not None:
                    bar.set_postfix(epoch=epoch + 1, test_top1=f"{test_top1:.4f}")
                if on_epoch_end is not None:
                    on_epoch_end(record)
        finally:
            if bar is not None:
                bar.close()

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
        _atomic_write(weights_path, lambda p: save_weights(model_cpu_state, p, metadata=meta))
        _atomic_write(record_path, lambda p: p.write_text(json.dumps(record_doc, indent=1) + "\n"))

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


def _load_initial_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``; a classifier head of another shape is left freshly initialised."""
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    head = [k for k in mismatched if k.split(".")[0] in ("head", "fc", "classifier")]
    if set(mismatched) - set(head):
        bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched if k not in head]
        raise ModelError(f"{source} does not fit this model: " + "; ".join(bad[:5]))
    result = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    missing = [k for k in result.missing_keys if k not in head]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"{source} does not fit this model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return [f"{source}: classifier head {', '.join(head)} has another number of classes; it was re-initialised"] if head else []
