"""The Android app's plain-JVM core (apps/android/core): compiled and unit-tested with the JDK and
Debian's JUnit 4 (``apt-get install -y openjdk-17-jdk-headless junit4``), no Gradle or network.

* the JUnit suite (metadata JSON, TFLite flatbuffer walking, Pillow-exact resampling, golden
  preprocessing of real photos against the Python runtime, top-k) passes;
* the committed golden tensors are still what ``edgevit.preprocess`` computes today (so a change
  in the Python preprocessing or in Pillow cannot leave the Java side silently out of date);
* the Java reader finds the same metadata as Python's in a model ``edgevit export`` just wrote.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "apps" / "android" / "core"
RUN_TESTS = CORE / "run-tests.sh"
GOLDEN = CORE / "src" / "test" / "resources" / "golden"
JUNIT_JAR = Path(os.environ.get("JUNIT_JAR", "/usr/share/java/junit4.jar"))
HAMCREST_JAR = Path(os.environ.get("HAMCREST_JAR", "/usr/share/java/hamcrest-core.jar"))


def _golden_tool():
    """apps/android/core/tools/make_golden.py as a module (it is a script, not package code)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden", CORE / "tools" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require_jdk_and_junit() -> None:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("javac/java not found: install a JDK >= 17 (apt-get install -y openjdk-17-jdk-headless)")
    if not JUNIT_JAR.is_file() or not HAMCREST_JAR.is_file():
        pytest.skip(f"JUnit 4 jars not found ({JUNIT_JAR}, {HAMCREST_JAR}): apt-get install -y junit4")


def _run_junit(tmp_path: Path, *classes: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "EDGEVIT_CORE_BUILD": str(tmp_path / "jvm-build"), **(env or {})}
    proc = subprocess.run(
        ["bash", str(RUN_TESTS), *classes], capture_output=True, text=True, env=full_env, timeout=600
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"run-tests.sh failed (exit {proc.returncode}):\n{output[-6000:]}"
    assert re.search(r"^OK \(\d+ tests?\)", output, re.M), output[-3000:]
    return output


def test_jvm_core_unit_tests_pass(tmp_path):
    _require_jdk_and_junit()
    out = _run_junit(tmp_path)
    n_tests = int(re.search(r"^OK \((\d+) tests?\)", out, re.M).group(1))
    assert n_tests >= 40, out[-2000:]
    # The golden test printed one line per case; every float case matched Python within 1e-6.
    manifest = json.loads((GOLDEN / "golden.json").read_text())
    for case in manifest["cases"]:
        assert re.search(rf"golden {re.escape(case['name'])}\s", out, re.M), f"golden case {case['name']} did not run"
    worst = float(re.search(r"worst max\|diff\| over all cases (\S+)", out).group(1))
    assert worst <= 1e-6


def test_golden_tensors_are_what_python_computes_today():
    """The committed expectations equal edgevit.preprocess on the committed images (exactly)."""
    from edgevit.metadata import ArtifactMetadata
    from edgevit.preprocess import preprocess

    manifest = json.loads((GOLDEN / "golden.json").read_text())
    assert len(manifest["cases"]) >= 8
    for case in manifest["cases"]:
        meta = ArtifactMetadata.from_json((GOLDEN / case["metadata"]).read_text())
        tensor = preprocess(GOLDEN / case["image"], meta)
        raw = gzip.decompress((GOLDEN / case["tensor"]).read_bytes())
        expected = np.frombuffer(raw, dtype=np.dtype(case["dtype"]).newbyteorder("<"))
        assert list(tensor.shape) == case["shape"], case["name"]
        assert tensor.dtype == np.dtype(case["dtype"]), case["name"]
        # tolerance 0: same Pillow, same numpy float32 ops; regenerate with make_golden.py if this moves
        np.testing.assert_array_equal(tensor.reshape(-1), expected, err_msg=case["name"])


def test_golden_tflite_fixtures_match_python_reader():
    """Python (edgevit's reader, LiteRT's interpreter) still sees the committed .tflite fixtures as
    golden.json records them: the Java test's expectations are current."""
    pytest.importorskip("ai_edge_litert", reason="the tflite extra (ai-edge-litert) is needed")
    tool = _golden_tool()
    manifest = json.loads((GOLDEN / "golden.json").read_text())
    assert {t["file"] for t in manifest["tflite"]} == {"tiny_inline.tflite", "tiny_offset.tflite", "tiny_plain.tflite"}
    for fixture in manifest["tflite"]:
        described = tool.describe_entries((GOLDEN / fixture["file"]).read_bytes())
        assert described == {k: fixture[k] for k in described}, fixture["file"]


@pytest.mark.slow
def test_jvm_reads_metadata_of_an_edgevit_export(tmp_path):
    _require_jdk_and_junit()
    pytest.importorskip("litert_torch", reason="the export extra (litert-torch) is needed to write a .tflite")
    from edgevit.converters import export
    from edgevit.runtimes.tflite import read_tflite_metadata

    result = export("vit_fmnist_tiny", "tflite", out=tmp_path / "vit_fmnist_tiny.tflite", verify=False)
    data = result.path.read_bytes()
    # what Python sees in it: metadata entries (edgevit's reader) and tensors (LiteRT's interpreter)
    expected = _golden_tool().describe_entries(data)
    assert expected["edgevit"] == read_tflite_metadata(data)["edgevit"].decode()
    expected_path = tmp_path / "expected.json"
    expected_path.write_text(json.dumps(expected))
    out = _run_junit(
        tmp_path,
        "dev.edgevit.core.ExportedTfliteTest",
        env={"EDGEVIT_TEST_TFLITE": str(result.path), "EDGEVIT_TEST_TFLITE_EXPECTED": str(expected_path)},
    )
    # the assumption did not skip it: the test printed what it read
    printed = f"exported {result.path.name}: {len(data)} bytes, ArtifactMetadata{{model=vit_fmnist_tiny"
    assert printed in out, out[-2000:]
