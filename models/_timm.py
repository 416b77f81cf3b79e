"""The one door to timm: applies the torchvision compatibility step, then imports timm."""

from __future__ import annotations

from types import ModuleType

from edgevit.errors import MissingDependencyError

__all__ = ["import_timm"]


def import_timm() -> ModuleType:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError("torch", "export", "build catalog models") from None
    from edgevit._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    try:
        import timm
    except ImportError:
        raise MissingDependencyError("timm", "export", "build catalog models") from None
    return timm
