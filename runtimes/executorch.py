"""ExecuTorch runtime: runs ``.pte`` programs with ExecuTorch's C++ runtime (XNNPACK delegate).

What the artifact carries (written by :mod:`edgevit.converters.executorch`):

* a constant method ``edgevit`` returning the metadata JSON (labels, preprocessing, ...);
* a constant method ``edgevit_sha256`` returning ``"edgevit-sha256:<64 hex>"``: the SHA-256 of the
  whole file with those 64 hex characters replaced by ``0``. It is checked in plain Python
  *before* the bytes reach the C++ loader, so a truncated, damaged or foreign file is reported as
  :class:`ArtifactError` (the C++ loader can abort the process on some garbage input, and it cannot
  notice a flipped bit in the weights at all).

The digest slot is found by position (:func:`pte_digest_slot`): the program flatbuffer is walked
(root -> ``execution_plan`` -> the plan named ``edgevit_sha256`` -> its one output value -> the
``String`` it holds), never by searching the file for the marker text, which a label may contain
too. Every byte outside the 64 digest characters (the tables that lead to the slot included) is
covered by the digest, so damage that moves the slot, renames the plan or edits a label is refused.
This is the layout edgevit has always written, so programs exported before the slot was located
this way verify unchanged.

Dependency note: ExecuTorch's Python bindings (``executorch.extension.pybindings._C``, which
``executorch.runtime`` wraps) link against libtorch and accept only ``torch.Tensor`` inputs
(a numpy array is rejected: "Unsupported python type numpy.ndarray"). So running a ``.pte`` from
Python needs torch installed: that is ExecuTorch's dependency, not edgevit's. This module imports
torch lazily, only when an artifact is loaded, and converts numpy <-> torch at the boundary
without copies. It imports the bindings module directly rather than ``executorch.runtime``:
the latter pulls in the whole ``executorch.exir`` compiler stack (about 11 s and 360 MB here,
against 2.4 s and 230 MB for torch plus the bindings).

Threads: ExecuTorch's XNNPACK delegate runs on one process-wide thread pool. ``threads`` resizes
it, which is only safe while no ExecuTorch method is loaded (loaded XNNPACK runtimes keep a pointer
to the pool): a request for a different size while another artifact is loaded raises
:class:`ConfigError` instead of risking a crash. ``threads=None`` keeps ExecuTorch's default
(one thread per core).
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import ArtifactError, ConfigError, MissingDependencyError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.base import Runtime, check_class_scores, register_runtime
from edgevit.runtimes.integrity import DIGEST_HEX, DIGEST_PREFIX, check_digest_at, digest_at

__all__ = [
    "DIGEST_METHOD",
    "DIGEST_PREFIX",
    "ExecuTorchRuntime",
    "check_pte",
    "pte_digest",
    "pte_digest_slot",
]

DIGEST_METHOD = f"{METADATA_KEY}_sha256"
pte_digest = digest_at  # the name this module exported before the digest was shared with TFLite
_HEAD_BYTES = 64  # ExecuTorch reads this much to find the file identifier and extended header
_EXTENDED_HEADER_MAGIC = b"eh00"

_POOL_LOCK = threading.Lock()
_LIVE: weakref.WeakSet[ExecuTorchRuntime] = weakref.WeakSet()


def check_pte(data: bytes, name: str = "model") -> None:
    """Reject an empty, truncated, foreign or damaged ``.pte`` before ExecuTorch parses it.

    Checks the flatbuffer identifier (``ET`` + 2 digits), the sizes in the extended header
    against the file length, and the edgevit SHA-256 digest over the whole file.
    """
    if len(data) == 0:
        raise ArtifactError(f"{name} is empty (0 bytes)")
    if len(data) < _HEAD_BYTES or data[4:6] != b"ET" or not data[6:8].isdigit():
        raise ArtifactError(f"{name} is not an ExecuTorch program (no ET flatbuffer identifier)")
    if data[8:12] == _EXTENDED_HEADER_MAGIC:
        program_size = int.from_bytes(data[16:24], "little")
        segment_base = int.from_bytes(data[24:32], "little")
        segment_size = int.from_bytes(data[32:40], "little")
        expected = max(program_size, segment_base + segment_size if segment_base else 0)
        if expected > len(data):
            raise ArtifactError(
                f"{name} is truncated or damaged: {len(data)} bytes, its header says {expected}; "
                "copy the file again or re-export it"
            )
    check_digest_at(data, pte_digest_slot(data, name), name)


# ExecuTorch's program schema (executorch/schema/program.fbs; a table's vtable slot for field i is
# at 4 + 2 * i; a union field takes two ids: its type byte, then the value).
_PROGRAM_EXECUTION_PLAN = 1
_PLAN_NAME, _PLAN_VALUES, _PLAN_OUTPUTS = 0, 2, 4
_EVALUE_TYPE, _EVALUE_VAL = 0, 1
_KERNEL_TYPE_STRING = 6  # KernelTypes: NONE, Null, Int, Bool, Double, Tensor, String, ...
_STRING_VAL = 0
_NO_DIGEST = (
    "{name} has no edgevit integrity digest: it was not exported by edgevit, by an edgevit older than "
    "the digest, or it is damaged; export it again with `edgevit export --target executorch`"
)


class _Damaged(Exception):
    """The flatbuffer does not hold together (an offset out of range, a wrong type)."""


class _Flat:
    """Bounds-checked reads from a flatbuffer in ``data[:end]``: every offset the file states is
    checked before it is followed, so a damaged or crafted program is refused, never misread."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.end = data, end

    def read(self, fmt: str, at: int) -> int:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > self.end:
            raise _Damaged(f"offset {at} is outside the program")
        return struct.unpack_from(fmt, self.data, at)[0]

    def follow(self, at: int) -> int:
        """The position a ``uoffset`` at ``at`` points to."""
        return at + self.read("<I", at)

    def field(self, table: int, index: int) -> int:
        """Position of field ``index`` of the table at ``table``; 0 when absent."""
        vtable = table - self.read("<i", table)
        vt_size = self.read("<H", vtable)
        if vt_size < 4 or vt_size % 2:
            raise _Damaged("a table's vtable is damaged")
        self.read("<H", vtable + vt_size - 2)  # the whole vtable lies in the program
        slot = 4 + 2 * index
        rel = self.read("<H", vtable + slot) if slot < vt_size else 0
        return table + rel if rel else 0

    def vector(self, at: int) -> tuple[int, int]:
        """``(position of the first element, length)`` of the vector a uoffset at ``at`` points to."""
        start = self.follow(at)
        n = self.read("<I", start)
        return start + 4, n

    def span(self, at: int) -> tuple[int, int]:
        """``(offset, length)`` of the string a uoffset at ``at`` points to, checked in range."""
        start, n = self.vector(at)
        if start + n > self.end:
            raise _Damaged("a string runs past the program")
        return start, n


def pte_digest_slot(data, name: str = "model") -> int:
    """Offset of the 64 hex digest characters of an ExecuTorch program, found by position.

    Walks the program flatbuffer (root ``Program`` -> ``execution_plan`` -> the one plan named
    ``edgevit_sha256`` -> its one output value -> a ``String`` of ``edgevit-sha256:`` + 64
    characters) with every offset bounds-checked. Raises :class:`ArtifactError` for a program
    without such a plan (not edgevit's, older than the digest), with two of them, or whose tables
    do not hold together. Text elsewhere in the file (a label holding the marker) plays no part.
    """
    end = len(data)
    if end >= 24 and data[8:12] == _EXTENDED_HEADER_MAGIC:
        program_size = int.from_bytes(data[16:24], "little")
        if 0 < program_size <= end:
            end = program_size  # the flatbuffer; segments (weights, delegate blobs) follow it
    fb = _Flat(data, end)
    target = METADATA_KEY.encode("ascii") + b"_sha256"
    found = []
    try:
        root = fb.follow(0)
        plans_field = fb.field(root, _PROGRAM_EXECUTION_PLAN)
        if not plans_field:
            raise _Damaged("the program has no execution plans")
        first, count = fb.vector(plans_field)
        if first + 4 * count > end:
            raise _Damaged("the execution plan list runs past the program")
        for i in range(count):
            plan = fb.follow(first + 4 * i)
            name_field = fb.field(plan, _PLAN_NAME)
            if not name_field:
                continue
            at, n = fb.span(name_field)
            if bytes(data[at : at + n]) == target:
                found.append(plan)
        if not found:
            raise ArtifactError(_NO_DIGEST.format(name=name))
        if len(found) > 1:
            raise ArtifactError(f"{name} is corrupt: it holds {len(found)} {DIGEST_METHOD!r} methods")
        plan = found[0]
        outputs_field, values_field = fb.field(plan, _PLAN_OUTPUTS), fb.field(plan, _PLAN_VALUES)
        if not outputs_field or not values_field:
            raise _Damaged(f"its {DIGEST_METHOD!r} method has no output value")
        out_first, out_count = fb.vector(outputs_field)
        if out_count != 1:
            raise _Damaged(f"its {DIGEST_METHOD!r} method has {out_count} outputs, not 1")
        index = fb.read("<i", out_first)
        val_first, val_count = fb.vector(values_field)
        if not 0 <= index < val_count:
            raise _Damaged(f"its {DIGEST_METHOD!r} method returns value {index} of {val_count}")
        evalue = fb.follow(val_first + 4 * index)
        type_field, val_field = fb.field(evalue, _EVALUE_TYPE), fb.field(evalue, _EVALUE_VAL)
        if not type_field or not val_field or fb.read("<B", type_field) != _KERNEL_TYPE_STRING:
            raise _Damaged(f"its {DIGEST_METHOD!r} method does not return a string")
        string_field = fb.field(fb.follow(val_field), _STRING_VAL)
        if not string_field:
            raise _Damaged(f"its {DIGEST_METHOD!r} method returns no text")
        at, n = fb.span(string_field)
    except _Damaged as exc:
        raise ArtifactError(f"{name} is corrupt: its integrity digest cannot be located ({exc})") from None
    if n != len(DIGEST_PREFIX) + DIGEST_HEX:
        raise ArtifactError(f"{name} is corrupt: its integrity digest entry is damaged ({n} bytes)")
    return at + len(DIGEST_PREFIX)


# What pybind11 turns C++ exceptions into: std::bad_alloc -> MemoryError; invalid_argument,
# domain_error, length_error -> ValueError; out_of_range -> IndexError; overflow_error ->
# OverflowError; any other std::exception -> RuntimeError (UnicodeDecodeError, from a log line or a
# string constant that is not UTF-8, is a ValueError).
_NATIVE_ERRORS = (RuntimeError, MemoryError, ValueError, IndexError, OverflowError)


def _reason(exc: BaseException) -> str:
    """The C++ loader's error as a message; ``std::bad_alloc`` (pybind11 turns it into
    MemoryError) comes from sizes in the program that no real export has."""
    if isinstance(exc, MemoryError):
        return ("it asks for more memory than can be allocated (a damaged or crafted program, or a model too "
                "large for this machine)")
    return str(exc)


def _bindings() -> Any:
    """ExecuTorch's pybindings module (imports torch, which the bindings need)."""
    try:
        import torch  # noqa: F401  (the bindings' tensor type casters need torch loaded first)
    except ImportError:
        raise MissingDependencyError("torch", "executorch", "run .pte artifacts (ExecuTorch's Python runtime needs it)") from None
    try:
        from executorch.extension.pybindings import _C
    except ImportError:
        try:
            from executorch.extension.pybindings import portable_lib as _C  # same objects, slower import
        except ImportError:
            raise MissingDependencyError("executorch", "executorch", "run .pte artifacts") from None
    return _C


def _set_threads(bindings: Any, threads: int | None) -> int:
    """Resize ExecuTorch's process-wide thread pool if asked to and if it is safe; return its size."""
    current = int(bindings._threadpool_get_thread_count())
    if threads is None or threads == current:
        return current
    if len(_LIVE):
        raise ConfigError(
            f"ExecuTorch's thread pool is process-wide and already serves a loaded artifact with "
            f"{current} thread(s); load all .pte artifacts of one process with the same threads "
            f"(or release the others first), asked for {threads}"
        )
    bindings._unsafe_reset_threadpool(int(threads))
    return int(bindings._threadpool_get_thread_count())


@register_runtime
class ExecuTorchRuntime(Runtime):
    """Runs ``.pte`` programs exported by edgevit (XNNPACK delegate plus portable kernels)."""

    name = "executorch"
    suffixes = (".pte",)
    extra = "executorch"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__(path, threads)
        p = Path(path)
        if p.is_dir():
            raise ArtifactError(f"{p} is a folder, not a .pte file")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{p}: cannot read the artifact: {exc.strerror}") from None
        check_pte(data, p.name)
        self.integrity = "verified"
        bindings = _bindings()
        self.engine = "executorch"
        with _POOL_LOCK:
            self.thread_count = _set_threads(bindings, threads)
            try:
                program = bindings._load_program_from_buffer(
                    data,
                    enable_etdump=False,
                    debug_buffer_size=0,
                    program_verification=bindings.Verification.InternalConsistency,
                    data_path=None,
                )
            except _NATIVE_ERRORS as exc:
                raise ArtifactError(f"{p.name} could not be loaded by ExecuTorch: {_reason(exc)}") from None
            methods = {program.get_method_name(i) for i in range(program.num_methods())}
            for needed in ("forward", METADATA_KEY):
                if needed not in methods:
                    raise ArtifactError(
                        f"{p.name} has no {needed!r} method (it has: {', '.join(sorted(methods))}); "
                        "export it with `edgevit export --target executorch`"
                    )
            self.metadata = ArtifactMetadata.from_json(self._constant(program, METADATA_KEY, p.name))
            try:
                self._forward = program.load_method("forward")
            except _NATIVE_ERRORS as exc:
                backends = ", ".join(bindings._get_registered_backend_names()) or "none"
                raise ArtifactError(
                    f"{p.name}: ExecuTorch could not load its forward method ({_reason(exc)}); "
                    f"backends registered in this ExecuTorch build: {backends}"
                ) from None
            self._data = data  # the program may reference the buffer; keep it alive with it
            self._program = program
            _LIVE.add(self)
        meta = self._forward.method_meta()
        if meta.num_inputs() != 1:
            raise ArtifactError(f"{p.name}: forward takes {meta.num_inputs()} inputs, edgevit artifacts take 1")
        self._input_shape = tuple(int(s) for s in meta.input_tensor_meta(0).sizes())
        self._batch = self._input_shape[0]
        expected = self.metadata.input_shape(self._batch)
        if self._input_shape != expected:
            raise ArtifactError(
                f"{p.name}: the program's input shape {self._input_shape} does not match its metadata "
                f"{expected} ({self.metadata.layout}); export it again"
            )
        if meta.num_outputs() < 1:
            raise ArtifactError(f"{p.name}: forward has no outputs; edgevit artifacts return class scores")
        output = tuple(int(s) for s in meta.output_tensor_meta(0).sizes())
        check_class_scores(p.name, output, self.metadata.num_classes, self._batch)

    @staticmethod
    def _constant(program: Any, method: str, name: str) -> str:
        try:
            value = program.load_method(method)([])
        except _NATIVE_ERRORS as exc:
            raise ArtifactError(f"{name}: cannot read its {method!r} method: {_reason(exc)}") from None
        if len(value) != 1 or not isinstance(value[0], str):
            raise ArtifactError(f"{name}: method {method!r} does not return a string")
        return value[0]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        want = np.float32 if self.metadata.input_dtype == "float32" else np.dtype(self.metadata.input_dtype)
        rows = []
        # The exported program has a static batch (1): feed larger batches in chunks.
        for i in range(0, batch.shape[0], self._batch):
            chunk = np.ascontiguousarray(batch[i : i + self._batch], dtype=want)
            try:
                out = self._forward([torch.from_numpy(chunk)])
            except _NATIVE_ERRORS as exc:
                raise ArtifactError(f"{self.path.name}: ExecuTorch failed to run the program: {_reason(exc)}") from None
            rows.append(out[0].detach().numpy().astype(np.float32, copy=False))
        return np.concatenate(rows)
