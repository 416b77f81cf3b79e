"""Fashion-MNIST-scale convolutional models with weights trained here: one conv-hybrid (timm's
MobileViT-XXS) and one CNN baseline (timm's MobileNetV3-Small 0.5), the two attention kinds the
Fashion-MNIST ViTs of ``catalog_edgevit.py``/``catalog_zoo.py`` do not cover (issue #5 measures
int8 accuracy drops per kind on the real test split; see benchmarks/results/quantize.md).

Both take 64 x 64 grayscale input (the 28 x 28 images are resized by the preprocessing):
MobileViT downsamples by 32 and unfolds its stride-8, -16 and -32 feature maps into 2 x 2
patches, so the side must be a multiple of 64 for every map to split into whole patches (at 32 px
the last map is 1 x 1 and timm would interpolate it). 64 px gives 8 x 8, 4 x 4 and 2 x 2 maps (16,
4 and 1 patch per pixel position); 128 px would cost four times the compute, past the training
budget of two shared CPU cores. MobileNetV3 takes the same input for a like-for-like comparison.
Weights: ``python benchmarks/quantize.py train --models mobilevit_fmnist mobilenet_fmnist``.
"""

from __future__ import annotations

import functools

from edgevit.models._registry import ModelSpec, register_model
from edgevit.models._timm import import_timm
from edgevit.models.labels import FASHION_DATA, FASHION_MNIST_LABELS

INPUT_SIZE = 64


def _build(timm_name: str, num_classes: int | None = None, pretrained: bool = False):
    """timm's architecture with a 1-channel stem and a Fashion-MNIST head (random init; the
    trained weights are the entry's ``embedded_weights``)."""
    timm = import_timm()
    classes = len(FASHION_MNIST_LABELS) if num_classes is None else num_classes
    return timm.create_model(timm_name, pretrained=False, in_chans=1, num_classes=classes)


def _entry(name: str, timm_name: str, family: str, attention: str, params_m: float, gmacs: float,
           description: str) -> None:
    register_model(
        ModelSpec(
            name=name,
            family=family,
            attention=attention,
            builder=functools.partial(_build, timm_name),
            input_size=(INPUT_SIZE, INPUT_SIZE),
            **FASHION_DATA,
            source=f"timm:{timm_name} (architecture)",
            license="apache-2.0 (weights trained here on Fashion-MNIST, MIT)",
            embedded_weights=f"{name}.safetensors",
            params_m=params_m,
            gmacs=gmacs,
            description=description,
        )
    )


_entry(
    "mobilevit_fmnist", "mobilevit_xxs", "mobilevit", "conv-hybrid", 0.954, 0.02057,
    "MobileViT-XXS (timm) on 64 px grayscale (multiple of 64: whole 2x2 patches at every MobileViT stage) "
    "trained here on Fashion-MNIST (88.3% test top-1); ships with weights",
)
_entry(
    "mobilenet_fmnist", "mobilenetv3_small_050", "mobilenetv3", "cnn", 0.5782, 0.001994,
    "MobileNetV3-Small 0.5 (timm) CNN baseline on 64 px grayscale (as mobilevit_fmnist) trained here on "
    "Fashion-MNIST (84.0% test top-1); ships with weights",
)
