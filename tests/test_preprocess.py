"""Torch-free preprocessing: image modes, broken images, and parity with timm's eval transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgevit.errors import ImageError
from edgevit.metadata import ArtifactMetadata
from edgevit.preprocess import load_image, preprocess

META = ArtifactMetadata(model="m", target="tflite", precision="fp32", input_size=(224, 224),
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), labels=("a",), crop_pct=0.875)


def _save(img: Image.Image, path, fmt="PNG"):
    img.save(path, fmt)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "I", "F", "CMYK", "1"])
def test_every_mode_converts_to_rgb(tmp_path, photos, mode):
    src = photos[0][1].resize((64, 48))
    if mode == "I;16":
        arr = (np.asarray(src.convert("L"), np.uint16) * 257)
        img = Image.fromarray(arr)
    elif mode == "P":
        img = src.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = src.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "F", "I") else "PNG"
    path = _save(img, tmp_path / f"x.{fmt.lower()}", fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (64, 48)
    x = preprocess(path, META)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()


def test_16bit_keeps_full_range(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "g16.png")
    out = np.asarray(load_image(path, "L"))
    assert out.min() == 0 and out.max() == 255


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(rgba)).min() == 255


def test_truncated_image(tmp_path, photos):
    buf = io.BytesIO()
    photos[0][1].save(buf, "JPEG")
    path = tmp_path / "t.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(ImageError, match="truncated|decoded"):
        load_image(path)


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"hello, not an image", "not an image"),
                                           (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "decode|not an image")])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=match):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import edgevit.preprocess as pp

    path = _save(Image.new("L", (200, 200)), tmp_path / "big.png")
    monkeypatch.setattr(pp, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="pixel limit|bomb"):
        load_image(path)


def test_bad_arrays():
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_matches_timm_eval_transform(photos):
    """Our numpy pipeline vs timm's torchvision eval transform: max abs diff <= 1e-5 on real photos."""
    pytest.importorskip("torch")
    from edgevit.models._timm import import_timm

    timm = import_timm()
    transform = timm.data.create_transform(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875,
                                           mean=META.mean, std=META.std)
    for _, img in photos[:4]:
        ours = preprocess(img, META)[0]
        ref = transform(img).numpy()
        assert np.abs(ours - ref).max() <= 1e-5


def test_fused_input_gives_uint8_nhwc(photos):
    meta = META.replace(fused_input=True, layout="NHWC", input_dtype="uint8")
    x = preprocess(photos[0][1], meta)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.uint8
