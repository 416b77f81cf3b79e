"""ONNX runtime: onnxruntime's InferenceSession on the CPU execution provider.

The edgevit metadata is read from the model's ``metadata_props`` (``custom_metadata_map``) under
the key ``edgevit``. Files written by edgevit end with an ``edgevit.sha256`` entry holding the
SHA-256 of every byte before it; it is checked on load, so a flipped bit in a weight (which still
parses as ONNX) is reported instead of silently changing predictions. A file without that entry
(another tool's export, or an edited model whose entry was deleted) loads unchecked
(:attr:`ONNXRuntime.checksum` is ``None``); a model edited but still carrying the entry is refused.

Imports neither torch nor onnx: onnxruntime and numpy only.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from edgevit.errors import ArtifactError, MissingDependencyError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.base import Runtime, register_runtime

__all__ = ["CHECKSUM_KEY", "ONNXRuntime", "verify_checksum"]

CHECKSUM_KEY = "edgevit.sha256"
# The serialized ModelProto field 14 (metadata_props) entry {key: CHECKSUM_KEY, value: 64 hex
# chars}: tag 0x72, length 82, then the entry's key (tag 0x0a, len 14) and value (tag 0x12, len 64).
# converters/onnx.py writes it with onnx's own protobuf classes; a test checks the two agree.
_TRAILER_PREFIX = b"\x72\x52\x0a\x0e" + CHECKSUM_KEY.encode() + b"\x12\x40"
_TRAILER_LEN = len(_TRAILER_PREFIX) + 64
_HEX64 = re.compile(rb"[0-9a-f]{64}\Z")

_FOREIGN_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint, .pte or .mlpackage?)"),
    (b"\x7fELF", "an executable"),
    (b"%PDF", "a PDF document"),
)

_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "run .onnx artifacts") from None
    return onnxruntime


def _ort_errors(ort) -> tuple[type[BaseException], ...]:
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile",
             "NotImplemented", "RuntimeException", "EPFail")
    found = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return found + (RuntimeError, ValueError, MemoryError)  # MemoryError: pybind11's std::bad_alloc


def _looks_foreign(data: bytes) -> str | None:
    for magic, what in _FOREIGN_MAGIC:
        if data.startswith(magic):
            return what
    if data[4:8] == b"TFL3":
        return "a TFLite model (use a .tflite name)"
    return None


def _damaged_trailer(trailer: bytes) -> bool:
    """Whether ``trailer`` is edgevit's checksum entry with a few bytes changed (a bit flip must not
    turn a checked file into an unchecked one): most prefix bytes in place and a mostly-hex digest.
    Another tool's file ends in anything but that by chance."""
    prefix = len(_TRAILER_PREFIX)
    same = sum(a == b for a, b in zip(trailer[:prefix], _TRAILER_PREFIX))
    hexish = sum(c in b"0123456789abcdef" for c in trailer[prefix:])
    return same >= prefix - 8 and hexish >= 48


def verify_checksum(data: bytes, name: str) -> str | None:
    """Check the ``edgevit.sha256`` trailer of ``data``; return the digest, or ``None`` if the
    file carries none (written by another tool or re-saved). A mismatch raises ArtifactError."""
    if len(data) <= _TRAILER_LEN:
        return None
    trailer = data[-_TRAILER_LEN:]
    if not trailer.startswith(_TRAILER_PREFIX) or not _HEX64.match(trailer[len(_TRAILER_PREFIX):]):
        if _damaged_trailer(trailer):
            raise ArtifactError(
                f"{name} is corrupt: the SHA-256 checksum edgevit stored at its end is damaged (the file "
                "changed after export: a damaged copy or storage error); export or copy it again"
            )
        return None
    expected = trailer[len(_TRAILER_PREFIX):].decode("ascii")
    actual = hashlib.sha256(data[:-_TRAILER_LEN]).hexdigest()
    if actual != expected:
        raise ArtifactError(
            f"{name} is corrupt: its SHA-256 checksum does not match the one stored at export, so the "
            "file changed after export (a damaged copy or storage error); export or copy it again. "
            f"If you edited it on purpose with another ONNX tool, delete its {CHECKSUM_KEY!r} metadata_props entry"
        )
    return expected


@register_runtime
class ONNXRuntime(Runtime):
    """Runs ``.onnx`` artifacts with onnxruntime; ``threads`` sets the intra-op thread pool size."""

    name = "onnx"
    suffixes = (".onnx",)
    extra = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__(path, threads)
        ort = _onnxruntime()
        self.engine = f"onnxruntime {ort.__version__}"
        p = Path(path)
        if p.is_dir():
            raise ArtifactError(f"{p} is a folder, not an .onnx file")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{p}: cannot read the artifact: {exc.strerror}") from None
        if not data:
            raise ArtifactError(f"{p.name} is empty (0 bytes); export it again")
        foreign = _looks_foreign(data)
        if foreign:
            raise ArtifactError(f"{p.name} is not an ONNX model: it looks like {foreign}")
        self.checksum = verify_checksum(data, p.name)

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only; the exceptions carry the message
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except _ort_errors(ort) as exc:
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(
                f"{p.name} is not a valid ONNX model (truncated, corrupt or another format): {detail}"
            ) from None
        del data

        try:
            custom = self.session.get_modelmeta().custom_metadata_map or {}
        except UnicodeDecodeError as exc:
            raise ArtifactError(
                f"{p.name} has corrupt metadata_props (not UTF-8 at byte {exc.start}); export it again"
            ) from None
        if METADATA_KEY not in custom:
            raise ArtifactError(
                f"{p.name} has no edgevit metadata; export it with `edgevit export --target onnx` "
                "(labels and preprocessing are read from there)"
            )
        self.metadata = ArtifactMetadata.from_json(custom[METADATA_KEY])

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ArtifactError(
                f"{p.name} has {len(inputs)} inputs and {len(outputs)} outputs; edgevit artifacts have one image "
                "input and a logits output"
            )
        self._input, self._output = inputs[0], outputs[0]
        self._engine_errors = _ort_errors(ort)
        if self._input.type not in _ONNX_TYPES:
            raise ArtifactError(f"{p.name} takes {self._input.type}, which edgevit does not feed")
        self._dtype = _ONNX_TYPES[self._input.type]
        shape = list(self._input.shape)
        expected = self.metadata.input_shape(1)
        fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int) and i > 0]
        if len(shape) != 4 or any(d != expected[i] for i, d in fixed):
            raise ArtifactError(
                f"{p.name}: the model's input shape {shape} does not match its metadata {expected} "
                f"({self.metadata.layout})"
            )
        # A static batch (an export without a dynamic batch dimension) is fed in chunks.
        self._batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    @property
    def dynamic_batch(self) -> bool:
        return self._batch is None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self._dtype)
        step = self._batch or batch.shape[0]
        rows = []
        for i in range(0, batch.shape[0], step):
            try:
                (logits,) = self.session.run([self._output.name], {self._input.name: batch[i : i + step]})
            except self._engine_errors as exc:
                detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise ArtifactError(
                    f"{self.path.name}: onnxruntime failed to run the model (corrupt or edited artifact?): {detail}"
                ) from None
            rows.append(logits)
        return np.concatenate(rows)
