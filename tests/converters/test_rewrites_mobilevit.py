"""MobileViT rewrites (converters/rewrites_mobilevit.py): the v1 and v2 blocks without unfold/fold
transposes keep timm's math (fp32 parity on real photos, odd sizes, batches), are applied by
structure through ``edge_rewrite``, and v2's TFLite graph runs whole inside XNNPACK."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgevit.converters.export import build_metadata
from edgevit.converters.rewrites import EdgeRewriteConfig, edge_rewrite
from edgevit.converters.rewrites_mobilevit import (
    EdgeMobileVitBlock,
    EdgeMobileVitV2Block,
    KeepDimsGroupNorm1,
    MobileVitRewriteError,
    fold_tokens,
    unfold_tokens,
)
from edgevit.models import create_model, get_spec
from edgevit.preprocess import preprocess

# |rewritten - timm| <= RTOL * max|timm| + ATOL (fp32): the rewrite reorders float sums only.
RTOL, ATOL = 1e-5, 1e-6
BLOCKS = {"mobilevit_xxs": ("mobilevit_block", 3), "mobilevitv2_050": ("mobilevit_v2_block", 3)}


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (out - ref).abs().max().item()
    assert diff <= RTOL * ref.abs().max().item() + ATOL, f"max abs diff {diff:.3g}, max |ref| {ref.abs().max():.3g}"


def _model(name: str) -> nn.Module:
    """timm's model with every 1-D parameter moved off its init (zero-init BatchNorm gammas would
    fold residual branches away and hide mistakes)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def photos_batch(photos):
    spec = get_spec("mobilevit_xxs")
    meta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "random-init")
    return torch.cat([torch.from_numpy(preprocess(img, meta)) for _, img in photos[:2]])


@pytest.mark.parametrize("name, config", [
    ("mobilevit_xxs", EdgeRewriteConfig()),  # TFLite's configuration
    ("mobilevit_xxs", EdgeRewriteConfig(layer_norm="linear")),  # ExecuTorch's
    ("mobilevitv2_050", EdgeRewriteConfig()),  # TFLite only (see the next test)
], ids=["v1-tflite", "v1-executorch", "v2-tflite"])
def test_rewritten_mobilevit_matches_timm_on_real_photos(name, config, photos_batch):
    ref = _model(name)
    new = copy.deepcopy(ref)
    report = edge_rewrite(new, config)
    label, count = BLOCKS[name]
    assert report.replaced[label] == count, report.to_dict()
    assert not report.skipped and not report.unrecognised, report.to_dict()
    kind = EdgeMobileVitBlock if label == "mobilevit_block" else EdgeMobileVitV2Block
    assert sum(isinstance(m, kind) for m in new.modules()) == count
    with torch.no_grad():
        a, b = ref(photos_batch), new(photos_batch)
    _close(b, a)
    assert torch.equal(a.argmax(1), b.argmax(1))


@pytest.mark.parametrize("name", list(BLOCKS))
def test_sizes_that_are_not_whole_patches_take_timms_resize(name):
    """200 px: the 25 x 25 and 13 x 13 maps are resized to whole 2 x 2 patches, as timm does."""
    ref = _model(name)
    new = copy.deepcopy(ref)
    edge_rewrite(new)
    x = torch.randn(1, 3, 200, 200, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _close(new(x), ref(x))


def test_unfold_is_timms_token_order_and_fold_inverts_it():
    b, c, h, w, ph, pw = 2, 5, 6, 8, 2, 2
    x = torch.randn(b, c, h, w)
    # timm: (B, C, H, W) -> (B * P, N, C), P = in-patch position, N = patch
    nh, nw = h // ph, w // pw
    t = x.reshape(b * c * nh, ph, nw, pw).transpose(1, 2).reshape(b, c, nh * nw, ph * pw).transpose(1, 3)
    ours = unfold_tokens(x, ph, pw)  # (B, N, P, C)
    assert torch.equal(ours.permute(0, 2, 1, 3), t)
    assert torch.equal(fold_tokens(ours, ph, pw, h, w), x)


def test_blocks_the_rewrite_cannot_take_are_kept_and_reported():
    model = _model("mobilevitv2_050")
    block = next(m for m in model.modules() if type(m).__name__ == "MobileVitV2Block")
    with pytest.raises(MobileVitRewriteError, match="groups"):
        KeepDimsGroupNorm1(nn.GroupNorm(2, 8))
    block.norm = nn.GroupNorm(2, block.norm.num_channels)  # a variant the rewrite does not know
    report = edge_rewrite(model)
    assert report.replaced["mobilevit_v2_block"] == 2
    assert any("groups" in why for why in report.skipped.values()), report.skipped


def test_v2_keeps_the_attention_rule_in_executorchs_configuration():
    """ExecuTorch's XNNPACK takes neither the map form's channel means nor its sums."""
    report = edge_rewrite(_model("mobilevitv2_050"), EdgeRewriteConfig(layer_norm="linear"))
    assert "mobilevit_v2_block" not in report.replaced and report.replaced["linear_self_attention"] == 9


def test_the_switch_turns_the_mobilevit_rules_off():
    model = _model("mobilevit_xxs")
    report = edge_rewrite(model, EdgeRewriteConfig(mobilevit=False))
    assert "mobilevit_block" not in report.replaced and report.replaced["attention"] == 9


@pytest.mark.slow
def test_mobilevitv2_tflite_graph_runs_whole_in_xnnpack():
    """The fix for MobileViTv2 on TFLite: no BROADCAST_TO (42 of them fell out of XNNPACK before,
    22 partitions) and no rank-6 transposes; the artifact matches the float model (fp32, 1e-4)."""
    pytest.importorskip("litert_torch")
    import litert_torch
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edgevit.converters.tflite_delegation import tflite_delegation_report

    model = _model("mobilevitv2_050")
    edge_rewrite(model)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    data = litert_torch.convert(model, (x,)).model_content()
    report = tflite_delegation_report(data)
    assert report.share == 1.0 and report.partitions == 1, report.to_dict()
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5
