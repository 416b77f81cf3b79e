"""Real photos that install from the package registries, for verification and demos.

* shipped with edgevit (``edgevit/data/photos``, from scikit-image's sample data, CC0 / public
  domain): chelsea (a tabby cat), coffee, astronaut, rocket
* matplotlib's sample data: grace_hopper.jpg (with the ``export`` extra)
* scikit-learn's sample images: china.jpg, flower.jpg (with the ``samples`` extra)
* edgevit's own Fashion-MNIST test images (MIT), shipped in ``edgevit/data/fashion_samples``

The shipped photos are always there (a device install included); the others are used when their
package is installed. None of these download anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from edgevit.errors import DataError

__all__ = ["FASHION_SAMPLES_DIR", "fashion_samples", "natural_photos", "sample_images"]

FASHION_SAMPLES_DIR = Path(__file__).parent / "fashion_samples"
PHOTOS_DIR = Path(__file__).parent / "photos"


def _shipped(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(PHOTOS_DIR / f"{name}.jpg") as img:
            return img.convert("RGB")

    return load


def _grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")


def _sklearn(index: int) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from sklearn.datasets import load_sample_images

        return Image.fromarray(np.asarray(load_sample_images().images[index]))

    return load


_PHOTOS: dict[str, Callable[[], Image.Image]] = {
    "chelsea": _shipped("chelsea"),
    "coffee": _shipped("coffee"),
    "astronaut": _shipped("astronaut"),
    "rocket": _shipped("rocket"),
    "grace_hopper": _grace_hopper,
    "china": _sklearn(0),
    "flower": _sklearn(1),
}


def natural_photos(limit: int | None = None) -> list[tuple[str, Image.Image]]:
    """The installed real photos as (name, RGB image)."""
    out = []
    for name, load in _PHOTOS.items():
        try:
            out.append((name, load()))
        except (ImportError, OSError, AttributeError):
            continue
        if limit is not None and len(out) >= limit:
            break
    return out


def fashion_samples() -> list[tuple[str, Image.Image]]:
    """Real Fashion-MNIST test images shipped with edgevit, named ``<index>_<label>.png``."""
    files = sorted(FASHION_SAMPLES_DIR.glob("*.png"))
    return [(f.stem, Image.open(f).convert("L")) for f in files]


def sample_images(labels: str = "imagenet", limit: int | None = None) -> list[tuple[str, Image.Image]]:
    """Real images suited to a label set: Fashion-MNIST samples first for ``fashion-mnist``
    models, then the natural photos."""
    images = fashion_samples() if labels == "fashion-mnist" else []
    images += natural_photos()
    if not images:
        raise DataError(
            f"no real sample images were found (the shipped photos in {PHOTOS_DIR} are missing: "
            "reinstall edgevit) - or pass image files"
        )
    return images[:limit] if limit else images
