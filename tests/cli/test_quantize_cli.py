"""`edgevit quantize`: the table, --json, and `Error:` with exit status 1 (as every command) for mistakes in the arguments
(nothing left under --out)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgevit.cli import main
from edgevit.data import FASHION_MNIST_APT, FASHION_MNIST_DIR


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevit", "quantize", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("args", "words"), [
    (["--target", "executorch", "--precision", "fp16"], "target executorch has no precision 'fp16'"),
    (["--target", "tflite", "--precision", "int8"], "needs calibration images; pass --calibration"),
    (["--target", "onnx", "--data", "no-such-dataset"], "neither a known dataset"),
    (["--target", "onnx", "--data", "{tmp}/missing-folder"], "neither a known dataset"),
    (["--target", "tflite", "--weights", "{tmp}/none.safetensors"], "no such weights file"),
    (["--target", "tflitee"], "tflite"),
])
def test_mistakes_exit_1_with_an_error_line_and_leave_nothing(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["quantize", "vit_fmnist_tiny", *args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} ({FASHION_MNIST_APT})")
def test_table_and_json(tmp_path):
    out = tmp_path / "out"
    common = ["vit_fmnist_tiny", "--target", "onnx", "--pretrained", "--data", "fashion-mnist", "--limit", "100"]
    db = tmp_path / "results.sqlite"
    res = _cli(*common, "--precision", "int8-dynamic", "--runs", "20", "--out", str(out), "--db", str(db))
    assert res.returncode == 0, res.stderr
    from edgevit.measure.results import ResultsStore

    with ResultsStore(db) as store:  # the scores are stored like `edgevit eval`'s: float model + 2 artifacts
        runs = store.runs("eval")
    assert sorted((r.target, r.data["n"]) for r in runs) == [("onnx", 100), ("onnx", 100), ("torch", 100)]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("vit_fmnist_tiny -> onnx, weights vit_fmnist_tiny.safetensors")
    assert any("median of 20 runs" in line and "interleaved" in line for line in lines)
    assert any(line.startswith("precision") and "speed-up" in line and "drop pts" in line for line in lines)
    assert any(line.startswith("fp32 ") and "1.00x" in line and "100.0%" in line for line in lines)
    assert any(line.startswith("int8-dynamic ") for line in lines)
    assert not any("LiteRT" in line or "Warning" in line for line in lines)  # quiet by default
    assert sorted(p.name for p in out.iterdir()) == ["vit_fmnist_tiny_onnx_fp32.onnx",
                                                      "vit_fmnist_tiny_onnx_int8-dynamic.onnx"]

    # The same again into the same folder: the artifacts are in the way -> exit 1, they stay as they were.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = _cli(*common, "--precision", "int8-dynamic", "--out", str(out), "--no-record")
    assert res.returncode == 1 and res.stderr.startswith("Error: ") and "--force" in res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    res = _cli(*common, "--precision", "fp32", "--runs", "5", "--json", "--no-record")  # no --out: nothing kept
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)  # one clean document: converter chatter never reaches stdout
    assert [r["variant"] for r in d["rows"]] == ["fp32"]
    fp32 = d["rows"][0]
    assert fp32["speedup_vs_fp32"] == 1.0 and fp32["size_vs_fp32"] == 1.0 and fp32["path"] is None
    assert fp32["drop_points"] == pytest.approx(100 * (d["float_top1"] - fp32["top1"]))
    assert fp32["photos"]["passed"] and d["dataset"]["n"] == 100 and d["timing"]["runs"] == 5
