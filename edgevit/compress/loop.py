"""The one training loop: :func:`fit` trains a module in place on a :class:`~edgevit.data.Dataset`;
train, distill, prune's fine-tuning and QAT all run it, with :class:`Hooks` for what differs.

The recipe: AdamW (parameter groups from timm: no weight decay on norms, biases and what the model
lists in ``no_weight_decay()``), linear warm-up then cosine decay of the learning rate per step,
optional label smoothing, light augmentation (random crop from a zero-padded image, horizontal flip
where the dataset allows it; ``auto``: both under 10,000 training images, flip only from there up),
gradients clipped at norm 5. Images arrive as uint8; :func:`to_model_input` applies the model's own
preprocessing (colour mode, input size, mean/std), and nowhere else is it done. Every epoch's
shuffling and augmentation come from a ``torch.Generator`` seeded from ``(seed, epoch)``; the
learning rate is a pure function of the step. Also here: what the four commands share
(checkpoints, process-wide torch settings restored afterwards, device choice, initial weights).
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

from edgevit.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgevit.data import Dataset
    from edgevit.models import ModelSpec

__all__ = [
    "AUGMENTATIONS",
    "CHECKPOINT",
    "NO_DECAY_FALLBACK",
    "SMALL_DATASET",
    "Batch",
    "EpochRecord",
    "Hooks",
    "LoopConfig",
    "TrainConfig",
    "atomic_write",
    "cross_entropy_loss",
    "enable_grad_checkpointing",
    "evaluate",
    "fit",
    "flatten_optimizer",
    "load_checkpoint",
    "load_initial_weights",
    "lr_at",
    "pad_for",
    "param_groups",
    "pick_device",
    "save_checkpoint",
    "to_model_input",
    "torch_settings",
    "unflatten_optimizer",
]

CHECKPOINT_FORMAT = 1
AUGMENTATIONS = ("auto", "none", "flip", "crop", "crop+flip")
SMALL_DATASET = 10_000
CHECKPOINT = "checkpoint"
# Configuration fields a resumed run must share with the run it continues.
RESUME_FIELDS = (
    "model", "data", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing",
    "augment", "seed", "train_limit", "test_limit",
)
# Parameter names without weight decay for models that do not list them (no ``no_weight_decay()``).
NO_DECAY_FALLBACK = ("*pos_embed", "*cls_token", "*dist_token")


@dataclass(frozen=True)
class TrainConfig:
    """Validated options of a ``train`` or ``distill`` run (see :func:`edgevit.compress.training.train`),
    recorded in its checkpoints; a resumed run must match them in the :data:`RESUME_FIELDS`."""

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
    """One epoch of :func:`fit`: training loss/top-1 (running), test loss/top-1, last learning rate."""

    epoch: int
    train_loss: float
    train_top1: float
    test_loss: float
    test_top1: float
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


def pad_for(shape: tuple[int, ...]) -> int:
    """The zero border for random crops of images of ``shape``: about 1/14 of the shorter side."""
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups from timm's ``param_groups_weight_decay``: no weight decay on 1-D
    tensors (norms, biases) and on the names the model lists in ``no_weight_decay()`` (timm's
    position embeddings and tokens, Swin's relative-position bias tables, LeViT's and
    EfficientFormerV2's attention biases). Models without ``no_weight_decay()`` (edgevit's own,
    transformers') skip :data:`NO_DECAY_FALLBACK`. The decayed group comes first."""
    from edgevit.models._timm import import_timm

    import_timm()
    from timm.optim import param_groups_weight_decay

    listed = getattr(model, "no_weight_decay", None)
    skip = set(listed()) if callable(listed) else set(NO_DECAY_FALLBACK)
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return sorted(groups, key=lambda g: g["weight_decay"] == 0)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from peak/25 to ``peak`` over ``warmup`` steps, then cosine to peak/1000."""
    floor = peak * 1e-3
    if warmup and step < warmup:
        return peak / 25 + (peak - peak / 25) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The optimizer state as flat named tensors (for safetensors) plus its param-group settings."""
    sd = opt.state_dict()
    tensors = {
        f"optimizer.{idx}.{key}": value
        for idx, state in sd["state"].items()
        for key, value in state.items()
    }
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it into place (never half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(out: Path, model, opt, state: dict[str, Any]) -> None:
    """Write ``out/checkpoint.safetensors`` (model + optimizer tensors) and ``out/checkpoint.json``."""
    from safetensors.torch import save_file

    opt_tensors, groups = flatten_optimizer(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {"epoch": str(state["epoch"]), "format": str(CHECKPOINT_FORMAT)}
    atomic_write(out / f"{CHECKPOINT}.safetensors", lambda p: save_file(tensors, str(p), metadata=meta))
    doc = dict(state, optimizer_param_groups=groups, format=CHECKPOINT_FORMAT)
    atomic_write(out / f"{CHECKPOINT}.json", lambda p: p.write_text(json.dumps(doc, indent=1)))


def load_checkpoint(out: Path, config: TrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(state, tensors) of the checkpoint in ``out``, checked to belong together and to ``config``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta_path, tensor_path = out / f"{CHECKPOINT}.json", out / f"{CHECKPOINT}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise ConfigError(f"nothing to resume: {out} has no {CHECKPOINT}.json/.safetensors; drop --resume to start")
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
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(config, k)!r}" for k in RESUME_FIELDS
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
def torch_settings(threads: int, deterministic: bool) -> Iterator[None]:
    """Thread count and deterministic algorithms for the block, the previous settings restored after."""
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


def pick_device(device: str | None) -> str:
    """``device``, checked; None picks CUDA when available, else the CPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def load_initial_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
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


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class LoopConfig:
    """How :func:`fit` trains: optimisation, schedule, augmentation and where it runs.

    ``threads`` defaults to all cores; ``deterministic`` requests deterministic torch algorithms
    while training; ``progress`` shows a tqdm bar labelled ``desc`` on stderr.
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    augment: str = "auto"
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    deterministic: bool = True
    progress: bool = False
    desc: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr >= 0 and math.isfinite(self.lr), f"lr must be a number >= 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass(frozen=True)
class Batch:
    """One training batch as the loss hook sees it: the uint8 images before augmentation, the
    labels, and :meth:`inputs_for` to give another model (a teacher) the *same* crop and flip."""

    raw: torch.Tensor
    labels: torch.Tensor
    rng_state: torch.Tensor = field(repr=False)
    flip: bool
    pad: int
    device: str
    epoch: int
    step: int

    def inputs_for(self, spec: ModelSpec) -> torch.Tensor:
        """This batch preprocessed for ``spec`` with the augmentation the student got."""
        import torch

        gen = torch.Generator().set_state(self.rng_state)
        return to_model_input(self.raw, spec, generator=gen, flip=self.flip, pad=self.pad).to(self.device)


def cross_entropy_loss(out: Any, batch: Batch, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The default loss: cross-entropy on the labels; ``(loss, logits for the training accuracy)``.
    A model with two heads (DeiT's class and distillation heads) trains both on the labels."""
    import torch.nn.functional as F

    y = batch.labels
    if isinstance(out, tuple):  # (class head, distillation head)
        cls_logits, dist_logits = out
        loss = 0.5 * (F.cross_entropy(cls_logits, y, label_smoothing=label_smoothing)
                      + F.cross_entropy(dist_logits, y, label_smoothing=label_smoothing))
        return loss, (cls_logits + dist_logits) / 2
    return F.cross_entropy(out, y, label_smoothing=label_smoothing), out


@dataclass(frozen=True)
class Hooks:
    """What a caller of :func:`fit` changes about the loop (every hook is optional).

    ``loss(out, batch)`` -> ``(loss, logits)`` replaces :func:`cross_entropy_loss` (distillation);
    ``on_step(step, total)`` runs after every optimizer step (e.g. freezing quantization observers
    part-way); ``checkpoint(model, optimizer, state)`` and ``on_epoch_end(record)`` after every
    epoch, in that order; ``train_mode(model, training)`` replaces ``model.train(training)``
    (exported graphs switch differently); ``params`` replaces :func:`param_groups` (AdamW groups).
    """

    loss: Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor]] | None = None
    on_step: Callable[[int, int], None] | None = None
    checkpoint: Callable[[nn.Module, Any, dict[str, Any]], None] | None = None
    on_epoch_end: Callable[[EpochRecord], None] | None = None
    train_mode: Callable[[nn.Module, bool], None] | None = None
    params: list[Any] | None = None


def fit(
    model: nn.Module,
    data: Dataset,
    config: LoopConfig,
    hooks: Hooks | None = None,
    *,
    spec: ModelSpec | None = None,
    resume_state: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None,
) -> list[EpochRecord]:
    """Train ``model`` in place on ``data``'s training split and evaluate on its test split after
    every epoch; returns the per-epoch records (a resumed run's earlier epochs included).

    ``spec`` gives the input preprocessing (default: ``model.edgevit_spec``). ``resume_state``
    (a checkpoint's state and tensors, :func:`load_checkpoint`) continues a run where it stopped.
    """
    import torch

    hooks = hooks or Hooks()
    spec = spec or model.edgevit_spec
    ds = data
    loss_fn = hooks.loss or (lambda out, batch: cross_entropy_loss(out, batch, config.label_smoothing))
    set_mode = hooks.train_mode or (lambda m, training: m.train(training))
    batch_size, lr, device = config.batch_size, config.lr, config.device
    threads = config.threads or os.cpu_count() or 1
    history: list[EpochRecord] = []
    with torch_settings(threads, config.deterministic):
        steps_per_epoch = math.ceil(len(ds.train_labels) / batch_size)
        total_steps = config.epochs * steps_per_epoch
        # Warm-up lasts ``warmup_epochs`` but at most a fifth of the run (short runs still decay).
        warmup_steps = min(total_steps // 5, round(config.warmup_epochs * steps_per_epoch))
        groups = hooks.params if hooks.params is not None else param_groups(model, config.weight_decay)
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
        # Clipped in the model's parameter order (the norm's float sum depends on the order).
        clipped = list(model.parameters()) if hooks.params is None else [p for g in groups for p in g["params"]]
        first_epoch, step = 0, 0
        if resume_state is not None:
            state, tensors = resume_state
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            opt.load_state_dict(unflatten_optimizer(
                {k: v.to(device) for k, v in tensors.items() if k.startswith("optimizer.")},
                state["optimizer_param_groups"]))
            first_epoch, step = int(state["epoch"]), int(state["step"])
            history = [EpochRecord(**h) for h in state["history"]]
        train_x = torch.from_numpy(np.array(ds.train_images, copy=True))
        train_y = torch.from_numpy(np.array(ds.train_labels, dtype=np.int64, copy=True))
        aug = config.augment
        if aug == "auto":
            aug = "crop+flip" if len(train_y) < SMALL_DATASET else "flip"
        pad = pad_for(ds.image_shape) if "crop" in aug else 0
        flip = "flip" in aug and ds.flip_ok
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=step, unit="step", file=sys.stderr, dynamic_ncols=True,
                       desc=config.desc)
        current_lr = lr
        try:
            for epoch in range(first_epoch, config.epochs):
                t0 = time.perf_counter()
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
                order = torch.randperm(len(train_y), generator=gen)
                set_mode(model, True)
                loss_sum, correct, seen = 0.0, 0, 0
                for i in range(steps_per_epoch):
                    idx = order[i * batch_size : (i + 1) * batch_size]
                    raw = train_x[idx]
                    before = gen.get_state()
                    x = to_model_input(raw, spec, generator=gen, flip=flip, pad=pad).to(device)
                    y = train_y[idx].to(device)
                    batch = Batch(raw=raw, labels=y, rng_state=before, flip=flip, pad=pad, device=device,
                                  epoch=epoch, step=step)
                    current_lr = lr_at(step, total_steps, warmup_steps, lr)
                    for group in opt.param_groups:
                        group["lr"] = current_lr
                    out = model(x)
                    loss, logits = loss_fn(out, batch)
                    if not torch.isfinite(loss):
                        raise ModelError(
                            f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step}; lower the "
                            f"learning rate (now {lr})"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(clipped, 5.0)
                    opt.step()
                    step += 1
                    if hooks.on_step is not None:
                        hooks.on_step(step, total_steps)
                    loss_sum += float(loss.detach()) * len(idx)
                    correct += int((logits.detach().argmax(dim=1) == y).sum())
                    seen += len(idx)
                    if bar is not None:
                        bar.update(1)
                        if i % 20 == 0:
                            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}")
                set_mode(model, False)
                test_top1, test_loss = evaluate(model, ds.test_images, ds.test_labels, spec, device=device,
                                                label_smoothing=config.label_smoothing)
                record = EpochRecord(
                    epoch=epoch + 1, train_loss=loss_sum / seen, train_top1=correct / seen,
                    test_loss=test_loss, test_top1=test_top1, lr=current_lr, seconds=time.perf_counter() - t0,
                )
                history.append(record)
                if hooks.checkpoint is not None:
                    hooks.checkpoint(model, opt, {"epoch": epoch + 1, "step": step,
                                                  "history": [h.to_dict() for h in history]})
                if bar is not None:
                    bar.set_postfix(epoch=epoch + 1, test_top1=f"{test_top1:.4f}")
                if hooks.on_epoch_end is not None:
                    hooks.on_epoch_end(record)
        finally:
            if bar is not None:
                bar.close()
        set_mode(model, False)
    return history
