"""Fuzz target: the ExecuTorch runtime loader (``edgevit.runtimes.executorch``: the pre-parse
checks, then ExecuTorch's C++ program loader and method loading) plus one run, on mutated real
``.pte`` programs.

An edgevit ``.pte`` carries a SHA-256 digest checked in Python before the C++ loader sees the
bytes, so plain mutants never get past it: by default this target fuzzes that gate (header and
size checks, digest search). The digest is a checksum, not a signature: anyone can write a file
with a matching one. With ``--restamp`` the digest of every mutant is recomputed (when the digest
field survived the mutation), so the bytes go on to ExecuTorch's flatbuffer verification, program
and method loading, as a crafted file would.

    python tests/fuzz/fuzz_executorch.py CORPUS_DIR --artifact=model.pte [--restamp] -max_total_time=60

Known upstream crash (ExecuTorch 1.5.1): with ``--restamp`` a mutant whose bytes end up in a C++
log line as invalid UTF-8 aborts the process ("terminate called after throwing an instance of
'pybind11::error_already_set' ... UnicodeDecodeError"); tests/test_fuzz.py tells it apart.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (not instrumented)

import fuzz_common
import reliability_harness

with atheris.instrument_imports(include=["edgevit.runtimes.executorch", "edgevit.metadata"]):
    from edgevit.runtimes import executorch as et_runtime

_RESTAMP = "--restamp" in sys.argv  # our flag, not libFuzzer's: taken out before Setup
if _RESTAMP:
    sys.argv.remove("--restamp")
_ARTIFACT = fuzz_common.real_artifact(sys.argv, "executorch") if __name__ == "__main__" else None
_PATH = fuzz_common.scratch_file(".pte")


def _text_mask(data: bytes):
    """Where the seed holds text (runs of 8+ printable ASCII bytes: names, keys, metadata)."""
    import numpy as np

    arr = np.frombuffer(data, np.uint8)
    printable = (arr >= 0x20) & (arr < 0x7F)
    mask = np.zeros(len(arr), bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], printable.astype(np.int8), [0]])))
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start >= 8:
            mask[start:end] = True
    return mask


_SEED = _ARTIFACT.read_bytes() if _ARTIFACT is not None else b""
_SEED_TEXT = _text_mask(_SEED) if _RESTAMP else None


def hits_known_upstream_abort(data: bytes) -> bool:
    """A same-length mutant that turned text into non-ASCII bytes: ExecuTorch 1.5.1 aborts when it
    logs such text. Skipped, so the fuzzer keeps looking for other failures."""
    if _SEED_TEXT is None or len(data) != len(_SEED):
        return False
    import numpy as np

    return bool((np.frombuffer(data, np.uint8)[_SEED_TEXT] >= 0x80).any())


def make_seeds() -> dict[str, bytes]:
    return {"seed.pte": _ARTIFACT.read_bytes()}


def test_one_input(data: bytes) -> None:
    if _RESTAMP and hits_known_upstream_abort(data):
        return
    _PATH.write_bytes(reliability_harness.restamp(data) if _RESTAMP else data)
    fuzz_common.load_and_run(_PATH, "executorch")


if __name__ == "__main__":
    et_runtime._bindings()  # import torch and the native bindings before fuzzing starts
    fuzz_common.main(test_one_input, make_seeds)
