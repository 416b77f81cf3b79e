"""ONNX end to end: dynamo export of one model per attention kind, fp32 parity on real photos
through onnxruntime, metadata round trip, single-file artifacts, threads, dynamic and static
batch, checksum, broken artifacts, option validation and failing-op reporting."""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

from edgevit.converters import export
from edgevit.errors import ArtifactError, ConfigError, ConversionError, MissingDependencyError
from edgevit.runtimes import Classifier, load

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# One model per attention kind (timm and edgevit implementations), each exported once.
KINDS = {
    "global": "vit_fmnist_tiny",
    "conv-hybrid": "mobilevit_xxs",
    "linear": "efficientvit_b0",
    "windowed": "vit_tiny_window",
    "cnn": "mobilenetv3_small_100",
}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module", params=list(KINDS))
def exported(request, tmp_path_factory, has_fmnist_weights):
    name = KINDS[request.param]
    pretrained = name == "vit_fmnist_tiny"
    if pretrained and not has_fmnist_weights:
        pytest.skip("models/weights/vit_fmnist_tiny.safetensors not trained yet (random init is covered by fmnist)")
    out = tmp_path_factory.mktemp(f"onnx-{request.param}")
    return export(name, "onnx", out=out, pretrained=pretrained)


@pytest.fixture(scope="module")
def fmnist(out_dir):
    """The small global-attention ViT, random init: cheap to export, used by the file tests."""
    return export("vit_fmnist_tiny", "onnx", out=out_dir / "fmnist")


@pytest.mark.slow
def test_fp32_parity_on_real_photos(exported):
    v = exported.verification
    assert v.ran and v.passed, v.summary()
    assert v.n_images >= 7
    assert v.top1_agreement == 1.0 or v.ties  # only numerical ties may flip
    assert v.cosine_min >= 0.9999  # fp32 tolerance
    assert v.max_abs_diff <= 1e-3 * max(1.0, v.max_abs_logit)
    d = exported.details
    assert d["opset"] == 18 and d["dynamic_batch"] is True
    assert d["nodes"] == sum(d["op_types"].values()) > 0
    assert "dynamo" in d["exporter"]


@pytest.mark.slow
def test_single_self_contained_file(exported):
    # No external-data side file, no leftover temporary: only the artifact in its folder.
    assert [p.name for p in exported.path.parent.iterdir()] == [exported.path.name]
    assert exported.path.suffix == ".onnx" and exported.bytes == exported.path.stat().st_size > 0


@pytest.mark.slow
def test_metadata_round_trips(exported):
    from edgevit.models import get_spec

    spec = get_spec(exported.model)
    rt = load(exported.path)
    meta = rt.metadata
    assert type(rt).__name__ == "ONNXRuntime" and rt.checksum is not None
    assert meta.model == spec.name and meta.target == "onnx" and meta.precision == "fp32"
    assert meta.labels == spec.label_names() and meta.attention == spec.attention
    assert meta.mean == pytest.approx(spec.mean) and meta.std == pytest.approx(spec.std)
    assert meta.input_size == spec.input_size and meta.color_mode == spec.color_mode
    assert meta.edgevit_version


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["global"], indirect=True)
def test_shipped_model_classifies_real_fashion_images(exported):
    from edgevit.data.samples import FASHION_SAMPLES_DIR

    assert exported.weights != "random-init"
    clf = Classifier.load(exported.path)
    files = sorted(FASHION_SAMPLES_DIR.glob("*.png"))
    assert len(files) >= 10
    correct = 0
    for f in files:
        truth = f.stem.split("_", 1)[1].replace("_", " ").replace("-", " ")
        label = clf.predict(f, top_k=1)[0].label.lower().replace("/", " ").replace("-", " ")
        correct += label == truth
    assert correct / len(files) >= 0.8


@pytest.mark.slow
def test_random_init_global_vit_parity(fmnist):
    v = fmnist.verification
    assert v.ran and v.passed and v.cosine_min >= 0.9999, v.summary()  # fp32 tolerance


@pytest.mark.slow
def test_dynamic_batch_matches_single_images(fmnist, photos):
    from edgevit.converters import get_converter

    facts = get_converter("onnx").structure(fmnist.path)
    assert facts["inputs"] == {"input": ["batch", 1, 28, 28]} and facts["outputs"] == {"logits": ["batch", 10]}
    assert facts["opset"] == 18 and facts["metadata_keys"] == ["edgevit", "edgevit.sha256"]
    clf = Classifier.load(fmnist.path, threads=2)
    assert clf.runtime.dynamic_batch
    batch = np.concatenate([clf.preprocess(img) for _, img in photos[:4]])
    single = np.stack([clf.runtime.run(batch[i : i + 1])[0] for i in range(4)])
    assert np.allclose(clf.runtime.run(batch), single, atol=1e-5)  # batching must not change logits
    preds = clf.predict(photos[0][1], top_k=3)
    assert [p.label for p in preds] == [clf.labels[p.index] for p in preds]


@pytest.mark.slow
def test_static_batch_and_other_opset(out_dir, photos):
    r = export("vit_fmnist_tiny", "onnx", out=out_dir / "static", options={"dynamic_batch": False, "opset": 20})
    assert r.verification.passed, r.verification.summary()
    assert r.details["opset"] == 20 and r.details["dynamic_batch"] is False
    static = load(r.path)
    assert not static.dynamic_batch and static.session.get_inputs()[0].shape == [1, 1, 28, 28]
    batch = np.concatenate([Classifier(static).preprocess(img) for _, img in photos[:3]])
    # The static-batch graph is fed in chunks of one, in order.
    rows = np.stack([static.run(batch[i : i + 1])[0] for i in range(3)])
    assert static.run(batch).shape == (3, 10)
    assert np.allclose(static.run(batch), rows, atol=1e-6)


@pytest.mark.slow
def test_fused_input_stage_with_dynamic_batch(out_dir, photos):
    """uint8 NHWC frames in, normalisation folded into the stem; traced with a dynamic batch."""
    r = export("mobilenetv3_small_100", "onnx", out=out_dir / "fused", fused_input=True)
    v = r.verification
    assert v.ran and v.passed and v.cosine_min >= 0.9999, v.summary()  # fp32 tolerance vs unfused float
    rt = load(r.path, threads=2)
    assert rt.metadata.fused_input and rt.metadata.layout == "NHWC" and rt.metadata.input_dtype == "uint8"
    assert rt.session.get_inputs()[0].type == "tensor(uint8)" and rt.dynamic_batch
    frames = np.concatenate([Classifier(rt).preprocess(img) for _, img in photos[:3]])
    assert frames.dtype == np.uint8 and frames.shape == (3, 224, 224, 3)
    rows = np.stack([rt.run(frames[i : i + 1])[0] for i in range(3)])
    assert np.allclose(rt.run(frames), rows, atol=1e-5)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_threads_setting_is_honoured(fmnist):
    gc.collect()
    sizes = {}
    for threads in (1, 3):
        before = _threads()
        rt = load(fmnist.path, threads=threads)
        assert rt.session.get_session_options().intra_op_num_threads == threads
        sizes[threads] = _threads() - before  # onnxruntime starts threads-1 pool workers
        del rt
        gc.collect()
    assert sizes[3] - sizes[1] == 2, sizes


def test_checksum_trailer_agrees_with_runtime():
    from edgevit.converters.onnx import CHECKSUM_KEY, checksum_trailer
    from edgevit.runtimes import onnx as ort_runtime

    digest = "0123456789abcdef" * 4
    assert CHECKSUM_KEY == ort_runtime.CHECKSUM_KEY
    assert checksum_trailer(digest) == ort_runtime._TRAILER_PREFIX + digest.encode()


@pytest.mark.slow
def test_bitflipped_weights_are_detected(fmnist, tmp_path):
    data = bytearray(fmnist.path.read_bytes())
    rng = np.random.default_rng(0)
    for i, pos in enumerate(rng.integers(64, len(data) - 200, size=6)):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / f"flip{i}.onnx"
        p.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError):  # checksum mismatch, or onnxruntime rejects the structure
            load(p)


@pytest.mark.slow
def test_resaved_edited_and_foreign_models(fmnist, tmp_path):
    import onnx

    model = onnx.load(str(fmnist.path))
    assert [p.key for p in model.metadata_props] == ["edgevit", "edgevit.sha256"]
    resaved = tmp_path / "resaved.onnx"
    onnx.save(model, str(resaved))  # re-serialised unchanged by onnx: still verifies
    assert load(resaved).checksum == load(fmnist.path).checksum is not None

    model.doc_string = "edited by another tool"
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    with pytest.raises(ArtifactError, match="checksum does not match.*delete its 'edgevit.sha256'"):
        load(edited)

    del model.metadata_props[1]  # the documented way to accept a deliberate edit
    onnx.save(model, str(edited))
    rt = load(edited)
    assert rt.checksum is None and rt.metadata.model == "vit_fmnist_tiny"

    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(ArtifactError, match="no edgevit metadata.*edgevit export"):
        load(plain)


@pytest.mark.slow
def test_truncated_artifact(fmnist, tmp_path):
    data = fmnist.path.read_bytes()
    for frac in (0.5, 0.9, 0.999):
        p = tmp_path / f"trunc{frac}.onnx"
        p.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(ArtifactError):
            load(p)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "looks like a PNG"),
        (np.random.default_rng(1).bytes(4096), "not a valid ONNX model"),
        (b"hello, I am not a model\n" * 10, "not a valid ONNX model"),
    ],
    ids=["empty", "png", "random", "text"],
)
def test_broken_artifacts(tmp_path, content, match):
    p = tmp_path / "m.onnx"
    p.write_bytes(content)
    with pytest.raises(ArtifactError, match=match):
        load(p)


def test_real_png_named_onnx(tmp_path, photos):
    p = tmp_path / "photo.onnx"
    photos[0][1].save(p, format="PNG")
    with pytest.raises(ArtifactError, match="PNG"):
        load(p)


def test_folder_named_onnx(tmp_path):
    d = tmp_path / "m.onnx"
    d.mkdir()
    with pytest.raises(ArtifactError, match="folder"):
        load(d)


def test_missing_onnxruntime(tmp_path, monkeypatch):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"\x08\x08")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r"edgevit\[onnx\]"):
        load(p)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"opset": 17}, "from 18 to 23"),
        ({"opset": "18"}, "integer"),
        ({"opset": True}, "integer"),
        ({"dynamic_batch": "yes"}, "true or false"),
        ({"opsett": 18}, "did you mean opset"),
    ],
)
def test_invalid_options_fail_before_work(tmp_path, options, match):
    with pytest.raises(ConfigError, match=match):
        export("vit_fmnist_tiny", "onnx", out=tmp_path, options=options)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_op_names_the_op(tmp_path):
    import torch

    from edgevit.converters import get_converter
    from edgevit.converters.export import build_metadata
    from edgevit.models import get_spec

    class CumMax(torch.nn.Module):  # aten.cummax has no ONNX translation in torchlib
        def forward(self, x):
            return torch.cummax(x.flatten(1), dim=1)[0][:, :10]

    converter = get_converter("onnx")
    spec = get_spec("vit_fmnist_tiny")
    meta = build_metadata(spec, "onnx", "fp32", spec.label_names(), "random-init")
    with pytest.raises(ConversionError, match="aten.cummax") as info:
        converter.convert(CumMax().eval(), torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx", meta,
                          converter.make_config())
    assert info.value.op == "aten.cummax"
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_runtime_needs_neither_torch_nor_onnx(fmnist, photos, tmp_path):
    import subprocess
    import textwrap

    img = tmp_path / "photo.png"
    photos[0][1].save(img)
    code = textwrap.dedent(
        f"""
        import sys
        class _Block:  # a device without torch, timm or the onnx package
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "timm", "torchvision", "onnx", "onnxscript"}}:
                    raise ImportError(name + " is blocked")
        sys.meta_path.insert(0, _Block())
        from edgevit.runtimes import Classifier
        clf = Classifier.load({str(fmnist.path)!r}, threads=1)
        assert len(clf.predict({str(img)!r}, top_k=3)) == 3 and clf.runtime.checksum
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_prepare_warms_attention_bias_caches_without_changing_the_math():
    import copy

    import torch

    from edgevit.converters import get_converter
    from edgevit.models import create_model

    model = create_model("levit_128s")
    with torch.no_grad():  # non-zero biases, so a wrong table would show
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.normal_(0, 1)
    reference = copy.deepcopy(model)
    converter = get_converter("onnx")
    prepared = converter.prepare(model, converter.make_config(options={"rewrite": False}))
    caches = [m.attention_bias_cache for m in prepared.modules() if hasattr(m, "get_attention_biases")]
    assert len(caches) == 11 and all(caches)  # filled: the exporter folds them instead of gathering
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(prepared(x), reference(x), atol=1e-6)


@pytest.mark.slow
def test_random_init_with_zeroed_scales_is_flagged(exported):
    """timm zero-initialises some MobileViT block scales: a random-init export says that those
    branches may be folded away (its size/speed/verification are not a trained model's)."""
    flagged = [w for w in exported.warnings if "all zero at initialisation" in w]
    if exported.model == "mobilevit_xxs":
        assert len(flagged) == 1 and "conv3_1x1.bn.weight" in flagged[0] and "--pretrained or --weights" in flagged[0]
    else:  # no zeroed scale (or trained weights): nothing to say
        assert not flagged, flagged
