"""Token reduction (edgevit/compress/tokens.py): static token counts, exact pooling, unchanged
state-dict keys, clear errors, the recovery fine-tune, and (slow) exports whose pooled graph runs
whole inside XNNPACK while merge / top-k leave named ops outside."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from edgevit.compress.tokens import TokenReduction, recover, reduce_tokens, speedup_estimate, token_counts
from edgevit.errors import ConfigError
from edgevit.models.vit import EdgeViT


def _vit(global_pool: str = "token", attention: str = "full", img: int = 32, patch: int = 4, **kw) -> EdgeViT:
    torch.manual_seed(0)
    return EdgeViT(img_size=img, patch_size=patch, in_chans=1, num_classes=10, embed_dim=32, depth=4, num_heads=2,
                   mlp_ratio=2.0, attention=attention, global_pool=global_pool, **kw).eval()


def _timm_vit():
    from edgevit.models._timm import import_timm

    torch.manual_seed(0)
    return import_timm().create_model("test_vit").eval()  # 160 px, patch 16: a 10 x 10 grid


@pytest.mark.parametrize("spelling, counts", [
    ("pool:1", [65, 17]),
    ("pool:0,2", [65, 17, 5]),
    ("merge:1,2:8", [65, 57, 49]),
    ("merge:2", [65, 49]),  # r defaults to a quarter of the patch tokens
    ("topk:1:0.5", [65, 34]),  # 32 kept + 1 fused + the class token
])
def test_token_counts_are_fixed_and_the_weights_untouched(spelling, counts):
    model = _vit()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    reduce_tokens(model, spelling)
    assert token_counts(model) == counts
    assert model.state_dict().keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    seen = []
    handles = [b.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1])) for b in model.blocks]
    with torch.no_grad():
        assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    for h in handles:
        h.remove()
    # tokens entering each block: the counts change exactly at the named layers
    at = TokenReduction.parse(spelling).at
    expected, k = [], 0
    for i in range(4):
        k += i in at
        expected.append(counts[k])
    assert seen == expected


def test_pooling_is_2x2_average_of_the_grid_and_keeps_the_class_token():
    model = _vit()
    reduce_tokens(model, "pool:1")
    pool = model.blocks.reducers[1]
    x = torch.randn(2, 65, 32)
    out = pool(x)
    grid = x[:, 1:].reshape(2, 8, 8, 32).permute(0, 3, 1, 2)
    want = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.allclose(out[:, 1:], want, atol=1e-6)


def test_merge_averages_the_best_matched_pairs():
    """Tokens that come in identical pairs merge first; merged pairs average to themselves."""
    model = _vit(global_pool="avg")
    reduce_tokens(model, "merge:1:4")
    merge = model.blocks.reducers[1]
    torch.manual_seed(1)
    a = torch.randn(1, 32, 16)
    b = torch.randn(1, 32, 16)
    b[:, :4] = a[:, :4]  # pairs 0..3 are exact duplicates: cosine 1, the best matches
    x = torch.stack([a, b], dim=2).reshape(1, 64, 16)  # alternate A, B tokens
    out = merge(x)
    assert out.shape == (1, 60, 16)
    assert torch.allclose(out[:, 28:32], a[:, :4], atol=1e-6)  # the B partners of the merged, averaged (unchanged)
    kept = out[:, :28]
    assert not any(torch.allclose(kept[0, i], a[0, j]) for i in range(28) for j in range(4))


def test_timm_vit_with_a_dynamic_grid_is_switched_to_its_static_native_grid():
    model = _timm_vit()
    x = torch.randn(1, 3, 160, 160)
    reduce_tokens(model, at=[2], method="pool")
    assert token_counts(model) == [101, 26]
    assert speedup_estimate(model) == pytest.approx(1 / ((2 * 101 + 4 * 26) / (6 * 101)), rel=1e-3)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


@pytest.mark.parametrize("spelling, message", [
    ("pol:1", "did you mean 'pool'"),
    ("pool", "method:layers"),
    ("pool:a", "integers"),
    ("pool:1:2", "takes no amount"),
    ("merge:1:0.5", "whole number"),
    ("topk:1:2", "between 0 and 1"),
    ("pool:9", "outside the model's 4 blocks"),
    ("pool:0,1,2,3", "not even"),  # 8 -> 4 -> 2 -> 1: the fourth pool meets an odd grid
    ("merge:1:40", "at most half"),
])
def test_bad_reductions_are_refused_with_the_fix(spelling, message):
    with pytest.raises(ConfigError, match=message):
        reduce_tokens(_vit(), spelling)


def test_models_whose_attention_needs_the_grid_are_refused():
    with pytest.raises(ConfigError, match="any number of tokens"):
        reduce_tokens(_vit(global_pool="avg", attention="window", attn_kwargs={"window": 4}), "pool:1")
    with pytest.raises(ConfigError, match="class token"):
        reduce_tokens(_vit(global_pool="avg"), "topk:1")
    with pytest.raises(ConfigError, match="plain ViTs"):
        reduce_tokens(torch.nn.Linear(2, 2), "pool:1")
    model = reduce_tokens(_vit(), "pool:1")
    with pytest.raises(ConfigError, match="already reduced"):
        reduce_tokens(model, "pool:2")


def test_every_target_takes_the_tokens_option_and_checks_it_before_any_work():
    from edgevit.converters import get_converter

    for target in ("tflite", "executorch", "onnx"):
        assert get_converter(target).make_config(options={"tokens": "pool:3"}).options["tokens"] == "pool:3"
    with pytest.raises(ConfigError, match="token reduction method"):
        get_converter("tflite").make_config(options={"tokens": "avg:3"})


def test_recover_distills_the_reduced_model_from_the_unreduced_one():
    """A short run on real Fashion-MNIST images: the student learns, the teacher is untouched."""
    from edgevit.compress.loop import LoopConfig
    from edgevit.data.datasets import load_dataset
    from edgevit.models._registry import ModelSpec
    from edgevit.models.labels import FASHION_DATA

    spec = ModelSpec(name="t", family="edgevit-vit", attention="global", builder=lambda **_: _vit(img=28),
                     input_size=(28, 28), **FASHION_DATA)
    teacher = _vit(img=28, patch=7)  # a 4 x 4 grid
    student = reduce_tokens(copy.deepcopy(teacher), "pool:2")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = load_dataset("fashion-mnist").subset(train=512, test=256)
    history = recover(student, teacher, data, LoopConfig(epochs=2, batch_size=64, lr=3e-3, threads=1), spec=spec)
    assert len(history) == 2 and history[-1].train_loss < history[0].train_loss
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
    assert token_counts(student) == [17, 5]


# ---------------------------------------------------------------------------------------------
# Exports (TFLite): ~1-2 min each on a busy 2-core machine

@pytest.mark.slow
def test_pooled_vit_exports_with_static_shapes_and_runs_whole_in_xnnpack(tmp_path):
    pytest.importorskip("litert_torch")
    from ai_edge_litert.interpreter import Interpreter

    from edgevit.converters import export

    r = export("timm:test_vit", "tflite", "fp32", out=tmp_path, options={"tokens": "pool:2"})
    assert r.verification.passed, r.verification.summary()  # against the reduced float model
    assert r.details["tokens"]["tokens"] == [101, 26]
    assert any("token reduction pool:2" in w for w in r.warnings)
    d = r.delegation
    assert d.share == 1.0 and d.partitions == 1 and not d.outside_ops, d.to_dict()
    interpreter = Interpreter(model_path=str(r.path))
    shapes = {tuple(t["shape"]) for t in interpreter.get_tensor_details()}
    assert (1, 26, 64) in shapes and all(-1 not in t["shape_signature"] for t in interpreter.get_tensor_details())


@pytest.mark.slow
def test_merging_leaves_top_k_and_gather_outside_xnnpack(tmp_path):
    pytest.importorskip("litert_torch")
    from edgevit.converters import export

    r = export("timm:test_vit", "tflite", "fp32", out=tmp_path, options={"tokens": "merge:2:20"})
    assert r.verification.passed, r.verification.summary()
    outside = r.delegation.outside_ops
    assert {"TOPK_V2", "GATHER_ND", "ARG_MAX"} <= set(outside), outside
    assert r.delegation.partitions > 1
