"""Integrity and validation (issue 15, items 5-9): the ONNX digest cannot be bypassed by appending
bytes and unchecked files say so; the TFLite interpreter runs the bytes that were checked; outputs
that are not one score per label, and checkpoints with integer "float" weights, are refused;
artifact strings cannot drive the terminal; a label holding the digest marker exports and loads.

Each test failed on the code before these fixes. Two real exports of the small Fashion-MNIST ViT
(ONNX ~10 s, TFLite ~40 s) are shared by the module; every other artifact is derived from them or
built by hand."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edgevit.errors import ArtifactError, ModelError
from edgevit.runtimes import load

ESC_LABELS = (
    "\x1b]0;pwned\x07T-shirt",  # retitle the window
    "\x1b[2J\x1b[HTrouser",  # clear the screen
    "Pullover\n  100.00%  Forged  (0)",  # forge an output line
    "\u202eDress",  # bidi override
    "Coat\x9b31m",  # C1 CSI
    "Sandal\x7f",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@pytest.fixture(scope="module")
def onnx_art(tmp_path_factory, has_fmnist_weights):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from edgevit.converters import export

    out = tmp_path_factory.mktemp("iv-onnx")
    return export("vit_fmnist_tiny", "onnx", out=out, pretrained=has_fmnist_weights).path


@pytest.fixture(scope="module")
def tflite_art(tmp_path_factory, has_fmnist_weights):
    pytest.importorskip("ai_edge_litert")
    from edgevit.converters import export

    out = tmp_path_factory.mktemp("iv-tflite")
    return export("vit_fmnist_tiny", "tflite", out=out, pretrained=has_fmnist_weights).path


@pytest.fixture(scope="module")
def image():
    from edgevit.data.samples import FASHION_SAMPLES_DIR

    return sorted(FASHION_SAMPLES_DIR.glob("*.png"))[0]


def _sealed_onnx(model) -> bytes:
    """``model`` (an onnx ModelProto) serialized the way the converter seals it."""
    from edgevit.converters.onnx import CHECKSUM_KEY, checksum_trailer

    keep = [p for p in model.metadata_props if p.key != CHECKSUM_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    body = model.SerializeToString()
    return body + checksum_trailer(hashlib.sha256(body).hexdigest())


def _set_labels(model, labels) -> None:
    for p in model.metadata_props:
        if p.key == "edgevit":
            meta = json.loads(p.value)
            meta["labels"] = list(labels)
            p.value = json.dumps(meta)


def _foreign_onnx(metadata_json: str, out_shape: list, classes: int) -> bytes:
    """A model another tool could have written, the edgevit metadata pasted in, no checksum entry:
    Flatten -> MatMul -> Reshape to ``out_shape``; with a symbolic class dimension, 10 scores of
    which Compress keeps ``classes`` (a size no shape inference can know before it runs)."""
    from onnx import TensorProto, helper, numpy_helper

    symbolic = not isinstance(out_shape[-1], int)
    w = np.random.default_rng(0).standard_normal((28 * 28, 10 if symbolic else classes)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["scores"])]
    inits = [numpy_helper.from_array(w, "w")]
    if symbolic:
        nodes.append(helper.make_node("Compress", ["scores", "keep"], ["logits"], axis=1))
        inits.append(numpy_helper.from_array(np.arange(10) < classes, "keep"))
    else:
        nodes.append(helper.make_node("Reshape", ["scores", "shape"], ["logits"]))
        inits.append(numpy_helper.from_array(np.array(out_shape, np.int64), "shape"))
    graph = helper.make_graph(
        nodes, "foreign",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    helper.set_model_props(model, {"edgevit": metadata_json})
    return model.SerializeToString()


# --- 5. ONNX integrity --------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_digest_is_checked_whatever_follows_it(onnx_art, tmp_path):
    """An edited bias with the stale entry still in place, then anything appended after that entry
    (a metadata entry, one protobuf field): refused. Unedited bytes with something appended are
    not what was sealed either: refused too."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_art))
    bias = next(t for t in model.graph.initializer if t.name.endswith("bias") and "head" in t.name)
    values = numpy_helper.to_array(bias).copy()
    values[1] += 100.0  # every image "Trouser 100%"
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    edited = model.SerializeToString()  # the stale edgevit.sha256 entry is still the last one
    note = onnx.ModelProto()
    note.metadata_props.add(key="note", value="re-saved by another tool")
    tails = [note.SerializeToString(), b"\x28\x01"]  # a metadata entry; field 5 (model_version)
    original = onnx_art.read_bytes()
    for tail in tails:
        for base in (edited, original):
            p = tmp_path / "edited.onnx"
            p.write_bytes(base + tail)
            with pytest.raises(ArtifactError, match="checksum does not match"):
                load(p)


@pytest.mark.slow
def test_onnx_doubled_entry_is_refused_and_an_export_verifies(onnx_art, tmp_path):
    import onnx

    rt = load(onnx_art)
    assert rt.integrity == "verified" and rt.checksum
    model = onnx.load(str(onnx_art))
    entry = model.metadata_props[-1]
    assert entry.key == "edgevit.sha256"
    doubled = model.SerializeToString() + onnx.ModelProto(metadata_props=[entry]).SerializeToString()
    (tmp_path / "doubled.onnx").write_bytes(doubled)
    with pytest.raises(ArtifactError, match="2 'edgevit.sha256'"):
        load(tmp_path / "doubled.onnx")


@pytest.mark.slow
def test_onnx_without_entry_is_reported_unchecked_in_predict_and_verify(onnx_art, tmp_path, image, capsys):
    import onnx

    from edgevit.cli import main

    model = onnx.load(str(onnx_art))
    del model.metadata_props[-1]  # the documented way to accept a deliberate edit
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(model.SerializeToString())
    assert load(foreign).integrity == "unchecked" and load(onnx_art).integrity == "verified"

    for path, word in ((foreign, "unchecked"), (onnx_art, "verified")):
        assert main(["predict", str(path), str(image), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["integrity"] == word
        assert main(["predict", str(path), str(image)]) == 0
        assert f"integrity {word}" in capsys.readouterr().out.lower()
    assert main(["verify", str(foreign), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["integrity"] == "unchecked"
    assert main(["verify", str(foreign), str(image)]) == 0
    assert "integrity: UNCHECKED" in capsys.readouterr().out


# --- 6. TFLite runs the checked bytes -----------------------------------------------------------


@pytest.mark.slow
def test_tflite_interpreter_runs_the_bytes_that_were_checked(tflite_art, tmp_path, image, monkeypatch):
    """The file is replaced between the digest check and the interpreter: the checked bytes run."""
    from edgevit.runtimes import Classifier
    from edgevit.runtimes import tflite as tflite_runtime

    expected = Classifier.load(tflite_art).logits(image)
    real, engine = tflite_runtime._interpreter_class()
    path = tmp_path / "swapped.tflite"
    path.write_bytes(tflite_art.read_bytes())
    calls = []

    class Swapping(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            calls.append(kwargs)
            path.write_bytes(b"TFL3" * 64)  # replaced after the check
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tflite_runtime, "_interpreter_class", lambda: (Swapping, engine))
    clf = Classifier.load(path)
    assert calls and "model_path" not in calls[0] and calls[0].get("model_content")
    np.testing.assert_array_equal(clf.logits(image), expected)


# --- 7. outputs vs labels, weight dtypes --------------------------------------------------------


@pytest.mark.slow
def test_tflite_label_count_differing_from_outputs_is_refused(tflite_art, tmp_path):
    from edgevit.converters.tflite import embed_tflite_metadata

    meta = load(tflite_art).metadata.replace(labels=("a", "b", "c"))
    p = tmp_path / "three.tflite"
    p.write_bytes(embed_tflite_metadata(tflite_art.read_bytes(), "edgevit", meta.to_json().encode()))
    with pytest.raises(ArtifactError, match=r"10 class scores.*3 labels"):
        load(p)


@pytest.mark.slow
def test_onnx_outputs_not_one_score_per_label_are_refused(onnx_art, tmp_path):
    """Foreign ONNX files (no checksum entry) included: a label count that differs from the
    output size, an output that is not (batch, classes), and a symbolic class dimension whose
    actual size differs (refused when it runs)."""
    from edgevit.runtimes import Classifier

    meta = load(onnx_art).metadata.to_json()  # 10 labels
    cases = {
        "five.onnx": ([1, 5], 5, r"5 class scores but its metadata has 10 labels"),
        "rank3.onnx": ([1, 2, 5], 10, r"shape \(1, 2, 5\), not a vector of class scores \(batch, 10\)"),
    }
    for name, (shape, classes, message) in cases.items():
        (tmp_path / name).write_bytes(_foreign_onnx(meta, shape, classes))
        with pytest.raises(ArtifactError, match=message):
            load(tmp_path / name)
    (tmp_path / "symbolic.onnx").write_bytes(_foreign_onnx(meta, [1, "classes"], 7))
    clf = Classifier.load(tmp_path / "symbolic.onnx")
    assert clf.runtime.integrity == "unchecked"
    with pytest.raises(ArtifactError, match=r"returned 7 scores.*10 labels"):
        clf.logits(np.zeros((28, 28), np.uint8))
    (tmp_path / "fine.onnx").write_bytes(_foreign_onnx(meta, [1, 10], 10))
    assert load(tmp_path / "fine.onnx").integrity == "unchecked"


def test_coreml_output_not_matching_labels_is_refused():
    """CoreMLRuntime (macOS) checks the spec before Core ML compiles it; off macOS `edgevit verify`
    reports the same mismatch as a structural failure."""
    pytest.importorskip("coremltools")
    from coremltools.proto import Model_pb2

    from edgevit.metadata import ArtifactMetadata
    from edgevit.runtimes.coreml import check_coreml_outputs

    meta = ArtifactMetadata(model="m", target="coreml", precision="fp32", input_size=(28, 28), mean=(0.5,),
                            std=(0.5,), labels=tuple(str(i) for i in range(10)), color_mode="L")
    spec = Model_pb2.Model()
    out = spec.description.output.add()
    out.name = "logits"
    out.type.multiArrayType.shape.extend([1, 4])
    with pytest.raises(ArtifactError, match=r"4 class scores but its metadata has 10 labels"):
        check_coreml_outputs(spec, meta, "m.mlpackage")
    out.type.multiArrayType.shape.append(10)
    with pytest.raises(ArtifactError, match=r"shape \(1, 4, 10\), not a vector of class scores"):
        check_coreml_outputs(spec, meta, "m.mlpackage")
    del out.type.multiArrayType.shape[:]
    out.type.multiArrayType.shape.extend([1, 10])
    check_coreml_outputs(spec, meta, "m.mlpackage")


@pytest.mark.parametrize("dtype", ["bool", "int64", "uint8"])
def test_checkpoint_with_integer_float_parameters_is_refused(tmp_path, dtype):
    import torch

    from edgevit.models import create_model
    from edgevit.models.weights import load_weights, save_weights

    model = create_model("vit_fmnist_tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cast = [k for k, v in state.items() if v.is_floating_point() and k.endswith("weight")][:2]
    for k in cast:
        state[k] = state[k].to(getattr(torch, dtype))
    ckpt = tmp_path / f"{dtype}.safetensors"
    save_weights(state, ckpt)
    with pytest.raises(ModelError, match="bool or integer") as info:
        load_weights(create_model("vit_fmnist_tiny"), ckpt)
    assert all(k in str(info.value) for k in cast) and dtype in str(info.value)


# --- 8. terminal injection ----------------------------------------------------------------------


def test_safe_text_escapes_control_and_bidi_characters():
    from edgevit._text import safe_text

    assert safe_text("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert safe_text("x\ny\tz\r") == "x\\x0ay\\x09z\\x0d"
    assert safe_text("\x00\x7f\x9b") == "\\x00\\x7f\\x9b"
    assert safe_text("\u202eabc\u2066\u200f") == "\\u202eabc\\u2066\\u200f"
    assert safe_text("Ankle boot, T-shirt/top, caf\u00e9 \u732b") == "Ankle boot, T-shirt/top, caf\u00e9 \u732b"


@pytest.mark.slow
def test_predict_and_bench_show_artifact_strings_escaped(onnx_art, tmp_path, image, capsys):
    import onnx

    from edgevit.cli import main

    model = onnx.load(str(onnx_art))
    _set_labels(model, ESC_LABELS)
    p = tmp_path / "labels.onnx"
    p.write_bytes(_sealed_onnx(model))
    assert main(["predict", str(p), str(image), "--top-k", "10"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x7f\x9b\u202e"), out
    assert "\\x1b]0;pwned\\x07T-shirt" in out and "\\u202eDress" in out
    assert "Pullover\\x0a  100.00%  Forged  (0)" in out
    assert not any(line.lstrip().startswith("100.00%  Forged") for line in out.splitlines())
    assert main(["predict", str(p), str(image), "--json", "--top-k", "10"]) == 0
    labels = {e["label"] for e in json.loads(capsys.readouterr().out)["top_k"]}
    assert labels == set(ESC_LABELS)  # JSON keeps the exact strings (json.dumps escapes them)

    from edgevit.measure.bench import BenchReport, format_bench
    from edgevit.cli.bench import _escaped

    report = BenchReport(rows=[{"name": "evil\x1b]0;x\x07", "model": "m\x1b[2J", "runtime": "onnx", "artifact": "a\nb"}],
                         machine={"cpu": "c\x1b[31m"}, settings={"threads": 1, "warmup": 1, "runs": 1, "image": "i"})
    for fmt in ("table", "md", "csv"):
        text = format_bench(_escaped(report), fmt)
        assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text, fmt


# --- 9. the digest marker inside a label --------------------------------------------------------


@pytest.mark.slow
def test_tflite_label_holding_the_digest_marker_seals_and_verifies(tflite_art, tmp_path):
    from edgevit.converters.tflite import embed_tflite_metadata
    from edgevit.runtimes.integrity import DIGEST_PREFIX

    marker = DIGEST_PREFIX.decode()
    meta = load(tflite_art).metadata
    labels = (f"Trouser {marker}{'0' * 64}", f"{marker}{'f' * 64}", *meta.labels[2:])
    data = embed_tflite_metadata(tflite_art.read_bytes(), "edgevit", meta.replace(labels=labels).to_json().encode())
    assert data.count(DIGEST_PREFIX) == 3
    p = tmp_path / "marker.tflite"
    p.write_bytes(data)
    rt = load(p)
    assert rt.integrity == "verified" and rt.metadata.labels == labels
    assert rt.run(np.zeros(meta.input_shape(1), np.float32)).shape == (1, 10)
    # The marker text in the label is content like any other: changing it is an edit.
    at = data.index(f"{marker}{'f' * 64}".encode()) + len(marker)
    p.write_bytes(data[:at] + b"e" + data[at + 1 :])
    with pytest.raises(ArtifactError, match="does not match"):
        load(p)
