"""Label sets the catalog refers to by name."""

from __future__ import annotations

import functools

from edgevit.errors import UnknownNameError

__all__ = ["FASHION_DATA", "FASHION_MEAN", "FASHION_MNIST_LABELS", "FASHION_STD", "get_labels"]

FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@functools.lru_cache(maxsize=None)
def _imagenet() -> tuple[str, ...]:
    from edgevit.models._timm import import_timm

    timm = import_timm()
    info = timm.data.ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def get_labels(name: str) -> tuple[str, ...]:
    """The class names of label set ``name`` (``imagenet`` or ``fashion-mnist``)."""
    if name == "imagenet":
        return _imagenet()
    if name == "fashion-mnist":
        return FASHION_MNIST_LABELS
    raise UnknownNameError(name, ["imagenet", "fashion-mnist"], hint="(label sets)")


# How every Fashion-MNIST catalog entry reads its images: grayscale, the whole frame, the dataset's
# own statistics (train split mean/std), its labels.
FASHION_MEAN = (0.2860,)
FASHION_STD = (0.3530,)
FASHION_DATA = dict(color_mode="L", mean=FASHION_MEAN, std=FASHION_STD, crop_pct=1.0, interpolation="bilinear",
                    labels="fashion-mnist")
