"""The shipped Fashion-MNIST conv-hybrid (MobileViT-XXS) and CNN (MobileNetV3-Small) models:
their trained checkpoints load into the catalog models and classify real Fashion-MNIST images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgevit.models import create_model, get_spec
from edgevit.models._registry import WEIGHTS_DIR

MODELS = {"mobilevit_fmnist": "conv-hybrid", "mobilenet_fmnist": "cnn"}


def _truth(stem: str) -> str:
    """``0003_ankle_boot`` -> ``ankle boot``."""
    return stem.split("_", 1)[1].replace("_", " ").replace("-", " ")


def _label(name: str) -> str:
    return name.lower().replace("/", " ").replace("-", " ")


@pytest.mark.parametrize("name", MODELS)
def test_entry_describes_the_shipped_model(name):
    spec = get_spec(name)
    assert spec.attention == MODELS[name]
    assert spec.color_mode == "L" and spec.labels == "fashion-mnist" and spec.in_chans == 1
    # MobileViT splits its stride-8/16/32 maps into 2x2 patches: the side must be a multiple of 64.
    assert spec.input_size[0] % 64 == 0 and spec.input_size[0] == spec.input_size[1]
    assert spec.embedded_weights == f"{name}.safetensors"
    record = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    assert record["model"] == name and record["config"]["data"] == "fashion-mnist"
    # The description quotes the measured test top-1 of the shipped weights (to 0.1 point).
    assert f"{100 * record['test_top1']:.1f}% test top-1" in spec.description


@pytest.mark.parametrize("name", MODELS)
def test_shipped_checkpoint_classifies_real_fashion_images(name):
    from edgevit.converters.export import build_metadata
    from edgevit.preprocess import preprocess
    from edgevit.data.samples import fashion_samples
    from edgevit.compress.training import to_model_input

    spec = get_spec(name)
    model = create_model(name, pretrained=True)  # strict load of models/weights/<name>.safetensors
    assert model.edgevit_weights == f"{name}.safetensors"
    samples = fashion_samples()
    assert len(samples) == 20
    labels = spec.label_names()
    truth = [_truth(stem) for stem, _ in samples]
    # The training pipeline's preprocessing (float resize) ...
    batch = torch.from_numpy(np.stack([np.asarray(img, dtype=np.uint8) for _, img in samples]))
    with torch.inference_mode():
        train_logits = model(to_model_input(batch, spec))
    # ... and the device-side one an exported artifact uses (PIL resize of the 8-bit image).
    meta = build_metadata(spec, "onnx", "fp32", labels, spec.embedded_weights)
    x = torch.from_numpy(np.concatenate([preprocess(img, meta) for _, img in samples]))
    with torch.inference_mode():
        device_logits = model(x)
    for logits in (train_logits, device_logits):
        predicted = [_label(labels[i]) for i in logits.argmax(1).tolist()]
        correct = sum(p == t for p, t in zip(predicted, truth))
        assert correct >= 14, f"{name}: {correct}/20 correct: {list(zip(truth, predicted))}"
    # Both preprocessings agree on (nearly) every image: at most 1 of 20 changes class.
    assert (train_logits.argmax(1) != device_logits.argmax(1)).sum() <= 1
