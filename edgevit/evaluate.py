"""Top-1 / top-5 accuracy of exported artifacts (and the float torch model) on a labelled set.

Labelled data comes from :func:`edgevit.data.load_dataset` (``fashion-mnist``, ``digits``, IDX
folders) or from an image folder (``DIR/<class>/<image>``, or ``DIR/{test,val}/<class>/...``),
whose files are fed to each artifact's own preprocessing exactly as ``edgevit predict`` does
(decode, resize the shorter side, centre-crop, normalise), one image at a time.

Dataset classes are matched to the model's labels by name (case, ``_``/``-`` and the synonyms
of ImageNet labels such as ``"tabby, tabby cat"`` are understood); a dataset whose classes are
bare indices ("0".."9") is matched by index when it has as many classes as the model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import ConfigError, DataError

__all__ = ["EvalReport", "EvalSet", "evaluate", "label_mapping", "load_eval_set"]


@dataclass(frozen=True)
class EvalSet:
    """Images (file paths or uint8 arrays) with integer labels into ``classes``."""

    name: str
    images: Sequence[Any] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    classes: tuple[str, ...]
    split: str = "test"
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int = 0, stop: int | None = None) -> EvalSet:
        """Images ``start:stop`` (Python slice bounds) as a new set."""
        return EvalSet(self.name, self.images[start:stop], self.labels[start:stop], self.classes, self.split, self.source)


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").replace("/", " ").split())


def label_mapping(classes: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, str]:
    """Map dataset class ``i`` to a model output index: ``(mapping, how)``.

    By name when every class names one model label (or one of its comma-separated synonyms);
    by index when the classes are bare numbers and the counts agree. Raises :class:`DataError`
    naming the classes that match nothing.
    """
    synonyms: dict[str, set[int]] = {}
    for i, label in enumerate(labels):
        for s in {_norm(label), *(_norm(p) for p in label.split(","))}:
            if s:
                synonyms.setdefault(s, set()).add(i)
    mapping, missing = [], []
    for c in classes:
        hits = synonyms.get(_norm(c), set())
        if len(hits) == 1:
            mapping.append(next(iter(hits)))
        else:
            missing.append(c)
    if not missing:
        return np.asarray(mapping, dtype=np.int64), "by name"
    if all(c.strip().isdigit() for c in classes) and len(classes) == len(labels):
        if [int(c) for c in classes] == list(range(len(classes))):
            return np.arange(len(classes), dtype=np.int64), "by index"
    shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
    raise DataError(
        f"dataset classes {shown} match none of the model's {len(labels)} labels; name the class folders "
        f"after the model's labels (e.g. {labels[0]!r}), or use a dataset with {len(labels)} numbered classes"
    )


def _round_robin(per_class: list[list[Path]]) -> list[tuple[Path, int]]:
    """Interleave classes so that ``--limit N`` keeps every class represented."""
    out = []
    depth = max((len(f) for f in per_class), default=0)
    for i in range(depth):
        for c, files in enumerate(per_class):
            if i < len(files):
                out.append((files[i], c))
    return out


def _image_folder(root: Path, split: str) -> EvalSet:
    from edgevit.data import IMAGE_SUFFIXES

    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    names = {"test": ("test", "val", "validation", "valid"), "train": ("train", "training")}[split]
    split_dir = next((subdirs[n] for n in names if n in subdirs), None)
    has_splits = any(n in subdirs for n in ("train", "training", "test", "val", "validation", "valid"))
    base = split_dir if split_dir is not None else root
    if has_splits and split_dir is None:
        raise DataError(f"{root} has split folders but no {split!r} split ({', '.join(names)})")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{base} has no class sub-folders; arrange it as {base}/<class>/<image>")
    per_class = []
    for d in class_dirs:
        files = sorted(
            f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
        )
        if not files:
            raise DataError(f"class folder {d} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        per_class.append(files)
    pairs = _round_robin(per_class)
    return EvalSet(
        name=root.name,
        images=[p for p, _ in pairs],
        labels=np.asarray([c for _, c in pairs], dtype=np.int64),
        classes=tuple(d.name for d in class_dirs),
        split=split if split_dir is not None else "all",
        source=str(root),
    )


def load_eval_set(data: str | os.PathLike, split: str = "test", limit: int | None = None) -> EvalSet:
    """The labelled images of ``data`` (dataset name, IDX folder or image folder), ``split``
    (``test`` or ``train``), the first ``limit`` of them (classes interleaved for folders)."""
    if split not in ("test", "train"):
        raise ConfigError(f"split must be 'test' or 'train', got {split!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    from edgevit.data import load_dataset

    path = Path(os.fspath(data)).expanduser()
    is_idx = path.is_dir() and any(path.glob("train-images*idx3*"))
    if path.is_dir() and not is_idx:
        ds = _image_folder(path, split)
    else:
        d = load_dataset(data)
        images = d.test_images if split == "test" else d.train_images
        labels = d.test_labels if split == "test" else d.train_labels
        ds = EvalSet(d.name, images, np.asarray(labels, dtype=np.int64), tuple(d.classes), split, d.source)
    if len(ds) == 0:
        raise DataError(f"{data}: the {split} split is empty")
    if limit is not None and limit < len(ds):
        ds = ds.slice(0, limit)
    return ds


@dataclass
class EvalReport:
    """One row per evaluated artifact (and the float model), plus the dataset facts."""

    rows: list[dict[str, Any]]
    dataset: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "dataset": self.dataset}


def _score(top5: np.ndarray, targets: np.ndarray) -> tuple[int, int]:
    correct1 = int((top5[:, 0] == targets).sum())
    correct5 = int((top5 == targets[:, None]).any(axis=1).sum())
    return correct1, correct5


def _top5(logits: np.ndarray) -> np.ndarray:
    k = min(5, logits.shape[-1])
    # Stable sort on -logits: ties go to the lower index, like edgevit's top_k.
    return np.argsort(-logits, axis=-1, kind="stable")[..., :k]


def _run_set(
    name: str, n: int, predict: Callable[[Any], np.ndarray], images: Sequence[Any], progress: Callable | None
) -> tuple[np.ndarray, float]:
    rows = []
    iterator = progress(images, desc=name, total=n) if progress is not None else images
    start = time.perf_counter()
    for img in iterator:
        rows.append(_top5(np.asarray(predict(img)).reshape(-1)))
    seconds = time.perf_counter() - start
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), constant_values=-1) for r in rows]), seconds


def evaluate(
    artifacts: Sequence[str | os.PathLike] = (),
    data: str | os.PathLike = "fashion-mnist",
    *,
    split: str = "test",
    limit: int | None = None,
    float_model: str | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    threads: int | None = None,
    progress: Callable | None = None,
) -> EvalReport:
    """Top-1/top-5 of each artifact (and of catalog ``float_model`` in torch, with ``pretrained``
    or ``weights``) on ``data``. With a float model, each artifact's top-1 agreement with it is
    reported too. ``progress`` wraps an iterable (e.g. ``tqdm``)."""
    if not artifacts and float_model is None:
        raise ConfigError("nothing to evaluate: pass artifacts and/or --float MODEL")
    if (pretrained or weights is not None) and float_model is None:
        raise ConfigError("--pretrained/--weights apply to the float model; pass --float MODEL too")
    from edgevit.runtimes import Classifier, load

    evalset = load_eval_set(data, split, limit)
    runners: list[tuple[str, dict[str, Any], Callable[[Any], np.ndarray], Sequence[str]]] = []
    for a in artifacts:
        clf = Classifier(load(a, threads=threads))
        m = clf.metadata
        info = {
            "name": Path(a).name,
            "artifact": str(a),
            "model": m.model,
            "target": m.target,
            "precision": m.precision,
            "runtime": clf.runtime.name,
            "resolution": int(m.input_size[0]),
            "fused_input": m.fused_input,
            "weights": m.weights,
        }
        runners.append((Path(a).name, info, lambda img, c=clf: c.logits(img)[0], m.labels))
    if float_model is not None:
        runners.insert(0, _float_runner(float_model, pretrained, weights, threads))
    rows = []
    float_top5: np.ndarray | None = None
    float_weights: str | None = None
    for name, info, predict, labels in runners:
        mapping, how = label_mapping(evalset.classes, labels)
        targets = mapping[evalset.labels]
        top5, seconds = _run_set(name, len(evalset), predict, evalset.images, progress)
        c1, c5 = _score(top5, targets)
        n = len(evalset)
        row = {
            **info,
            "dataset": evalset.name,
            "split": evalset.split,
            "n": n,
            "correct_top1": c1,
            "correct_top5": c5,
            "top1": c1 / n,
            "top5": c5 / n,
            "labels_matched": how,
            "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else None,
        }
        if info.get("target") == "torch":
            float_top5 = top5
            float_weights = info.get("weights")
        elif float_top5 is not None:
            row["agreement_top1"] = float((top5[:, 0] == float_top5[:, 0]).mean())
            if info.get("weights") == "random-init" or float_weights == "random-init":
                row["note"] = "random-init weights: the float model and the artifact are different random models"
        rows.append(row)
    dataset = {"name": evalset.name, "split": evalset.split, "n": len(evalset), "classes": list(evalset.classes),
               "source": evalset.source}
    return EvalReport(rows, dataset)


def _float_runner(model: str, pretrained: bool, weights: str | os.PathLike | None, threads: int | None):
    import torch

    from edgevit.converters.export import build_metadata
    from edgevit.models import create_model, get_spec
    from edgevit.preprocess import preprocess

    if threads:
        torch.set_num_threads(threads)
    spec = get_spec(model)
    net = create_model(model, pretrained=pretrained, weights=weights)
    meta = build_metadata(spec, "torch", "fp32", spec.label_names(), net.edgevit_weights)

    def predict(img: Any) -> np.ndarray:
        x = torch.from_numpy(preprocess(img, meta))
        with torch.inference_mode():
            return net(x)[0].float().numpy()

    info = {
        "name": f"torch:{model}",
        "artifact": None,
        "model": spec.name,
        "target": "torch",
        "precision": "fp32",
        "runtime": "torch-eager",
        "resolution": int(spec.input_size[0]),
        "weights": net.edgevit_weights,
    }
    return (f"torch:{model}", info, predict, meta.labels)
