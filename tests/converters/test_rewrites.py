"""Edge rewrites (converters/rewrites.py, forms in rewrites_forms.py and rewrites_hf.py): every
rewritten module against the module it replaces on real photos (fp32), the rank and cost
properties they promise, the switch, and that on ExecuTorch they move the graph into the XNNPACK delegate. Also the TFLite delegation report."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgevit.converters.base import ExportConfig
from edgevit.converters.export import build_metadata
from edgevit.converters.rewrites import (
    EdgeRewriteConfig,
    edge_rewrite,
    reparameterize,
    rewrite_for_target,
    window_partition_rank4,
    window_reverse_rank4,
)
from edgevit.errors import ConfigError
from edgevit.models import create_model, get_spec
from edgevit.preprocess import preprocess

# Relative tolerance of every fp32 parity check below: |rewritten - reference| <= RTOL * max|reference|
# + ATOL. The rewrites reorder float sums (per-head matmuls, folded scales, linear-layer means), so
# they agree to a few float32 ulps of the largest value, not bit for bit.
RTOL, ATOL = 1e-5, 1e-6

# The rules each model exercises.
MODELS = {
    "deit_tiny_patch16_224": {"attention", "layer_norm"},
    "mobilevit_xxs": {"mobilevit_block", "layer_norm"},
    "efficientvit_b0": {"lite_mla", "layer_norm"},
    "swin_tiny_patch4_window7_224": {"swin_block", "patch_merging", "avg_pool", "layer_norm"},
    "levit_128s": {"levit_attention", "levit_attention_downsample", "linear_norm"},
    "efficientformerv2_s0": {"efficientformerv2_attention", "efficientformerv2_attention_downsample"},
    "fastvit_sa12": {"fastvit_attention"},
    "vit_fmnist_tiny": {"edgevit_full_attention", "layer_norm"},
    "vit_tiny_window": {"edgevit_window_attention", "layer_norm"},
}
ALL_ON = EdgeRewriteConfig(layer_norm="linear", linear_2d=True)


def _meaningful(model: nn.Module) -> nn.Module:
    """Random-init LeViT / EfficientFormerV2 zero their norm gammas and layer scales (their
    branches then add nothing); give those and the attention biases values that matter."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            for name, p in m.named_parameters(recurse=False):
                if name in ("attention_biases", "relative_position_bias_table"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
                elif name == "gamma" or "layer_scale" in name:
                    p.fill_(0.5)
    return model


def _batch(name: str, photos) -> torch.Tensor:
    spec = get_spec(name)
    meta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "random-init")
    return torch.cat([torch.from_numpy(preprocess(img, meta)) for _, img in photos[:2]])


def _close(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out - ref).abs().max().item()
    assert diff <= RTOL * ref.abs().max().item() + ATOL, f"max abs diff {diff:.3g}, max |ref| {ref.abs().max():.3g}"
    return diff


@pytest.fixture(scope="module")
def rewritten(photos):
    """name -> (reference model, rewritten model, report, photo batch)."""
    out = {}
    for name in MODELS:
        ref = _meaningful(reparameterize(create_model(name).eval()))
        new = copy.deepcopy(ref)
        report = edge_rewrite(new, ALL_ON)
        out[name] = (ref, new, report, _batch(name, photos))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_each_rewritten_module_matches_the_module_it_replaced(rewritten, name):
    """Module level, fp32, on the activations real photos produce: <= 1e-5 x max|ref| + 1e-6."""
    ref, new, report, x = rewritten[name]
    assert MODELS[name] <= set(report.replaced), report.to_dict()
    assert not report.skipped, report.skipped
    originals = dict(ref.named_modules())
    ours = {n for n, m in new.named_modules() if type(m).__module__.startswith("edgevit.converters.rewrites")}
    # The outermost replacements (what was inside a replaced block is checked through the block).
    replaced = [n for n in ours if n in originals and not any(n.startswith(p + ".") for p in ours)]
    captured: dict[str, tuple] = {}

    def hook(path):
        def fn(_m, args, out):
            captured[path] = (tuple(a.clone() for a in args), out.clone())

        return fn

    handles = [originals[n].register_forward_hook(hook(n)) for n in replaced]
    try:
        with torch.no_grad():
            ref(x)
    finally:
        for h in handles:
            h.remove()
    checked = set()
    with torch.no_grad():
        for path in replaced:
            if path not in captured:
                continue  # not run by this model's forward
            args, expected = captured[path]
            _close(new.get_submodule(path)(*args), expected)
            checked.add(type(new.get_submodule(path)).__name__)
    assert checked, "no rewritten module ran"


@pytest.mark.parametrize("name", list(MODELS))
def test_rewritten_model_matches_reference_logits(rewritten, name):
    ref, new, _, x = rewritten[name]
    with torch.no_grad():
        a, b = ref(x), new(x)
    _close(b, a)
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_switched_off_rewrites_nothing_and_bad_config_is_refused():
    model = create_model("deit_tiny_patch16_224").eval()
    before = [type(m) for m in model.modules()]
    assert edge_rewrite(model, EdgeRewriteConfig.off()).total == 0
    assert [type(m) for m in model.modules()] == before
    with pytest.raises(ConfigError, match="attention rewrite must be one of"):
        EdgeRewriteConfig(attention="flash")
    with pytest.raises(ConfigError, match="eval"):
        edge_rewrite(create_model("deit_tiny_patch16_224").train())


def test_export_option_switches_the_rewrite():
    from edgevit.converters import get_converter

    converter = get_converter("executorch")
    model = create_model("mobilevit_xxs").eval()
    off = converter.prepare(copy.deepcopy(model), converter.make_config(options={"rewrite": False}))
    assert not hasattr(off, "edgevit_rewrites")
    assert {type(m) for m in off.modules()} == {type(m) for m in model.modules()}
    on = converter.prepare(copy.deepcopy(model), converter.make_config())
    assert on.edgevit_rewrites["replaced"]["mobilevit_block"] == 3  # each with its attention (3 blocks, 9 layers)
    with pytest.raises(ConfigError, match="rewrite must be true or false"):
        rewrite_for_target(model, ExportConfig("executorch", options={"rewrite": "yes"}), ALL_ON)


def test_window_partition_is_swins_at_rank_four():
    from timm.models.swin_transformer import window_partition, window_reverse

    x = torch.randn(2, 14, 21, 5)
    ours = window_partition_rank4(x, 7, 7)
    assert torch.equal(ours, window_partition(x, (7, 7)).reshape(-1, 49, 5))
    assert torch.equal(window_reverse_rank4(ours, 7, 7, 14, 21), x)
    assert torch.equal(window_reverse(ours.reshape(-1, 7, 7, 5), (7, 7), 14, 21), x)


def _graph_tensors(module: nn.Module, example: torch.Tensor):
    ep = torch.export.export(module, (example,), strict=False)
    return ep, [n.meta["val"] for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]


def test_swin_stage_graph_has_rank_at_most_five_and_no_roll(rewritten):
    """A shifted-window stage (with its patch merging) exports with tensors of rank <= 5 (Swin's
    own partition is rank 6) and without aten.roll (done as slices + concatenation)."""
    ref, new, _, _ = rewritten["swin_tiny_patch4_window7_224"]
    x = torch.randn(1, 56, 56, 96)
    with torch.no_grad():
        _, ref_vals = _graph_tensors(ref.layers[1], x)
        ep, vals = _graph_tensors(new.layers[1], x)
    assert max(v.dim() for v in ref_vals) == 6  # what the rewrite removes
    assert max(v.dim() for v in vals) <= 5
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("roll" in t or "scaled_dot_product" in t for t in targets), targets
    with torch.no_grad():
        _close(new.layers[1](x), ref.layers[1](x))


def test_rewritten_swin_stage_exports_with_a_dynamic_batch(rewritten):
    """ONNX exports take a symbolic batch: the window bookkeeping must not bake batch 1 in."""
    ref, new, _, _ = rewritten["swin_tiny_patch4_window7_224"]
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        ep = torch.export.export(new.layers[1], (torch.randn(2, 56, 56, 96),), dynamic_shapes=({0: batch},), strict=False)
        x = torch.randn(3, 56, 56, 96)
        _close(ep.module()(x), ref.layers[1](x))


def test_linear_attention_stays_linear_in_the_number_of_pixels(rewritten):
    """EfficientViT's rewritten LiteMLA computes phi(Q) (phi(K)^T V): no tensor in its graph
    grows with (H*W)^2; at 32x32 (1024 pixels) nothing reaches 1024^2 elements per image."""
    _, new, _, _ = rewritten["efficientvit_b0"]
    mla = next(m for m in new.modules() if type(m).__name__ == "BmmLiteMLA")
    channels = mla.qkv.conv.in_channels
    with torch.no_grad():
        _, vals = _graph_tensors(mla, torch.randn(1, channels, 32, 32))
    assert max(v.numel() for v in vals) < 1024 * 1024


def test_tflite_delegation_counting_rule():
    from edgevit.converters.tflite_delegation import _report

    # t0 -FC-> t2 -CUMSUM-> t3 -ADD-> t4 -SOFTMAX-> t5; the delegate took FC and ADD+SOFTMAX.
    nodes = [
        ("FULLY_CONNECTED", [0, 1], [2]),
        ("CUMSUM", [2, 6], [3]),
        ("ADD", [3, 7], [4]),
        ("SOFTMAX", [4], [5]),
        ("DELEGATE", [0, 1], [2]),
        ("DELEGATE", [3, 7], [5]),
    ]
    r = _report(nodes, 4)
    assert (r.delegated_nodes, r.total_nodes, r.partitions) == (3, 4, 2)
    assert r.outside_ops == {"CUMSUM": 1} and r.share == 0.75


@pytest.mark.slow
def test_tflite_delegation_report_names_the_op_xnnpack_leaves(tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    from edgevit.converters.tflite_delegation import tflite_delegation_report

    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=1).softmax(-1)

    data = litert_torch.convert(Cumulative().eval(), (torch.randn(1, 4, 8),)).model_content()
    report = tflite_delegation_report(data)
    assert report.delegate == "XNNPACK"
    assert report.outside_ops == {"CUMSUM": 1}
    assert report.partitions == 2 and report.total_nodes - report.delegated_nodes == 1


# ---------------------------------------------------------------------------------------------
# ExecuTorch: the rewrites move the graph into XNNPACK (3 exports, ~2-5 min on a busy 2-core box)

@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilevit_xxs", "deit_tiny_patch16_224"])
def test_executorch_rewritten_graph_is_delegated_whole(name, tmp_path):
    pytest.importorskip("executorch", reason="ExecuTorch is not installed")
    from edgevit.converters import export

    r = export(name, "executorch", out=tmp_path)  # rewrite is the default
    assert r.verification.passed, r.verification.summary()
    d = r.delegation
    assert d.share >= 0.99, d.to_dict()
    assert d.partitions <= 2, d.to_dict()  # DeiT keeps the class-token expand/select outside
    assert not any("layer_norm" in op or "squeeze" in op for op in d.outside_ops), d.outside_ops


@pytest.mark.slow
def test_executorch_plain_lowering_leaves_attention_and_norms_outside():
    """The reference point of the test above: without the rewrites, a quarter of MobileViT-XXS's
    nodes (SDPA's masking ops, LayerNorm, expand/squeeze copies) stay outside XNNPACK."""
    pytest.importorskip("executorch", reason="ExecuTorch is not installed")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgevit.converters.executorch import delegation_report

    model = create_model("mobilevit_xxs").eval()
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(1, 3, 256, 256),), strict=False)
    d = delegation_report(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).exported_program().graph_module)
    assert d.share < 0.9 and d.partitions > 10, d.to_dict()
    assert any("layer_norm" in op for op in d.outside_ops)


def test_folded_weights_stay_float32(rewritten):
    """Folded weights are float32 (no float64 leaks into the exported graph)."""
    _, new, _, _ = rewritten["levit_128s"]
    assert all(p.dtype == torch.float32 for p in new.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in new.buffers())
