"""Data in and out of models (torch-free): labelled datasets, IDX files and image folders
(:mod:`.datasets`), calibration sets for quantization (:mod:`.calibration`) and bundled sample
photos (:mod:`.samples`).

>>> from edgevit.data import load_dataset
>>> ds = load_dataset("fashion-mnist")          # doctest: +SKIP
>>> ds.train_images.shape, ds.classes[:2]       # doctest: +SKIP
((60000, 28, 28), ('T-shirt/top', 'Trouser'))
"""

from edgevit.data.datasets import (
    DATASETS,
    FASHION_MNIST_APT,
    FASHION_MNIST_DIR,
    IMAGE_SUFFIXES,
    Dataset,
    load_dataset,
    load_image_folder,
    read_idx,
)

__all__ = [
    "DATASETS",
    "FASHION_MNIST_APT",
    "FASHION_MNIST_DIR",
    "IMAGE_SUFFIXES",
    "Dataset",
    "load_dataset",
    "load_image_folder",
    "read_idx",
]
