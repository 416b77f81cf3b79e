"""Loading checkpoints safely: safetensors, or torch files with ``weights_only=True``.

Nothing here unpickles arbitrary objects: a torch file that needs more than tensors and plain
containers is refused by torch's restricted unpickler and reported as a :class:`ModelError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgevit.errors import ModelError

__all__ = ["load_state_dict", "load_weights", "save_weights"]

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "ema")


def load_state_dict(path: str | os.PathLike) -> dict:
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such weights file")
    if p.stat().st_size == 0:
        raise ModelError(f"{p} is empty (0 bytes)")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(p))
        except Exception as exc:  # safetensors raises its own SafetensorError and OSError types
            raise ModelError(f"{p} is not a valid safetensors file: {exc}") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises UnpicklingError / RuntimeError
        raise ModelError(
            f"{p} could not be loaded safely (weights_only=True refuses arbitrary objects): "
            f"{str(exc).splitlines()[0][:300]}. Convert it to safetensors."
        ) from None
    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def fit_keys(model, state: dict) -> dict:
    """``state`` with the key prefix a wrapper model declares (``edgevit_key_prefix``, e.g. the
    Hugging Face wrapper's ``hf.``) added where the checkpoint was saved from the wrapped model."""
    prefix = getattr(model, "edgevit_key_prefix", "")
    if prefix and state and not any(k.startswith(prefix) for k in state):
        return {prefix + k: v for k, v in state.items()}
    return state


def load_weights(model, path: str | os.PathLike, strict: bool = True) -> None:
    """Load ``path`` into ``model``; mismatched keys or shapes raise :class:`ModelError`."""
    state = fit_keys(model, load_state_dict(path))
    own = model.state_dict()
    shape_mismatch = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if shape_mismatch:
        if strict:
            raise ModelError(f"{path} does not fit this model: " + "; ".join(shape_mismatch[:5]))
        state = {k: v for k, v in state.items() if k not in own or own[k].shape == v.shape}
    # load_state_dict would cast silently: 0/1 or rounded weights that still "load" and export.
    not_float = [
        f"{k} ({str(v.dtype).removeprefix('torch.')})"
        for k, v in state.items()
        if k in own and own[k].is_floating_point() and _is_bool_or_int(v)
    ]
    if not_float:
        raise ModelError(
            f"{path} stores {len(not_float)} floating-point parameter(s) as bool or integer tensors "
            f"({', '.join(not_float[:5])}{', ...' if len(not_float) > 5 else ''}); loading would cast them and "
            "lose the weights. Save the checkpoint with float tensors (e.g. state_dict() of the trained model)"
        )
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        parts = []
        if result.missing_keys:
            parts.append(f"missing {len(result.missing_keys)} keys (e.g. {', '.join(result.missing_keys[:3])})")
        if result.unexpected_keys:
            parts.append(f"unexpected {len(result.unexpected_keys)} keys (e.g. {', '.join(result.unexpected_keys[:3])})")
        raise ModelError(f"{path} does not fit this model: " + "; ".join(parts))


def _is_bool_or_int(tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.is_quantized)


def save_weights(model_or_state, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Save a state dict as safetensors (contiguous, shared tensors cloned)."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(state, str(path), metadata=dict(metadata or {}))


def checkpoint_classes(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names a checkpoint was trained for (``edgevit train`` writes them into the
    safetensors metadata as ``classes``), or None when the file does not say."""
    import json

    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="numpy") as f:
            raw = (f.metadata() or {}).get("classes")
    except Exception:  # unreadable files are reported by load_weights with a clear error
        return None
    try:
        classes = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return None
    return tuple(classes)
