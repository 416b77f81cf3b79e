"""ONNX runtime: onnxruntime's InferenceSession on the CPU execution provider.

The edgevit metadata is read from the model's ``metadata_props`` (``custom_metadata_map``) under
the key ``edgevit``. Files written by edgevit carry an ``edgevit.sha256`` entry holding the SHA-256
of the file with that entry's bytes left out. The runtime finds the entry by walking the top level
of the protobuf (not by looking at the last bytes), wherever it is and whatever follows it, and
checks it on load: a flipped bit in a weight (which still parses as ONNX) or an edit is reported
instead of silently changing predictions. A file without that entry (another tool's export, or an
edited model whose entry was deleted) loads unchecked, and says so (:attr:`ONNXRuntime.integrity`
is ``"unchecked"``, :attr:`ONNXRuntime.checksum` is ``None``); a file carrying the entry is checked
or refused.

Imports neither torch nor onnx: onnxruntime and numpy only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgevit.errors import ArtifactError, MissingDependencyError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.base import Runtime, check_class_scores, register_runtime

__all__ = ["CHECKSUM_KEY", "ONNXRuntime", "verify_checksum"]

CHECKSUM_KEY = "edgevit.sha256"
_KEY_BYTES = CHECKSUM_KEY.encode()
# The serialized ModelProto field 14 (metadata_props) entry {key: CHECKSUM_KEY, value: 64 hex
# chars}: tag 0x72, length 82, then the entry's key (tag 0x0a, len 14) and value (tag 0x12, len 64).
# converters/onnx.py writes it last with onnx's own protobuf classes; a test checks the two agree.
_TRAILER_PREFIX = b"\x72\x52\x0a\x0e" + _KEY_BYTES + b"\x12\x40"
_TRAILER_LEN = len(_TRAILER_PREFIX) + 64
_HEX64 = re.compile(rb"[0-9a-f]{64}\Z")
_METADATA_PROPS = 14  # ModelProto.metadata_props; StringStringEntryProto: key = 1, value = 2

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


class _Malformed(Exception):
    """The bytes are not a protobuf message (onnxruntime will refuse them too)."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip(data: bytes, pos: int, end: int, wire: int, number: int) -> tuple[int, int]:
    """``(payload start, field end)`` of a field whose tag ends at ``pos``."""
    if wire == 0:
        return pos, _varint(data, pos, end)[1]
    if wire == 1:
        return pos, pos + 8
    if wire == 5:
        return pos, pos + 4
    if wire == 2:
        length, start = _varint(data, pos, end)
        return start, start + length
    if wire == 3:  # a group: fields up to the matching end-group tag
        start, groups = pos, [number]
        while groups:
            tag, pos = _varint(data, pos, end)
            inner, inner_wire = tag >> 3, tag & 7
            if inner == 0:
                raise _Malformed
            if inner_wire == 4:
                if groups.pop() != inner:
                    raise _Malformed
            elif inner_wire == 3:
                groups.append(inner)
            else:
                pos = _skip(data, pos, end, inner_wire, inner)[1]
                if pos > end:
                    raise _Malformed
        return start, pos
    raise _Malformed  # an end-group tag outside a group, or wire types 6 and 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """``(number, wire type, field start, payload start, field end)`` of each field of the
    message in ``data[start:end]``, as protobuf's parser reads them."""
    pos = start
    while pos < end:
        tag, after = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _Malformed
        payload, field_end = _skip(data, after, end, wire, number)
        if field_end > end:
            raise _Malformed
        yield number, wire, pos, payload, field_end
        pos = field_end


class _Entry(NamedTuple):
    start: int  # the whole field (tag, length, payload) spans data[start:end]
    end: int
    key: bytes
    value: bytes


def _metadata_entries(data: bytes) -> list[_Entry]:
    """Every top-level ``metadata_props`` entry of a serialized ModelProto, in file order."""
    entries = []
    for number, wire, start, payload, end in _fields(data, 0, len(data)):
        if number != _METADATA_PROPS or wire != 2:
            continue  # protobuf reads field 14 with another wire type as an unknown field
        key = value = b""
        for inner, inner_wire, _, p, e in _fields(data, payload, end):
            if inner_wire == 2 and inner in (1, 2):  # repeated scalars: the last one wins
                if inner == 1:
                    key = data[p:e]
                else:
                    value = data[p:e]
        entries.append(_Entry(start, end, key, value))
    return entries


def _near_key(key: bytes) -> bool:
    """``key`` is :data:`CHECKSUM_KEY` with a few bytes changed (a bit flip in the entry must not
    turn a checked file into an unchecked one)."""
    return key != _KEY_BYTES and len(key) == len(_KEY_BYTES) and sum(a != b for a, b in zip(key, _KEY_BYTES)) <= 3


def _damaged(name: str) -> ArtifactError:
    return ArtifactError(
        f"{name} is corrupt: the SHA-256 checksum entry ({CHECKSUM_KEY!r}) edgevit stored in it is damaged (the "
        "file changed after export: a damaged copy or storage error); export or copy it again"
    )


def _mismatch(name: str) -> ArtifactError:
    return ArtifactError(
        f"{name} is corrupt: its SHA-256 checksum does not match the one stored at export, so the "
        "file changed after export (a damaged copy, a storage error or an edit); export or copy it again. "
        f"If you edited it on purpose with another ONNX tool, delete its {CHECKSUM_KEY!r} metadata_props entry"
    )


def verify_checksum(data: bytes, name: str) -> str | None:
    """Check the ``edgevit.sha256`` entry of ``data``; return the digest, or ``None`` if the file
    carries none (written by another tool, or its entry deliberately deleted).

    The digest covers the file with the entry's bytes (tag, length and payload) left out; the
    entry is located by parsing the top level of the protobuf, so anything after it (another
    entry, any field) is covered too. A mismatch, a damaged entry or two entries raise
    :class:`ArtifactError`.
    """
    try:
        entries = _metadata_entries(data)
    except _Malformed:
        # Not a protobuf message, so onnxruntime refuses it whatever this returns; reading the
        # entry where edgevit writes it (the end) only gives a damaged copy a clearer message.
        return _verify_trailer(data, name)
    found = [e for e in entries if e.key == _KEY_BYTES]
    if not found:
        if any(_near_key(e.key) for e in entries) or _KEY_BYTES in data or _damaged_trailer(data[-_TRAILER_LEN:]):
            raise _damaged(name)
        return None
    if len(found) > 1:
        raise ArtifactError(
            f"{name} is corrupt: it holds {len(found)} {CHECKSUM_KEY!r} metadata_props entries (edgevit writes one); "
            "export or copy it again"
        )
    entry = found[0]
    if not _HEX64.match(entry.value):
        raise _damaged(name)
    h = hashlib.sha256()
    with memoryview(data) as view:
        h.update(view[: entry.start])
        h.update(view[entry.end :])
    if h.hexdigest() != entry.value.decode("ascii"):
        raise _mismatch(name)
    return entry.value.decode("ascii")


def _verify_trailer(data: bytes, name: str) -> str | None:
    """The check of an entry written last, for bytes that do not parse as a protobuf message."""
    if len(data) <= _TRAILER_LEN:
        return None
    trailer = data[-_TRAILER_LEN:]
    if not trailer.startswith(_TRAILER_PREFIX) or not _HEX64.match(trailer[len(_TRAILER_PREFIX):]):
        if _damaged_trailer(trailer):
            raise _damaged(name)
        return None
    expected = trailer[len(_TRAILER_PREFIX):].decode("ascii")
    if hashlib.sha256(memoryview(data)[:-_TRAILER_LEN]).hexdigest() != expected:
        raise _mismatch(name)
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
        self.integrity = "verified" if self.checksum else "unchecked"

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
        check_class_scores(p.name, list(self._output.shape or []), self.metadata.num_classes, self._batch)

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
