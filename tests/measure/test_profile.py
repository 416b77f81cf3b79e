"""edgevit profile: component counts against independent counts (hand formulas, torch's
FlopCounterMode, published figures), memory tracking, resolution handling, the CLI and plot."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from edgevit.errors import ConfigError  # noqa: E402
from edgevit.measure.profile import (  # noqa: E402
    COMPONENTS,
    build_at_resolution,
    profile_model,
    timm_fused_attention,
)


def flop_counter_macs(name: str, res: int, window_policy: str = "pad") -> int:
    """The independent count: torch's FlopCounterMode over a real forward of the same model."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_at_resolution(name, res, device="meta", window_policy=window_policy)
    x = torch.zeros(1, model.edgevit_spec.in_chans, res, res, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def test_deit_tiny_components_match_hand_formulas():
    # DeiT-Tiny: 16x16 patches, N = 196 + 1 tokens, width 192, 12 blocks, 3 heads of 64, MLP 768.
    r = profile_model("deit_tiny_patch16_224")
    n, d, depth, heads, hd = 197, 192, 12, 3, 64
    expect = {
        "stem": 196 * (3 * 16 * 16) * d,
        "attn_score": depth * heads * n * n * hd,
        "attn_value": depth * heads * n * n * hd,
        "proj": depth * n * (d * 3 * d + d * d),
        "mlp": depth * n * 2 * d * 4 * d,
        "head": d * 1000,
        "norm": 0,
        "conv": 0,
        "other": 0,
    }
    got = {c: r.components[c].macs for c in COMPONENTS}
    assert got == expect  # exact: both are shape arithmetic
    # Published figure (timm / STACK.md): 1.254 GMACs, 5.72 M parameters; tolerance 2% / 1%.
    assert r.gmacs == pytest.approx(1.254, rel=0.02)
    assert r.params_m == pytest.approx(5.72, rel=0.01)
    # The attention matrix: heads x N x N fp32 for one block.
    assert r.components["attn_score"].max_tensor_bytes == heads * n * n * 4
    assert r.components["norm"].params == (2 * depth + 1) * 2 * d
    assert r.components["head"].params == d * 1000 + 1000


@pytest.mark.parametrize(
    "name,res",
    [
        ("deit_tiny_patch16_224", 384),
        ("swin_tiny_patch4_window7_224", 224),
        ("swin_tiny_patch4_window7_224", 384),
        ("efficientvit_b0", 512),
        ("mobilenetv3_large_100", 224),
        ("mobilevit_xxs", 256),
        ("levit_128s", 224),
        ("vit_tiny_window", 384),
        ("vit_tiny_performer", 224),
        ("vit_fmnist_cosformer", 64),
    ],
)
def test_component_sum_matches_flop_counter(name, res):
    r = profile_model(name, res)
    reference = flop_counter_macs(name, res)
    assert sum(c.macs for c in r.components.values()) == r.macs
    assert r.macs == pytest.approx(reference, rel=0.01)  # stated tolerance: 1%


def test_published_swin_t_and_quadratic_vs_linear_growth():
    swin = profile_model("swin_tiny_patch4_window7_224")
    assert swin.gmacs == pytest.approx(4.49, rel=0.02)  # Swin-T published 4.49 GMACs
    # Global attention products grow with N^2, windowed ones with N (448 = 2x the side, 4x tokens).
    deit224, deit448 = profile_model("deit_tiny_patch16_224"), profile_model("deit_tiny_patch16_224", 448)
    n224, n448 = 197, 785
    ratio = deit448.components["attn_score"].macs / deit224.components["attn_score"].macs
    assert ratio == pytest.approx((n448 / n224) ** 2, rel=1e-9)
    swin448 = profile_model("swin_tiny_patch4_window7_224", 448)
    assert swin448.components["attn_score"].macs / swin.components["attn_score"].macs == pytest.approx(4.0, rel=1e-9)
    assert swin448.gmacs == pytest.approx(17.96, rel=0.01)  # STACK.md: 17.96 at 448


def test_linear_attention_splits_kv_and_query_products():
    # EfficientViT's ReLU linear attention: K^T V (sums over tokens) and Q (K^T V) have equal cost.
    r = profile_model("efficientvit_b0")
    assert r.components["attn_score"].macs == r.components["attn_value"].macs > 0
    assert r.components["conv"].macs > 0 and r.components["mlp"].macs > 0
    cnn = profile_model("mobilenetv3_large_100")
    assert cnn.components["attn_score"].macs == cnn.components["attn_value"].macs == 0
    assert cnn.components["conv"].macs > 0.9 * cnn.macs


def test_memory_on_meta_equals_real_forward():
    real = profile_model(build_at_resolution("vit_fmnist_tiny", 28, device="cpu"), 28, device="cpu")
    meta = profile_model("vit_fmnist_tiny")
    assert real.macs == meta.macs and real.params == meta.params
    assert real.peak_activation_bytes == meta.peak_activation_bytes > 0
    assert sum(c.peak_bytes for c in meta.components.values()) == meta.peak_activation_bytes
    # The peak is at least the largest attention matrix plus the input.
    assert meta.peak_activation_bytes >= meta.components["attn_score"].max_tensor_bytes + 28 * 28 * 4


def test_resolution_handling():
    win = build_at_resolution("vit_tiny_window", 384, device="meta")
    assert "7 -> 8" in win.edgevit_build_notes["window"]  # 24x24 grid: window 8
    fit = profile_model("swin_tiny_patch4_window7_224", 384, window_policy="fit")
    pad = profile_model("swin_tiny_patch4_window7_224", 384)
    assert "7 -> 6" in fit.notes["window"] and "padded" in pad.notes["window"]
    assert fit.macs < pad.macs  # padding the 96x96 grid to 98x98 costs compute
    with pytest.raises(ConfigError):
        build_at_resolution("vit_tiny_window", 200, device="meta")  # not a multiple of the patch
    with pytest.raises(ConfigError):
        profile_model("deit_tiny_patch16_224", 4)


def test_fused_attention_context_restores():
    import timm.layers.config as cfg

    before = cfg._USE_FUSED_ATTN
    with timm_fused_attention(False):
        assert cfg._USE_FUSED_ATTN == 0
        model = build_at_resolution("deit_tiny_patch16_224", device="meta")
    assert cfg._USE_FUSED_ATTN == before
    assert not model.blocks[0].attn.fused_attn
    # Fused SDPA (which FlopCounterMode skips on CPU) is counted too: same MACs, but the attention
    # matrix is never materialised by the fused kernel.
    fused = build_at_resolution("deit_tiny_patch16_224", device="cpu", fused_attention=True)
    assert fused.blocks[0].attn.fused_attn
    r = profile_model(fused, 224, device="cpu")
    assert r.components["attn_score"].macs == r.components["attn_value"].macs == 12 * 3 * 197 * 197 * 64
    assert r.components["attn_score"].max_tensor_bytes == 0


@pytest.mark.parametrize("name", __import__("edgevit.models", fromlist=["list_models"]).list_models())
def test_catalog_figures_match_measured(name):
    from edgevit.models import get_spec

    spec = get_spec(name)
    if spec.params_m == 0.0 and spec.gmacs == 0.0:
        pytest.skip(f"{name}: ModelSpec.params_m/gmacs not filled in yet (0.0)")
    r = profile_model(name)
    assert spec.params_m == pytest.approx(r.params_m, rel=0.01), f"params: spec {spec.params_m} vs {r.params_m:.3f}"
    assert spec.gmacs == pytest.approx(r.gmacs, rel=0.01), f"GMACs: spec {spec.gmacs} vs {r.gmacs:.4f}"


def test_cli_profile_table_json_plot_and_store(tmp_path, capsys):
    from edgevit.cli import main
    from edgevit.measure.results import ResultsStore

    db, png = tmp_path / "r.sqlite", tmp_path / "p.png"
    rc = main(["profile", "efficientvit_b0", "vit_tiny_window", "--resolutions", "224", "448",
               "--plot", str(png), "--db", str(db), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    got = {(r["model"], r["resolution"][0]) for r in out["results"]}
    assert got == {("efficientvit_b0", 224), ("efficientvit_b0", 448), ("vit_tiny_window", 224), ("vit_tiny_window", 448)}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    with ResultsStore(db) as store:
        assert len(store.runs("profile")) == 4
    rc = main(["profile", "deit_tiny_patch16_224", "--no-record", "--components"])
    text = capsys.readouterr().out
    assert rc == 0 and "attn QK^T" in text and "1.254" in text
    assert main(["profile", "no_such_model", "--no-record"]) == 1
