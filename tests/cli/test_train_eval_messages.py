"""`train --data FOLDER` says what it does (split, classes, conversion, a model unsuited to the data);
`eval --data` scores the images `train` held out, and says so."""

from __future__ import annotations

import json

import pytest

from edgevit.cli import main
from edgevit.data.datasets import held_out_indices, load_image_folder
from edgevit.data.eval_sets import load_eval_set
from edgevit.data.samples import natural_photos


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Two classes of real colour photos, seven each (no train/ or test/ folders)."""
    root = tmp_path_factory.mktemp("pets")
    photos = natural_photos(4)
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir()
        for i in range(7):
            name, img = photos[(c * 2 + i) % len(photos)]
            img.rotate(5 * i).save(root / cls / f"{i:02d}_{name}.jpg")
    return root


@pytest.mark.parametrize("n, expected", [(0, []), (1, []), (2, [1]), (4, [3]), (5, [4]), (7, [4]), (11, [4, 9])])
def test_held_out_indices(n, expected):
    assert held_out_indices(n) == expected


def test_eval_scores_exactly_the_images_train_holds_out(photo_folder):
    ds = load_image_folder(photo_folder, image_size=(8, 8))
    held = load_eval_set(photo_folder, "test")
    rest = load_eval_set(photo_folder, "train")
    everything = load_eval_set(photo_folder, "all")
    assert len(held) == len(ds.test_labels) == 2 and len(rest) == len(ds.train_labels) == 12
    assert sorted(p.name[:3] for p in held.images) == ["04_", "04_"]  # the 5th image of each class
    assert not set(map(str, held.images)) & set(map(str, rest.images))
    assert len(everything) == 14
    assert "held out" in held.note and "training images" in rest.note and "training ones" in everything.note


def test_train_prints_split_classes_conversion_and_a_warning(photo_folder, tmp_path, capsys):
    assert main(["train", "vit_fmnist_tiny", "--data", str(photo_folder), "--epochs", "1", "--batch-size", "4",
                 "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith(f"data: {photo_folder.name}: 12 train / 2 test images, every 5th image of each class "
                             "held out")
    assert out[1] == "classes (2): cat, dog"
    assert out[2].startswith("conversion: colour images (e.g. ") and "-> 28x28 grayscale for vit_fmnist_tiny" in out[2]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "takes 28x28 grayscale" in warnings[0] and "efficientvit_b0" in warnings[0]
    assert "warning:" not in captured.out  # shown once, before training, not again in the summary


def test_train_on_a_dataset_says_no_conversion_is_needed(tmp_path, capsys):
    pytest.importorskip("sklearn")
    assert main(["train", "vit_fmnist_tiny", "--data", "digits", "--epochs", "1", "--train-limit", "64",
                 "--test-limit", "32", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("data: digits: 64 train / 32 test images, the dataset's own train/test split "
                      "(train limited to the first 64, test limited to the first 32)")
    assert out[2] == "conversion: 8x8 grayscale -> 28x28 grayscale for vit_fmnist_tiny (resized, colour converted, per batch)"


def test_eval_says_which_split_it_scores(photo_folder, tmp_path, capsys):
    assert main(["train", "vit_fmnist_tiny", "--data", str(photo_folder), "--epochs", "1", "--batch-size", "4",
                 "--out", str(tmp_path / "run"), "--json"]) == 0
    weights = json.loads(capsys.readouterr().out)["weights"]
    assert main(["eval", "--float", "vit_fmnist_tiny", "--weights", weights, "--data", str(photo_folder),
                 "--no-record"]) == 0
    out = capsys.readouterr().out
    assert f"dataset {photo_folder.name} (test split, 2 images, 2 classes)" in out
    assert "the ones `edgevit train` keeps out of training" in out
    assert main(["eval", "--float", "vit_fmnist_tiny", "--weights", weights, "--data", str(photo_folder),
                 "--split", "train", "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "train split, 12 images" in out and "a model trained on this data has seen them" in out
