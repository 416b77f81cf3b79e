"""Artifact metadata: what an app needs to use an exported model, stored inside the artifact.

The metadata is plain JSON (parsed as data only, never executed). Each converter embeds it in
its format's own metadata slot (TFLite flatbuffer metadata, ONNX ``metadata_props``, CoreML
``user_defined_metadata``, ...) under the key :data:`METADATA_KEY`, and each runtime reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgevit.errors import ArtifactError

__all__ = ["METADATA_KEY", "SCHEMA_VERSION", "ArtifactMetadata"]

METADATA_KEY = "edgevit"
SCHEMA_VERSION = 1

_LAYOUTS = ("NCHW", "NHWC")
_COLOR_MODES = ("RGB", "L")
_INPUT_DTYPES = ("float32", "uint8", "int8")
_MAX_METADATA_BYTES = 4 * 1024 * 1024
_MAX_SIDE = 16384


@dataclass(frozen=True)
class ArtifactMetadata:
    """Everything a runtime needs to feed an artifact and name its outputs.

    ``input_size`` is (height, width) of the tensor the model takes. ``resize``/``crop_pct``
    describe the reference preprocessing (resize the shorter side to ``size / crop_pct``, then
    centre-crop). With ``fused_input`` the normalisation (and the NCHW transpose) is folded into
    the model, which then takes uint8 NHWC frames directly.
    """

    model: str
    target: str
    precision: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    layout: str = "NCHW"
    color_mode: str = "RGB"
    input_dtype: str = "float32"
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    fused_input: bool = False
    family: str = ""
    attention: str = ""
    source: str = ""
    weights: str = ""
    edgevit_version: str = ""
    created: str = ""
    fallbacks: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # The optimized artifact timed against its fp32 twin on the export host (fp32_ms,
    # optimized_ms, speedup, slower, host, ...; see edgevit.converters._speed). Written only when
    # measured, so fp32 artifacts and older readers see the same JSON as before.
    speed_check: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) <= 0 or max(self.input_size) > _MAX_SIDE:
            raise ArtifactError(
                f"metadata input_size must be (height, width) in 1..{_MAX_SIDE}, got {self.input_size}"
            )
        if not isinstance(self.fused_input, bool):
            raise ArtifactError(f"metadata fused_input must be true or false, got {self.fused_input!r}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std, self.crop_pct)):
            raise ArtifactError("metadata mean/std/crop_pct must be finite numbers")
        if self.layout not in _LAYOUTS:
            raise ArtifactError(f"metadata layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if self.color_mode not in _COLOR_MODES:
            raise ArtifactError(f"metadata color_mode must be one of {_COLOR_MODES}, got {self.color_mode!r}")
        if self.input_dtype not in _INPUT_DTYPES:
            raise ArtifactError(f"metadata input_dtype must be one of {_INPUT_DTYPES}, got {self.input_dtype!r}")
        channels = self.channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise ArtifactError(
                f"metadata mean/std must have {channels} values for color mode {self.color_mode}"
            )
        if any(s <= 0 for s in self.std):
            raise ArtifactError("metadata std values must be > 0")
        if not 0 < self.crop_pct <= 1:
            raise ArtifactError(f"metadata crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def weights_notice(self) -> str | None:
        """One line to show wherever an artifact exported with random weights classifies images."""
        if self.weights != "random-init":
            return None
        return (f"note: this {self.model} artifact has random weights (exported with --random-init): its labels "
                "mean nothing; export it without --random-init for the trained weights")

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        h, w = self.input_size
        if self.layout == "NHWC":
            return (batch, h, w, self.channels)
        return (batch, self.channels, h, w)

    def replace(self, **changes: Any) -> ArtifactMetadata:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["extra"] = dict(self.extra)
        if self.speed_check:
            d["speed_check"] = dict(self.speed_check)
        else:
            del d["speed_check"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactMetadata:
        if not isinstance(data, Mapping):
            raise ArtifactError("edgevit metadata is not a JSON object")
        version = data.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ArtifactError(
                f"artifact metadata schema {version!r} is newer than this edgevit understands "
                f"({SCHEMA_VERSION}); upgrade edgevit"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                continue  # forward compatible: ignore fields from newer writers
            if key in ("input_size", "mean", "std", "labels", "fallbacks"):
                if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
                    raise ArtifactError(f"edgevit metadata field {key!r} must be a list")
                value = tuple(value)
            kwargs[key] = value
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ]
        if missing:
            raise ArtifactError(f"edgevit metadata lacks required fields: {', '.join(missing)}")
        try:
            kwargs["input_size"] = tuple(int(v) for v in kwargs["input_size"])
            kwargs["mean"] = tuple(float(v) for v in kwargs["mean"])
            kwargs["std"] = tuple(float(v) for v in kwargs["std"])
            kwargs["labels"] = tuple(str(v) for v in kwargs["labels"])
            if "crop_pct" in kwargs:
                kwargs["crop_pct"] = float(kwargs["crop_pct"])
            for key in ("extra", "speed_check"):
                if not isinstance(kwargs.get(key, {}), Mapping):
                    raise ArtifactError(f"edgevit metadata field {key!r} must be an object")
            return cls(**kwargs)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ArtifactError(f"edgevit metadata is malformed: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> ArtifactMetadata:
        if len(text) > _MAX_METADATA_BYTES:
            raise ArtifactError("edgevit metadata is implausibly large (> 4 MiB)")
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ArtifactError(f"edgevit metadata is not valid JSON: {str(exc)[:200]}") from None
        return cls.from_dict(data)
