"""Structured pruning: exact parameter and MAC savings, importance order, rebuild from the saved
plan, timm ViT/DeiT support, export of the pruned model to TFLite, and fine-tuning on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgevit.errors import ConfigError  # noqa: E402
from edgevit.models import create_model  # noqa: E402
from edgevit.measure.profile import profile_model  # noqa: E402
from edgevit.compress.prune import (  # noqa: E402
    apply_plan,
    head_scores,
    load_pruned,
    plan_pruning,
    prunable_blocks,
    prune_model,
    register_pruned,
    save_pruned,
    unit_scores,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _dims(model):
    b = prunable_blocks(model)[0]
    return b.attn.qkv.in_features, b.num_heads, b.head_dim, b.hidden, len(prunable_blocks(model))


def test_params_and_macs_drop_by_the_expected_amount():
    torch.manual_seed(0)
    model = create_model("vit_fmnist_tiny")
    dim, heads, d, hidden, depth = _dims(model)
    n = 7 * 7  # 28 px, patch 4: 49 tokens, no class token
    before = profile_model(model, (28, 28), device="cpu")
    pruned, plan = prune_model(model, heads=0.25, mlp=0.25)
    after = profile_model(pruned, (28, 28), device="cpu")
    h_cut, u_cut = round(0.25 * heads), round(0.25 * hidden)
    assert plan.heads_total - plan.heads_kept == depth * h_cut
    assert plan.units_total - plan.units_kept == depth * u_cut
    # Per block: qkv loses 3*h_cut*d rows (weights + bias), proj h_cut*d input columns; fc1 loses
    # u_cut rows (+ bias), fc2 u_cut columns.
    params = depth * (3 * h_cut * d * (dim + 1) + h_cut * d * dim + u_cut * (dim + 1) + u_cut * dim)
    assert before.params - after.params == params
    # MACs: qkv + proj (N*dim*3*h_cut*d + N*h_cut*d*dim), the two attention products (2*N*N*h_cut*d),
    # fc1 + fc2 (2*N*dim*u_cut). Exact: the profiler counts every matmul.
    macs = depth * (n * dim * 3 * h_cut * d + n * h_cut * d * dim + 2 * n * n * h_cut * d + 2 * n * dim * u_cut)
    assert before.macs - after.macs == macs
    assert after.components["attn_score"].macs == before.components["attn_score"].macs * (heads - h_cut) // heads
    out = pruned(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_importance_order_is_respected():
    torch.manual_seed(0)
    model = create_model("vit_fmnist_tiny")
    blocks = prunable_blocks(model)
    _, heads, d, hidden, _ = _dims(model)
    with torch.no_grad():
        blocks[0].attn.proj.weight[:, 2 * d : 3 * d] *= 1e-3  # head 2 of block 0 barely reaches the output
        blocks[1].mlp.fc1.weight[[5, 77, 100]] *= 1e-3  # three dead MLP units in block 1
    plan = plan_pruning(model, heads=0.25, mlp=3 / hidden)
    assert 2 not in plan.blocks[0].heads and len(plan.blocks[0].heads) == heads - 1
    assert set(range(hidden)) - set(plan.blocks[1].units) == {5, 77, 100}
    for b, bp in zip(blocks, plan.blocks):  # every kept head / unit outscores every removed one
        hs, us = head_scores(b), unit_scores(b)
        removed_h = [i for i in range(heads) if i not in bp.heads]
        removed_u = [i for i in range(hidden) if i not in bp.units]
        assert min(hs[list(bp.heads)]) >= max(hs[removed_h])
        assert min(us[list(bp.units)]) >= max(us[removed_u])
    # The surgery keeps the surviving heads' weights: block 0's new proj = the old kept columns.
    old_proj = blocks[0].attn.proj.weight.detach().clone()
    apply_plan(model, plan)
    kept = torch.cat([torch.arange(h * d, (h + 1) * d) for h in plan.blocks[0].heads])
    assert torch.equal(prunable_blocks(model)[0].attn.proj.weight, old_proj[:, kept])


def test_global_scope_and_refusals():
    torch.manual_seed(0)
    model = create_model("vit_fmnist_tiny")
    plan = plan_pruning(model, heads=0.3, mlp=0.3, scope="global")
    assert plan.heads_total - plan.heads_kept == round(0.3 * plan.heads_total)
    assert plan.units_total - plan.units_kept == round(0.3 * plan.units_total)
    assert all(len(b.heads) >= 1 and len(b.units) >= 1 for b in plan.blocks)
    with pytest.raises(ConfigError):
        plan_pruning(model, heads=1.0)
    with pytest.raises(ConfigError):
        plan_pruning(model, heads=0.3, scope="somewhere")
    linformer = create_model("vit_fmnist_linformer")
    with pytest.raises(ConfigError, match="cannot prune heads"):
        plan_pruning(linformer, heads=0.3)
    plan_pruning(linformer, heads=0.0, mlp=0.3)  # MLP units alone are fine
    with pytest.raises(ConfigError, match="EdgeViT"):
        prunable_blocks(torch.nn.Linear(2, 2))


def test_timm_deit_with_distillation_token(tmp_path):
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled_patch16_224")
    x = torch.randn(1, 3, 224, 224)
    before = sum(p.numel() for p in model.parameters())
    pruned, plan = prune_model(model, heads=1 / 3, mlp=0.25)
    assert [len(b.heads) for b in plan.blocks] == [2] * 12
    attn = prunable_blocks(pruned)[0].attn
    assert attn.attn_dim == 2 * 64 and attn.qkv.out_features == 3 * 128 and attn.proj.in_features == 128
    expected = 12 * (3 * 64 * 193 + 64 * 192 + 192 * 193 + 192 * 192)
    assert before - sum(p.numel() for p in pruned.parameters()) == expected
    y = pruned(x)
    # Saved and rebuilt from the plan alone, the model computes the same logits.
    path, record = save_pruned(pruned, plan, tmp_path / "deit_pruned.safetensors", name="deit_test_pruned")
    assert json.loads(record.read_text())["plan"]["base"] == "deit_tiny_distilled_patch16_224"
    rebuilt = load_pruned(path)
    assert torch.allclose(rebuilt(x), y, atol=1e-5)


@pytest.mark.slow
def test_pruned_model_registers_and_exports_to_tflite(tmp_path, trained_tiny):
    pytest.importorskip("litert_torch")
    from edgevit.converters import export

    weights = trained_tiny
    model = create_model("vit_fmnist_tiny", weights=weights)
    full_params = sum(p.numel() for p in model.parameters())
    pruned, plan = prune_model(model, heads=0.25, mlp=0.3)
    path, _ = save_pruned(pruned, plan, tmp_path / "tiny_test_pruned.safetensors", name="vit_fmnist_tiny_test_pruned")
    name = register_pruned(path)
    assert name == "vit_fmnist_tiny_test_pruned"
    assert register_pruned(path) == name  # idempotent
    x = torch.randn(2, 1, 28, 28)
    again = create_model(name, pretrained=True)
    assert torch.allclose(again(x), pruned(x), atol=1e-6)
    assert profile_model(name).params == sum(p.numel() for p in pruned.parameters())
    result = export(name, "tflite", "fp32", out=tmp_path, pretrained=True)
    assert result.verification is not None and result.verification.passed, result.verification.summary()
    # ~22% fewer parameters, all fp32 in the file: smaller than the unpruned weights alone.
    assert result.bytes < 4 * full_params


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_cli_prune_with_fine_tuning_on_real_data(tmp_path, trained_tiny, capsys):
    from edgevit.cli import main

    weights = trained_tiny
    rc = main(["prune", "vit_fmnist_tiny", "--weights", weights, "--heads", "0.25", "--mlp", "0.3",
               "--finetune-epochs", "1", "--data", "fashion-mnist", "--train-limit", "2000", "--test-limit", "500",
               "--name", "vit_fmnist_tiny_cli_pruned", "--out", str(tmp_path), "--threads", "2", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert 0.15 < doc["params_reduction"] < 0.35 and 0.15 < doc["macs_reduction"] < 0.35
    # Fine-tuning must not make things worse than the pruned model it starts from (2 points of
    # slack on 500 images), and the model must still classify far above chance (10%).
    assert doc["top1_finetuned"] >= doc["top1_pruned"] - 0.02
    assert doc["top1_finetuned"] > 0.5
    assert Path(doc["weights"]).is_file() and Path(doc["record"]).is_file()
