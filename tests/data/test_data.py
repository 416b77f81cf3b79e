"""edgevit.data: IDX reader, packaged datasets, image folders, shipped Fashion-MNIST samples."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgevit.data import FASHION_MNIST_DIR, Dataset, load_dataset, load_image_folder, read_idx
from edgevit.data import datasets as datasets_module
from edgevit.errors import DataError
from edgevit.data.samples import FASHION_SAMPLES_DIR, fashion_samples

needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def _write_idx(path, arr: np.ndarray, code: int = 0x08, compress: bool = False) -> None:
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


# --- IDX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("x.idx.gz" if compress else "x.idx")
    _write_idx(p, arr, compress=compress)
    np.testing.assert_array_equal(read_idx(p), arr)


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.array([1, -2, 70000], dtype=np.int32)
    _write_idx(tmp_path / "x.idx", arr, code=0x0C)
    out = read_idx(tmp_path / "x.idx")
    assert out.dtype == np.int32 and out.tolist() == [1, -2, 70000]


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    arr = np.zeros((4, 5), np.uint8)
    _write_idx(tmp_path / "short", arr)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match="holds 17 bytes"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="no such IDX file"):
        read_idx(tmp_path / "missing")


def test_idx_folder_loads_as_dataset(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (6, 5, 5), dtype=np.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 0, 1, 2], np.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (3, 5, 5), dtype=np.uint8), compress=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([2, 1, 0], np.uint8), compress=True)
    ds = load_dataset(tmp_path)
    assert ds.train_images.shape == (6, 5, 5) and ds.test_images.shape == (3, 5, 5)
    assert ds.classes == ("0", "1", "2") and ds.train_labels.dtype == np.int64


# --- packaged datasets ----------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_real_splits():
    ds = load_dataset("fashion-mnist")
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_labels.shape == (10000,)
    assert ds.num_classes == 10 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    # The published first test label is 9 (ankle boot); pixel statistics match the catalog's mean/std.
    assert ds.test_labels[0] == 9
    assert abs(ds.train_images.mean() / 255 - 0.2860) < 1e-3
    assert abs(ds.train_images.std() / 255 - 0.3530) < 1e-3
    assert not ds.train_images.flags.writeable  # cached arrays are shared: read-only
    assert load_dataset("fmnist") is ds


def test_fashion_mnist_missing_names_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_digits():
    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    assert ds.train_images.shape[1:] == (8, 8) and ds.train_images.dtype == np.uint8
    assert len(ds.train_labels) + len(ds.test_labels) == 1797
    assert set(np.unique(ds.test_labels)) == set(range(10))
    assert ds.train_images.max() == 255 and not ds.flip_ok


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst")


def test_dataset_validates_labels():
    x = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(DataError, match="labels outside"):
        Dataset("t", x, np.array([0, 3]), x, np.array([0, 1]), classes=("a", "b"))
    with pytest.raises(DataError, match="must be uint8"):
        Dataset("t", x.astype(np.float32), np.array([0, 1]), x, np.array([0, 1]), classes=("a", "b"))


# --- image folders ------------------------------------------------------------------------------


def _png(path, size=(10, 12), color=(200, 10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def _folder(root, per_class=5, classes=("cat", "dog")):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", size=(10 + i, 12), color=(50 + 100 * c, 20, 30))
    return root


def test_image_folder_split_resize_and_mode(tmp_path):
    ds = load_image_folder(_folder(tmp_path / "pets"), image_size=(8, 6), color_mode="RGB")
    assert ds.classes == ("cat", "dog")
    assert ds.train_images.shape == (8, 8, 6, 3) and ds.test_images.shape == (2, 8, 6, 3)
    assert ds.test_labels.tolist() == [0, 1]  # every fifth image of each class is held out
    assert ds.train_images[0, 0, 0].tolist() == [50, 20, 30]
    gray = load_dataset(tmp_path / "pets", image_size=(4, 4), color_mode="L")
    assert gray.train_images.shape == (8, 4, 4)


def test_image_folder_with_train_test_split(tmp_path):
    _folder(tmp_path / "d" / "train", per_class=3)
    _folder(tmp_path / "d" / "test", per_class=2)
    ds = load_dataset(tmp_path / "d", image_size=(5, 5))
    assert len(ds.train_labels) == 6 and len(ds.test_labels) == 4
    assert np.bincount(ds.test_labels).tolist() == [2, 2]


def test_image_folder_sizes_must_agree_without_image_size(tmp_path):
    with pytest.raises(DataError, match="different sizes"):
        load_image_folder(_folder(tmp_path / "pets"))


def test_image_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_image_folder(empty)

    flat = tmp_path / "flat"
    _png(flat / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(flat)

    mixed = _folder(tmp_path / "mixed")
    (mixed / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="mixes files.*notes.txt"):
        load_image_folder(mixed, image_size=(4, 4))

    no_images = _folder(tmp_path / "noimg")
    (no_images / "bird").mkdir()
    with pytest.raises(DataError, match="bird has no images"):
        load_image_folder(no_images, image_size=(4, 4))

    other = _folder(tmp_path / "other")
    (other / "dog" / "labels.csv").write_text("x")
    with pytest.raises(DataError, match=r"not images \(dog/labels.csv\)"):
        load_image_folder(other, image_size=(4, 4))

    corrupt = _folder(tmp_path / "corrupt")
    (corrupt / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"1 unreadable image.*broken\.png"):
        load_image_folder(corrupt, image_size=(4, 4))

    single = _folder(tmp_path / "single", classes=("cat",))
    with pytest.raises(DataError, match="only one class"):
        load_image_folder(single, image_size=(4, 4))

    with pytest.raises(DataError, match="no such folder"):
        load_image_folder(tmp_path / "missing")


def test_hidden_files_are_ignored(tmp_path):
    root = _folder(tmp_path / "pets")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / ".hidden.txt").write_text("x")
    assert load_image_folder(root, image_size=(4, 4)).num_classes == 2


def test_data_layer_does_not_import_torch(tmp_path):
    _folder(tmp_path / "pets")
    code = (
        "import sys; from edgevit.data import load_dataset; "
        f"load_dataset({str(tmp_path / 'pets')!r}, image_size=(4, 4)); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- shipped samples ------------------------------------------------------------------------------


def test_shipped_samples_are_two_per_class():
    names = sorted(p.name for p in FASHION_SAMPLES_DIR.glob("*.png"))
    assert len(names) == 20
    labels = [re.fullmatch(r"(\d{4})_([a-z_]+)\.png", n).group(2) for n in names]
    assert sorted(set(labels)) == sorted(
        ["t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
    )
    assert all(labels.count(x) == 2 for x in set(labels))
    samples = fashion_samples()
    assert len(samples) == 20 and all(img.size == (28, 28) and img.mode == "L" for _, img in samples)


@needs_fashion
def test_shipped_samples_are_the_first_two_test_images_of_each_class():
    ds = load_dataset("fashion-mnist")
    expected = {}
    for i, y in enumerate(ds.test_labels):
        expected.setdefault(int(y), [])
        if len(expected[int(y)]) < 2:
            expected[int(y)].append(i)
    files = {int(p.name[:4]): p for p in FASHION_SAMPLES_DIR.glob("*.png")}
    assert sorted(files) == sorted(i for v in expected.values() for i in v)
    for i, path in files.items():
        np.testing.assert_array_equal(np.asarray(Image.open(path)), ds.test_images[i])


def test_photos_ship_with_edgevit_and_need_no_sample_packages(tmp_path):
    """A device install (no scikit-image, scikit-learn or matplotlib) still has four real photos."""
    code = (
        "import sys\n"
        "for mod in ('skimage', 'sklearn', 'matplotlib'):\n"
        "    sys.modules[mod] = None  # importing it now raises ImportError\n"
        "from edgevit.data.samples import natural_photos\n"
        "photos = natural_photos()\n"
        "assert [n for n, _ in photos] == ['chelsea', 'coffee', 'astronaut', 'rocket'], photos\n"
        "assert all(img.mode == 'RGB' and min(img.size) >= 300 for _, img in photos)\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
