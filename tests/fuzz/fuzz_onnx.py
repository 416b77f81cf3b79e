"""Fuzz target: the ONNX runtime loader (``edgevit.runtimes.onnx.ONNXRuntime``: onnxruntime's
protobuf parser and graph checks, then the metadata) plus one run, on mutated real models.

An edgevit ``.onnx`` ends with a SHA-256 trailer that rejects any damaged byte before
onnxruntime sees it; a file without the trailer (another tool's export, or a deliberately edited
model) loads unchecked. So the seeds are the real export with its trailer removed, which sends
every mutant through onnxruntime, plus the untouched export.

    python tests/fuzz/fuzz_onnx.py CORPUS_DIR --artifact=model.onnx -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (not instrumented)
import onnxruntime  # noqa: F401  (native; imported before instrumentation)

import fuzz_common

with atheris.instrument_imports(include=["edgevit.runtimes.onnx", "edgevit.metadata"]):
    from edgevit.runtimes import onnx as onnx_runtime

_ARTIFACT = fuzz_common.real_artifact(sys.argv, "onnx") if __name__ == "__main__" else None
_PATH = fuzz_common.scratch_file(".onnx")


def make_seeds() -> dict[str, bytes]:
    data = _ARTIFACT.read_bytes()
    seeds = {"seed-checked.onnx": data}
    if onnx_runtime.verify_checksum(data, "seed") is not None:
        seeds["seed-unchecked.onnx"] = data[: -onnx_runtime._TRAILER_LEN]
    return seeds


def test_one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    fuzz_common.load_and_run(_PATH, "onnx")


if __name__ == "__main__":
    fuzz_common.main(test_one_input, make_seeds)
