"""TFLite runtime: ai-edge-litert's interpreter (XNNPACK on by default), or tflite-runtime.

The edgevit metadata lives in the flatbuffer's ``metadata`` table under the name ``edgevit``;
it is read with the flatbuffer schema module that ai-edge-litert ships (data only). A second entry,
``edgevit_sha256``, holds the file's SHA-256 (see :mod:`edgevit.runtimes.integrity`); it is checked
before the interpreter sees the file, because the interpreter does not verify the flatbuffer and
can crash the process on a damaged one.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from edgevit.errors import ArtifactError, MissingDependencyError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.base import Runtime, register_runtime
from edgevit.runtimes.integrity import check_digest

__all__ = ["DIGEST_KEY", "TFLiteRuntime", "read_tflite_metadata"]

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


def read_tflite_metadata(data, name: str = "model") -> dict[str, bytes]:
    """All named metadata entries of a TFLite flatbuffer, as raw bytes.

    Reads only the ``metadata`` and ``buffers`` tables with the ``flatbuffers`` runtime (no
    generated schema module, no copy of the model): the device path stays small and fast.
    ``data`` may be bytes or an mmap.
    """
    _check_flatbuffer(data[:16], name)
    try:
        import flatbuffers
        from flatbuffers import number_types as N
    except ImportError:
        raise MissingDependencyError("flatbuffers", "tflite", "read .tflite metadata") from None
    entries: dict[str, bytes] = {}
    try:
        buf = data  # bytes or mmap; slicing either copies only the slice
        root = flatbuffers.table.Table(buf, flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buf, 0))
        meta_off = root.Offset(_slot(_MODEL_METADATA))
        buffers_off = root.Offset(_slot(_MODEL_BUFFERS))
        if not meta_off:
            return entries
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
                entries[key] = bytes(buf[offset : offset + size])
            else:
                o = b.Offset(_slot(_BUFFER_DATA))
                if not o:
                    entries[key] = b""
                    continue
                start, length = b.Vector(o), b.VectorLen(o)
                if start + length > len(buf):
                    raise ArtifactError(f"{name} is truncated (metadata past end of file)")
                entries[key] = bytes(buf[start : start + length])
    except ArtifactError:
        raise
    except Exception as exc:  # malformed flatbuffers raise IndexError/struct.error/...
        raise ArtifactError(f"{name} is a corrupt TFLite flatbuffer: {type(exc).__name__}") from None
    return entries


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
            size = p.stat().st_size
            if size == 0:
                raise ArtifactError(f"{p.name} is empty (0 bytes)")
            with open(p, "rb") as f:
                # Map instead of reading: the interpreter maps the file itself, so nothing is copied.
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    entries = read_tflite_metadata(data, p.name)
                    if METADATA_KEY not in entries:
                        raise ArtifactError(
                            f"{p.name} has no edgevit metadata; export it with `edgevit export` "
                            "(labels and preprocessing are read from there)"
                        )
                    check_digest(data, p.name, "edgevit export --target tflite")
        except OSError as exc:
            raise ArtifactError(f"{p}: cannot read the artifact: {exc.strerror}") from None
        self.metadata = ArtifactMetadata.from_json(entries[METADATA_KEY])
        try:
            self._interpreter = Interpreter(model_path=str(p), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError, MemoryError) as exc:  # MemoryError: std::bad_alloc
            raise ArtifactError(f"{p.name} could not be loaded by {self.engine}: {exc}") from None
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
