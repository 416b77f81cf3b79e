"""Whole batches in `predict` and `verify` (folders, globs, one `Error:` line per bad file, non-zero
exit at the end), one message for over-large images, and trained weights unless `--random-init`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from edgevit.data.samples import natural_photos


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevit", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """vit_fmnist_tiny to ONNX through the CLI with no weights flag: its shipped trained weights."""
    out = tmp_path_factory.mktemp("artifacts")
    proc = _cli("export", "vit_fmnist_tiny", "--target", "onnx", "--out", str(out), "--json", "--no-record")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture()
def batch(tmp_path):
    """A folder with good photos (one nested), an unreadable file and a hidden file."""
    photos = natural_photos(2)
    (tmp_path / "pics" / "nested").mkdir(parents=True)
    photos[0][1].save(tmp_path / "pics" / "a_good.jpg")
    (tmp_path / "pics" / "b_broken.png").write_bytes(b"not an image")
    photos[1][1].save(tmp_path / "pics" / "nested" / "c_good.png")
    (tmp_path / "pics" / ".hidden.png").write_bytes(b"junk that must be skipped")
    return tmp_path


def test_export_uses_the_trained_weights_by_default(exported):
    assert exported["weights"] == "vit_fmnist_tiny.safetensors"
    assert exported["verification"]["passed"]


def test_a_model_without_trained_weights_asks_for_random_init(tmp_path):
    proc = _cli("export", "vit_tiny_performer", "--target", "onnx", "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--random-init" in proc.stderr and "--weights FILE" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predict_reports_each_bad_file_and_classifies_the_rest(exported, batch):
    proc = _cli("predict", exported["path"], "pics", "pics/nested/*.png", "nomatch/*.jpg", "missing.jpg", "-k", "1",
                cwd=batch)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    classified = [line for line in proc.stdout.splitlines() if not line.startswith((" ", exported["path"]))]
    # the folder (sorted, recursive, hidden file skipped), then the glob's match
    assert classified == ["pics/a_good.jpg", "pics/nested/c_good.png", "pics/nested/c_good.png"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 4, proc.stderr
    assert "b_broken.png is not an image" in errors[0]
    assert "nomatch/*.jpg: no file matches" in errors[1]
    assert "missing.jpg: no such file" in errors[2]
    assert errors[3] == "Error: 3 of 6 images could not be classified (see above)"


def test_predict_json_gives_an_error_line_per_bad_file(exported, batch):
    proc = _cli("predict", exported["path"], "pics", "--json", cwd=batch)
    assert proc.returncode == 1
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in rows] == ["pics/a_good.jpg", "pics/b_broken.png", "pics/nested/c_good.png"]
    assert "error" in rows[1] and "top_k" not in rows[1]
    assert all(len(r["top_k"]) == 5 for r in (rows[0], rows[2]))


def test_an_over_large_image_gives_one_message_with_one_limit(exported, tmp_path):
    big = tmp_path / "huge.png"
    Image.new("L", (10_000, 10_000)).save(big)  # 10^8 pixels, over Pillow's warning threshold
    proc = _cli("predict", exported["path"], str(big))
    assert proc.returncode == 1
    assert "DecompressionBomb" not in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[0] == (f"Error: {big} has 100,000,000 pixels, over the 89,478,485 pixel limit "
                         "(a possible decompression bomb); downscale it first")
    assert proc.stderr.count("pixel limit") == 1


def test_verify_compares_the_readable_images_and_fails_at_the_end(exported, batch):
    proc = _cli("verify", exported["path"], "pics", cwd=batch)
    assert proc.returncode == 1, proc.stderr
    assert "PASS on 2 real images" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and "b_broken.png" in errors[0] and "1 of 3 images could not be read" in errors[1]


def test_random_weight_artifacts_say_so_once(tmp_path, batch):
    proc = _cli("export", "vit_fmnist_tiny", "--random-init", "--target", "onnx", "--out", str(tmp_path / "rnd"),
                "--no-verify", "--json", "--no-record")
    assert proc.returncode == 0, proc.stderr
    artifact = json.loads(proc.stdout)["path"]
    proc = _cli("predict", artifact, "pics/a_good.jpg", "-k", "1", cwd=batch)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "random weights" in line]
    assert len(notes) == 1 and "--random-init" in notes[0]
