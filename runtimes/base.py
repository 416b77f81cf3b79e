"""The runtime registry: one :class:`Runtime` per artifact kind, chosen by file suffix.

Nothing in ``edgevit.runtimes`` imports torch or timm: this is the code that runs on the device.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import numpy as np

from edgevit.errors import ArtifactError, UnknownRuntimeError
from edgevit.metadata import ArtifactMetadata

__all__ = [
    "Integrity",
    "Runtime",
    "available_runtimes",
    "check_class_scores",
    "describe_integrity",
    "get_runtime",
    "load",
    "register_runtime",
    "runtime_for_path",
]

Integrity = Literal["verified", "unchecked"]

_INTEGRITY_NOTES = {
    "verified": "verified (the SHA-256 digest stored at export matches)",
    "unchecked": "UNCHECKED (the file carries no edgevit digest: not exported by edgevit, a format without "
    "one, or its digest was removed; damage or edits cannot be detected)",
}


def describe_integrity(integrity: str) -> str:
    """One human line for a runtime's ``integrity`` fact."""
    return _INTEGRITY_NOTES.get(integrity, integrity)

_RUNTIMES: dict[str, type[Runtime]] = {}

R = TypeVar("R", bound="type[Runtime]")


class Runtime(abc.ABC):
    """A loaded artifact that maps an input batch to logits, without torch.

    Contract for subclasses:

    * ``name`` is the registry key, ``suffixes`` the artifact suffixes it loads (lower case,
      with the dot; a folder such as ``.mlpackage`` counts), ``extra`` the pip extra that installs
      its engine.
    * ``__init__`` loads the file and reads the edgevit metadata back (``self.metadata``); a missing,
      empty, truncated or foreign file raises :class:`ArtifactError`, a missing engine
      :class:`MissingDependencyError`.
    * :meth:`_run` takes one batch in the artifact's own dtype and layout and returns float32
      logits of shape (batch, classes). Dequantisation of int8 outputs happens inside.
    * ``__init__`` refuses an output that is not one class score per label
      (:func:`check_class_scores`), and sets ``integrity``: ``"verified"`` when the file's
      edgevit SHA-256 digest was checked, ``"unchecked"`` when the format or file carries none.

    :meth:`run` serialises calls with a lock: one loaded artifact may be shared by threads.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    extra: ClassVar[str]

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads
        self.metadata: ArtifactMetadata
        self.integrity: Integrity = "unchecked"
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one input batch (already in the artifact's dtype/layout) and return logits."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 logits (batch, classes) for an input batch in the artifact's layout."""
        expected = self.metadata.input_shape(batch.shape[0] if batch.ndim == 4 else 1)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected[1:]:
            raise ArtifactError(
                f"{self.path.name} takes input of shape {expected} ({self.metadata.layout}), "
                f"got {tuple(batch.shape)}"
            )
        with self._lock:
            out = np.asarray(self._run(batch), dtype=np.float32)
        # Load checked the declared shape; a symbolic one (ONNX) is only known here.
        if out.size != batch.shape[0] * self.metadata.num_classes:
            raise ArtifactError(
                f"{self.path.name} returned {out.size} scores for {batch.shape[0]} image(s), but its metadata "
                f"has {self.metadata.num_classes} labels; it is not an edgevit classifier, or its labels were edited"
            )
        return out.reshape(batch.shape[0], -1)

    def __repr__(self) -> str:
        m = self.metadata
        return f"{type(self).__name__}({str(self.path)!r}, model={m.model!r}, precision={m.precision!r})"


def check_class_scores(name: str, shape: Sequence[object], labels: int, batch: int | None = None) -> None:
    """Refuse (:class:`ArtifactError`) an output that is not one score per label: shape
    ``(batch, labels)``. ``shape`` may hold symbolic dimensions (strings or None, as ONNX reports
    a dynamic batch); those are checked on each run instead. ``batch`` is the input's fixed batch."""
    dims = list(shape)
    if len(dims) != 2:
        raise ArtifactError(
            f"{name}: its output has shape {tuple(dims)}, not a vector of class scores (batch, {labels}) "
            f"for its {labels} labels; edgevit runs image classifiers with one score per label"
        )
    rows, classes = dims
    if isinstance(classes, int) and classes != labels:
        raise ArtifactError(
            f"{name}: its output has {classes} class scores but its metadata has {labels} labels; "
            "the labels do not belong to this model (edited metadata?), export it again"
        )
    if isinstance(rows, int) and batch is not None and rows != batch:
        raise ArtifactError(
            f"{name}: its output has a batch of {rows} but its input a batch of {batch}; "
            f"expected class scores of shape ({batch}, {labels})"
        )


def register_runtime(cls: R) -> R:
    """Class decorator adding a :class:`Runtime` subclass to the registry."""
    _RUNTIMES[cls.name] = cls
    return cls


_DISCOVERED = False


def _ensure_builtin() -> None:
    """Import every runtime module of this package once; each registers itself.

    Adding a runtime is one new file here. The modules import their engines lazily, so this
    does not need any runtime extra installed.
    """
    global _DISCOVERED
    if _DISCOVERED:
        return
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package (already importing)
        if not info.name.startswith("_") and info.name not in _NOT_RUNTIMES:
            importlib.import_module(f"{__package__}.{info.name}")
    _DISCOVERED = True


_NOT_RUNTIMES = {"base", "classifier"}


def available_runtimes() -> dict[str, type[Runtime]]:
    _ensure_builtin()
    return dict(_RUNTIMES)


def get_runtime(name: str) -> type[Runtime]:
    runtimes = available_runtimes()
    if name not in runtimes:
        raise UnknownRuntimeError(name, runtimes)
    return runtimes[name]


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def runtime_for_path(path: str | os.PathLike) -> type[Runtime]:
    """The runtime class that loads ``path``, chosen by suffix."""
    p = Path(path)
    suffix = _suffix(p)
    for cls in available_runtimes().values():
        if suffix in cls.suffixes:
            return cls
    known = sorted(s for cls in _RUNTIMES.values() for s in cls.suffixes)
    raise ArtifactError(
        f"{p.name}: no runtime loads {suffix or 'files without a suffix'!s} artifacts; "
        f"known suffixes: {', '.join(known)}"
    )


def load(path: str | os.PathLike, threads: int | None = None, runtime: str | None = None) -> Runtime:
    """Load an artifact with the runtime for its kind (by suffix, or ``runtime`` by name)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact")
    if threads is not None and threads < 1:
        raise ArtifactError(f"threads must be >= 1, got {threads}")
    cls: Callable[..., Runtime] = get_runtime(runtime) if runtime else runtime_for_path(p)
    return cls(p, threads=threads)
