"""Edge rewrites (converters/rewrites.py, forms in rewrites_forms.py and rewrites_hf.py) reach ViTs
outside edgevit's catalog, found by module type: transformers' ViT / DeiT / DINOv2 / Swin / SwinV2
classifiers and timm architectures (ViT-Tiny, PiT, CaiT, XCiT, ConViT), all built small with random
weights, offline. Each test asserts which rules applied, by name; that the rewritten model equals
the original, module by module and in its logits; and which attention modules are reported as
unrecognised."""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

import edgevit.converters  # noqa: F401  (torchvision compatibility step before timm / transformers)
from edgevit.converters import rewrites, rewrites_forms, rewrites_hf
from edgevit.converters.base import ExportConfig
from edgevit.converters.rewrites import (
    HF_VIT_ATTENTION,
    EdgeRewriteConfig,
    edge_rewrite,
    rewrite_for_target,
    unrecognised_attention,
)
from edgevit.models._timm import import_timm

transformers = pytest.importorskip("transformers")

# Every fp32 parity check: |rewritten - reference| <= RTOL * max|reference| + ATOL. The rewrites
# reorder float sums (per-head matmuls, folded scales, linear-layer means), so outputs agree to a
# few float32 ulps of the largest value, not bit for bit.
RTOL, ATOL = 1e-5, 1e-6
ALL_ON = EdgeRewriteConfig(layer_norm="linear", linear_2d=True)
# The modules holding the edge forms these tests check (the MobileViT forms have tests of their own).
FORM_MODULES = {rewrites.__name__, rewrites_forms.__name__, rewrites_hf.__name__}


def _meaningful(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that make every branch count: PyTorch's default init for linear and conv
    layers (the libraries' 0.02-std init gives near-constant attention), random relative-position
    tables (transformers zeroes Swin's), layer scales 0.5-1.5 (CaiT starts at 1e-5), and random
    SwinV2 logit scales / XCiT temperatures."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.reset_parameters()
            for name, p in m.named_parameters(recurse=False):
                if name == "relative_position_bias_table":
                    p.copy_(torch.randn_like(p) * 0.5)
                elif name == "logit_scale":
                    p.copy_(torch.log(torch.rand_like(p) * 20 + 1))
                elif re.fullmatch(r"gamma_?\d?|lambda1|temperature", name):
                    p.copy_(torch.rand_like(p) + 0.5)
    return model.eval()


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (out - ref).abs().max().item()
    assert diff <= RTOL * ref.abs().max().item() + ATOL, f"max abs diff {diff:.3g}, max |ref| {ref.abs().max():.3g}"


def _first_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _check_modules(ref: nn.Module, new: nn.Module, run: Callable[[nn.Module], object]) -> set[str]:
    """Each outermost rewritten module against the module it replaced, on the inputs the reference
    model gives it (arguments and keywords as its parent passes them). Returns the classes checked."""
    originals = dict(ref.named_modules())
    ours = {n for n, m in new.named_modules() if type(m).__module__ in FORM_MODULES}
    replaced = [n for n in ours if n in originals and not any(n.startswith(p + ".") for p in ours)]
    captured: dict[str, tuple] = {}

    def hook(path):
        def fn(_m, args, kwargs, out):
            clone = lambda a: a.clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
            captured[path] = ([clone(a) for a in args], {k: clone(v) for k, v in kwargs.items()},
                              _first_tensor(out).clone())

        return fn

    handles = [originals[n].register_forward_hook(hook(n), with_kwargs=True) for n in replaced]
    try:
        with torch.no_grad():
            run(ref)
    finally:
        for h in handles:
            h.remove()
    checked = set()
    with torch.no_grad():
        for path, (args, kwargs, expected) in captured.items():
            module = new.get_submodule(path)
            _close(_first_tensor(module(*args, **kwargs)), expected)
            checked.add(type(module).__name__)
    return checked


def _check_model(ref: nn.Module, run: Callable[[nn.Module], torch.Tensor], rules: set[str],
                 config: EdgeRewriteConfig = ALL_ON) -> tuple[nn.Module, rewrites.RewriteReport]:
    """Rewrite a copy of ``ref``; assert ``rules`` applied, nothing skipped or unrecognised, and
    parity module by module and in the logits (same top-1)."""
    new = copy.deepcopy(ref)
    report = edge_rewrite(new, config)
    assert rules <= {k for k, v in report.replaced.items() if v > 0}, report.to_dict()
    assert not report.skipped, report.skipped
    assert report.unrecognised == {}, report.unrecognised
    assert _check_modules(ref, new, run)
    with torch.no_grad():
        a, b = run(ref), run(new)
    _close(b, a)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    return new, report


# ------------------------------------------------------------------------------------------------
# transformers


def _hf_model(kind: str, attn: str | None = None) -> tuple[nn.Module, int]:
    t = transformers
    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=5)
    swin = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4, num_labels=5)
    # 36 px / patch 4: a 9 x 9 map padded to 4 x 4 windows, an odd patch merging, and a second stage
    # whose real 5 x 5 size differs from transformers' input_resolution (4 x 4)
    padded = dict(swin, image_size=36, patch_size=4)
    configs = {
        "vit": (t.ViTForImageClassification, t.ViTConfig(intermediate_size=64, **small)),
        "deit": (t.DeiTForImageClassification, t.DeiTConfig(intermediate_size=64, **small)),
        "dinov2": (t.Dinov2ForImageClassification, t.Dinov2Config(mlp_ratio=2, **small)),
        "swin": (t.SwinForImageClassification, t.SwinConfig(**swin)),
        "swin_padded": (t.SwinForImageClassification, t.SwinConfig(**padded)),
        "swinv2": (t.Swinv2ForImageClassification, t.Swinv2Config(**swin)),
        "swinv2_padded": (t.Swinv2ForImageClassification, t.Swinv2Config(**padded)),
    }
    cls, config = configs[kind]
    if attn:
        config._attn_implementation = attn
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(config)
    return _meaningful(model), config.image_size


def _logits(x: torch.Tensor) -> Callable[[nn.Module], torch.Tensor]:
    return lambda m: m(pixel_values=x).logits


HF_CASES = {
    "vit-sdpa": ("vit", "sdpa", {"hf_vit_attention", "layer_norm"}),
    "vit-eager": ("vit", "eager", {"hf_vit_attention"}),
    "deit": ("deit", "sdpa", {"hf_vit_attention"}),
    "dinov2": ("dinov2", "sdpa", {"hf_vit_attention"}),
    "swin": ("swin", "sdpa", {"hf_swin_layer", "hf_swin_patch_merging", "avg_pool_1d", "layer_norm"}),
    "swin-padded": ("swin_padded", "eager", {"hf_swin_layer", "hf_swin_patch_merging"}),
    "swinv2": ("swinv2", None, {"hf_swinv2_layer", "hf_swinv2_patch_merging", "layer_norm"}),  # eager only
    "swinv2-padded": ("swinv2_padded", None, {"hf_swinv2_layer", "hf_swinv2_patch_merging"}),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_model_is_rewritten_and_keeps_its_logits(case):
    kind, attn, rules = HF_CASES[case]
    ref, size = _hf_model(kind, attn)
    new, report = _check_model(ref, _logits(_images(size)), rules)
    layers = {"vit": 2, "deit": 2, "dinov2": 2}.get(kind, 4)
    attention_rules = ("hf_vit_attention", "hf_swin_layer", "hf_swinv2_layer")
    assert sum(report.replaced[r] for r in attention_rules) == layers  # every attention layer
    rewritten = {type(m).__name__ for m in new.modules()}
    assert not rewritten & {"ViTAttention", "DeiTAttention", "Dinov2Attention", "SwinAttention", "Swinv2SelfAttention"}


class _Logits(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values=pixel_values).logits


def _eager_max_rank(model: nn.Module, x: torch.Tensor) -> int:
    """The highest rank of any tensor an aten op produces while ``model`` runs on ``x``."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    ranks = [0]

    class Ranks(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ranks.extend(t.dim() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    with torch.no_grad(), Ranks():
        model(x)
    return max(ranks)


@pytest.mark.parametrize("kind", ["swin_padded", "swinv2"])
def test_transformers_swin_graph_has_rank_at_most_five_and_a_dynamic_batch(kind):
    """transformers' window partition is rank 6; the rewritten model runs and exports with rank
    <= 5, without aten.roll or SDPA, and with a symbolic batch (ONNX) that still matches the original."""
    ref, size = _hf_model(kind)
    new = copy.deepcopy(ref)
    edge_rewrite(new, EdgeRewriteConfig())
    x = _images(size)
    assert _eager_max_rank(_Logits(ref), x) == 6  # what the rewrite removes
    assert _eager_max_rank(_Logits(new), x) <= 5
    batch = torch.export.Dim("batch", min=1, max=16)
    with torch.no_grad():
        ep = torch.export.export(_Logits(new), (x,), dynamic_shapes=({0: batch},), strict=False)
    vals = [n.meta["val"] for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    assert max(v.dim() for v in vals) <= 5
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("roll" in t or "scaled_dot_product" in t for t in targets), targets
    x3 = _images(size, batch=3)
    with torch.no_grad():
        _close(ep.module()(x3), ref(pixel_values=x3).logits)


def test_transformers_attention_mask_is_honoured():
    """The rewritten ViT attention takes transformers' masks: additive float (eager) and boolean
    keep-masks (SDPA), broadcast over heads."""
    ref, _ = _hf_model("vit", "eager")
    src = ref.vit.layers[0].attention
    new = rewrites.HfBmmAttention(src).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 17, 32, generator=g)
    keep = torch.rand(2, 1, 17, 17, generator=g) > 0.3
    keep[..., 0] = True  # every query keeps one key
    additive = torch.zeros(2, 1, 17, 17).masked_fill(~keep, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out, weights = new(x, additive)
        assert weights is None
        _close(out, src(x, additive)[0])
        _close(new(x, keep)[0], out)
        _close(new(x)[0], src(x)[0])


def test_transformers_vit_family_shares_vits_attention_code():
    """The rule rewrites DeiT, DINOv2, ViT-MAE, ... attention as ViT's: their classes (and the eager
    attention function they fall back to) must be ViT's code under another name."""
    import importlib

    def source(obj, name: str = "") -> str:
        text = re.sub(r"\b\w+Config\b", "Config", inspect.getsource(obj))
        # DINOv2 takes the softmax in the input dtype, ViT in float32 then back: the same in fp32
        text = text.replace("dim=-1, dtype=torch.float32).to(query.dtype)", "dim=-1)")
        return text.replace(name, "X") if name else text

    vit = importlib.import_module("transformers.models.vit.modeling_vit")
    ref_cls, ref_fn = source(vit.ViTAttention, "ViTAttention"), source(vit.eager_attention_forward)
    found = 0
    for path in HF_VIT_ATTENTION:
        module_name, _, cls_name = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += 1
        assert source(getattr(module, cls_name), cls_name) == ref_cls, path
        assert source(module.eager_attention_forward) == ref_fn, path
    assert found >= 3


# ------------------------------------------------------------------------------------------------
# timm architectures outside the catalog

TIMM_CASES = {
    # name: (create_model kwargs: small, image size, rules that must apply)
    "vit_tiny_patch16_224": (dict(img_size=32, depth=2), 32, {"attention", "layer_norm"}),
    "pit_ti_224": (dict(img_size=64, depth=(1, 1, 1)), 64, {"attention"}),
    "cait_xxs24_224": (dict(img_size=32, depth=2), 32, {"cait_talking_head_attention", "cait_class_attention"}),
    "xcit_nano_12_p16_224": (dict(img_size=32, depth=2), 32,
                             {"xcit_cross_covariance_attention", "cait_class_attention"}),
}


def _timm_model(name: str, **kwargs) -> nn.Module:
    timm = import_timm()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs)
    return _meaningful(model)


@pytest.mark.parametrize("name", list(TIMM_CASES))
def test_timm_model_outside_the_catalog_is_rewritten_and_keeps_its_logits(name):
    kwargs, size, rules = TIMM_CASES[name]
    ref = _timm_model(name, **kwargs)
    x = _images(size)
    new, _ = _check_model(ref, lambda m: m(x), rules)
    left = {type(m).__name__ for m in new.modules()}
    assert not left & {"Attention", "ClassAttn", "TalkingHeadAttn", "XCA"}, left


def test_unhandled_timm_attention_is_reported_and_exported_as_it_is():
    """ConViT's gated positional attention (GPSA, holding ``qk`` + ``v``) and its MHSA have no rule:
    they are kept, listed under ``unrecognised`` by path, and the export report carries them."""
    ref = _timm_model("convit_tiny", img_size=32, depth=2, local_up_to_layer=1)
    model = copy.deepcopy(ref)
    rewrite_for_target(model, ExportConfig(target="onnx"), EdgeRewriteConfig())
    expected = {"blocks.0.attn": "GPSA", "blocks.1.attn": "MHSA"}
    assert model.edgevit_rewrites["unrecognised"] == expected
    assert [type(b.attn).__name__ for b in model.blocks] == ["GPSA", "MHSA"]
    x = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_switched_off_rules_still_recognise_their_attention():
    """With the attention rewrite off, CaiT's attention is kept but still known: not unrecognised."""
    model = _timm_model("cait_xxs24_224", img_size=32, depth=2)
    report = edge_rewrite(model, EdgeRewriteConfig.off())
    assert report.total == 0
    assert report.unrecognised == {}
    assert report.to_dict()["unrecognised"] == {}


# ------------------------------------------------------------------------------------------------
# Custom modules


class _TokenMixer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + self.mha(y, y, y, need_weights=False)[0]


class SelfAttention(nn.Module):
    """Named like attention, computing it with torch's nn.MultiheadAttention."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.inner = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, x, x, need_weights=False)[0]


class _QKVAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v)


class AttentionBlock(nn.Module):
    """A block named like attention around the module that holds the projections."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.attn, self.mlp = nn.LayerNorm(dim), _QKVAttention(dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class _CustomViT(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.Sequential(_TokenMixer(dim), SelfAttention(dim), AttentionBlock(dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def test_multihead_attention_in_a_custom_module_is_reported():
    """torch's nn.MultiheadAttention (and custom attention) is exported as it is and reported: the
    outermost attention module, except that a block named like attention gives way to the module
    inside it that holds the q/k/v projections. A rewritten model reports nothing of its own."""
    ref = _CustomViT().eval()
    model = copy.deepcopy(ref)
    report = edge_rewrite(model, ALL_ON)
    assert report.to_dict()["unrecognised"] == {
        "blocks.0.mha": "MultiheadAttention",
        "blocks.1": "SelfAttention",
        "blocks.2.attn": "_QKVAttention",
    }
    assert isinstance(model.blocks[0].mha, nn.MultiheadAttention)
    x = _images(32)
    with torch.no_grad():
        _close(model(x), ref(x))

    vit = _timm_model("vit_tiny_patch16_224", img_size=32, depth=1)
    assert unrecognised_attention(vit) == {}  # a class some rule takes
    assert unrecognised_attention(vit, recognised=()) == {"blocks.0.attn": "Attention"}
    edge_rewrite(vit, ALL_ON)
    assert unrecognised_attention(vit, recognised=()) == {}  # edge forms are never reported


def test_dynamic_img_size_vit_exports_without_a_position_resample():
    """timm ViTs built with dynamic_img_size resample their position embedding under export (a
    bicubic antialiased interpolate litert-torch cannot lower); at the native grid the static path
    is the same math."""
    import copy

    import torch

    from edgevit.converters.rewrites import edge_rewrite
    from edgevit.models._timm import import_timm

    model = import_timm().create_model("test_vit").eval()  # dynamic_img_size=True, 160 px
    x = torch.randn(2, 3, 160, 160)
    rewritten = copy.deepcopy(model)
    report = edge_rewrite(rewritten)
    assert report.replaced["static_pos_embed"] == 1
    with torch.no_grad():
        want, got = model(x), rewritten(x)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()) + 1e-6)
    ops = {str(n.target) for n in torch.export.export(rewritten, (x,)).graph.nodes if n.op == "call_function"}
    assert not [op for op in ops if "upsample" in op or "interpolate" in op], ops
    plain = {str(n.target) for n in torch.export.export(model, (x,)).graph.nodes if n.op == "call_function"}
    assert [op for op in plain if "upsample" in op], "the unrewritten model no longer resamples: test is moot"


def test_unrecognised_attention_with_a_fused_switch_runs_its_reference_math():
    """Twins calls F.scaled_dot_product_attention on 5-D windows, which the ONNX exporter cannot
    lower; its own explicit path is the same math and is what the artifact gets."""
    import copy

    import torch

    from edgevit.converters.rewrites import edge_rewrite
    from edgevit.models._timm import import_timm

    model = import_timm().create_model("twins_svt_small", depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 224, 224)
    rewritten = copy.deepcopy(model)
    report = edge_rewrite(rewritten)
    assert report.replaced["unfused_attention"] == 4
    assert not [m for m in rewritten.modules() if getattr(m, "fused_attn", False)]
    assert "LocallyGroupedAttn" in set(report.unrecognised.values())  # still reported as unrecognised
    with torch.no_grad():
        want, got = model(x), rewritten(x)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()) + 1e-6)
    ops = {str(n.target) for n in torch.export.export(rewritten, (x,)).graph.nodes if n.op == "call_function"}
    assert not [op for op in ops if "scaled_dot_product" in op], ops


def test_mobilevitv2_linear_attention_without_expand_keeps_the_math():
    """MobileViTv2's expand_as made TFLite conversion fail (tfl.mul broadcast); broadcasting is the
    same product."""
    import copy

    import torch

    from edgevit.converters.rewrites import EdgeRewriteConfig, edge_rewrite
    from edgevit.models._timm import import_timm

    model = import_timm().create_model("mobilevitv2_050").eval()
    for p in model.parameters():  # non-zero scales everywhere: every branch counts in the parity
        if p.dim() == 1 and not p.any():
            torch.nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randn(1, 3, 256, 256)
    rewritten = copy.deepcopy(model)
    # the attention rule alone (the whole-block rule, tests/converters/test_rewrites_mobilevit.py, takes it otherwise)
    report = edge_rewrite(rewritten, EdgeRewriteConfig(mobilevit=False))
    assert report.replaced["linear_self_attention"] == 9 and not report.unrecognised
    with torch.no_grad():
        want, got = model(x), rewritten(x)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()) + 1e-6)
    ops = {str(n.target) for n in torch.export.export(rewritten, (x,)).graph.nodes if n.op == "call_function"}
    assert not [op for op in ops if "expand" in op], ops
