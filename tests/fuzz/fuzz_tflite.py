"""Fuzz target: the TFLite metadata reader (``edgevit.runtimes.tflite.read_tflite_metadata``)
and the whole TFLite runtime (interpreter load + one run) on mutated real flatbuffers.

Seeds: a real exported ``.tflite`` (``--artifact=PATH``, else a fresh export of
``vit_fmnist_tiny``) and the same model with its weight buffers emptied (small, so mutations
concentrate on the tables and the metadata).

    python tests/fuzz/fuzz_tflite.py CORPUS_DIR --artifact=model.tflite -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (not instrumented)

import fuzz_common
import reliability_harness

with atheris.instrument_imports(include=["edgevit.runtimes.tflite", "edgevit.metadata", "edgevit.runtimes.base"]):
    from edgevit.errors import ArtifactError
    from edgevit.metadata import METADATA_KEY, ArtifactMetadata
    from edgevit.runtimes.tflite import read_tflite_metadata

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
        _PATH.write_bytes(data)
        fuzz_common.load_and_run(_PATH, "tflite")


if __name__ == "__main__":
    fuzz_common.main(test_one_input, make_seeds)
