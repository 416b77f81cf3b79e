"""TFLite end to end: export one model of each attention kind, verify on real photos through the
torch-free runtime, metadata round trip, overwrite protection, atomic writes, broken artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from edgevit.converters import export
from edgevit.errors import ArtifactError, ConfigError, ConversionError, OutputExistsError
from edgevit.runtimes import Classifier, load

# One model per attention kind (timm and edgevit implementations).
KINDS = {
    "global": "vit_fmnist_tiny",
    "conv-hybrid": "mobilevit_xxs",
    "linear": "efficientvit_b0",
    "windowed": "vit_tiny_window",
    "cnn": "mobilenetv3_small_100",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, has_fmnist_weights):
    out = tmp_path_factory.mktemp("tflite")
    results = {}
    for kind, name in KINDS.items():
        pretrained = name == "vit_fmnist_tiny" and has_fmnist_weights
        results[kind] = export(name, "tflite", out=out, pretrained=pretrained)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_fp32_parity_on_real_photos(exported, kind):
    r = exported[kind]
    v = r.verification
    assert v.ran and v.passed, v.summary()
    assert v.n_images >= 7
    assert v.top1_agreement == 1.0 or v.ties  # only numerical ties may flip
    assert v.cosine_min >= 0.9999
    assert v.max_abs_diff <= 1e-3 * max(1.0, v.max_abs_logit)
    assert r.path.is_file() and r.bytes == r.path.stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_metadata_round_trips(exported, kind):
    from edgevit.models import get_spec

    r = exported[kind]
    spec = get_spec(r.model)
    meta = load(r.path).metadata
    assert meta.model == spec.name and meta.target == "tflite" and meta.precision == "fp32"
    assert meta.labels == spec.label_names()
    assert meta.mean == pytest.approx(spec.mean) and meta.std == pytest.approx(spec.std)
    assert meta.input_size == spec.input_size and meta.color_mode == spec.color_mode
    assert meta.edgevit_version


@pytest.mark.slow
def test_classifier_top_k_and_threads(exported, photos):
    clf = Classifier.load(exported["conv-hybrid"].path, threads=2)
    preds = clf.predict(photos[0][1], top_k=5)
    assert len(preds) == 5
    scores = [p.score for p in preds]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert all(p.label == clf.labels[p.index] for p in preds)
    batch = np.concatenate([clf.preprocess(photos[i][1]) for i in range(3)])
    single = np.stack([clf.runtime.run(batch[i : i + 1])[0] for i in range(3)])
    assert np.allclose(clf.runtime.run(batch), single, atol=1e-5)


@pytest.mark.slow
def test_shipped_model_classifies_real_fashion_images(exported, has_fmnist_weights):
    if not has_fmnist_weights:
        pytest.skip("models/weights/vit_fmnist_tiny.safetensors not trained yet")
    from edgevit.data.samples import FASHION_SAMPLES_DIR

    clf = Classifier.load(exported["global"].path)
    files = sorted(FASHION_SAMPLES_DIR.glob("*.png"))
    assert len(files) >= 10
    correct = 0
    for f in files:
        truth = f.stem.split("_", 1)[1].replace("_", " ")
        label = clf.predict(f, top_k=1)[0].label.lower().replace("/", " ").replace("-", " ")
        correct += label == truth.replace("-", " ")
    assert correct / len(files) >= 0.8


@pytest.mark.slow
def test_refuses_to_overwrite_and_force_replaces(exported):
    r = exported["global"]
    before = r.path.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        export(r.model, "tflite", out=r.path.parent)
    assert r.path.read_bytes() == before
    again = export(r.model, "tflite", out=r.path, force=True, verify=False)
    assert again.path == r.path and r.path.is_file()


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    from edgevit.converters import tflite

    def boom(self, *a, **k):
        raise RuntimeError("failed to legalize operation 'tfl.mul'")

    monkeypatch.setattr(tflite.TFLiteConverter, "convert", boom)
    with pytest.raises(ConversionError, match="tfl.mul"):
        export("vit_fmnist_tiny", "tflite", out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    from edgevit.converters import tflite

    real = tflite.TFLiteConverter.convert

    def interrupted(self, model, example, path, metadata, config):
        real(self, model, example, path, metadata, config)
        assert path.exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(tflite.TFLiteConverter, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export("vit_fmnist_tiny", "tflite", out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_broken_parity_fails_loudly_and_leaves_nothing(tmp_path, monkeypatch):
    """An artifact whose numbers are off must not survive an fp32 export."""
    from edgevit.converters import tflite
    from edgevit.errors import VerificationError

    real = tflite.TFLiteConverter.convert

    def sabotage(self, model, example, path, metadata, config):
        import torch

        with torch.no_grad():
            model.head.weight.mul_(1.5)  # the artifact no longer matches the float model
        return real(self, model, example, path, metadata, config)

    monkeypatch.setattr(tflite.TFLiteConverter, "prepare", lambda self, m, c: __import__("copy").deepcopy(m))
    monkeypatch.setattr(tflite.TFLiteConverter, "convert", sabotage)
    with pytest.raises(VerificationError, match="does not match"):
        export("vit_fmnist_tiny", "tflite", out=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a TFLite"), (b"x" * 3, "not a TFLite")],
)
def test_broken_artifacts(tmp_path, content, match):
    p = tmp_path / "m.tflite"
    p.write_bytes(content)
    with pytest.raises(ArtifactError, match=match):
        load(p)


@pytest.mark.slow
def test_truncated_and_bitflipped_artifacts_are_refused_before_the_interpreter(exported, tmp_path):
    """The interpreter does not verify flatbuffers (a damaged table can crash the process; a flipped
    weight is not noticed at all), so the SHA-256 digest sealed at export is checked first: every
    damaged copy is an ArtifactError naming the damage, wherever the flip lands."""
    data = exported["global"].path.read_bytes()
    trunc = tmp_path / "trunc.tflite"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        load(trunc)
    rng = np.random.default_rng(0)
    # Tables at the start, then anywhere (weights, metadata, the digest itself).
    positions = [rng.integers(0, 4096, size=4) for _ in range(10)] + [rng.integers(0, len(data), size=1)
                                                                    for _ in range(10)]
    for i, where in enumerate(positions):
        flipped = bytearray(data)
        for pos in where:
            flipped[pos] ^= 0x01
        p = tmp_path / f"flip{i}.tflite"
        p.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError, match="corrupt|damaged|not a TFLite|no edgevit"):
            load(p)
    assert load(exported["global"].path).metadata.model == "vit_fmnist_tiny"


@pytest.mark.slow
def test_artifact_without_the_digest_is_refused_with_the_fix(exported, tmp_path):
    """An edgevit .tflite from before the digest, or another tool's file with edgevit metadata
    pasted in, is refused (re-export), not passed to the interpreter unchecked."""
    from ai_edge_litert.tools import flatbuffer_utils

    from edgevit.runtimes.tflite import DIGEST_KEY

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(exported["global"].path.read_bytes()))
    names = [m.name.decode() if isinstance(m.name, bytes) else m.name for m in model.metadata]
    assert DIGEST_KEY in names and "edgevit" in names
    model.metadata = [m for m, n in zip(model.metadata, names) if n != DIGEST_KEY]
    for m in model.buffers:
        if m.data is not None and bytes(m.data).startswith(b"edgevit-sha256:"):
            m.data = None
    p = tmp_path / "old.tflite"
    p.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with pytest.raises(ArtifactError, match=r"no edgevit integrity digest.*edgevit export --target tflite"):
        load(p)


@pytest.mark.slow
def test_re_embedding_metadata_re_seals_the_file(exported, tmp_path):
    """Replacing the metadata rewrites the entry in place: one metadata entry, one digest, and the
    file loads with the new metadata."""
    from edgevit.converters.tflite import embed_tflite_metadata
    from edgevit.runtimes.tflite import read_tflite_metadata

    rt = load(exported["global"].path)
    meta = rt.metadata.replace(labels=tuple(f"class {i}" for i in range(len(rt.metadata.labels))))
    data = exported["global"].path.read_bytes()
    for _ in range(2):
        data = embed_tflite_metadata(data, "edgevit", meta.to_json().encode())
    assert data.count(b"edgevit-sha256:") == 1
    assert len(data) - exported["global"].path.stat().st_size < 200  # the old entry's buffer is reused
    entries = read_tflite_metadata(data)
    assert {"edgevit", "edgevit_sha256"} <= set(entries) and entries["edgevit"] == meta.to_json().encode()
    p = tmp_path / "relabelled.tflite"
    p.write_bytes(data)
    assert load(p).metadata.labels[0] == "class 0"


def test_unknown_suffix_and_missing_file(tmp_path):
    p = tmp_path / "m.bin"
    p.write_bytes(b"123")
    with pytest.raises(ArtifactError, match="no runtime loads"):
        load(p)
    with pytest.raises(ArtifactError, match="no such artifact"):
        load(tmp_path / "gone.tflite")


def _tensor_names(path) -> list:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    return [t.name for g in model.subgraphs for t in g.tensors]


@pytest.mark.slow
def test_tensor_names_are_stripped_unless_asked_for(tmp_path, has_fmnist_weights):
    """litert-torch's module-path tensor names are debug strings: stripped by default (smaller
    file, same model), kept with ``--option tensor_names=true``; signatures and metadata stay."""
    stripped = export("vit_fmnist_tiny", "tflite", out=tmp_path / "stripped", pretrained=has_fmnist_weights)
    assert stripped.verification.passed
    assert not any(_tensor_names(stripped.path)) and stripped.details["tensor_names"].startswith("stripped")
    named = export("vit_fmnist_tiny", "tflite", out=tmp_path, pretrained=has_fmnist_weights,
                   options={"tensor_names": True})
    assert named.verification.passed
    names = _tensor_names(named.path)
    assert all(names) and any(b"Attention" in n for n in names) and named.details["tensor_names"] == "kept"
    assert stripped.bytes < named.bytes - 10_000
    a, b = load(stripped.path), load(named.path)
    assert a.metadata.model == b.metadata.model == "vit_fmnist_tiny"
    x = np.random.default_rng(0).standard_normal(a.metadata.input_shape(1)).astype(np.float32)
    np.testing.assert_array_equal(a.run(x)[0], b.run(x)[0])  # same weights, same graph
    with pytest.raises(ConfigError, match="tensor_names must be true or false"):
        export("vit_fmnist_tiny", "tflite", out=tmp_path / "bad", options={"tensor_names": "yes"})
    assert not (tmp_path / "bad").exists()
