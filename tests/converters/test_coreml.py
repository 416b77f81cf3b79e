"""CoreML target and runtime.

Off macOS Core ML cannot predict, so the exports here are checked structurally (inputs, outputs,
metadata, labels, op counts, weight and compute precision, and the captured graph against eager
torch); the parity test on real photos runs on macOS only and is skipped elsewhere with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgevit.errors import ArtifactError, ConfigError

pytest.importorskip("coremltools")

ON_MACOS = sys.platform == "darwin"

# One model per attention kind; both precisions on the small ones, both frontends on the tiny one.
CASES = [
    ("vit_fmnist_tiny", "fp32", "export"),
    ("vit_fmnist_tiny", "fp16", "trace"),
    ("mobilevit_xxs", "fp16", "export"),
    ("efficientvit_b0", "fp32", "export"),
    ("vit_tiny_window", "fp16", "export"),
    ("mobilenetv3_small_100", "fp16", "export"),
]

# Ops each attention kind must show in the ML Program (and ops it must not).
EXPECTED_OPS = {
    "global": ({"matmul", "softmax", "layer_norm"}, set()),
    "conv-hybrid": ({"conv", "matmul", "softmax"}, set()),
    "linear": ({"conv", "matmul"}, {"softmax"}),  # ReLU linear attention: no softmax anywhere
    "windowed": ({"matmul", "softmax", "layer_norm"}, set()),
    "cnn": ({"conv"}, {"matmul", "softmax"}),
}


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def exported(request, tmp_path_factory, has_fmnist_weights):
    """An ExportResult with ``.rebuild`` (create_model kwargs for the same float model): random-init
    models are saved first so the macOS parity test compares against the exported weights."""
    import torch

    from edgevit.converters import export
    from edgevit.models import create_model
    from edgevit.models.weights import save_weights

    model, precision, frontend = request.param
    out = tmp_path_factory.mktemp(f"coreml-{model}-{precision}")
    if model == "vit_fmnist_tiny" and has_fmnist_weights:
        build = {"pretrained": True}
    else:
        torch.manual_seed(0)
        save_weights(create_model(model), out / "weights.safetensors")
        build = {"weights": out / "weights.safetensors"}
    result = export(model, "coreml", precision, out=out, options={"frontend": frontend}, **build)
    result.rebuild = build  # type: ignore[attr-defined]
    return result


@pytest.fixture(scope="module")
def package(tmp_path_factory, has_fmnist_weights):
    """One small fp16 package for the runtime and broken-input tests."""
    from edgevit.converters import export

    out = tmp_path_factory.mktemp("coreml-runtime")
    return export("vit_fmnist_tiny", "coreml", "fp16", out=out, pretrained=has_fmnist_weights).path


@pytest.mark.slow
def test_export_writes_a_package_with_the_contract_io(exported):
    from edgevit.converters.base import get_converter
    from edgevit.models import get_spec

    spec = get_spec(exported.model)
    path = exported.path
    assert path.is_dir() and path.suffix == ".mlpackage" and (path / "Manifest.json").is_file()
    assert exported.bytes > 10_000
    structure = get_converter("coreml").structure(path)
    assert structure["model_type"] == "mlProgram"
    assert structure["specification_version"] >= 7  # iOS16 / macOS13
    assert structure["inputs"] == [
        {"name": "input", "type": "multiArrayType", "shape": [1, spec.in_chans, *spec.input_size], "dtype": "fp32"}
    ]
    n_classes = len(spec.label_names())
    assert structure["outputs"] == [{"name": "logits", "type": "multiArrayType", "shape": [1, n_classes], "dtype": "fp32"}]


@pytest.mark.slow
def test_metadata_and_labels_travel_in_the_package(exported):
    from edgevit.models import get_spec
    from edgevit.runtimes.coreml import read_coreml_metadata, read_coreml_spec

    spec = get_spec(exported.model)
    meta = read_coreml_metadata(exported.path)
    assert meta.model == spec.name and meta.target == "coreml" and meta.precision == exported.precision
    assert meta.labels == spec.label_names()
    assert (meta.mean, meta.std, meta.input_size) == (tuple(spec.mean), tuple(spec.std), tuple(spec.input_size))
    assert (meta.layout, meta.input_dtype, meta.attention) == ("NCHW", "float32", spec.attention)
    user = dict(read_coreml_spec(exported.path).description.metadata.userDefined)
    assert json.loads(user["classes"]) == list(spec.label_names())


@pytest.mark.slow
def test_precision_is_the_requested_compute_and_weight_precision(exported):
    details = exported.details
    other = "fp32" if exported.precision == "fp16" else "fp16"
    assert details["compute_precision"] == exported.precision
    weights = details["weights"]
    assert weights[exported.precision]["elements"] > 1000
    assert other not in weights, f"{other} weights left in a {exported.precision} package: {weights}"
    ops = details["ops"]
    if exported.precision == "fp16":  # fp32 input cast to fp16 and the logits cast back
        assert ops.get("cast", 0) >= 2
    else:
        assert "cast" not in ops


@pytest.mark.slow
def test_op_counts_show_the_attention_kind(exported):
    from edgevit.models import get_spec

    attention = get_spec(exported.model).attention
    ops = exported.details["ops"]
    assert sum(ops.values()) > 10
    required, forbidden = EXPECTED_OPS[attention]
    assert required <= set(ops), f"{exported.model}: missing {required - set(ops)} in {ops}"
    assert not (forbidden & set(ops)), f"{exported.model}: unexpected {forbidden & set(ops)} in {ops}"
    if attention in ("global", "windowed", "conv-hybrid"):
        assert ops["softmax"] >= 1 and ops["matmul"] >= 2 * ops["softmax"]  # QK^T and AV per softmax
    if exported.model == "vit_tiny_window":  # the project's window partition stays at rank <= 5
        assert exported.details["max_rank"] <= 5


@pytest.mark.slow
def test_captured_graph_matches_eager_torch(exported):
    """The graph handed to coremltools is checked against the eager model (tolerance 1e-4 x max|logit|)."""
    capture = exported.details["graph_capture"]
    assert capture["passed"]
    assert capture["max_abs_diff"] <= 1e-4 * max(capture["max_abs_logit"], 1.0)


@pytest.mark.slow
def test_verification_is_structural_off_macos(exported):
    report = exported.verification
    if ON_MACOS:
        assert report.ran and report.passed, report.summary()
    else:
        assert not report.ran and "structural" in report.note


@pytest.mark.slow
@pytest.mark.macos
@pytest.mark.skipif(not ON_MACOS, reason="Core ML prediction needs macOS (Apple's Core ML framework)")
def test_prediction_matches_torch_on_real_photos(exported):
    from edgevit.converters.verify import TOLERANCES, verify_runtime
    from edgevit.models import create_model, get_spec
    from edgevit.runtimes import load
    from edgevit.data.samples import sample_images

    spec = get_spec(exported.model)
    model = create_model(exported.model, **exported.rebuild)
    assert exported.verification.ran and exported.verification.passed, exported.verification.summary()
    runtime = load(exported.path)
    report = verify_runtime(runtime, model, sample_images(spec.labels), exported.precision)
    # fp32: cosine >= 0.9999, full top-1 agreement, max abs diff <= 1e-3 x max|logit|;
    # fp16: cosine >= 0.999 and top-1 agreement >= 99.5%.
    assert report.tolerance == TOLERANCES[exported.precision]
    assert report.passed, report.summary()
    assert runtime.run(runtime_batch(runtime, 3)).shape == (3, len(spec.label_names()))


def runtime_batch(runtime, n):
    import numpy as np

    return np.random.default_rng(0).standard_normal(runtime.metadata.input_shape(n)).astype(np.float32)


@pytest.mark.slow
def test_ios18_target_uses_the_fused_attention_op(tmp_path):
    """From iOS18/macOS15 Core ML has scaled_dot_product_attention: one op per attention layer
    instead of matmul + softmax + matmul (edgevit's explicit-matmul attention is switched to it)."""
    from edgevit.converters import export

    result = export("vit_fmnist_tiny", "coreml", "fp16", out=tmp_path, options={"deployment_target": "iOS18"})
    ops = result.details["ops"]
    assert result.details["deployment_target"] == "iOS18 (macOS15)"
    assert result.details["fused_attention_rewrites"] == 4
    assert ops.get("scaled_dot_product_attention") == 4, ops
    assert "softmax" not in ops and "matmul" not in ops, ops


def test_fused_attention_rewrite_keeps_the_math():
    """Reference path vs fused path, same weights: max abs diff <= 1e-5 x max|logit| (fp32)."""
    import copy

    import torch

    from edgevit.converters.coreml import use_fused_sdpa
    from edgevit.models import create_model

    torch.manual_seed(0)
    reference = create_model("vit_fmnist_tiny")
    fused = copy.deepcopy(reference)
    assert use_fused_sdpa(fused) == 4
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        ref, out = reference(x), fused(x)
    assert torch.allclose(out, ref, rtol=0, atol=1e-5 * max(ref.abs().max().item(), 1.0))
    assert use_fused_sdpa(create_model("mobilenetv3_small_100")) == 0


def _alias_net():
    """A tiny classifier whose exported graph holds an aten.alias node, as Swin's does."""
    import torch
    from torch import nn

    class AliasNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 5)

        def forward(self, x):
            y = torch.ops.aten.alias(self.conv(x))
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    return AliasNet().eval()


@pytest.mark.slow
def test_alias_nodes_are_removed_so_coremltools_converts(tmp_path):
    """coremltools' torch.export frontend fails with `Unsupported fx node alias` (Swin); the
    converter drops the (identity) alias nodes and checks the graph against eager torch."""
    import coremltools as ct
    import numpy as np
    import torch

    from edgevit.converters.base import get_converter
    from edgevit.converters.coreml import _remove_alias_nodes
    from edgevit.metadata import ArtifactMetadata

    net, x = _alias_net(), torch.randn(1, 3, 8, 8)
    program = torch.export.export(net, (x,)).run_decompositions({})
    with pytest.raises(Exception, match="alias"):
        ct.convert(program, inputs=[ct.TensorType(name="input", shape=(1, 3, 8, 8), dtype=np.float32)],
                   convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
    assert _remove_alias_nodes(program) == 1
    assert not [n for n in program.graph.nodes if n.target is torch.ops.aten.alias.default]

    coreml = get_converter("coreml")
    meta = ArtifactMetadata(model="alias_net", target="coreml", precision="fp32", input_size=(8, 8),
                            mean=(0.5,) * 3, std=(0.25,) * 3, labels=tuple("abcde"))
    out = coreml.convert(net, x, tmp_path / "alias.mlpackage", meta, coreml.make_config("fp32"))
    assert out.details["graph_capture"]["alias_nodes_removed"] == 1
    assert out.details["graph_capture"]["max_abs_diff"] <= 1e-6
    assert out.details["ops"]["conv"] == 1


# --- runtime -------------------------------------------------------------------------------


def test_mlpackage_suffix_picks_the_coreml_runtime():
    from edgevit.runtimes import runtime_for_path
    from edgevit.runtimes.coreml import CoreMLRuntime

    assert runtime_for_path("m.mlpackage") is CoreMLRuntime
    assert runtime_for_path("m.mlmodel") is CoreMLRuntime


@pytest.mark.slow
@pytest.mark.skipif(ON_MACOS, reason="checks the error raised where Core ML cannot predict")
def test_runtime_off_macos_raises_a_clear_error(package):
    from edgevit.runtimes import load
    from edgevit.runtimes.coreml import UnsupportedPlatformError

    with pytest.raises(UnsupportedPlatformError, match=r"needs macOS 13.*edgevit verify"):
        load(package)


@pytest.mark.slow
@pytest.mark.skipif(ON_MACOS, reason="checks the error raised where Core ML cannot predict")
def test_runtime_imports_neither_torch_nor_coremltools_to_refuse(package):
    """The device module is torch-free, and refusing off macOS does not pay coremltools' import."""
    code = textwrap.dedent(
        f"""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "timm", "torchvision"}}:
                    raise ImportError(name + " is blocked")
                return None
        sys.meta_path.insert(0, _Block())
        from edgevit.runtimes import load
        from edgevit.runtimes.coreml import UnsupportedPlatformError
        try:
            load({str(package)!r})
        except UnsupportedPlatformError:
            pass
        else:
            raise SystemExit("no error")
        assert "coremltools" not in sys.modules
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --- broken artifacts ------------------------------------------------------------------------


def _manifest(root: Path, rel: str = "com.apple.CoreML/model.mlmodel") -> None:
    root.mkdir()
    manifest = {
        "fileFormatVersion": "1.0.0",
        "itemInfoEntries": {"id": {"author": "com.apple.CoreML", "name": "model.mlmodel", "path": rel}},
        "rootModelIdentifier": "id",
    }
    (root / "Manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "no Manifest.json"),
        (lambda p: p.write_bytes(b"zip?"), "is a file, but a .mlpackage is a folder"),
        (lambda p: (p.mkdir(), (p / "Manifest.json").write_text("{not json")), "malformed Manifest.json"),
        (lambda p: (p.mkdir(), (p / "Manifest.json").write_text('{"itemInfoEntries": {}}')), "malformed Manifest.json"),
        (lambda p: _manifest(p), "is incomplete"),
        (lambda p: _manifest(p, "../../escape.mlmodel"), "points outside the package"),
        (
            lambda p: (_manifest(p), (p / "Data/com.apple.CoreML").mkdir(parents=True),
                       (p / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"")),
            "is truncated",
        ),
    ],
    ids=["empty-folder", "file", "bad-json", "no-root", "no-model", "escape", "empty-model"],
)
def test_broken_packages_raise_artifact_error(tmp_path, make, message):
    from edgevit.runtimes import load

    path = tmp_path / "broken.mlpackage"
    make(path)
    with pytest.raises(ArtifactError, match=message):
        load(path)


def test_missing_and_empty_artifacts(tmp_path):
    from edgevit.runtimes import load

    with pytest.raises(ArtifactError, match="no such artifact"):
        load(tmp_path / "absent.mlpackage")
    empty = tmp_path / "empty.mlmodel"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty"):
        load(empty)


def test_corrupt_specification_raises_artifact_error(tmp_path):
    from edgevit.runtimes.coreml import read_coreml_spec

    path = tmp_path / "garbage.mlpackage"
    _manifest(path)
    (path / "Data/com.apple.CoreML").mkdir(parents=True)
    (path / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\xff\xfe not a protobuf " * 50)
    with pytest.raises(ArtifactError, match="corrupt CoreML model"):
        read_coreml_spec(path)


@pytest.mark.slow
def test_truncated_and_unlabelled_packages(package, tmp_path):
    import coremltools as ct

    from edgevit.runtimes.coreml import read_coreml_metadata, read_coreml_spec

    truncated = tmp_path / "truncated.mlpackage"
    shutil.copytree(package, truncated)
    model_file = truncated / "Data/com.apple.CoreML/model.mlmodel"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="corrupt CoreML model"):
        read_coreml_spec(truncated)

    spec = read_coreml_spec(package)
    del spec.description.metadata.userDefined["edgevit"]
    foreign = tmp_path / "foreign.mlpackage"
    ct.utils.save_spec(spec, str(foreign), weights_dir=str(package / "Data/com.apple.CoreML/weights"))
    with pytest.raises(ArtifactError, match="no edgevit metadata"):
        read_coreml_metadata(foreign)


@pytest.mark.slow
def test_check_package_verifies_structure_against_the_embedded_metadata(package, tmp_path):
    """The structural verification `edgevit verify` can run off macOS."""
    import coremltools as ct

    from edgevit.converters.coreml import check_package
    from edgevit.runtimes.coreml import read_coreml_spec

    good = check_package(package)
    assert good["passed"] and good["problems"] == [], good["problems"]
    assert good["structure"]["compute_precision"] == "fp16"

    spec = read_coreml_spec(package)
    spec.description.metadata.userDefined["classes"] = json.dumps(["only", "two"])
    spec.description.output[0].type.multiArrayType.shape[1] = 7
    tampered = tmp_path / "tampered.mlpackage"
    ct.utils.save_spec(spec, str(tampered), weights_dir=str(package / "Data/com.apple.CoreML/weights"))
    bad = check_package(tampered)
    assert not bad["passed"]
    assert any("output is" in p for p in bad["problems"]) and any("labels" in p for p in bad["problems"])


# --- configuration ---------------------------------------------------------------------------


def test_config_errors_before_any_work():
    from edgevit.converters.base import get_converter

    coreml = get_converter("coreml")
    assert coreml.suffix == ".mlpackage" and coreml.runs_here is ON_MACOS
    assert coreml.make_config("fp16").options == {"frontend": "export", "deployment_target": "iOS16", "fused_attention": True,
                                                  "weights": "float"}
    with pytest.raises(ConfigError, match="fused_attention must be true or false"):
        coreml.make_config("fp16", {"fused_attention": "yes"})
    with pytest.raises(ConfigError, match="does not support precision 'int8-dynamic'"):
        coreml.make_config("int8-dynamic")
    with pytest.raises(ConfigError, match="frontend must be one of export, trace"):
        coreml.make_config("fp16", {"frontend": "onnx"})
    with pytest.raises(ConfigError, match="deployment_target must be one of iOS16, iOS17, iOS18"):
        coreml.make_config("fp16", {"deployment_target": "iOS15"})
    with pytest.raises(ConfigError, match="does not take uint8 frames"):
        coreml.make_config("fp16", fused_input=True)
