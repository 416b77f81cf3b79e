"""Your own model: timm:NAME, Hugging Face folders, checkpoints with your classes, nn.Modules.

Everything here is offline: timm's tiny ``test_vit`` (0.37M parameters, 160x160) and transformers
models built from small configs stand in for the user's models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgevit.errors import ConfigError, ModelError, UnknownModelError

EDGEVIT = [sys.executable, "-m", "edgevit"]
FP32_COSINE = 0.9999  # converters/verify.py fp32 tolerance, restated


def _timm():
    from edgevit.models._timm import import_timm

    return import_timm()


def _transformers():
    _timm()  # the torchvision compatibility step first
    import transformers

    return transformers


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*EDGEVIT, *args], capture_output=True, text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------------------------------------
# Sources resolve to specs


def test_timm_source_takes_preprocessing_from_the_pretrained_config():
    from edgevit.models import get_spec

    spec = get_spec("timm:test_vit")
    cfg = _timm().models.get_pretrained_cfg("test_vit")
    assert spec.input_size == tuple(cfg.input_size[1:])
    assert spec.mean == tuple(cfg.mean) and spec.std == tuple(cfg.std)
    assert spec.crop_pct == cfg.crop_pct and spec.interpolation == cfg.interpolation
    assert spec.labels == "imagenet" and len(spec.label_names()) == 1000
    assert spec.slug == "test_vit"
    spec = get_spec("timm:vit_small_patch16_224.augreg_in21k")  # a tag: its own head (21k classes)
    assert len(spec.label_names()) == cfg_classes("vit_small_patch16_224.augreg_in21k")


def cfg_classes(name: str) -> int:
    return _timm().models.get_pretrained_cfg(name).num_classes


def test_unknown_names_suggest_the_right_source():
    from edgevit.models import get_spec

    with pytest.raises(UnknownModelError, match=r"timm:vit_small_patch16_224"):
        get_spec("vit_small_patch16_224")  # a timm name typed without the prefix
    with pytest.raises(UnknownModelError, match=r"did you mean timm:test_vit"):
        get_spec("timm:test_vitt")


def test_read_labels_from_lines_and_json(tmp_path):
    from edgevit.models.sources import read_labels

    (tmp_path / "a.txt").write_text("cat\n\ndog \nbird\n")
    (tmp_path / "b.json").write_text('["cat", "dog"]')
    assert read_labels(tmp_path / "a.txt") == ("cat", "dog", "bird")
    assert read_labels(str(tmp_path / "b.json")) == ("cat", "dog")
    (tmp_path / "bad.json").write_text('["cat", 3]')
    with pytest.raises(ConfigError, match="list of class names"):
        read_labels(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------
# Your classes: head size and names from flags or from the checkpoint, always equal to the outputs


@pytest.fixture(scope="module")
def five_class_checkpoint(tmp_path_factory):
    from edgevit.models.weights import save_weights

    model = _timm().create_model("test_vit", num_classes=5)
    path = tmp_path_factory.mktemp("ckpt") / "test_vit_5.safetensors"
    save_weights(model.eval(), path)
    return path


def test_checkpoint_head_sets_the_number_of_classes(five_class_checkpoint):
    from edgevit.models.sources import load_model

    with pytest.raises(ConfigError, match=r"has 5 outputs but 1000 class names.*--labels FILE with its 5"):
        load_model("timm:test_vit", weights=five_class_checkpoint)
    resolved = load_model("timm:test_vit", weights=five_class_checkpoint, labels=list("abcde"))
    assert resolved.labels == tuple("abcde")
    assert resolved.module.get_classifier().out_features == 5
    with pytest.raises(ConfigError, match=r"has 5 outputs but 4 class names are given"):
        load_model("timm:test_vit", weights=five_class_checkpoint, labels=list("abcd"))


def test_labels_and_outputs_must_match_for_every_kind_of_source(tmp_path):
    from edgevit.models.sources import load_model

    resolved = load_model("timm:test_vit", labels=["x", "y", "z"])  # random init: a head of 3
    assert resolved.module.get_classifier().out_features == 3
    with pytest.raises(ConfigError, match="pretrained head has 1000 outputs but 2 labels"):
        load_model("timm:test_vit", pretrained=True, labels=["x", "y"])
    three = _timm().create_model("test_vit", num_classes=3).eval()
    with pytest.raises(ConfigError, match="has 3 outputs but 1000 class names"):
        load_model(three)  # a timm module tells its preprocessing, not its classes' names
    with pytest.raises(ConfigError, match="has 3 outputs but 2 class names"):
        load_model(three, labels=["a", "b"])


def test_a_module_must_be_told_what_it_cannot_tell():
    import torch

    from edgevit.models.sources import load_model

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ConfigError) as err:
        load_model(net)
    assert "input_size" in str(err.value) and "mean" in str(err.value) and "labels" in str(err.value)
    resolved = load_model(net, input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, labels=["no", "yes"])
    assert resolved.spec.input_size == (8, 8) and resolved.labels == ("no", "yes")
    with pytest.raises(ModelError, match="does not run on a"):
        load_model(net, input_size=9, mean=(0.5,) * 3, std=(0.5,) * 3, labels=["no", "yes"])
    seg = torch.nn.Conv2d(3, 2, 1)  # a dense output, not class scores
    with pytest.raises(ModelError, match="not a vector of class scores"):
        load_model(seg, input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, labels=["no", "yes"])


def test_offline_pretrained_and_hub_sources_fail_fast(monkeypatch):
    from edgevit.models import get_spec
    from edgevit.models.sources import load_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the real probe: this machine has no hub
    from edgevit.models import hub

    hub._probe.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"not reachable.*--weights FILE"):
        load_model("timm:test_vit", pretrained=True)
    with pytest.raises(ModelError, match=r"not reachable.*save_pretrained"):
        get_spec("hf:google/vit-base-patch16-224")
    assert time.perf_counter() - start < 5.0


# ------------------------------------------------------------------------------------------------
# Exports of sources outside the catalog, verified on real photos


TARGETS = ("onnx", "tflite", "executorch")
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}


@pytest.mark.parametrize("target", TARGETS)
def test_export_timm_checkpoint_with_labels_via_cli(tmp_path, five_class_checkpoint, photos, target):
    labels = tmp_path / "classes.txt"
    labels.write_text("ant\nbee\ncat\ndog\neel\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    for i, (_, img) in enumerate(photos[:3]):
        img.save(mine / f"photo{i}.png")
    out = tmp_path / "out"
    res = _cli("export", "timm:test_vit", "--weights", str(five_class_checkpoint), "--labels", str(labels),
               "--target", target, "--out", str(out), "--verify-images", str(mine), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert Path(doc["path"]).name == f"test_vit_{target}_fp32{SUFFIX[target]}"
    assert doc["verification"]["passed"] and doc["verification"]["n_images"] == 3
    assert doc["verification"]["cosine_min"] >= FP32_COSINE
    assert doc["details"]["rewrites"]["replaced"], "edge rewrites should apply to a timm ViT"
    res = _cli("predict", doc["path"], str(mine / "photo0.png"), "--top-k", "5", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    top = json.loads(res.stdout.splitlines()[0])["top_k"]
    assert sorted(t["label"] for t in top) == ["ant", "bee", "cat", "dog", "eel"]


@pytest.mark.parametrize("target", TARGETS)
def test_export_nn_module_from_python(tmp_path, photos, target):
    from edgevit.converters import export
    from edgevit.runtimes import Classifier

    net = _timm().create_model("test_vit", num_classes=3).eval()
    with pytest.raises(ConfigError, match="has 3 outputs but 1000"):
        export(net, target=target, out=tmp_path)
    result = export(net, target=target, out=tmp_path, labels=["red", "green", "blue"], name="my_vit")
    assert result.path.name == f"my_vit_{target}_fp32{SUFFIX[target]}" and result.verification.passed
    assert result.details["rewrites"]["replaced"]
    clf = Classifier.load(result.path)
    assert clf.labels == ("red", "green", "blue")
    got = clf.logits(photos[0][1])
    import torch

    from edgevit.preprocess import preprocess

    x = torch.from_numpy(preprocess(photos[0][1], clf.metadata))
    with torch.no_grad():
        want = net(x).numpy()
    cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cos >= FP32_COSINE
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A transformers ViT and Swin from small configs (random init), saved with their processors."""
    tf = _transformers()
    root = tmp_path_factory.mktemp("hf")
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                                     image_std=[0.2, 0.25, 0.3])
    vit = tf.ViTForImageClassification(tf.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2}))
    swin = tf.SwinForImageClassification(tf.SwinConfig(
        image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
        id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1}))
    folders = {}
    for name, model in (("vit", vit), ("swin", swin)):
        folders[name] = root / name
        model.eval().save_pretrained(folders[name])
        processor.save_pretrained(folders[name])
    return folders


def test_hf_folder_spec_reads_config_and_processor(hf_folders):
    from edgevit.models import get_spec

    spec = get_spec(str(hf_folders["vit"]))
    assert spec.input_size == (32, 32) and spec.mean == (0.5, 0.4, 0.3) and spec.std == (0.2, 0.25, 0.3)
    assert spec.labels == ("cat", "dog", "bird") and spec.attention == "global"
    assert get_spec(f"hf:{hf_folders['swin']}").attention == "windowed"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "tflite", "executorch", "coreml"])
@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_hf_models_export_to_every_target_with_their_labels(hf_folders, tmp_path, target, kind):
    from edgevit.converters import export

    precision = "fp16" if target == "coreml" else "fp32"
    result = export(str(hf_folders[kind]), target=target, precision=precision, out=tmp_path)
    assert result.verification is not None
    if result.verification.ran:
        assert result.verification.passed and result.verification.cosine_min >= FP32_COSINE
    want = ("cat", "dog", "bird") if kind == "vit" else ("yes", "no")
    if target == "coreml":
        from edgevit.runtimes.coreml import read_coreml_metadata

        labels = read_coreml_metadata(result.path).labels
    else:
        from edgevit.runtimes import load

        labels = load(result.path).metadata.labels
    assert tuple(labels) == want
    if target != "coreml":
        assert result.details["rewrites"]["replaced"], f"no edge rewrite applied to the transformers {kind}"


def test_near_ties_do_not_fail_a_sound_reduced_precision_artifact():
    from edgevit.converters.verify import compare_logits

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((7, 10)).astype(np.float32)
    reference[0, :2] = [3.0, 2.999]  # the float model is undecided on image 0
    candidate = reference + rng.normal(0, 0.02, reference.shape).astype(np.float32)
    candidate[0, :2] = [2.98, 3.01]  # ... and the int8 artifact flips it, within its own noise
    report = compare_logits([f"img{i}" for i in range(7)], reference, candidate, "int8")
    assert report.passed and report.ties == ["img0"] and not report.disagreements
    candidate[1] = -candidate[1]  # a decided image that flips (and a broken cosine) still fails
    report = compare_logits([f"img{i}" for i in range(7)], reference, candidate, "int8")
    assert not report.passed


def test_a_feature_model_needs_num_classes_and_gets_generic_names():
    from edgevit.models.sources import load_model

    with pytest.raises(ConfigError, match="feature model without a classifier head.*--num-classes"):
        load_model("timm:eva02_tiny_patch14_224")  # timm's config: num_classes=0
    resolved = load_model("timm:eva02_tiny_patch14_224", num_classes=4)
    assert resolved.labels == ("class_0", "class_1", "class_2", "class_3")
    assert any("generic names" in note for note in resolved.notes)


def test_hf_folder_profiles_on_the_meta_device(hf_folders):
    """`edgevit bench` and `profile` count MACs on the meta device, where transformers refuses
    from_pretrained: the architecture is built from its config there."""
    from edgevit.measure.profile import profile_model

    assert profile_model(str(hf_folders["vit"]), (32, 32)).gmacs > 0
