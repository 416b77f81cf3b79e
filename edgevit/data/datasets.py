"""Labelled image data for training, evaluation and calibration (numpy + Pillow, no torch).

:func:`load_dataset` takes one string:

* ``"fashion-mnist"`` -- the real Fashion-MNIST splits (60,000 train / 10,000 test, 28x28
  grayscale, 10 classes) from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``);
* ``"digits"`` -- scikit-learn's 8x8 handwritten digits (1,797 images), split 80/20 by a fixed
  stratified rule;
* a folder of IDX files (``train-images-idx3-ubyte[.gz]`` ...), e.g. a downloaded copy of
  Fashion-MNIST or MNIST;
* an image folder with one sub-folder per class (``DIR/cat/*.jpg``, ``DIR/dog/*.jpg``), or
  ``DIR/train/<class>/...`` plus ``DIR/test/<class>/...`` (``val`` also accepted). A folder
  without a split is divided 80/20 per class by a fixed rule.

Images come back as ``uint8`` arrays, ``(N, H, W)`` for grayscale and ``(N, H, W, 3)`` for
colour, untouched: the model's own preprocessing (mean/std from its catalog entry) is applied in
one place, by whoever feeds the model.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgevit.errors import DataError, ImageError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_APT",
    "FASHION_MNIST_DIR",
    "IMAGE_SUFFIXES",
    "Dataset",
    "load_dataset",
    "load_image_folder",
    "read_idx",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "sudo apt-get install dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_SPLIT_NAMES = {"train": ("train", "training"), "test": ("test", "val", "validation", "valid")}


@dataclass(frozen=True)
class Dataset:
    """Train and test splits as uint8 images plus int64 labels and the class names.

    ``flip_ok`` says whether a horizontal flip keeps an image's class (clothes: yes; digits: no).
    """

    name: str
    train_images: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)
    test_images: np.ndarray = field(repr=False)
    test_labels: np.ndarray = field(repr=False)
    classes: tuple[str, ...]
    flip_ok: bool = True
    source: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim not in (3, 4):
                raise DataError(f"{self.name}: {split} images must be uint8 (N, H, W[, 3]), got {images.dtype} {images.shape}")
            if len(images) != len(labels):
                raise DataError(f"{self.name}: {len(images)} {split} images but {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise DataError(f"{self.name}: {split} labels outside 0..{len(self.classes) - 1}")
        if self.train_images.shape[1:] != self.test_images.shape[1:] and len(self.test_images):
            raise DataError(
                f"{self.name}: train images are {self.train_images.shape[1:]} but test images are "
                f"{self.test_images.shape[1:]}"
            )

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W) for grayscale, (H, W, 3) for colour."""
        return tuple(self.train_images.shape[1:])

    @property
    def color_mode(self) -> str:
        return "L" if self.train_images.ndim == 3 else "RGB"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first ``train`` / ``test`` examples of each split (``None`` keeps a split whole)."""
        return Dataset(
            name=self.name,
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            test_images=self.test_images[:test],
            test_labels=self.test_labels[:test],
            classes=self.classes,
            flip_ok=self.flip_ok,
            source=self.source,
        )

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "train": len(self.train_labels),
            "test": len(self.test_labels),
            "image_shape": list(self.image_shape),
            "classes": list(self.classes),
        }


# ----------------------------------------------------------------------------------------------
# IDX files (the MNIST family's format)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared type and shape.

    Format: two zero bytes, a type code, the number of dimensions, each dimension as a
    big-endian uint32, then the values in C order (big-endian).
    """
    p = Path(path)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such IDX file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{p} could not be read (truncated or corrupt?): {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{p} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{p} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{p}: header declares shape {shape} ({expected} bytes) but holds {len(raw) - header} bytes")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _is_idx_folder(folder: Path) -> bool:
    return folder.is_dir() and _find_idx(folder, _IDX_FILES["train_images"]) is not None


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=4)
def _load_idx_folder(folder: Path, name: str, classes: tuple[str, ...] | None) -> Dataset:
    parts = {}
    for key, stem in _IDX_FILES.items():
        found = _find_idx(folder, stem)
        if found is None:
            raise DataError(f"{folder} has no {stem}[.gz]; an IDX dataset folder needs the four MNIST-style files")
        parts[key] = read_idx(found)
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{folder}: {split} images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{folder}: {split} labels must be one-dimensional, got shape {labels.shape}")
        parts[f"{split}_labels"] = labels.astype(np.int64)
    n_classes = int(max(parts["train_labels"].max(), parts["test_labels"].max())) + 1
    if classes is None or len(classes) != n_classes:
        classes = tuple(str(i) for i in range(n_classes))
    return Dataset(
        name=name,
        classes=classes,
        source=str(folder),
        **{k: _readonly(v) for k, v in parts.items()},
    )


def _fashion_mnist(root: Path | None = None) -> Dataset:
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    if not _is_idx_folder(folder):
        raise DataError(
            f"Fashion-MNIST is not installed ({folder} has no train-images-idx3-ubyte.gz); "
            f"install it with: {FASHION_MNIST_APT}  (or pass a folder holding the four IDX files)"
        )
    return _load_idx_folder(folder, "fashion-mnist", FASHION_MNIST_CLASSES)


@functools.lru_cache(maxsize=1)
def _digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from edgevit.errors import MissingDependencyError

        raise MissingDependencyError("scikit-learn", "samples", "load the 'digits' dataset") from None
    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    # Fixed stratified split: within each class (in file order) every fifth image is a test image.
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    test = rank % 5 == 4
    return Dataset(
        name="digits",
        train_images=_readonly(images[~test]),
        train_labels=_readonly(labels[~test]),
        test_images=_readonly(images[test]),
        test_labels=_readonly(labels[test]),
        classes=tuple(str(i) for i in range(10)),
        flip_ok=False,
        source="sklearn.datasets.load_digits",
    )


DATASETS = {
    "fashion-mnist": "real Fashion-MNIST, 60k/10k 28x28 grayscale, 10 classes (apt: dataset-fashion-mnist)",
    "digits": "scikit-learn 8x8 handwritten digits, 1,442/355, 10 classes (fixed stratified split)",
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}


# ----------------------------------------------------------------------------------------------
# Image folders


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in ("Thumbs.db", "desktop.ini")


def _class_dirs(folder: Path) -> list[Path]:
    entries = sorted(p for p in folder.iterdir() if _visible(p))
    dirs = [p for p in entries if p.is_dir()]
    loose = [p.name for p in entries if not p.is_dir()]
    if not entries:
        raise DataError(f"{folder} is empty; an image folder needs one sub-folder of images per class")
    if not dirs:
        raise DataError(
            f"{folder} has files but no class sub-folders; arrange it as {folder}/<class>/<image> "
            "(one sub-folder per class)"
        )
    if loose:
        raise DataError(
            f"{folder} mixes files ({', '.join(loose[:5])}{' ...' if len(loose) > 5 else ''}) with class "
            "sub-folders; move them into a class folder or out of the dataset"
        )
    return dirs


def _check_readable(folder: Path) -> None:
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"cannot read folder {folder}: permission denied")


def _class_files(class_dir: Path) -> list[Path]:
    _check_readable(class_dir)
    files = sorted(
        p for p in class_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(class_dir).parts) and _visible(p)
    )
    other = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if other:
        names = ", ".join(str(p.relative_to(class_dir.parent)) for p in other[:5])
        raise DataError(
            f"{class_dir} holds files that are not images ({names}{' ...' if len(other) > 5 else ''}); "
            f"image folders may only hold {', '.join(sorted(IMAGE_SUFFIXES))} files"
        )
    if not files:
        raise DataError(f"class folder {class_dir} has no images")
    return files


def _fit(img, size: tuple[int, int] | None):
    """Resize the shorter side to fit ``size`` (height, width) and centre-crop to it."""
    from PIL import Image

    if size is None or (img.height, img.width) == tuple(size):
        return img
    th, tw = size
    scale = max(th / img.height, tw / img.width)
    nw, nh = max(tw, round(img.width * scale)), max(th, round(img.height * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return img.crop((left, top, left + tw, top + th))


def _read_split(dirs: Sequence[Path], classes: Sequence[str], size, color_mode) -> tuple[list, list, list]:
    from edgevit.preprocess import load_image

    images, labels, bad = [], [], []
    index = {c: i for i, c in enumerate(classes)}
    for d in dirs:
        for f in _class_files(d):
            try:
                img = load_image(f, color_mode)
            except ImageError as exc:
                bad.append(str(exc))
                continue
            images.append(np.asarray(_fit(img, size), dtype=np.uint8))
            labels.append(index[d.name])
    return images, labels, bad


def _stack(images: list[np.ndarray], folder: Path) -> np.ndarray:
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataError(
            f"images in {folder} have different sizes ({', '.join(str(s) for s in sorted(shapes)[:4])}); "
            "pass image_size=(height, width) to resize them (training uses the model's input size)"
        )
    return np.stack(images)


def sample_image_properties(folder: str | os.PathLike | None, limit: int = 16) -> tuple[bool, tuple[int, int]] | None:
    """``(colour, (width, height))`` of the images of an image folder, from its first ``limit``
    files (headers only): colour when any of them is, the largest size seen. None for a folder
    without readable images (or not a folder)."""
    if folder is None or not Path(folder).is_dir():
        return None
    colour, size, seen = False, (0, 0), 0
    for f in sorted(Path(folder).rglob("*")):
        if seen >= limit:
            break
        if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith("."):
            continue
        try:
            with Image.open(f) as img:
                colour = colour or img.mode not in ("1", "L", "LA", "I", "I;16", "F")
                size = max(size, img.size, key=lambda s: s[0] * s[1])
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        seen += 1
    return (colour, size) if seen else None


def held_out_indices(n: int, test_fraction: float = 0.2) -> list[int]:
    """Which of a class's ``n`` images (sorted by path) an image folder without train/test
    sub-folders holds out for testing: every ``round(1/test_fraction)``-th one (the last one when
    there are fewer), none when the class has a single image. ``edgevit train`` trains on the rest
    and ``edgevit eval`` scores these, so the two agree on what is held out."""
    every = max(2, round(1 / test_fraction))
    if n < 2:
        return []
    return list(range(every - 1, n, every)) if n >= every else [n - 1]


def load_image_folder(
    folder: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "RGB",
    test_fraction: float = 0.2,
) -> Dataset:
    """Load ``folder/<class>/<image>`` (or ``folder/{train,test}/<class>/<image>``).

    Images are converted to ``color_mode`` and, with ``image_size``, resized (shorter side) and
    centre-cropped to it. Without a train/test split every ``round(1/test_fraction)``-th image of
    each class (sorted by path) is held out. Unreadable or non-image files raise a
    :class:`DataError` naming them.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a folder with one sub-folder of images per class")
    _check_readable(root)
    if color_mode not in ("RGB", "L"):
        raise DataError(f"color_mode must be 'RGB' or 'L', got {color_mode!r}")
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    size = tuple(image_size) if image_size is not None else None
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and _visible(p)}
    train_dir = next((subdirs[n] for n in _SPLIT_NAMES["train"] if n in subdirs), None)
    test_dir = next((subdirs[n] for n in _SPLIT_NAMES["test"] if n in subdirs), None)

    if train_dir is not None and test_dir is not None:
        train_classes = [d.name for d in _class_dirs(train_dir)]
        test_dirs = _class_dirs(test_dir)
        unknown = [d.name for d in test_dirs if d.name not in train_classes]
        if unknown:
            raise DataError(f"{test_dir} has classes missing from {train_dir}: {', '.join(unknown[:5])}")
        classes = tuple(train_classes)
        tr_x, tr_y, bad = _read_split(_class_dirs(train_dir), classes, size, color_mode)
        te_x, te_y, bad2 = _read_split(test_dirs, classes, size, color_mode)
        bad += bad2
    else:
        dirs = _class_dirs(root)
        classes = tuple(d.name for d in dirs)
        x, y, bad = _read_split(dirs, classes, size, color_mode)
        y_arr = np.asarray(y, dtype=np.int64)
        test_mask = np.zeros(len(y_arr), dtype=bool)
        for c in range(len(classes)):
            idx = np.flatnonzero(y_arr == c)
            test_mask[idx[held_out_indices(len(idx), test_fraction)]] = True
        tr_x = [a for a, t in zip(x, test_mask) if not t]
        te_x = [a for a, t in zip(x, test_mask) if t]
        tr_y, te_y = list(y_arr[~test_mask]), list(y_arr[test_mask])
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} unreadable image(s) in {root}: " + "; ".join(bad[:5]) + more)
    if len(classes) < 2:
        raise DataError(f"{root} has only one class ({classes[0]}); classification needs at least two")
    train_images = _stack(tr_x, root)
    test_images = _stack(te_x, root) if te_x else np.zeros((0, *train_images.shape[1:]), np.uint8)
    return Dataset(
        name=root.name,
        train_images=train_images,
        train_labels=np.asarray(tr_y, dtype=np.int64),
        test_images=test_images,
        test_labels=np.asarray(te_y, dtype=np.int64),
        classes=classes,
        source=str(root),
    )


# ----------------------------------------------------------------------------------------------


def load_dataset(
    spec: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "RGB",
) -> Dataset:
    """Load a labelled dataset by name (``fashion-mnist``, ``digits``) or from a folder.

    ``image_size`` and ``color_mode`` apply to image folders (which are read at that size);
    the packaged datasets come back at their own size and colour mode.
    """
    text = os.fspath(spec)
    key = _ALIASES.get(text.lower(), text.lower())
    if key == "fashion-mnist":
        return _fashion_mnist()
    if key == "digits":
        return _digits()
    path = Path(text).expanduser()
    if path.is_dir():
        _check_readable(path)
        if _is_idx_folder(path):
            return _load_idx_folder(path.resolve(), path.name, None)
        return load_image_folder(path, image_size=image_size, color_mode=color_mode)
    if path.exists():
        raise DataError(f"{path} is a file; pass a dataset name ({', '.join(DATASETS)}) or an image folder")
    close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=2, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(_ALIASES.get(c, c)) for c in close)}?" if close else ""
    raise DataError(
        f"{text!r} is neither a known dataset ({', '.join(DATASETS)}) nor an existing folder{hint}"
    )
