"""edgevit eval: accuracy equals a hand count on real labelled images (Fashion-MNIST test split and
an image folder made from it), label matching, float vs exported, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevit.errors import ConfigError, DataError
from edgevit.measure.evaluate import evaluate, label_mapping, load_eval_set

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.is_file(), reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)"
)
WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "vit_fmnist_tiny.safetensors"


def shared_artifact(tmp_path_factory, target: str = "tflite") -> Path:
    """vit_fmnist_tiny exported once per test session (shared with test_bench through basetemp)."""
    from edgevit.converters import export
    from edgevit.converters.base import get_converter

    folder = tmp_path_factory.getbasetemp() / "edgevit-shared-artifacts"
    folder.mkdir(exist_ok=True)
    path = folder / f"vit_fmnist_tiny_{target}_fp32{get_converter(target).suffix}"
    if not path.exists():
        export("vit_fmnist_tiny", target, out=path, pretrained=WEIGHTS.is_file(), verify=False)
    return path


def hand_count(runtime, images, labels) -> tuple[int, int]:
    """Top-1/top-5 hits computed directly from the runtime's logits, image by image."""
    from edgevit.runtimes import Classifier

    clf = Classifier(runtime)
    top1 = top5 = 0
    for img, label in zip(images, labels):
        logits = clf.logits(img)[0]
        order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
        top1 += order[0] == label
        top5 += label in order[:5]
    return top1, top5


def test_label_mapping():
    labels = ("tench, Tinca tinca", "tabby, tabby cat", "T-shirt/top", "Ankle boot")
    m, how = label_mapping(["tabby_cat", "ankle-boot", "T-shirt_top", "tench"], labels)
    assert how == "by name" and m.tolist() == [1, 3, 2, 0]
    m, how = label_mapping(["0", "1", "2", "3"], labels)
    assert how == "by index" and m.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="'dog'"):
        label_mapping(["dog", "tabby"], labels)
    with pytest.raises(DataError):
        label_mapping(["0", "1"], labels)  # numbered, but not as many classes as the model


def test_eval_set_errors(tmp_path):
    with pytest.raises(DataError):
        load_eval_set(tmp_path)  # no class folders
    with pytest.raises(ConfigError):
        load_eval_set("fashion-mnist", limit=0)
    with pytest.raises(ConfigError):
        evaluate([], "fashion-mnist")


@needs_fmnist
@pytest.mark.slow
def test_eval_matches_hand_count_on_fashion_mnist(tmp_path_factory):
    from edgevit.data import load_dataset
    from edgevit.runtimes import load

    art = shared_artifact(tmp_path_factory)
    n = 80
    report = evaluate([art], "fashion-mnist", limit=n, float_model="vit_fmnist_tiny", pretrained=WEIGHTS.is_file())
    ds = load_dataset("fashion-mnist")
    c1, c5 = hand_count(load(art), ds.test_images[:n], ds.test_labels[:n].tolist())
    float_row, art_row = report.rows
    assert float_row["name"] == "torch:vit_fmnist_tiny" and art_row["name"] == art.name
    assert art_row["n"] == n and art_row["labels_matched"] == "by name"
    assert (art_row["correct_top1"], art_row["correct_top5"]) == (c1, c5)  # exact
    assert art_row["top1"] == pytest.approx(c1 / n) and art_row["top5"] == pytest.approx(c5 / n)
    if WEIGHTS.is_file():  # the same trained weights on both sides: fp32 export agrees with torch
        assert art_row["agreement_top1"] >= 0.98
        assert abs(art_row["top1"] - float_row["top1"]) <= 2 / n
        assert art_row["top1"] > 0.6  # a trained model, real data (86% on the full split)
    else:
        assert "random-init" in art_row["note"]


@needs_fmnist
@pytest.mark.slow
def test_eval_image_folder_and_cli(tmp_path_factory, tmp_path, capsys):
    from PIL import Image

    from edgevit.cli import main
    from edgevit.data import load_dataset
    from edgevit.measure.results import ResultsStore
    from edgevit.runtimes import load

    art = shared_artifact(tmp_path_factory)
    ds = load_dataset("fashion-mnist")
    root = tmp_path / "clothes"
    picked: list[tuple[Path, int]] = []
    for cls in (0, 1, 7, 9):  # T-shirt/top, Trouser, Sneaker, Ankle boot: 3 real test images each
        idx = np.flatnonzero(ds.test_labels == cls)[:3]
        folder = root / ds.classes[cls].replace("/", "_")
        folder.mkdir(parents=True)
        for i in idx:
            path = folder / f"{i:05d}.png"
            Image.fromarray(ds.test_images[i]).save(path)
            picked.append((path, cls))
    capsys.readouterr()
    db = tmp_path / "r.sqlite"
    # a folder no model was trained on: every image (the default, test, is the 1 in 5 train holds out)
    assert main(["eval", str(art), "--data", str(root), "--split", "all", "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert out["dataset"]["n"] == 12 and row["n"] == 12
    c1, c5 = hand_count(load(art), [p for p, _ in picked], [c for _, c in picked])
    assert (row["correct_top1"], row["correct_top5"]) == (c1, c5)
    with ResultsStore(db) as store:
        (stored,) = store.runs("eval")
        assert stored.model == "vit_fmnist_tiny" and stored.data["correct_top1"] == c1
    # --limit keeps every class represented (round robin over the folders).
    assert sorted(set(load_eval_set(root, "all", limit=4).labels.tolist())) == [0, 1, 2, 3]
    assert main(["eval", str(art), "--data", str(root), "--limit", "4", "--no-record"]) == 0
    assert "top-1 %" in capsys.readouterr().out
