"""CoreML runtime: ``.mlpackage`` (ML Program) artifacts through coremltools' ``MLModel``.

Prediction needs Apple's Core ML framework, i.e. macOS (13+ for the iOS16-level ML Programs
edgevit writes). Elsewhere :class:`CoreMLRuntime` raises :class:`UnsupportedPlatformError` after
checking the package's layout; the spec, its metadata and its structure are still readable on
any OS with :func:`read_coreml_spec` / :func:`read_coreml_metadata`.

The edgevit metadata lives in the model description's ``user_defined_metadata`` under the key
``edgevit`` (JSON), the class labels also under ``classes`` (a JSON list) for Xcode users.

coremltools is imported only when a spec is read or a model loaded: ``import coremltools`` takes
seconds and, where torch happens to be installed (a host, not a device), imports torch too.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import ArtifactError, MissingDependencyError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.base import Runtime, check_class_scores, register_runtime

__all__ = [
    "CLASSES_KEY",
    "COMPUTE_UNITS",
    "CoreMLRuntime",
    "UnsupportedPlatformError",
    "check_coreml_artifact",
    "check_coreml_outputs",
    "metadata_from_spec",
    "read_coreml_metadata",
    "read_coreml_spec",
]

CLASSES_KEY = "classes"
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
_MANIFEST = "Manifest.json"


class UnsupportedPlatformError(ArtifactError):
    """The artifact is valid but cannot execute on this operating system (CoreML off macOS)."""


def _coremltools() -> Any:
    try:
        import coremltools
    except ImportError:
        raise MissingDependencyError("coremltools", "coreml", "read CoreML artifacts") from None
    return coremltools


def check_coreml_artifact(path: str | os.PathLike) -> Path:
    """Check the on-disk layout of a CoreML artifact without importing coremltools.

    Returns the path of the model specification file (``model.mlmodel`` inside a package, or the
    ``.mlmodel`` file itself). A missing, empty or malformed artifact raises :class:`ArtifactError`.
    """
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact")
    suffix = p.suffix.lower()
    if suffix == ".mlmodel":
        if not p.is_file():
            raise ArtifactError(f"{p} is not a file; a .mlmodel artifact is a single file")
        if p.stat().st_size == 0:
            raise ArtifactError(f"{p.name} is empty (0 bytes)")
        return p
    if suffix != ".mlpackage":
        raise ArtifactError(f"{p.name} is not a CoreML artifact (expected .mlpackage or .mlmodel)")
    if not p.is_dir():
        raise ArtifactError(
            f"{p.name} is a file, but a .mlpackage is a folder (Manifest.json + Data/); "
            "was it copied or downloaded without its folder structure? Zip the folder to move it"
        )
    manifest_path = p / _MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{p.name} is not a valid .mlpackage: it has no {_MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        root = manifest["rootModelIdentifier"]
        rel = manifest["itemInfoEntries"][root]["path"]
    except OSError as exc:
        raise ArtifactError(f"{p.name}: cannot read its {_MANIFEST}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(
            f"{p.name} has a malformed {_MANIFEST} ({type(exc).__name__}: {exc}); re-export the model"
        ) from None
    model_file = (p / "Data" / rel).resolve()
    if not model_file.is_relative_to(p.resolve()):
        raise ArtifactError(f"{p.name}: {_MANIFEST} points outside the package ({rel!r})")
    if not model_file.is_file():
        raise ArtifactError(f"{p.name} is incomplete: its model specification Data/{rel} is missing")
    if model_file.stat().st_size == 0:
        raise ArtifactError(f"{p.name} is truncated: its model specification Data/{rel} is empty")
    return model_file


def read_coreml_spec(path: str | os.PathLike) -> Any:
    """The protobuf ``Model`` specification of a CoreML artifact (works on any OS)."""
    check_coreml_artifact(path)
    ct = _coremltools()
    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:  # protobuf DecodeError, RuntimeError from libmodelpackage, ...
        raise ArtifactError(
            f"{Path(path).name} is a corrupt CoreML model: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def metadata_from_spec(spec: Any, name: str) -> ArtifactMetadata:
    """The edgevit metadata in a loaded CoreML spec (``name`` is for messages)."""
    user = spec.description.metadata.userDefined
    if METADATA_KEY not in user:
        raise ArtifactError(
            f"{name} has no edgevit metadata; export it with `edgevit export --target coreml` "
            "(labels and preprocessing are read from there)"
        )
    return ArtifactMetadata.from_json(user[METADATA_KEY])


def scores_output(spec: Any) -> Any:
    """The output the runtime reads class scores from: ``logits``, else the first one."""
    outputs = list(spec.description.output)
    return next((o for o in outputs if o.name == "logits"), outputs[0]) if outputs else None


def check_coreml_outputs(spec: Any, metadata: ArtifactMetadata, name: str) -> None:
    """Refuse (:class:`ArtifactError`) a spec whose scores output is not ``(1, labels)``
    (:func:`~edgevit.runtimes.base.check_class_scores`). Off macOS, ``edgevit verify`` reports
    the same mismatch as a structural failure (``converters.coreml.structure_problems``)."""
    output = scores_output(spec)
    if output is None:
        raise ArtifactError(f"{name} has no outputs; edgevit artifacts return class scores")
    check_class_scores(name, [int(d) for d in output.type.multiArrayType.shape], metadata.num_classes)


def read_coreml_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """The edgevit metadata embedded in a CoreML artifact (works on any OS)."""
    return metadata_from_spec(read_coreml_spec(path), Path(path).name)


def _platform_message(p: Path) -> str:
    here = f"{platform.system() or sys.platform} {platform.machine()}".strip()
    return (
        f"{p.name}: CoreML prediction needs macOS 13 or newer (Apple's Core ML framework); this is "
        f"{here}. The artifact itself is fine to copy to a Mac or an iOS app. On this machine, "
        f"`edgevit verify {p}` runs the structural checks (inputs, outputs, ops, weight precision, "
        "metadata) instead of a prediction"
    )


@register_runtime
class CoreMLRuntime(Runtime):
    """Runs ``.mlpackage`` / ``.mlmodel`` artifacts with Core ML (macOS only).

    ``threads`` is accepted for the common interface but Core ML picks its own threading;
    ``compute_units`` chooses the engines Core ML may use (``ALL``, ``CPU_ONLY``,
    ``CPU_AND_GPU``, ``CPU_AND_NE``).
    """

    name = "coreml"
    suffixes = (".mlpackage", ".mlmodel")
    extra = "coreml"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, compute_units: str = "ALL") -> None:
        super().__init__(path, threads)
        if compute_units not in COMPUTE_UNITS:
            raise ArtifactError(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}, got {compute_units!r}")
        p = Path(path)
        check_coreml_artifact(p)
        if sys.platform != "darwin":
            raise UnsupportedPlatformError(_platform_message(p))
        ct = _coremltools()
        spec = read_coreml_spec(p)
        self.metadata = metadata_from_spec(spec, p.name)
        if len(spec.description.input) != 1 or len(spec.description.output) < 1:
            raise ArtifactError(f"{p.name} must have one input and a logits output; re-export it")
        check_coreml_outputs(spec, self.metadata, p.name)
        self._input_name = spec.description.input[0].name
        self._output_name = scores_output(spec).name
        shape = tuple(spec.description.input[0].type.multiArrayType.shape)
        self._batch = int(shape[0]) if shape else 1
        try:
            self._model = ct.models.MLModel(str(p), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:
            raise ArtifactError(f"{p.name} could not be loaded by Core ML: {type(exc).__name__}: {exc}") from None
        if getattr(self._model, "__proxy__", None) is None:
            reason = getattr(self._model, "_framework_error", None)
            raise ArtifactError(
                f"{p.name} could not be compiled by Core ML on macOS {platform.mac_ver()[0] or '?'}"
                f"{f': {reason}' if reason else ''}; ML Programs for iOS16 need macOS 13+"
            )
        self.engine = f"coremltools {ct.__version__} ({compute_units})"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        # edgevit exports a static batch (1): feed the batch in chunks of that size.
        for i in range(0, batch.shape[0], self._batch):
            chunk = np.ascontiguousarray(batch[i : i + self._batch], dtype=np.float32)
            try:
                out = self._model.predict({self._input_name: chunk})
            except Exception as exc:
                raise ArtifactError(f"Core ML prediction failed for {self.path.name}: {exc}") from None
            rows.append(np.asarray(out[self._output_name], dtype=np.float32).reshape(chunk.shape[0], -1))
        return np.concatenate(rows)
