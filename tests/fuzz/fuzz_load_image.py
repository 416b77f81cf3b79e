"""Fuzz target: ``edgevit.preprocess.load_image`` (and the resize/crop after it) on arbitrary
bytes written to a file. Only :class:`ImageError` may come out.

    python tests/fuzz/fuzz_load_image.py CORPUS_DIR -max_total_time=60 -artifact_prefix=/tmp/
"""

from __future__ import annotations

import io

import atheris
import numpy  # noqa: F401  (imported before instrumentation: not fuzzed, and slow to instrument)

import fuzz_common

# Coverage feedback from Pillow's Python side of the common formats and from edgevit's loader.
_INSTRUMENT = [
    "PIL.Image", "PIL.ImageFile", "PIL.ImageOps", "PIL.ImagePalette", "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin", "PIL.GifImagePlugin", "PIL.TiffImagePlugin", "PIL.BmpImagePlugin",
    "PIL.WebPImagePlugin", "PIL.IcoImagePlugin", "PIL.PpmImagePlugin", "edgevit",
]

with atheris.instrument_imports(include=_INSTRUMENT):
    from PIL import Image

    Image.init()  # import every format plugin now, so they are instrumented too
    from edgevit.errors import ImageError
    from edgevit.metadata import ArtifactMetadata
    from edgevit.preprocess import load_image, resize_and_crop

_META = ArtifactMetadata(model="fuzz", target="tflite", precision="fp32", input_size=(16, 16),
                         mean=(0.5,), std=(0.5,), labels=("a", "b"), color_mode="L")
_PATH = fuzz_common.scratch_file(".img")


def make_seeds() -> dict[str, bytes]:
    """A small real photo in every format Pillow writes here, in several modes."""
    try:
        from edgevit.data.samples import natural_photos

        photo = natural_photos(limit=1)[0][1].resize((24, 16))
    except Exception:  # noqa: BLE001 - seeds only; a gradient works too
        import numpy as np

        photo = Image.fromarray((np.arange(24 * 16 * 3) % 256).astype("uint8").reshape(16, 24, 3))
    seeds = {}
    variants = {
        "png": ("PNG", photo), "jpg": ("JPEG", photo), "gif": ("GIF", photo), "bmp": ("BMP", photo),
        "tif": ("TIFF", photo), "ppm": ("PPM", photo), "webp": ("WEBP", photo), "ico": ("ICO", photo),
        "la.png": ("PNG", photo.convert("LA")), "p.png": ("PNG", photo.convert("P")),
        "rgba.png": ("PNG", photo.convert("RGBA")), "cmyk.jpg": ("JPEG", photo.convert("CMYK")),
        "i16.png": ("PNG", photo.convert("I;16")), "f.tif": ("TIFF", photo.convert("F")),
        "1.png": ("PNG", photo.convert("1")),
    }
    for name, (fmt, img) in variants.items():
        buf = io.BytesIO()
        try:
            img.save(buf, fmt)
        except (OSError, KeyError, ValueError):
            continue  # a codec this Pillow build lacks
        seeds[f"seed.{name}"] = buf.getvalue()
    exif = io.BytesIO()
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90: exercises exif_transpose
    photo.save(exif, "JPEG", exif=ex.tobytes())
    seeds["seed.exif.jpg"] = exif.getvalue()
    return seeds


def test_one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    try:
        img = load_image(_PATH, "RGB" if len(data) % 2 else "L")
        resize_and_crop(img.convert("L"), _META)
    except ImageError:
        pass


if __name__ == "__main__":
    fuzz_common.main(test_one_input, make_seeds)
