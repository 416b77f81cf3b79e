"""Labelled evaluation sets: a dataset split or an image folder as (images, labels, classes),
and the mapping of a dataset's classes onto a model's labels (torch-free)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import ConfigError, DataError

__all__ = ["EvalSet", "label_mapping", "load_eval_set"]


@dataclass(frozen=True)
class EvalSet:
    """Images (file paths or uint8 arrays) with integer labels into ``classes``."""

    name: str
    images: Sequence[Any] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    classes: tuple[str, ...]
    split: str = "test"
    source: str = ""
    note: str = ""  # what the split is, in words (held-out images, or images a model was trained on)

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int = 0, stop: int | None = None) -> EvalSet:
        """Images ``start:stop`` (Python slice bounds) as a new set."""
        return EvalSet(self.name, self.images[start:stop], self.labels[start:stop], self.classes, self.split, self.source,
                       self.note)


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


def load_eval_set(data: str | os.PathLike, split: str = "test", limit: int | None = None) -> EvalSet:
    """The labelled images of ``data`` (dataset name, IDX folder or image folder), ``split``
    (``test``: held-out images, ``train`` or ``all``), the first ``limit`` of them (classes interleaved for folders)."""
    if split not in ("test", "train", "all"):
        raise ConfigError(f"split must be 'test', 'train' or 'all', got {split!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    from edgevit.data.datasets import load_dataset

    path = Path(os.fspath(data)).expanduser()
    is_idx = path.is_dir() and any(path.glob("train-images*idx3*"))
    if path.is_dir() and not is_idx:
        ds = _image_folder(path, split)
    else:
        d = load_dataset(data)
        if split == "all":
            images = np.concatenate([d.train_images, d.test_images])
            labels = np.concatenate([d.train_labels, d.test_labels])
        else:
            images = d.test_images if split == "test" else d.train_images
            labels = d.test_labels if split == "test" else d.train_labels
        ds = EvalSet(d.name, images, np.asarray(labels, dtype=np.int64), tuple(d.classes), split, d.source,
                     _split_note(split, True))
    if len(ds) == 0:
        raise DataError(f"{data}: the {split} split is empty")
    if limit is not None and limit < len(ds):
        ds = ds.slice(0, limit)
    return ds


def _image_folder(root: Path, split: str) -> EvalSet:
    from edgevit.data.datasets import IMAGE_SUFFIXES, held_out_indices

    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    names = {"test": ("test", "val", "validation", "valid"), "train": ("train", "training"), "all": ()}[split]
    split_dir = next((subdirs[n] for n in names if n in subdirs), None)
    has_splits = any(n in subdirs for n in ("train", "training", "test", "val", "validation", "valid"))
    if has_splits and split == "all":
        raise DataError(f"{root} has split folders; evaluate --split test or --split train")
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
        if split_dir is None and split != "all":
            # No split folders: the images `edgevit train` holds out of this folder are the test
            # split, the rest the train split (the same rule, datasets.held_out_indices).
            held = set(held_out_indices(len(files)))
            files = [f for i, f in enumerate(files) if (i in held) == (split == "test")]
        per_class.append(files)
    if not any(per_class):
        raise DataError(f"{root}: the {split} split is empty (each class needs at least two images to hold one out)")
    pairs = _round_robin(per_class)
    return EvalSet(
        name=root.name,
        images=[p for p, _ in pairs],
        labels=np.asarray([c for _, c in pairs], dtype=np.int64),
        classes=tuple(d.name for d in class_dirs),
        split=split,
        source=str(root),
        note=_split_note(split, split_dir is not None),
    )


def _split_note(split: str, from_folders: bool) -> str:
    if split == "test":
        return ("held out: images a model trained on the train split has not seen" if from_folders else
                "held out: every 5th image of each class, the ones `edgevit train` keeps out of training "
                "(--split all scores every image of a folder no model was trained on)")
    if split == "train":
        return ("these are training images: a model trained on this data has seen them, so top-1 overstates "
                "its accuracy; --split test scores held-out images")
    return ("every image, training ones included: a model trained on this data has seen most of them; "
            "--split test scores held-out images only")
