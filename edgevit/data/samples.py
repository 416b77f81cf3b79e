"""Real photos that install from the package registries, for verification and demos.

* scikit-image's bundled data: chelsea (a tabby cat), coffee, astronaut, rocket (CC0 / public domain)
* matplotlib's sample data: grace_hopper.jpg
* scikit-learn's sample images: china.jpg, flower.jpg
* edgevit's own: Fashion-MNIST test images (MIT), shipped in ``edgevit/data/fashion_samples``

Each source is optional: what is installed is used. None of these download anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from edgevit.errors import DataError

__all__ = ["FASHION_SAMPLES_DIR", "fashion_samples", "natural_photos", "sample_images"]

FASHION_SAMPLES_DIR = Path(__file__).parent / "fashion_samples"


def _skimage(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        import skimage.data

        return Image.fromarray(getattr(skimage.data, name)())

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
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
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
            "no real sample images are installed; install 'edgevit[export]' "
            "(scikit-image, matplotlib, scikit-learn ship them) or pass image files"
        )
    return images[:limit] if limit else images
