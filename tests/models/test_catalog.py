"""The model catalog, parametrized over every entry."""

from __future__ import annotations

import pytest
import torch

from edgevit.errors import ConfigError, ModelError, UnknownModelError
from edgevit.models import ATTENTION_KINDS, create_model, get_spec, list_models

ALL = list_models()


def test_catalog_covers_the_required_families():
    families = {get_spec(n).family for n in ALL}
    assert {"mobilevit", "mobilevitv2", "deit", "swin", "efficientvit", "levit", "efficientformerv2",
            "fastvit", "mobilenetv3", "edgevit-vit"} <= families
    kinds = {get_spec(n).attention for n in ALL}
    assert kinds == set(ATTENTION_KINDS)
    assert "deit_tiny_distilled_patch16_224" in ALL and "mobilevit_s" in ALL


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_and_runs(name):
    spec = get_spec(name)
    model = create_model(name)
    assert not model.training
    x = torch.randn(1, spec.in_chans, *spec.input_size)
    with torch.inference_mode():
        y = model(x)
    labels = spec.label_names()
    assert y.shape == (1, len(labels)) and torch.isfinite(y).all()
    assert len(spec.mean) == len(spec.std) == spec.in_chans
    assert spec.source and spec.license and spec.description


@pytest.mark.parametrize("name", ["mobilevit_xxs", "vit_tiny_window", "vit_fmnist_tiny"])
def test_num_classes_replaces_the_head(name):
    spec = get_spec(name)
    model = create_model(name, num_classes=7)
    with torch.inference_mode():
        assert model(torch.randn(2, spec.in_chans, *spec.input_size)).shape == (2, 7)
    assert spec.label_names(7) == tuple(f"class_{i}" for i in range(7))


def test_unknown_model_suggests():
    with pytest.raises(UnknownModelError, match="mobilevit_xxs"):
        get_spec("mobilevit_xxxs")


def test_list_filters():
    assert all(get_spec(n).attention == "windowed" for n in list_models(attention="windowed"))
    assert list_models("deit_tiny*") == ["deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224"]
    with pytest.raises(ValueError):
        list_models(attention="quadratic")


def test_pretrained_and_weights_are_exclusive(tmp_path):
    with pytest.raises(ConfigError):
        create_model("vit_tiny_window", pretrained=True, weights=tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="no pretrained weights"):
        create_model("vit_tiny_window", pretrained=True)


def test_pretrained_hub_failure_is_clear(monkeypatch):
    # Tests run with HF_HUB_OFFLINE=1: the real hub code path runs and must fail with a clear error.
    with pytest.raises(ModelError, match="--weights FILE"):
        create_model("mobilenetv3_small_100", pretrained=True)
