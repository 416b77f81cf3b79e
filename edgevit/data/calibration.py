"""Calibration images for post-training quantization: ``--calibration DIR|DATASET`` -> arrays.

:func:`load_calibration` turns what the user passed into the exact tensors the artifact takes
(its own preprocessing from the metadata: colour mode, resize and crop, mean/std, layout, uint8
frames for a fused-input artifact), one image at a time, with a progress bar on a terminal.

Sources, in the order they are tried:

* a packaged dataset name (``fashion-mnist``, ``digits``) or a folder of IDX files: labelled;
  images come from the **train** split, so the test split stays untouched for reporting;
* an image folder with one sub-folder per class (``DIR/<class>/<image>``, or
  ``DIR/train/<class>/...``): labelled, classes interleaved so the first N cover every class;
* a flat folder of images (``DIR/*.jpg``): unlabelled (fidelity is then judged by cosine
  similarity to the float model's logits).

Any labelled source takes a split and a slice, ``SOURCE:SPLIT[START:STOP]`` (Python slice
bounds, either may be left out): ``fashion-mnist:train[50000:]`` calibrates on training images
that a model trained on the first 50,000 never saw. Quantization search on images the model was
trained on overstates how often int8 keeps its answers (the model is surer of them); a held-out
slice gives the figure that holds on new images.

Dataset classes are matched to the model's labels by name (or by index for numbered classes,
see :func:`edgevit.data.eval_sets.label_mapping`); classes that match nothing make the set unlabelled
and say why in :attr:`CalibrationSet.note`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import DataError
from edgevit.metadata import ArtifactMetadata

__all__ = ["CalibrationSet", "load_calibration"]


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration inputs, ``(N, *artifact input shape without batch)``.

    ``labels`` are model output indices (``None`` when the source has no usable labels).
    """

    inputs: np.ndarray = field(repr=False)
    labels: np.ndarray | None = field(repr=False)
    source: str
    split: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.inputs):
            raise DataError(f"calibration set: {len(self.inputs)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def take(self, start: int, stop: int | None = None) -> CalibrationSet:
        """Images ``start:stop`` as a new set."""
        labels = None if self.labels is None else self.labels[start:stop]
        return CalibrationSet(self.inputs[start:stop], labels, self.source, self.split, self.note)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "images": len(self), "labelled": self.labelled}
        if self.split:
            out["split"] = self.split
        if self.note:
            out["note"] = self.note
        return out


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _flat_image_folder(path: Path) -> list[Path] | None:
    """The images of a folder without class sub-folders, or ``None`` if it has sub-folders."""
    from edgevit.data import IMAGE_SUFFIXES

    entries = [p for p in sorted(path.iterdir()) if _visible(p)]
    if any(p.is_dir() for p in entries):
        return None
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(
            f"calibration folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "pass a folder of images, a folder with one sub-folder per class, or a dataset name"
        )
    return images


_SPLIT_SPEC = re.compile(r"^(?P<source>.+):(?P<split>train|test)(?:\[(?P<start>\d*):(?P<stop>\d*)\])?$")


@dataclass(frozen=True)
class _Selection:
    """``SOURCE:SPLIT[START:STOP]`` taken apart (no suffix: the train split from its start)."""

    source: str | os.PathLike
    split: str | None = None
    start: int = 0
    stop: int | None = None

    @classmethod
    def parse(cls, source: str | os.PathLike) -> _Selection:
        text = os.fspath(source)
        m = _SPLIT_SPEC.match(text)
        if m is None or Path(text).expanduser().exists():
            return cls(source)
        start, stop = m["start"], m["stop"]
        return cls(m["source"], m["split"], int(start) if start else 0, int(stop) if stop else None)


def _plain_image_folder(source: str | os.PathLike) -> bool:
    """A folder of class sub-folders without train/test sub-folders (and not IDX files)."""
    from pathlib import Path

    path = Path(os.fspath(source)).expanduser()
    if not path.is_dir() or any(path.glob("train-images*idx3*")):
        return False
    names = {p.name.lower() for p in path.iterdir() if p.is_dir()}
    return not names & {"train", "training", "test", "val", "validation", "valid"}


def _labelled_source(source: str | os.PathLike, count: int, labels: Sequence[str]):
    """(images, labels or None, split, note) from a dataset name, IDX folder or class folders,
    with an optional ``:split[start:stop]`` selection."""
    from edgevit.data.eval_sets import label_mapping, load_eval_set

    sel = _Selection.parse(source)
    if sel.split is not None:
        data = load_eval_set(sel.source, split=sel.split)
        total = len(data)
        data = data.slice(sel.start, sel.stop)
        if len(data) == 0:
            raise DataError(
                f"calibration source {os.fspath(source)} selects no images: the {sel.split} split of "
                f"{os.fspath(sel.source)} has {total}; pick START:STOP within 0:{total}"
            )
        data = data.slice(0, count)
        split = f"{sel.split}[{sel.start}:{'' if sel.stop is None else sel.stop}]"
    elif _plain_image_folder(source):
        data = load_eval_set(source, split="all", limit=count)  # calibration may use every image
        split = data.split
    else:
        try:
            data = load_eval_set(source, split="train", limit=count)
        except DataError as exc:
            if "no 'train' split" not in str(exc):
                raise
            data = load_eval_set(source, split="test", limit=count)  # a folder holding only a test split
        split = data.split
    note = ""
    try:
        mapping, _how = label_mapping(data.classes, labels)
        mapped = mapping[np.asarray(data.labels, dtype=np.int64)]
    except DataError as exc:
        mapped, note = None, f"labels unused: {exc}"
    return list(data.images), mapped, split, note


def load_calibration(
    source: str | os.PathLike | CalibrationSet | np.ndarray,
    metadata: ArtifactMetadata,
    count: int = 128,
    progress: bool | None = None,
) -> CalibrationSet:
    """Load up to ``count`` calibration images from ``source`` as ``metadata``'s input tensors.

    ``source`` is a dataset name, an IDX folder, an image folder (class sub-folders or flat), a
    ready :class:`CalibrationSet` (returned as is, truncated to ``count``), or an array that is
    already preprocessed (``(N, *input shape)``, unlabelled). ``progress`` shows a bar on stderr
    (default: when stderr is a terminal). Raises :class:`DataError` naming the problem.
    """
    if count < 1:
        raise DataError(f"the number of calibration images must be >= 1, got {count}")
    if isinstance(source, CalibrationSet):
        return source.take(0, count)
    shape = metadata.input_shape(1)[1:]
    if isinstance(source, np.ndarray):
        if tuple(source.shape[1:]) != tuple(shape):
            raise DataError(f"calibration array must be (N, {', '.join(map(str, shape))}), got {source.shape}")
        return CalibrationSet(np.ascontiguousarray(source[:count]), None, "<array>")
    if source is None or (isinstance(source, str) and not source.strip()):
        raise DataError("no calibration data given; pass --calibration DIR|DATASET")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        raise DataError(
            f"calibration source {path} is a file; pass a folder of images, a folder with one "
            "sub-folder per class, or a dataset name (fashion-mnist, digits)"
        )
    flat = _flat_image_folder(path) if path.is_dir() and not any(path.glob("*idx*-ubyte*")) else None
    if flat is not None:
        images: list[Any] = list(flat[:count])
        labels, split, note = None, "images", ""
    else:
        images, labels, split, note = _labelled_source(source, count, metadata.labels)
    inputs = _preprocess_all(images, metadata, progress, f"calibration ({text})")
    return CalibrationSet(inputs, labels, text, split, note)


def _preprocess_all(images: Sequence[Any], metadata: ArtifactMetadata, progress: bool | None, desc: str) -> np.ndarray:
    from edgevit.preprocess import preprocess

    if progress is None:
        progress = sys.stderr.isatty()
    iterator: Any = images
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the bar is a nicety; the core install has no tqdm
            tqdm = None
        if tqdm is not None:
            bar = tqdm(images, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
            iterator = bar
    try:
        rows = [preprocess(img, metadata)[0] for img in iterator]
    finally:
        if bar is not None:
            bar.close()
    if not rows:
        raise DataError(f"{desc}: no images")
    return np.stack(rows)
