"""Let timm import beside a torchvision whose C extension does not match the installed torch.

PyPI's torchvision 0.28.0 is a CUDA build; beside the CPU torch 2.13.0 wheel its C extension
fails to load and ``import torchvision`` raises ``operator torchvision::nms does not exist``
(see shared/STACK.md). timm imports torchvision unconditionally, but timm's ViTs only need
torchvision's pure-Python parts. When, and only when, the extension fails to load, this module
declares the two operator schemas torchvision's Python code registers fake kernels for, so the
import succeeds; the C++ operators themselves stay unusable (calling ``torchvision.ops.nms``
raises). Call :func:`ensure_torchvision_importable` before importing timm, or rely on the import
hook that ``import edgevit`` installs (:func:`install_import_hook`): it runs the check the first
time anything imports torchvision, so ``import edgevit; import timm`` works, and costs a device
that never imports torchvision nothing (no torch import).
"""

from __future__ import annotations

import sys

__all__ = ["SHIMMED_OPS", "ensure_torchvision_importable", "install_import_hook", "shim_applied"]

SHIMMED_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_state = {"applied": False, "checked": False}
_library = None  # keep the torch.library.Library alive for the life of the process


def shim_applied() -> bool:
    """True when the schemas had to be declared in this process."""
    return _state["applied"]


def _extension_loads() -> bool:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - raises when the C extension did not register
        return True
    except (AttributeError, RuntimeError):
        pass
    try:
        import importlib.util

        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.submodule_search_locations is None:
            return False
        from pathlib import Path

        libs = list(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
        if not libs:
            return False
        torch.ops.load_library(str(libs[0]))
        torch.ops.torchvision.nms  # noqa: B018
        return True
    except (OSError, RuntimeError, AttributeError):
        return False


def ensure_torchvision_importable() -> None:
    """Declare torchvision's op schemas if (and only if) its C extension cannot load."""
    global _library
    if _state["checked"] or "torchvision" in sys.modules:
        _state["checked"] = True
        return
    _state["checked"] = True
    if _extension_loads():
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")  # noqa: PLW0603
    for schema in SHIMMED_OPS.values():
        _library.define(schema)
    _state["applied"] = True


class _TorchvisionHook:
    """A ``sys.meta_path`` finder that finds nothing: the first time torchvision is about to be
    imported it takes itself out and runs :func:`ensure_torchvision_importable`, then lets the
    normal finders import torchvision."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's protocol
        if fullname == "torchvision":
            _remove_hook()
            try:
                ensure_torchvision_importable()
            except ImportError:  # no torch: torchvision's own import will say so
                pass
        return None


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]


def install_import_hook() -> None:
    """Run :func:`ensure_torchvision_importable` just before torchvision's first import, whoever
    imports it (timm, the user). Does nothing when torchvision is already imported."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())
