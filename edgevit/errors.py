"""edgevit's exceptions.

Every error edgevit raises on purpose derives from :class:`EdgeVitError`; the CLI catches only
that base, prints ``Error: message`` and exits 1 (``--debug`` shows the traceback).

    EdgeVitError
    ├── UnknownNameError (also ValueError)      unknown model / target / precision / runtime
    │   ├── UnknownModelError
    │   ├── UnknownTargetError
    │   ├── UnknownPrecisionError
    │   └── UnknownRuntimeError
    ├── ConfigError (also ValueError)           invalid option or combination, caught before work
    ├── MissingDependencyError (also ImportError) an extra is not installed; names the pip command
    ├── ModelError                              weights that do not load or do not fit the model
    ├── DataError                               dataset / image folder / calibration set problems
    ├── ImageError                              an image that cannot be decoded or used
    ├── ConversionError                         a converter failed; names the op where known
    ├── VerificationError                       the artifact does not match the float model
    ├── ArtifactError                           an artifact that is missing, truncated or corrupt
    └── OutputExistsError (also FileExistsError) refusing to overwrite without ``force``
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ArtifactError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "EdgeVitError",
    "ImageError",
    "MissingDependencyError",
    "ModelError",
    "OutputExistsError",
    "UnknownModelError",
    "UnknownNameError",
    "UnknownPrecisionError",
    "UnknownRuntimeError",
    "UnknownTargetError",
    "VerificationError",
]


class EdgeVitError(Exception):
    """Base of every error edgevit raises on purpose."""


class UnknownNameError(EdgeVitError, ValueError):
    """A name that is not in a registry; the message lists the closest names."""

    kind = "name"

    def __init__(self, name: str, choices: Iterable[str], hint: str = "") -> None:
        self.name = name
        self.choices = sorted(choices)
        close = difflib.get_close_matches(name, self.choices, n=3, cutoff=0.5)
        if not close:
            close = [c for c in self.choices if name.lower() in c.lower()][:3]
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        elif self.choices and len(self.choices) <= 12:
            msg += f"; choose one of: {', '.join(self.choices)}"
        if hint:
            msg += f" {hint}"
        super().__init__(msg)


class UnknownModelError(UnknownNameError):
    kind = "model"

    def __init__(self, name: str, choices: Iterable[str], hint: str = "") -> None:
        super().__init__(name, choices, hint=hint or (
            "(`edgevit list` shows the catalog; any timm architecture works as timm:NAME, a Hugging Face "
            "image classifier as hf:ORG/NAME or a save_pretrained folder)"))


class UnknownTargetError(UnknownNameError):
    kind = "target"


class UnknownPrecisionError(UnknownNameError):
    kind = "precision"


class UnknownRuntimeError(UnknownNameError):
    kind = "runtime"


class ConfigError(EdgeVitError, ValueError):
    """An invalid option or combination of options, raised before any work starts."""


class MissingDependencyError(EdgeVitError, ImportError):
    """An optional dependency is missing; the message names the pip command."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        what = f" to {purpose}" if purpose else ""
        super().__init__(
            f"{package} is needed{what} but is not installed; "
            f"install it with: pip install 'edgevit[{extra}]'"
        )


class ModelError(EdgeVitError):
    """Weights or checkpoints that cannot be loaded into a model."""


class DataError(EdgeVitError):
    """A dataset, image folder or calibration set that cannot be used."""


class ImageError(EdgeVitError):
    """An image that cannot be decoded or used."""


class ConversionError(EdgeVitError):
    """A converter failed. ``op`` names the failing operator where it is known."""

    def __init__(self, message: str, op: str | None = None) -> None:
        self.op = op
        super().__init__(message)


class VerificationError(EdgeVitError):
    """An exported artifact does not match the float model within the stated tolerance."""

    def __init__(self, message: str, report: object = None) -> None:
        self.report = report
        super().__init__(message)


class ArtifactError(EdgeVitError):
    """An artifact that is missing, empty, truncated, corrupt or of the wrong kind."""


class OutputExistsError(EdgeVitError, FileExistsError):
    """Refusing to overwrite an existing file."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(f"{path} already exists; pass --force (force=True) to overwrite it")
