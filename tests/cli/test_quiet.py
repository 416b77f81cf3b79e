"""Quiet by default: an export prints edgevit's result, not the converters' logs (absl, TensorFlow,
litert-torch's progress tree, torchao, pytree deprecations); `--verbose` shows them; the Python API
keeps converter chatter off stdout; loading a TFLite artifact prints no XNNPACK INFO line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EDGEVIT = [sys.executable, "-m", "edgevit"]
QUIET_EXPORT_MAX_LINES = 8  # the result block: path, target, size, delegation, rewrites, verification


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*EDGEVIT, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def quiet_and_verbose(tmp_path_factory, has_fmnist_weights):
    if not has_fmnist_weights:
        pytest.fail("the shipped vit_fmnist_tiny weights are missing")
    out = tmp_path_factory.mktemp("quiet")
    quiet = _run("export", "vit_fmnist_tiny", "--pretrained", "--target", "tflite", "--out", str(out / "q"))
    verbose = _run("--verbose", "export", "vit_fmnist_tiny", "--pretrained", "--target", "tflite",
                   "--out", str(out / "v"))
    return quiet, verbose


def test_export_prints_only_its_result(quiet_and_verbose):
    quiet, verbose = quiet_and_verbose
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr[-2000:] + verbose.stderr[-2000:]
    printed = _lines(quiet.stdout) + _lines(quiet.stderr)
    assert len(printed) <= QUIET_EXPORT_MAX_LINES, "\n".join(printed)
    assert printed[0].startswith("Exported vit_fmnist_tiny ->")
    assert not [line for line in printed if "LiteRT-Torch" in line or "absl" in line or "W1202" in line]
    # the capture hid something real: --verbose shows the converters' own lines
    assert len(_lines(verbose.stdout) + _lines(verbose.stderr)) > len(printed) + 3


def test_loading_a_tflite_artifact_prints_nothing(quiet_and_verbose, tmp_path, photos):
    quiet, _ = quiet_and_verbose
    artifact = _lines(quiet.stdout)[0].split("-> ", 1)[1]
    image = tmp_path / "photo.png"
    photos[0][1].save(image)
    res = _run("predict", artifact, str(image), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "XNNPACK" not in res.stderr and not _lines(res.stderr), res.stderr


def test_python_export_keeps_converter_chatter_off_stdout(tmp_path, capfd, has_fmnist_weights):
    from edgevit.converters import export

    result = export("vit_fmnist_tiny", target="tflite", out=tmp_path, pretrained=True)
    assert result.verification.passed
    out, _ = capfd.readouterr()
    assert out == "", out[-2000:]
