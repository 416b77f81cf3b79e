"""The model catalog: :class:`ModelSpec` entries registered by name, built by :func:`create_model`."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit.errors import ConfigError, ModelError, UnknownModelError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ATTENTION_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpec",
    "create_model",
    "get_spec",
    "is_builtin",
    "list_models",
    "register_model",
    "unregister_model",
]

ATTENTION_KINDS = ("global", "windowed", "linear", "conv-hybrid", "cnn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry: what the model is, how to build it and how to feed it.

    ``builder(num_classes=..., pretrained=...)`` returns the torch module. ``timm_name`` is set
    for models built through timm; ``hub_id`` names the pretrained weights online;
    ``embedded_weights`` is a file shipped in ``edgevit/models/weights`` (offline pretrained).
    ``params_m``/``gmacs`` are measured at the default resolution (a test re-measures them).
    ``known_issues`` maps a target to the op or reason it fails there.
    """

    name: str
    family: str
    attention: str
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    input_size: tuple[int, int] = (224, 224)
    color_mode: str = "RGB"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    labels: str | tuple[str, ...] = "imagenet"
    source: str = ""
    license: str = ""
    hub_id: str | None = None
    timm_name: str | None = None
    embedded_weights: str | None = None
    params_m: float = 0.0
    gmacs: float = 0.0
    description: str = ""
    known_issues: Mapping[str, str] = field(default_factory=dict)
    default_weights: str | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"{self.name}: attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.color_mode not in ("RGB", "L"):
            raise ValueError(f"{self.name}: color_mode must be RGB or L")
        channels = 1 if self.color_mode == "L" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"{self.name}: mean/std need {channels} values")

    @property
    def in_chans(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @property
    def has_pretrained(self) -> bool:
        return bool(self.hub_id or self.embedded_weights or self.default_weights)

    @property
    def slug(self) -> str:
        """``name`` made safe for file names (``timm:vit_small`` -> ``vit_small``)."""
        return source_slug(self.name)

    def label_names(self, num_classes: int | None = None) -> tuple[str, ...]:
        """The class names; with ``num_classes`` that differs from them, ``class_0``... (callers
        that export must check the count against the model's outputs, see ``resolve_labels``)."""
        if isinstance(self.labels, tuple):
            labels = self.labels
        else:
            from edgevit.models.labels import get_labels

            labels = get_labels(self.labels)
        if num_classes is not None and num_classes != len(labels):
            return tuple(f"class_{i}" for i in range(num_classes))
        return labels

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "attention": self.attention,
            "input_size": list(self.input_size),
            "color_mode": self.color_mode,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "labels": self.labels if isinstance(self.labels, str) else list(self.labels),
            "num_classes": len(self.label_names()),
            "source": self.source,
            "license": self.license,
            "hub_id": self.hub_id,
            "timm_name": self.timm_name,
            "embedded_weights": self.embedded_weights,
            "params_m": self.params_m,
            "gmacs": self.gmacs,
            "description": self.description,
            "known_issues": dict(self.known_issues),
            "default_weights": self.default_weights,
            "notes": list(self.notes),
        }


_CATALOG: dict[str, ModelSpec] = {}
_BUILTIN: set[str] = set()  # names the shipped catalog modules register
_LOADING_BUILTIN = False


def register_model(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the catalog. Names are unique: registering a taken name raises unless
    ``replace=True`` (which may not replace a shipped catalog entry)."""
    if spec.name in _CATALOG:
        if not replace:
            raise ValueError(f"model {spec.name!r} is already registered (pass replace=True to replace it)")
        if spec.name in _BUILTIN and not _LOADING_BUILTIN:
            raise ValueError(f"model {spec.name!r} is a shipped catalog entry and cannot be replaced; "
                             "register it under another name")
    _CATALOG[spec.name] = spec
    if _LOADING_BUILTIN:
        _BUILTIN.add(spec.name)
    return spec


def unregister_model(name: str) -> None:
    """Remove a model registered at run time (e.g. by ``register_pruned``); shipped entries stay."""
    ensure_catalog()
    if name in _BUILTIN:
        raise ValueError(f"model {name!r} is a shipped catalog entry and cannot be removed")
    if name not in _CATALOG:
        raise UnknownModelError(name, _CATALOG)
    del _CATALOG[name]


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a shipped catalog entry (not one registered at run time)."""
    ensure_catalog()
    return name in _BUILTIN


_DISCOVERED = False


def ensure_catalog() -> None:
    """Import every catalog module in this package once; each registers its entries."""
    global _DISCOVERED, _LOADING_BUILTIN
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import importlib
    import pkgutil

    _LOADING_BUILTIN = True
    try:
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package (already importing)
            if info.name.startswith("catalog_"):
                importlib.import_module(f"{__package__}.{info.name}")
    finally:
        _LOADING_BUILTIN = False


@dataclass(frozen=True)
class SourceResolver:
    """A kind of model source beyond the catalog (``timm:``, ``hf:``, folders): whether a name is
    one, its spec, and a hint for a name that is not (see :mod:`edgevit.models.sources`)."""

    is_source: Callable[[str], bool]
    spec: Callable[[str], ModelSpec]
    hint: Callable[[str], str]


_RESOLVERS: list[SourceResolver] = []


def register_source_resolver(resolver: SourceResolver) -> None:
    """Let :func:`get_spec` (and so every command) take the names ``resolver`` knows."""
    _RESOLVERS.append(resolver)


def source_slug(name: str) -> str:
    """A file-name-safe stem for a model source (``timm:vit_small.augreg`` -> ``vit_small.augreg``,
    ``hf:facebook/deit-tiny`` -> ``deit-tiny``, ``/data/my-vit/`` -> ``my-vit``)."""
    import re

    if name.startswith("timm:"):
        name = name[len("timm:"):]
    elif name.startswith("hf:"):
        name = name[len("hf:"):].rstrip("/").rsplit("/", 1)[-1]
    elif "/" in name or os.sep in name:
        name = Path(name).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def get_spec(name: str) -> ModelSpec:
    """The spec of model source ``name``: a catalog entry, or ``timm:NAME``, ``hf:ORG/NAME`` or a
    ``save_pretrained`` folder (see :mod:`edgevit.models.sources`). Unknown names raise with the
    closest matches."""
    ensure_catalog()
    if name in _CATALOG:
        return _CATALOG[name]
    for resolver in _RESOLVERS:
        if resolver.is_source(name):
            return resolver.spec(name)
    hint = next((h for h in (r.hint(name) for r in _RESOLVERS) if h), "")
    raise UnknownModelError(name, _CATALOG, hint=hint)


def list_models(pattern: str = "*", attention: str | None = None, target: str | None = None,
                builtin_only: bool = False) -> list[str]:
    """Catalog names matching a glob ``pattern``, an attention kind and, optionally, a target
    the model has no known issue on; ``builtin_only`` leaves out models registered at run time."""
    ensure_catalog()
    if attention is not None and attention not in ATTENTION_KINDS:
        from edgevit.errors import UnknownNameError

        raise UnknownNameError(attention, ATTENTION_KINDS, hint="(attention kinds)")
    names = []
    for name, spec in sorted(_CATALOG.items()):
        if not fnmatch.fnmatch(name, pattern):
            continue
        if attention and spec.attention != attention:
            continue
        if target and target in spec.known_issues:
            continue
        if builtin_only and name not in _BUILTIN:
            continue
        names.append(name)
    return names


def create_model(
    name: str,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Build catalog model ``name`` in eval mode.

    ``pretrained`` loads the entry's embedded weights (offline) or its hub weights (online);
    ``weights`` loads a local checkpoint (safetensors, or a torch file read with
    ``weights_only=True``). ``num_classes`` replaces the classifier head.
    """
    spec = get_spec(name)
    if pretrained and weights is not None:
        raise ConfigError("pass either pretrained=True or weights=FILE, not both (--pretrained or --weights FILE)")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    use_hub = pretrained and spec.embedded_weights is None
    if pretrained and not spec.has_pretrained:
        raise ModelError(f"{name} has no pretrained weights; pass weights=FILE (--weights FILE)")
    model = spec.builder(num_classes=num_classes, pretrained=use_hub)
    if pretrained and spec.embedded_weights is not None:
        from edgevit.models.weights import load_weights

        load_weights(model, WEIGHTS_DIR / spec.embedded_weights, strict=num_classes is None)
    if weights is not None:
        from edgevit.models.weights import load_weights

        load_weights(model, weights)
    model.eval()
    model.edgevit_spec = spec  # type: ignore[attr-defined]
    if weights is not None:
        tag = str(weights)
    elif pretrained:
        tag = spec.embedded_weights or spec.hub_id or spec.default_weights or "pretrained"
    else:
        tag = spec.default_weights or "random-init"  # a save_pretrained folder always brings its weights
    model.edgevit_weights = tag  # type: ignore[attr-defined]
    return model
