"""The target registry: one :class:`Converter` per export target, declared by a class attribute
table and registered with :func:`register_converter`. Adding a target is one new file here."""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from edgevit.errors import ConfigError, MissingDependencyError, UnknownPrecisionError, UnknownTargetError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgevit.metadata import ArtifactMetadata

__all__ = [
    "PRECISIONS",
    "ConvertOutput",
    "Converter",
    "DelegationReport",
    "ExportConfig",
    "available_targets",
    "get_converter",
    "register_converter",
]

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")

_CONVERTERS: dict[str, type[Converter]] = {}


@dataclass(frozen=True)
class DelegationReport:
    """How much of the exported graph runs inside the accelerated delegate (e.g. XNNPACK)."""

    delegate: str
    delegated_nodes: int
    total_nodes: int
    partitions: int = 0
    outside_ops: Mapping[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.delegated_nodes / self.total_nodes if self.total_nodes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "delegate": self.delegate,
            "delegated_nodes": self.delegated_nodes,
            "total_nodes": self.total_nodes,
            "share": round(self.share, 4),
            "partitions": self.partitions,
            "outside_ops": dict(self.outside_ops),
        }


@dataclass
class ConvertOutput:
    """What a converter reports back besides the file it wrote."""

    warnings: list[str] = field(default_factory=list)
    delegation: DelegationReport | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportConfig:
    """A validated export request. Built by :meth:`Converter.make_config`; invalid combinations
    raise :class:`ConfigError` before any work starts."""

    target: str
    precision: str = "fp32"
    options: Mapping[str, Any] = field(default_factory=dict)
    calibration: Any = None
    fused_input: bool = False


class Converter(abc.ABC):
    """One export target.

    Contract:

    * class attributes: ``name`` (the ``--target`` value), ``suffix`` (artifact suffix; a folder
      for ``.mlpackage``), ``precisions`` it supports, ``options`` (name -> default) it accepts,
      ``requires`` (importable modules it needs) and ``extra`` (the pip extra installing them),
      ``runtime`` (the runtime name that runs its artifacts), ``runs_here`` (False where the
      artifact cannot execute on this OS, e.g. CoreML off macOS: verification is then structural).
    * :meth:`convert` writes the artifact to ``path`` (a temporary name chosen by the caller, with
      the right suffix) with ``metadata`` embedded, and returns a :class:`ConvertOutput`. It raises
      :class:`ConversionError` naming the failing op where the underlying tool says which.
    * :meth:`structure` (optional) returns structural facts about a written artifact
      (inputs, outputs, op counts, metadata) for targets that cannot run here.
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    options: ClassVar[Mapping[str, Any]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = "export"
    runtime: ClassVar[str]
    runs_here: ClassVar[bool] = True
    needs_calibration: ClassVar[tuple[str, ...]] = ("int8",)
    supports_fused_input: ClassVar[bool] = True

    def check_available(self) -> None:
        """Raise :class:`MissingDependencyError` naming the extra if a required module is missing."""
        for module in self.requires:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                raise MissingDependencyError(module, self.extra, f"export to {self.name}")

    def make_config(
        self,
        precision: str = "fp32",
        options: Mapping[str, Any] | None = None,
        calibration: Any = None,
        fused_input: bool = False,
    ) -> ExportConfig:
        if precision not in PRECISIONS:
            raise UnknownPrecisionError(precision, PRECISIONS)
        if precision not in self.precisions:
            raise ConfigError(
                f"target {self.name} does not support precision {precision!r}; "
                f"supported: {', '.join(self.precisions)}"
            )
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options) - set(COMMON_OPTIONS))
        if unknown:
            import difflib

            hints = [m for u in unknown for m in difflib.get_close_matches(u, list(self.options), n=1)]
            allowed = ", ".join(sorted({**self.options, **COMMON_OPTIONS})) or "none"
            msg = f"target {self.name} has no option(s) {', '.join(unknown)}; its options: {allowed}"
            if hints:
                msg += f" (did you mean {', '.join(hints)}?)"
            raise ConfigError(msg)
        if precision in self.needs_calibration and calibration is None:
            raise ConfigError(
                f"precision {precision} on {self.name} needs calibration images; "
                "pass --calibration DIR|DATASET (or use int8-dynamic)"
            )
        if fused_input and not self.supports_fused_input:
            raise ConfigError(f"target {self.name} does not take uint8 frames; export without --fused-input")
        merged = {**self.options, **options}
        if merged.get("tokens") is not None:  # every target: token reduction of a plain ViT (checked now)
            from edgevit.compress.tokens import TokenReduction

            merged["tokens"] = TokenReduction.parse(merged["tokens"]).spelling()
        if "max_drop" in self.options:  # a quantizing target: check its quantization options now, before any work
            from edgevit.converters.quantize import QuantSettings

            QuantSettings.from_options(merged, ("float", "int16"))
        return ExportConfig(self.name, precision, merged, calibration, fused_input)

    def prepare(self, model: nn.Module, config: ExportConfig) -> nn.Module:
        """Target-specific edge rewrites before conversion (default: none)."""
        return model

    @abc.abstractmethod
    def convert(
        self,
        model: nn.Module,
        example: torch.Tensor,
        path: Path,
        metadata: ArtifactMetadata,
        config: ExportConfig,
    ) -> ConvertOutput:
        """Convert ``model`` (eval mode, traced with ``example``) and write it to ``path``."""

    def structure(self, path: Path) -> dict[str, Any]:
        """Structural facts about an artifact (inputs, outputs, op counts, metadata)."""
        return {}


C = TypeVar("C", bound="type[Converter]")


def register_converter(cls: C) -> C:
    """Class decorator adding a :class:`Converter` to the target registry."""
    _CONVERTERS[cls.name] = cls
    return cls


# Options every target takes: ``tokens`` -- token reduction of a plain ViT before export
# (``method:layers[:amount]``, see :mod:`edgevit.compress.tokens`; applied by ``export()``).
COMMON_OPTIONS: Mapping[str, Any] = {"tokens": None}

_DISCOVERED = False
_NOT_TARGETS = {"base", "export", "verify", "rewrites", "rewrites_mobilevit", "quantize", "tflite_delegation", "onnx_fusion"}


def _ensure_builtin() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package (already importing)
        if not info.name.startswith("_") and info.name not in _NOT_TARGETS:
            importlib.import_module(f"{__package__}.{info.name}")


def available_targets() -> dict[str, type[Converter]]:
    _ensure_builtin()
    return dict(sorted(_CONVERTERS.items()))


def get_converter(target: str) -> Converter:
    targets = available_targets()
    if target not in targets:
        raise UnknownTargetError(target, targets)
    return targets[target]()
