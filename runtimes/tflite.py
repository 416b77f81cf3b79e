"""TFLite runtime: ai-edge-litert's interpreter (XNNPACK on by default), or tflite-runtime.

The edgevit metadata lives in the flatbuffer's ``metadata`` table under the name ``edgevit``;
it is read with the flatbuffers runtime (data only). A second entry, ``edgevit_sha256``, holds the
file's SHA-256 (see :mod:`edgevit.runtimes.integrity`); its slot is located through the metadata
table (not by searching the file for the marker text, which a label may contain too) and checked
before the interpreter sees the bytes, because the interpreter does not verify the flatbuffer and
can crash the process on a damaged one. The interpreter then runs those same checked bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgevit.errors import ArtifactError, MissingDependencyError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.base import Runtime, check_class_scores, register_runtime
from edgevit.runtimes.integrity import DIGEST_HEX, DIGEST_PREFIX, check_digest_at

__all__ = ["DIGEST_KEY", "TFLiteRuntime", "digest_slot", "read_tflite_metadata", "tflite_metadata_spans"]

DIGEST_KEY = f"{METADATA_KEY}_sha256"

_TFLITE_IDENTIFIER = b"TFL3"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise MissingDependencyError("ai-edge-litert", "tflite", "run .tflite artifacts") from None


def _check_flatbuffer(data: bytes, name: str) -> None:
    if len(data) == 0:
        raise ArtifactError(f"{name} is empty (0 bytes)")
    if len(data) < 16 or data[4:8] != _TFLITE_IDENTIFIER:
        raise ArtifactError(f"{name} is not a TFLite model (no TFL3 flatbuffer identifier)")


# TFLite schema field slots (schema.fbs; a table's vtable slot for field i is 4 + 2 * i).
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


def _slot(field: int) -> int:
    return 4 + 2 * field


def tflite_metadata_spans(data, name: str = "model") -> dict[str, list[tuple[int, int]]]:
    """Where each named metadata entry's bytes lie in a TFLite flatbuffer: name -> list of
    ``(offset, length)`` (a list, so a name used twice is seen).

    Reads only the ``metadata`` and ``buffers`` tables with the ``flatbuffers`` runtime (no
    generated schema module, no copy of the model): the device path stays small and fast.
    ``data`` may be bytes, a bytearray or an mmap.
    """
    _check_flatbuffer(data[:16], name)
    try:
        import flatbuffers
        from flatbuffers import number_types as N
    except ImportError:
        raise MissingDependencyError("flatbuffers", "tflite", "read .tflite metadata") from None
    spans: dict[str, list[tuple[int, int]]] = {}
    try:
        buf = data  # bytes or mmap; slicing either copies only the slice
        root = flatbuffers.table.Table(buf, flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buf, 0))
        meta_off = root.Offset(_slot(_MODEL_METADATA))
        buffers_off = root.Offset(_slot(_MODEL_BUFFERS))
        if not meta_off:
            return spans
        meta_vec = root.Vector(meta_off)
        n_buffers = root.VectorLen(buffers_off) if buffers_off else 0
        for i in range(root.VectorLen(meta_off)):
            entry = flatbuffers.table.Table(buf, root.Indirect(meta_vec + 4 * i))
            o = entry.Offset(_slot(_METADATA_NAME))
            key = bytes(entry.String(o + entry.Pos)).decode("utf-8", "replace") if o else ""
            o = entry.Offset(_slot(_METADATA_BUFFER))
            index = entry.Get(N.Uint32Flags, o + entry.Pos) if o else 0
            if index >= n_buffers:
                raise ArtifactError(f"{name}: metadata {key!r} points at buffer {index} of {n_buffers}")
            b = flatbuffers.table.Table(buf, root.Indirect(root.Vector(buffers_off) + 4 * index))
            o_off, o_size = b.Offset(_slot(_BUFFER_OFFSET)), b.Offset(_slot(_BUFFER_SIZE))
            offset = b.Get(N.Uint64Flags, o_off + b.Pos) if o_off else 0
            if offset > 1:  # large models keep buffers after the flatbuffer
                size = b.Get(N.Uint64Flags, o_size + b.Pos) if o_size else 0
                if offset + size > len(buf):
                    raise ArtifactError(f"{name} is truncated (metadata buffer past end of file)")
                span = (offset, size)
            else:
                o = b.Offset(_slot(_BUFFER_DATA))
                if not o:
                    span = (0, 0)
                else:
                    span = (b.Vector(o), b.VectorLen(o))
                    if span[0] + span[1] > len(buf):
                        raise ArtifactError(f"{name} is truncated (metadata past end of file)")
            spans.setdefault(key, []).append(span)
    except ArtifactError:
        raise
    except Exception as exc:  # malformed flatbuffers raise IndexError/struct.error/...
        raise ArtifactError(f"{name} is a corrupt TFLite flatbuffer: {type(exc).__name__}") from None
    return spans


def read_tflite_metadata(data, name: str = "model") -> dict[str, bytes]:
    """All named metadata entries of a TFLite flatbuffer, as raw bytes (the last of a name
    used twice). ``data`` may be bytes or an mmap."""
    return {key: bytes(data[at : at + size]) for key, found in tflite_metadata_spans(data, name).items()
            for at, size in found[-1:]}


def digest_slot(spans: dict[str, list[tuple[int, int]]], name: str) -> int:
    """Offset of the 64 hex digest characters in the ``edgevit_sha256`` entry, from the spans of
    :func:`tflite_metadata_spans`: the slot is known by position, never searched for."""
    found = spans.get(DIGEST_KEY, [])
    if not found:
        raise ArtifactError(
            f"{name} has no edgevit integrity digest: it was not exported by edgevit, by an edgevit older "
            "than the digest, or it is damaged; export it again with `edgevit export --target tflite`"
        )
    if len(found) > 1:
        raise ArtifactError(f"{name} is corrupt: it holds {len(found)} {DIGEST_KEY!r} metadata entries")
    at, size = found[0]
    if size != len(DIGEST_PREFIX) + DIGEST_HEX:
        raise ArtifactError(f"{name} is corrupt: its integrity digest entry is damaged ({size} bytes)")
    return at + len(DIGEST_PREFIX)


@register_runtime
class TFLiteRuntime(Runtime):
    """Runs ``.tflite`` artifacts; int8 input/output tensors are (de)quantised with their own
    scale and zero point."""

    name = "tflite"
    suffixes = (".tflite",)
    extra = "tflite"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__(path, threads)
        Interpreter, self.engine = _interpreter_class()
        p = Path(path)
        if p.is_dir():
            raise ArtifactError(f"{p} is a folder, not a .tflite file")
        try:
            # One private copy, checked and then handed to the interpreter (which keeps a reference
            # and does not copy it): a mapping of the file, or a second open by path, would run
            # whatever the file holds by then, not the bytes that were checked.
            data = p.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{p}: cannot read the artifact: {exc.strerror}") from None
        if not data:
            raise ArtifactError(f"{p.name} is empty (0 bytes)")
        spans = tflite_metadata_spans(data, p.name)
        if METADATA_KEY not in spans:
            raise ArtifactError(
                f"{p.name} has no edgevit metadata; export it with `edgevit export` "
                "(labels and preprocessing are read from there)"
            )
        check_digest_at(data, digest_slot(spans, p.name), p.name)
        self.integrity = "verified"
        at, size = spans[METADATA_KEY][-1]
        self.metadata = ArtifactMetadata.from_json(data[at : at + size])
        # The interpreter logs "INFO: Created TensorFlow Lite XNNPACK delegate for CPU" from C++ on
        # every load: captured (at the descriptor level, so only while no other thread may print)
        # and shown only when loading fails.
        import threading

        from edgevit._quiet import capture_output

        quiet = threading.active_count() == 1
        try:
            with capture_output(enabled=quiet) as log:
                self._interpreter = Interpreter(model_content=data, num_threads=threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError, MemoryError) as exc:  # MemoryError: std::bad_alloc
            detail = log.tail(5) if quiet else ""
            raise ArtifactError(f"{p.name} could not be loaded by {self.engine}: {exc}"
                                + (f" (interpreter log: {detail})" if detail else "")) from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        declared = tuple(int(d) for d in self._input["shape"])
        expected = self.metadata.input_shape(self._batch)
        if declared != expected:
            raise ArtifactError(
                f"{p.name}: the model's input shape {declared} does not match its metadata {expected} "
                f"({self.metadata.layout}); export it again"
            )
        check_class_scores(p.name, [int(d) for d in self._output["shape"]], self.metadata.num_classes, self._batch)

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if batch.dtype == dtype:
            return batch
        scale, zero = self._input.get("quantization", (0.0, 0))
        if np.issubdtype(dtype, np.integer) and scale:
            info = np.iinfo(dtype)
            q = np.rint(batch.astype(np.float32) / scale + zero)
            return np.clip(q, info.min, info.max).astype(dtype)
        return batch.astype(dtype)

    def _dequantize(self, out: np.ndarray) -> np.ndarray:
        scale, zero = self._output.get("quantization", (0.0, 0))
        if np.issubdtype(out.dtype, np.integer) and scale:
            return (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        # The converted graph has a static batch of 1 (or its export batch): feed in chunks.
        for i in range(0, batch.shape[0], self._batch):
            chunk = self._quantize(batch[i : i + self._batch])
            try:
                self._interpreter.set_tensor(self._input["index"], chunk)
                self._interpreter.invoke()
                out = self._interpreter.get_tensor(self._output["index"])
            except (ValueError, RuntimeError, MemoryError) as exc:  # MemoryError: std::bad_alloc
                raise ArtifactError(f"{self.path.name}: {self.engine} failed to run the model: {exc}") from None
            rows.append(self._dequantize(out))
        return np.concatenate(rows)
