"""Fuzz target: the TFLite metadata reader (``edgevit.runtimes.tflite.read_tflite_metadata``)
and the TFLite runtime loader (metadata, integrity digest, then the interpreter) plus one run, on
mutated real flatbuffers.

Seeds: a real exported ``.tflite`` (``--artifact=PATH``, else a fresh export of
``vit_fmnist_tiny``) and the same model with its weight buffers emptied (small, so mutations
concentrate on the tables and the metadata).

An edgevit ``.tflite`` carries a SHA-256 digest checked in Python before the interpreter sees the
bytes, so plain mutants stop there: by default this target fuzzes the reader and that gate. With
``--restamp`` every mutant's digest is recomputed, so the bytes go on to the interpreter, as a
crafted file would. The interpreter does not verify flatbuffers: a crafted file can crash it (CI
found one such input before the digest existed), which is why the gate is there.

    python tests/fuzz/fuzz_tflite.py CORPUS_DIR --artifact=model.tflite [--restamp] -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (not instrumented)

import fuzz_common
import reliability_harness

with atheris.instrument_imports(include=["edgevit.runtimes.tflite", "edgevit.runtimes.integrity", "edgevit.metadata",
                                         "edgevit.runtimes.base"]):
    from edgevit.errors import ArtifactError
    from edgevit.metadata import METADATA_KEY, ArtifactMetadata
    from edgevit.runtimes.tflite import read_tflite_metadata

_RESTAMP = "--restamp" in sys.argv  # our flag, not libFuzzer's: taken out before Setup
if _RESTAMP:
    sys.argv.remove("--restamp")
_ARTIFACT = fuzz_common.real_artifact(sys.argv, "tflite") if __name__ == "__main__" else None
_PATH = fuzz_common.scratch_file(".tflite")
_FULL_RUN_MIN_BYTES = 512 * 1024  # the stripped seed (and its mutants) only exercise the reader


def make_seeds() -> dict[str, bytes]:
    data = _ARTIFACT.read_bytes()
    return {"seed-full.tflite": data, "seed-stripped.tflite": reliability_harness.strip_tflite_weights(data)}


def test_one_input(data: bytes) -> None:
    try:
        entries = read_tflite_metadata(data, "fuzz.tflite")
        if METADATA_KEY in entries:
            ArtifactMetadata.from_json(entries[METADATA_KEY])
    except ArtifactError:
        pass
    if len(data) >= _FULL_RUN_MIN_BYTES:
        _PATH.write_bytes(reliability_harness.restamp(data) if _RESTAMP else data)
        fuzz_common.load_and_run(_PATH, "tflite")


if __name__ == "__main__":
    fuzz_common.main(test_one_input, make_seeds)
