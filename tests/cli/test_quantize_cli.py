"""`edgevit quantize`: the table, --json, and `Error:` with exit status 2 for mistakes in the arguments
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
def test_mistakes_exit_2_with_an_error_line_and_leave_nothing(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["quantize", "vit_fmnist_tiny", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} ({FASHION_MNIST_APT})")
def test_table_and_json(tmp_path):
    out = tmp_path / "out"
    common = ["vit_fmnist_tiny", "--target", "onnx", "--pretrained", "--precision", "int8-dynamic",
              "--data", "fashion-mnist", "--limit", "100", "--runs", "20", "--no-record"]
    res = _cli(*common, "--json", "--out", str(out))
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)  # one clean document: converter chatter never reaches stdout
    assert [r["variant"] for r in d["rows"]] == ["fp32", "int8-dynamic"]
    fp32, dyn = d["rows"]
    assert fp32["speedup_vs_fp32"] == 1.0 and fp32["size_vs_fp32"] == 1.0
    assert dyn["size_vs_fp32"] == pytest.approx(dyn["bytes"] / fp32["bytes"])
    assert dyn["drop_points"] == pytest.approx(100 * (d["float_top1"] - dyn["top1"]))
    assert d["dataset"]["n"] == 100 and d["timing"]["runs"] == 20
    assert sorted(p.name for p in out.iterdir()) == ["vit_fmnist_tiny_onnx_fp32.onnx",
                                                      "vit_fmnist_tiny_onnx_int8-dynamic.onnx"]
    assert fp32["path"] == str(out / "vit_fmnist_tiny_onnx_fp32.onnx")

    # The same again into the same folder: the artifacts are in the way -> exit 2, they stay as they were.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = _cli(*common, "--out", str(out))
    assert res.returncode == 2 and res.stderr.startswith("Error: ") and "--force" in res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    res = _cli(*common, "--runs", "5")  # no --out: a table, artifacts in a temporary folder only
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("vit_fmnist_tiny -> onnx, weights vit_fmnist_tiny.safetensors")
    assert any(line.startswith("precision") and "speed-up" in line and "drop pts" in line for line in lines)
    assert any(line.startswith("int8-dynamic") for line in lines)
    assert any(line.startswith("fp32 ") and "1.00x" in line for line in lines)
    assert not any("LiteRT" in line or "Warning" in line for line in res.stdout.splitlines())  # quiet by default
