"""ONNX Runtime's transformer fusions (converters/onnx_fusion.py): which models they apply to, the
fusable attention form against the modules it replaces, and an exported ViT fused into
com.microsoft contrib ops that still carries its metadata, loads in edgevit's ONNX runtime and
verifies against the float model on real images at the fp32 tolerance."""

from __future__ import annotations

import contextlib
import copy
from unittest import mock

import numpy as np
import pytest
import torch

from edgevit.converters.onnx_fusion import (
    CONTRIB_DOMAIN,
    attention_geometry,
    fuse_for_onnxruntime,
    prepare_for_ort_fusion,
    write_onnx,
)
from edgevit.models import create_model, get_spec

pytest.importorskip("onnxruntime.transformers.optimizer")

# |fused-form - reference| <= RTOL * max|reference| + ATOL: the form splits one qkv matmul in
# three and divides by sqrt(d) after Q K^T instead of scaling Q, a few float32 ulps apart.
RTOL, ATOL = 1e-5, 1e-6
MODEL = "vit_fmnist_tiny"  # 4 blocks of standard attention (edgevit FullAttention), trained weights shipped


def _randomise_biases(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_geometry_of_vits_and_refusal_of_others():
    assert attention_geometry(create_model("deit_tiny_patch16_224"))[0] == (3, 192)
    assert attention_geometry(create_model(MODEL))[0] == (4, 64)
    geometry, reason = attention_geometry(create_model("mobilenetv3_small_100"))
    assert geometry is None and "no multi-head self-attention" in reason
    geometry, reason = attention_geometry(create_model("vit_tiny_window"))  # windowed: not standard attention
    assert geometry is None and "WindowAttention" in reason


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", MODEL])
def test_fusable_form_keeps_the_math(name, photos):
    from edgevit.converters.export import build_metadata
    from edgevit.preprocess import preprocess

    spec = get_spec(name)
    reference = _randomise_biases(create_model(name))
    swapped = copy.deepcopy(reference)
    info = prepare_for_ort_fusion(swapped)
    assert info["replaced"] == sum(1 for m in reference.modules() if getattr(m, "qkv", None) is not None)
    assert attention_geometry(swapped)[0] == info["geometry"]  # the swapped model still reports it
    meta = build_metadata(spec, "onnx", "fp32", ["x"] * 10, "random")
    with torch.inference_mode():
        for _, img in photos[:2]:
            x = torch.from_numpy(preprocess(img, meta))
            ref, out = reference(x), swapped(x)
            assert (out - ref).abs().max() <= RTOL * ref.abs().max() + ATOL


def test_non_vit_graph_left_alone():
    import onnx

    proto = onnx.ModelProto()
    proto.graph.node.add(op_type="Relu", input=["a"], output=["b"])
    same, report = fuse_for_onnxruntime(proto, create_model("mobilenetv3_small_100"))
    assert same is proto and not report.applied and "no multi-head self-attention" in report.reason


def _export_onnx(out, ort_form: bool):
    """vit_fmnist_tiny with its trained weights to ONNX; with ``ort_form`` as the ONNX converter's
    ``ort_fusion`` option would prepare it (attention in ONNX Runtime's form, no edge rewrites)."""
    from edgevit.converters import export
    from edgevit.converters.onnx import ONNXConverter, _warm_attention_bias_caches
    from edgevit.converters.rewrites import EdgeRewriteConfig, rewrite_for_target

    def prepare(self, model, config):
        prepare_for_ort_fusion(model)
        _warm_attention_bias_caches(model)
        return rewrite_for_target(model, config, EdgeRewriteConfig(attention="keep", layer_norm="keep", linear_2d=False))

    with mock.patch.object(ONNXConverter, "prepare", prepare) if ort_form else contextlib.nullcontext():
        return export(MODEL, "onnx", out=out, force=True, pretrained=True, options={"rewrite": not ort_form})


@pytest.mark.slow
def test_fused_vit_runs_and_verifies_on_real_images(tmp_path, has_fmnist_weights):
    import onnx

    from edgevit.converters.verify import verify_runtime
    from edgevit.runtimes import load
    from edgevit.data.samples import sample_images

    if not has_fmnist_weights:
        pytest.skip("vit_fmnist_tiny weights are not in this checkout")
    result = _export_onnx(tmp_path / "form.onnx", ort_form=True)
    assert result.verification.passed
    float_model = create_model(MODEL, pretrained=True).eval()
    fused, report = fuse_for_onnxruntime(result.path, float_model, get_spec(MODEL))

    # Every block's attention, residual+LayerNorm and GELU went into contrib ops.
    assert report.applied and report.fused_ops.get("Attention") == 4, report.summary()
    assert report.fused_ops.get("SkipLayerNormalization", 0) >= 4
    assert report.nodes_after < report.nodes_before
    assert any(n.domain == CONTRIB_DOMAIN and n.op_type == "Attention" for n in fused.graph.node)
    assert CONTRIB_DOMAIN in {o.domain for o in fused.opset_import}
    assert report.self_check_max_abs_diff is not None and report.self_check_max_abs_diff < 1e-4

    path = write_onnx(fused, tmp_path / "fused.onnx")
    rt = load(path)  # checksum trailer, metadata and input shape all accepted by edgevit's runtime
    assert rt.metadata.model == MODEL and rt.metadata.labels == load(result.path).metadata.labels
    entry = rt.metadata.extra["onnxruntime_fusion"]
    assert entry["contrib_domain"] == CONTRIB_DOMAIN and entry["contrib_ops"]["Attention"] == 4
    assert "onnxruntime only" in entry["runs_on"]
    assert [p.key for p in onnx.load(str(path)).metadata_props][-1] == "edgevit.sha256"

    # fp32 tolerance of converters/verify.py on the Fashion-MNIST samples and the natural photos.
    images = sample_images(get_spec(MODEL).labels)
    report_v = verify_runtime(rt, float_model, images, "fp32")
    assert report_v.passed, report_v.summary()
    assert report_v.top1_agreement == 1.0 and report_v.cosine_min >= 0.9999


@pytest.mark.slow
def test_default_export_fuses_no_attention(tmp_path, has_fmnist_weights):
    """The dynamo exporter's own attention (and edgevit's edge rewrites) do not match ONNX
    Runtime's pattern: the other fusions apply, Attention does not, and the report says why."""
    if not has_fmnist_weights:
        pytest.skip("vit_fmnist_tiny weights are not in this checkout")
    result = _export_onnx(tmp_path / "default.onnx", ort_form=False)
    fused, report = fuse_for_onnxruntime(result.path, create_model(MODEL, pretrained=True))
    assert report.applied and report.attention_fused == 0
    assert "prepare_for_ort_fusion" in report.reason
    x = np.zeros((1, 1, 28, 28), np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x})[0].shape == (1, 10)


@pytest.mark.slow
def test_export_option_ort_fusion(tmp_path, has_fmnist_weights):
    """`edgevit export ... --option ort_fusion=true`: fused, verified on real images, recorded in
    the metadata and the export details; refused for anything but fp32."""
    from edgevit.converters import export
    from edgevit.errors import ConfigError
    from edgevit.runtimes import load

    if not has_fmnist_weights:
        pytest.skip("vit_fmnist_tiny weights are not in this checkout")
    result = export(MODEL, "onnx", out=tmp_path, pretrained=True, options={"ort_fusion": True})
    assert result.verification.ran and result.verification.passed, result.verification.summary()
    assert result.details["onnxruntime_fusion"]["contrib_ops"]["Attention"] == 4
    assert load(result.path).metadata.extra["onnxruntime_fusion"]["contrib_ops"]["Attention"] == 4
    with pytest.raises(ConfigError, match="ort_fusion is for fp32"):
        export(MODEL, "onnx", "fp16", out=tmp_path / "fp16", pretrained=True, options={"ort_fusion": True})
    assert not (tmp_path / "fp16").exists()
