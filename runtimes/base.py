"""The runtime registry: one :class:`Runtime` per artifact kind, chosen by file suffix.

Nothing in ``edgevit.runtimes`` imports torch or timm: this is the code that runs on the device.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from edgevit.errors import ArtifactError, UnknownRuntimeError
from edgevit.metadata import ArtifactMetadata

__all__ = ["Runtime", "available_runtimes", "get_runtime", "load", "register_runtime", "runtime_for_path"]

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

    :meth:`run` serialises calls with a lock: one loaded artifact may be shared by threads.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    extra: ClassVar[str]

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads
        self.metadata: ArtifactMetadata
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
            out = self._run(batch)
        return np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)

    def __repr__(self) -> str:
        m = self.metadata
        return f"{type(self).__name__}({str(self.path)!r}, model={m.model!r}, precision={m.precision!r})"


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

    import edgevit.runtimes as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in _NOT_RUNTIMES:
            importlib.import_module(f"{package.__name__}.{info.name}")
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
