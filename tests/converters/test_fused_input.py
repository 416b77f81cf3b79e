"""Fused input stage: uint8 NHWC frames in, normalisation folded into the input convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgevit.converters.export import build_metadata
from edgevit.converters.rewrites import fuse_input_stage, reparameterize
from edgevit.errors import ConfigError
from edgevit.models import create_model, get_spec
from edgevit.preprocess import preprocess

# Patch-embed (no padding), padded stems (MobileViT, MobileNetV3, EfficientViT), multi-branch stem
# (FastViT after reparameterisation), LeViT's conv stem and the grayscale Fashion ViT.
MODELS = ["deit_tiny_patch16_224", "mobilevit_xxs", "mobilenetv3_small_100", "efficientvit_b0", "fastvit_t8",
          "levit_128s", "vit_tiny_window"]


@pytest.mark.parametrize("name", MODELS)
def test_folded_model_equals_reference_preprocessing(name, photos):
    """fp32, RGB models: max abs diff <= 1e-5 x max|logit| + 1e-6 (pure float reassociation)."""
    spec = get_spec(name)
    model = reparameterize(create_model(name))
    fused = fuse_input_stage(model, spec.mean, spec.std, spec.input_size, spec.color_mode)
    meta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "random-init")
    fmeta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "random-init", fused_input=True)
    with torch.inference_mode():
        for _, img in photos[:2]:
            frame = preprocess(img, fmeta)
            assert frame.dtype == np.uint8 and frame.shape == (1, *spec.input_size, 3)
            ref = model(torch.from_numpy(preprocess(img, meta)))
            out = fused(torch.from_numpy(frame))
            assert (ref - out).abs().max().item() <= 1e-5 * ref.abs().max().item() + 1e-6


def test_grayscale_model_folds_luma(photos):
    """Grayscale: the fused model computes float luma, the reference rounds it to uint8 (<= 0.5/255)."""
    spec = get_spec("vit_fmnist_tiny")
    model = create_model("vit_fmnist_tiny")
    fused = fuse_input_stage(model, spec.mean, spec.std, spec.input_size, spec.color_mode)
    meta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "x")
    fmeta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "x", fused_input=True)
    assert fmeta.color_mode == "RGB" and fmeta.extra["model_color_mode"] == "L"
    # A gray frame (R == G == B) has exact integer luma: the two paths then agree to float precision.
    gray = photos[0][1].convert("L").convert("RGB")
    with torch.inference_mode():
        ref = model(torch.from_numpy(preprocess(gray, meta)))
        out = fused(torch.from_numpy(preprocess(gray, fmeta)))
    assert (ref - out).abs().max().item() <= 1e-4


def test_non_convolution_input_reader_is_refused():
    class Normalises(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 2)

        def forward(self, x):
            return self.fc((x * 2).flatten(1))

    with pytest.raises(ConfigError, match="convolutions only"):
        fuse_input_stage(Normalises(), (0.5,) * 3, (0.5,) * 3, (8, 8))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilevit_xxs", "vit_fmnist_tiny"])
def test_fused_tflite_artifact_takes_frames(name, tmp_path, photos, has_fmnist_weights):
    from edgevit.converters import export
    from edgevit.runtimes import Classifier

    r = export(name, "tflite", out=tmp_path, fused_input=True,
               pretrained=name == "vit_fmnist_tiny" and has_fmnist_weights)
    assert r.verification.passed, r.verification.summary()
    clf = Classifier.load(r.path)
    meta = clf.metadata
    assert meta.fused_input and meta.layout == "NHWC" and meta.input_dtype == "uint8"
    frame = np.asarray(photos[0][1].resize(meta.input_size[::-1]), dtype=np.uint8)[None]
    logits = clf.runtime.run(frame)  # the camera frame goes straight in
    assert logits.shape == (1, len(meta.labels)) and np.isfinite(logits).all()
