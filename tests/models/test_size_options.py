"""Size options of EdgeViT (ALBERT-style): cross-layer sharing, factorized patch embedding, and
gradient checkpointing in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgevit.errors import ConfigError
from edgevit.models import create_model, get_spec
from edgevit.models.vit import EdgeViT

FMNIST = dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=4, num_heads=3,
              mlp_ratio=2.0, attention="full", global_pool="avg")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _block_params(dim: int, hidden: int) -> int:
    qkv = dim * 3 * dim + 3 * dim
    proj = dim * dim + dim
    norms = 2 * 2 * dim
    mlp = dim * hidden + hidden + hidden * dim + dim
    return qkv + proj + norms + mlp


def _embed_params(patch: int, chans: int, dim: int, rank: int | None) -> int:
    pixels = patch * patch * chans
    return pixels * dim + dim if rank is None else pixels * rank + rank * dim + dim


@pytest.mark.parametrize("name, dim, hidden, depth, patch, chans, rank", [
    ("vit_fmnist_full", 96, 192, 4, 4, 1, 8),
    ("vit_tiny_full", 192, 768, 12, 16, 3, 64),
])
def test_parameter_counts_drop_exactly(name, dim, hidden, depth, patch, chans, rank):
    full = _count(create_model(name))
    shared = create_model(f"{name}_shared")
    factorized = create_model(f"{name}_factorized")
    assert factorized.patch_embed.rank == rank
    # All-shared: depth - 1 blocks' parameters are gone.
    assert _count(shared) == full - (depth - 1) * _block_params(dim, hidden)
    # Factorized: p^2 C D + D  ->  p^2 C r + r D + D.
    assert _count(factorized) == full - _embed_params(patch, chans, dim, None) + _embed_params(patch, chans, dim, rank)
    assert _count(factorized) < full
    # state_dict holds each tensor once: the same number of values as parameters() (+ no buffers).
    assert sum(v.numel() for v in shared.state_dict().values()) == _count(shared)
    assert len(shared.blocks) == 1 and shared.block_repeats == depth
    # Catalog figures (checked against a fresh measurement in tests/measure/test_profile.py) agree.
    assert get_spec(f"{name}_shared").params_m == pytest.approx(_count(shared) / 1e6, rel=1e-3)


def test_grouped_sharing_and_bad_groups():
    grouped = EdgeViT(**{**FMNIST, "depth": 4}, share_layers=2)
    assert len(grouped.blocks) == 2 and grouped.block_schedule() == [grouped.blocks[0]] * 2 + [grouped.blocks[1]] * 2
    assert _count(grouped) == _count(EdgeViT(**FMNIST)) - 2 * _block_params(96, 192)
    with pytest.raises(ConfigError, match="divisor of depth"):
        EdgeViT(**FMNIST, share_layers=3)
    with pytest.raises(ConfigError, match="stem='patch'"):
        EdgeViT(**FMNIST, stem="conv", embed_rank=8)


def test_defaults_keep_parameter_names_and_shipped_weights(has_fmnist_weights):
    plain = EdgeViT(**FMNIST)
    assert "blocks.3.attn.qkv.weight" in plain.state_dict() and "patch_embed.proj.bias" in plain.state_dict()
    assert not any("expand" in k for k in plain.state_dict())
    if has_fmnist_weights:
        create_model("vit_fmnist_tiny", pretrained=True)  # strict load: raises on any renamed key


def test_shared_forward_is_one_block_applied_depth_times():
    torch.manual_seed(0)
    model = create_model("vit_fmnist_full_shared").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        h = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed
        for _ in range(4):
            h = model.blocks[0](h)
        ref = model.head(model.norm(h).mean(dim=1))
        out = model(x)
    # Same ops in the same order: equal to float rounding (tolerance 1e-6 absolute).
    assert torch.allclose(out, ref, rtol=0, atol=1e-6)
    # ... and not the output of a single application (the repetition is real).
    with torch.no_grad():
        once = model.head(model.norm(model.blocks[0](model.patch_embed(x).flatten(2).transpose(1, 2)
                                                     + model.pos_embed)).mean(dim=1))
    assert (out - once).abs().max() > 1e-3


def test_factorized_embedding_is_the_composed_linear_map():
    torch.manual_seed(0)
    model = create_model("vit_fmnist_full_factorized").eval()
    pe = model.patch_embed
    assert pe.proj.bias is None and pe.proj.out_channels == 8 and pe.expand.kernel_size == (1, 1)
    # W = W_expand (D x r) @ W_proj (r x p^2 C), bias = b_expand: one ordinary patch convolution.
    w = pe.expand.weight.flatten(1) @ pe.proj.weight.flatten(1)
    composed = nn.Conv2d(1, 96, 4, stride=4)
    with torch.no_grad():
        composed.weight.copy_(w.view(96, 1, 4, 4))
        composed.bias.copy_(pe.expand.bias)
        x = torch.randn(2, 1, 32, 32)
        out, ref = pe(x), composed(x)
    assert torch.linalg.matrix_rank(w).item() <= 8
    assert torch.allclose(out, ref, rtol=0, atol=1e-5), (out - ref).abs().max()


def test_fused_input_folds_into_the_factorized_first_conv(photos):
    from edgevit.converters.export import build_metadata
    from edgevit.converters.rewrites import FoldedInputConv, fuse_input_stage, input_convolutions
    from edgevit.preprocess import preprocess

    spec = get_spec("vit_fmnist_full_factorized")
    model = create_model(spec.name).eval()
    assert input_convolutions(model, torch.randn(1, 1, 32, 32)) == ["patch_embed.proj"]
    fused = fuse_input_stage(model, spec.mean, spec.std, spec.input_size, spec.color_mode)
    assert isinstance(fused.model.patch_embed.proj, FoldedInputConv)
    meta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "x")
    fmeta = build_metadata(spec, "tflite", "fp32", spec.label_names(), "x", fused_input=True)
    gray = photos[0][1].convert("L").convert("RGB")  # integer luma: both paths see the same pixels
    with torch.inference_mode():
        ref = model(torch.from_numpy(preprocess(gray, meta)))
        out = fused(torch.from_numpy(preprocess(gray, fmeta)))
    assert (ref - out).abs().max().item() <= 1e-4


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("options", [{}, {"share_layers": 2}, {"embed_rank": 8}])
def test_grad_checkpointing_gives_the_same_gradients(options):
    torch.manual_seed(0)
    model = EdgeViT(**FMNIST, **options).train()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 3, 5, 9])
    calls = []
    block, forward = model.blocks[0], model.blocks[0].forward

    def counted(h):  # counts real forward runs (checkpoint's recomputation skips module hooks)
        calls.append(1)
        return forward(h)

    block.forward = counted
    plain = _grads(model, x, y)
    n_plain = len(calls)
    model.set_grad_checkpointing()
    assert model.grad_checkpointing
    ckpt = _grads(model, x, y)
    # Checkpointing really ran: the first block's forward is recomputed in backward.
    assert len(calls) - n_plain == 2 * n_plain
    assert plain.keys() == ckpt.keys()
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], rtol=0, atol=1e-6), (n, (plain[n] - ckpt[n]).abs().max())
    # Eval mode and no-grad inference never checkpoint.
    model.eval()
    calls.clear()
    with torch.no_grad():
        model(x)
    assert len(calls) == model.block_repeats
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def test_shared_model_save_load_roundtrip(tmp_path):
    from edgevit.models.weights import load_state_dict, load_weights, save_weights

    torch.manual_seed(1)
    model = create_model("vit_fmnist_full_shared").eval()
    path = tmp_path / "shared.safetensors"
    save_weights(model, path)
    stored = load_state_dict(path)
    assert stored.keys() == model.state_dict().keys()
    assert sum(v.numel() for v in stored.values()) == _count(model)  # one copy of the shared block
    torch.manual_seed(2)
    fresh = create_model("vit_fmnist_full_shared").eval()
    load_weights(fresh, path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    # Weights of a plain model do not fit the shared one: a clear ModelError, not a silent mix.
    from edgevit.errors import ModelError

    save_weights(create_model("vit_fmnist_full"), tmp_path / "plain.safetensors")
    with pytest.raises(ModelError, match="unexpected"):
        load_weights(fresh, tmp_path / "plain.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("name, target", [("vit_fmnist_full_shared", "tflite"),
                                          ("vit_fmnist_full_factorized", "onnx")])
def test_size_option_exports_with_parity(name, target, tmp_path):
    from edgevit.converters import available_targets, export

    if target not in available_targets():
        pytest.skip(f"no {target} converter here")
    result = export(name, target, out=tmp_path)
    assert result.verification is not None and result.verification.ran
    assert result.verification.passed, result.verification.summary()
    if name.endswith("_shared"):
        # The artifact holds the shared block once: smaller than 4 blocks' fp32 weights.
        full_bytes = 4 * _count(create_model("vit_fmnist_full"))
        assert result.bytes < 0.5 * full_bytes, (result.bytes, full_bytes)
    assert np.isfinite(result.seconds)
