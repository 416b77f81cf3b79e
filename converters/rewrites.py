"""Edge rewrites that keep the math: applied to a model before any target converts it.

* :func:`reparameterize` folds train-time branches (FastViT/MobileOne-style blocks) into single
  convolutions, as timm does for deployment.
* :func:`fuse_input_stage` makes the model take the camera frame as it comes (uint8, N x H x W x 3)
  with the mean/std normalisation (and, for grayscale models, the RGB->luma conversion) folded into
  the weights of the convolution(s) that read the image, so the device runs no normalise pass.
* :func:`edge_rewrite` swaps attention, LayerNorm, Swin's windowing and pooling modules for forms a
  runtime's delegate takes whole (see the section "Edge forms" below); converters apply it in
  ``prepare()`` through :func:`rewrite_for_target`, switchable by the export option ``rewrite``.

Folding is exact, padding included: with zero padding in normalised space, the constant part of
the normalisation contributes a position-dependent map at the borders, which is precomputed once
for the fixed input size and added in place of the bias.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.converters.rewrites_mobilevit import (
    EdgeMobileVitBlock,
    EdgeMobileVitV2Block,
    MapLinearSelfAttention,
    MobileVitRewriteError,
    PatchTokenBlock,
)
from edgevit.errors import ConfigError

__all__ = [
    "ATTENTION_FORMS",
    "LAYER_NORM_FORMS",
    "LUMA_WEIGHTS",
    "REWRITE_OPTION",
    "EdgeRewriteConfig",
    "FoldedInputConv",
    "FusedInputModel",
    "HF_VIT_ATTENTION",
    "RewriteReport",
    "edge_rewrite",
    "fuse_input_stage",
    "input_convolutions",
    "reparameterize",
    "rewrite_for_target",
    "unrecognised_attention",
    "window_partition_rank4",
    "window_reverse_rank4",
]

# ITU-R 601-2 luma, as Pillow's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def reparameterize(model: nn.Module) -> nn.Module:
    """Fold multi-branch train-time blocks into their inference form (in place); returns model."""
    for module in list(model.modules()):
        fn = getattr(module, "reparameterize", None)
        if callable(fn):
            fn()
    return model


class FoldedInputConv(nn.Module):
    """A convolution reading raw [0, 255] pixels, equal to the original on normalised input."""

    def __init__(self, conv: nn.Conv2d, scale: torch.Tensor, offset: torch.Tensor, in_mix: torch.Tensor | None,
                 input_hw: tuple[int, int]) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ConfigError("fused input needs an ordinary (groups=1) convolution reading the image")
        w = conv.weight.detach().double()  # (out, cin, k, k)
        cin = w.shape[1]
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        if isinstance(self.padding, str):
            raise ConfigError("fused input does not support string padding on the input convolution")
        if conv.padding_mode != "zeros":
            raise ConfigError(f"fused input does not support padding_mode={conv.padding_mode!r}")
        # Constant part of the normalisation (offset per model channel) on a ones image, zero padded.
        ones = torch.ones(1, cin, *input_hw, dtype=torch.float64) * offset.double().view(1, cin, 1, 1)
        const_map = F.conv2d(ones, w, None, self.stride, self.padding, self.dilation)
        bias = conv.bias.detach().double().view(1, -1, 1, 1) if conv.bias is not None else 0.0
        folded = w * scale.double().view(1, cin, 1, 1)
        if in_mix is not None:  # (cin_model=1) <- 3 frame channels
            folded = folded * in_mix.double().view(1, -1, 1, 1)
        self.weight = nn.Parameter(folded.float(), requires_grad=False)
        bias_map = const_map + bias
        # Where padding does not reach, the map is constant per channel: keep a plain bias then.
        flat = bias_map.flatten(2)
        if torch.allclose(flat, flat[..., :1].expand_as(flat), rtol=0, atol=1e-9):
            self.register_buffer("bias_map", bias_map[..., :1, :1].float())
        else:
            self.register_buffer("bias_map", bias_map.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation) + self.bias_map


class FusedInputModel(nn.Module):
    """uint8 N x H x W x C frames in, logits out; normalisation lives in the folded convolution(s)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.model(frame.permute(0, 3, 1, 2).to(torch.float32))


def input_convolutions(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Qualified names of the modules that read the model's input tensor directly.

    Found from the ``torch.export`` graph; raises :class:`ConfigError` naming the op when
    something other than a 2-D convolution reads the image.
    """
    ep = torch.export.export(model, (example,))
    user_inputs = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    names = []
    readers = list(placeholder.users)
    while readers:
        user = readers.pop()
        target = str(user.target)
        if any(op in target for op in _PASS_THROUGH):
            readers.extend(user.users)  # eval-mode dropout, clones: look through them
            continue
        if "conv2d" not in target and "convolution" not in target:
            raise ConfigError(
                f"fused input needs the image to be read by convolutions only, but {target} reads it; "
                "export without --fused-input"
            )
        stack = user.meta.get("nn_module_stack", {})
        if not stack:
            raise ConfigError("fused input: cannot map the input convolution back to its module")
        path = list(stack.values())[-1][0]
        names.append(_clean_path(path))
    return sorted(set(names))


_PASS_THROUGH = ("dropout", "clone", "alias", "contiguous", "identity")


def _clean_path(path: str) -> str:
    # nn_module_stack paths look like "L['self'].stem.conv" or "stem.conv"
    path = path.replace("L['self'].", "").replace("L['self']", "")
    out = []
    for part in path.split("."):
        if "[" in part:  # e.g. _modules['0']
            part = part.split("'")[1] if "'" in part else part
        out.append(part)
    return ".".join(p for p in out if p)


def fuse_input_stage(model: nn.Module, mean: Sequence[float], std: Sequence[float], input_size: tuple[int, int],
                     color_mode: str = "RGB") -> FusedInputModel:
    """Return a copy of ``model`` that takes uint8 N x H x W x 3 frames (see module docstring)."""
    model = copy.deepcopy(model).eval()
    cin = 1 if color_mode == "L" else 3
    example = torch.randn(1, cin, *input_size)
    names = input_convolutions(model, example)
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / (255.0 * std_t)
    offset = -mean_t / std_t
    in_mix = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64) if color_mode == "L" else None
    for name in names:
        conv = model.get_submodule(name)
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"fused input: {name} reads the image but is {type(conv).__name__}, not Conv2d")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, FoldedInputConv(conv, scale, offset, in_mix, input_size))
    return FusedInputModel(model).eval()


# ================================================================================================
# Edge forms of attention, normalisation, windowing and pooling (edge_rewrite)
#
# Each rule below swaps one kind of module for a module that computes the same function in the
# form a runtime's delegate takes whole (XNNPACK through ExecuTorch and TFLite):
#
# * attention as explicit per-head batched matmuls: rank-3 ``bmm`` over (batch x heads), softmax on
#   the last dim, the 1/sqrt(d) scale folded into the query weights, constant biases/masks
#   precomputed. No ``scaled_dot_product_attention`` (whose decomposition leaves its masking ops
#   outside XNNPACK), no rank-4 ``matmul`` (which lowers to no-op ``expand_copy``), no ``unbind``/
#   ``split`` (``squeeze_copy``/``split_with_sizes_copy``);
# * Swin's windows with rank <= 5 tensors, its cyclic shift as slices + concatenation;
# * LayerNorm with its mean and variance computed by a one-output linear layer (1x1 convolution for
#   channels-first maps): ExecuTorch's XNNPACK partitioner has no layer_norm and takes ``mean.dim``
#   only over the last two dims of a rank-4 tensor;
# * BatchNorm after a linear layer folded into it, strided subsampling as reshape + slice, global
#   average pooling as the rank-4 keep-dims mean XNNPACK runs.
#
# The weights are shared with (or folded from) the source module, so a rewritten model equals its
# source up to float reassociation; tests/test_rewrites.py and tests/test_rewrites_any_vit.py state
# the tolerances. Modules are found by exact class wherever they sit in a model (timm's,
# transformers' and edgevit's), not by model name; attention of any other class is kept and listed
# in the report's ``unrecognised``.
# ================================================================================================

ATTENTION_FORMS = ("keep", "bmm")
LAYER_NORM_FORMS = ("keep", "linear")


@dataclasses.dataclass(frozen=True)
class EdgeRewriteConfig:
    """Which edge rewrites :func:`edge_rewrite` applies; every one keeps the math.

    ``attention``: ``"bmm"`` (explicit per-head batched matmul + softmax) or ``"keep"``.
    ``layer_norm``: ``"linear"`` (mean/variance by a one-output linear layer: all-XNNPACK on
    ExecuTorch) or ``"keep"`` (the runtime's own LayerNorm lowering). ``windows``: Swin's blocks and
    patch merging (timm's Swin, transformers' Swin and SwinV2) with tensors of rank <= 5.
    ``pooling``: global average pooling in rank-4 keep-dims form. ``fold_norms``: BatchNorm folded
    into the preceding linear layer (LeViT).
    ``linear_2d``: linear layers applied to tokens flattened to (rows, features), which ONNX
    Runtime runs as one Gemm with its bias (a rank-3 MatMul keeps a separate Add).
    ``static_pos_embed``: a timm ViT built with ``dynamic_img_size`` resamples its position
    embedding in every forward when exported (a bicubic antialiased interpolate no converter lowers,
    the identity at the native size); at its native grid it is switched to the static path.
    ``mobilevit``: MobileViT (v1, v2) blocks without their unfold/fold transposes, v2's GroupNorm
    in keep-dims form (with ``attention="bmm"``, v2 only with ``layer_norm="keep"``;
    :mod:`edgevit.converters.rewrites_mobilevit`).
    """

    attention: str = "bmm"
    layer_norm: str = "keep"
    windows: bool = True
    pooling: bool = True
    fold_norms: bool = True
    linear_2d: bool = False
    static_pos_embed: bool = True
    mobilevit: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_FORMS:
            raise ConfigError(f"attention rewrite must be one of {', '.join(ATTENTION_FORMS)}, got {self.attention!r}")
        if self.layer_norm not in LAYER_NORM_FORMS:
            raise ConfigError(f"layer_norm rewrite must be one of {', '.join(LAYER_NORM_FORMS)}, got {self.layer_norm!r}")

    @classmethod
    def off(cls) -> "EdgeRewriteConfig":
        return cls(attention="keep", layer_norm="keep", windows=False, pooling=False, fold_norms=False, linear_2d=False,
                   static_pos_embed=False, mobilevit=False)


@dataclasses.dataclass
class RewriteReport:
    """What :func:`edge_rewrite` replaced (by rule name), what it left (with the reason), and the
    attention modules no rule recognises (module path -> class name; exported as they are)."""

    replaced: Counter = dataclasses.field(default_factory=Counter)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    unrecognised: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    def to_dict(self) -> dict:
        return {
            "replaced": dict(sorted(self.replaced.items())),
            "skipped": dict(self.skipped),
            "unrecognised": dict(self.unrecognised),
        }


class _Skip(Exception):
    """A rule matched a module it cannot rewrite exactly (the module is kept, the reason reported)."""


def _classes(*paths: str) -> tuple[type, ...]:
    """Classes by ``module:Class`` (those the installed timm / transformers / edgevit lacks are left out).

    transformers classes are looked up only once the caller has imported transformers: a model
    built from it has, and a timm or catalog export then pays nothing for the lookup.
    """
    import importlib
    import sys

    from edgevit.errors import MissingDependencyError

    found = []
    for path in paths:
        module, _, name = path.partition(":")
        if module.startswith("transformers") and "transformers" not in sys.modules:
            continue
        with contextlib.suppress(ImportError, AttributeError, MissingDependencyError):
            if module.startswith("timm"):
                from edgevit.models._timm import import_timm

                import_timm()  # timm imports torchvision: apply edgevit's compatibility step first
            elif module.startswith("transformers"):
                from edgevit._torchvision_compat import ensure_torchvision_importable

                ensure_torchvision_importable()
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def _apply_rule(model: nn.Module, kinds: tuple[type, ...], build: Callable[[nn.Module], nn.Module], label: str,
                report: RewriteReport) -> None:
    if not kinds:
        return
    for name, module in list(model.named_modules()):
        if not name or type(module) not in kinds:  # exact types: subclasses may change forward()
            continue
        try:
            new = build(module)
        except _Skip as why:
            report.skipped[name] = f"{label}: {why}"
            continue
        new.train(module.training)
        _replace(model, name, new)
        report.replaced[label] += 1


@dataclasses.dataclass(frozen=True)
class _Rule:
    """Modules of exactly these classes (``module:Class``) are rebuilt by ``build`` when ``enabled``.

    ``attention``: the classes are attention or hold it (Swin blocks): recognised, so never listed
    as unrecognised, whether or not the config enables the rule.
    """

    label: str
    classes: tuple[str, ...]
    build: Callable[[nn.Module], nn.Module]
    enabled: Callable[[EdgeRewriteConfig], bool]
    attention: bool = False


def _windows(c: EdgeRewriteConfig) -> bool:
    return c.windows


def _bmm(c: EdgeRewriteConfig) -> bool:
    return c.attention == "bmm"


def _fold(c: EdgeRewriteConfig) -> bool:
    return c.fold_norms


def _linear_norm(c: EdgeRewriteConfig) -> bool:
    return c.layer_norm == "linear"


def _pooling(c: EdgeRewriteConfig) -> bool:
    return c.pooling


def _rows(c: EdgeRewriteConfig) -> bool:
    return c.linear_2d


# ---- MobileViT rules (blocks in converters/rewrites_mobilevit.py) --------------------------------


def _mobilevit(c: EdgeRewriteConfig) -> bool:
    return c.mobilevit and c.attention == "bmm"


def _mobilevit_v2(c: EdgeRewriteConfig) -> bool:
    """v2's map form is for the channels-last TFLite lowering (LayerNorm kept as the runtime lowers
    it). ExecuTorch's XNNPACK (the ``layer_norm="linear"`` configuration) takes neither its
    keep-dims means over channels nor its sums (measured: 70 partitions, against 40 with the
    attention rule alone), so there the ``linear_self_attention`` rule is kept."""
    return _mobilevit(c) and c.layer_norm == "keep"


def _mobilevit_build(build: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    """``build``, with a block it cannot take exactly kept and reported (skipped)."""

    def make(src: nn.Module) -> nn.Module:
        try:
            return build(src)
        except MobileVitRewriteError as why:
            raise _Skip(str(why)) from None

    return make


def _mobilevit_rules() -> tuple[_Rule, ...]:
    return (
        _Rule("mobilevit_block", ("timm.models.mobilevit:MobileVitBlock",), _mobilevit_build(EdgeMobileVitBlock),
              _mobilevit, True),
        _Rule("mobilevit_v2_block", ("timm.models.mobilevit:MobileVitV2Block",),
              _mobilevit_build(EdgeMobileVitV2Block), _mobilevit_v2, True),
    )

# ---- end of the MobileViT rules ------------------------------------------------------------------


# transformers' ViT-family self-attention: the same q/k/v/o projections and attention-interface
# forward as ViTAttention in the installed 5.x (tests/test_rewrites_any_vit.py checks the sources).
HF_VIT_ATTENTION = (
    "transformers.models.vit.modeling_vit:ViTAttention",
    "transformers.models.deit.modeling_deit:DeiTAttention",
    "transformers.models.dinov2.modeling_dinov2:Dinov2Attention",
    "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers:Dinov2WithRegistersAttention",
    "transformers.models.vit_mae.modeling_vit_mae:ViTMAEAttention",
    "transformers.models.vit_msn.modeling_vit_msn:ViTMSNAttention",
    "transformers.models.ijepa.modeling_ijepa:IJepaAttention",
)

# Order matters: whole blocks first (they take their attention along), normalisation last (it
# also reaches the norms the new blocks hold).
def _rules() -> tuple[_Rule, ...]:
    """The rules in the order they run (a function: the edge forms are defined further down)."""
    return (
        _Rule("swin_block", ("timm.models.swin_transformer:SwinTransformerBlock",), EdgeSwinBlock,
              _windows, True),
        _Rule("patch_merging", ("timm.models.swin_transformer:PatchMerging",), EdgePatchMerging, _windows),
        _Rule("hf_swin_layer", ("transformers.models.swin.modeling_swin:SwinLayer",), EdgeHfSwinLayer,
              _windows, True),
        _Rule("hf_swinv2_layer", ("transformers.models.swinv2.modeling_swinv2:Swinv2Layer",),
              EdgeHfSwinV2Layer, _windows, True),
        _Rule("hf_swin_patch_merging", ("transformers.models.swin.modeling_swin:SwinPatchMerging",),
              functools.partial(EdgeHfPatchMerging, norm_first=True), _windows),
        _Rule("hf_swinv2_patch_merging", ("transformers.models.swinv2.modeling_swinv2:Swinv2PatchMerging",),
              functools.partial(EdgeHfPatchMerging, norm_first=False), _windows),
        *_mobilevit_rules(),
        _Rule("attention", ("timm.layers.attention:Attention",), BmmAttention, _bmm, True),
        _Rule("edgevit_full_attention", ("edgevit.models.attention:FullAttention",), BmmTokenAttention,
              _bmm, True),
        _Rule("fastvit_attention", ("timm.models.fastvit:Attention",), BmmMapAttention, _bmm, True),
        _Rule("edgevit_window_attention", ("edgevit.models.attention:WindowAttention",),
              BmmTokenWindowAttention, _bmm, True),
        _Rule("lite_mla", ("timm.models.efficientvit_mit:LiteMLA",), BmmLiteMLA, _bmm, True),
        _Rule("levit_attention", ("timm.models.levit:Attention",), BmmLevitAttention, _bmm, True),
        _Rule("levit_attention_downsample", ("timm.models.levit:AttentionDownsample",),
              BmmLevitAttentionDownsample, _bmm, True),
        _Rule("efficientformerv2_attention", ("timm.models.efficientformer_v2:Attention2d",),
              BmmAttention2d, _bmm, True),
        _Rule("efficientformerv2_attention_downsample", ("timm.models.efficientformer_v2:Attention2dDownsample",),
              BmmAttention2dDownsample, _bmm, True),
        _Rule("hf_vit_attention", HF_VIT_ATTENTION, HfBmmAttention, _bmm, True),
        _Rule("cait_class_attention", ("timm.models.cait:ClassAttn",), BmmClassAttention, _bmm, True),
        _Rule("cait_talking_head_attention", ("timm.models.cait:TalkingHeadAttn",),
              BmmTalkingHeadAttention, _bmm, True),
        _Rule("xcit_cross_covariance_attention", ("timm.models.xcit:XCA",), BmmCrossCovarianceAttention,
              _bmm, True),
        _Rule("linear_norm", ("timm.models.levit:LinearNorm",), fold_linear_norm, _fold),
        _Rule("subsample", ("timm.models.levit:Downsample",), EdgeSubsample, _fold),
        _Rule("layer_norm", ("torch.nn:LayerNorm", "timm.layers.norm:LayerNorm"), LinearMeanLayerNorm,
              _linear_norm),
        _Rule("layer_norm_2d", ("timm.layers.norm:LayerNorm2d",), ConvMeanLayerNorm2d, _linear_norm),
        _Rule("avg_pool", ("timm.layers.adaptive_avgmax_pool:FastAdaptiveAvgPool",), KeepDimsAvgPool,
              _pooling),
        _Rule("avg_pool_1d", ("torch.nn:AdaptiveAvgPool1d",), KeepDimsAvgPool1d, _pooling),
        _Rule("linear_self_attention", ("timm.models.mobilevit:LinearSelfAttention",), EdgeLinearSelfAttention,
              _bmm, True),
        _Rule("linear_2d", ("torch.nn:Linear",), RowsLinear, _rows),
    )


def edge_rewrite(model: nn.Module, config: EdgeRewriteConfig | None = None) -> RewriteReport:
    """Rewrite ``model`` in place into its edge form (see the section comment above).

    Modules are matched by exact type (timm's, transformers' and edgevit's classes, wherever they
    sit in the model); a matched module that cannot be rewritten exactly (e.g. a Swin block whose
    input is not a whole number of windows) is kept and listed in the report's ``skipped``.
    Attention-like modules of a class no rule knows are listed in ``unrecognised``. The model
    should be in eval mode (folding uses BatchNorm running statistics).
    """
    config = config or EdgeRewriteConfig()
    report = RewriteReport()
    if model.training:
        raise ConfigError("edge rewrites fold inference-time constants; call model.eval() first")
    if config.static_pos_embed:
        _static_pos_embed(model, report)
    for rule in _rules():
        if rule.enabled(config):
            _apply_rule(model, _classes(*rule.classes), rule.build, rule.label, report)
    report.unrecognised = unrecognised_attention(model)
    if config.attention == "bmm":
        _unfuse_attention(model, report)
    return report


def _unfuse_attention(model: nn.Module, report: RewriteReport) -> None:
    """Attention that no rule rewrote but that carries timm's ``fused_attn`` switch runs its own
    explicit reference path (q @ k^T, softmax, @ v: the same math) instead of
    ``F.scaled_dot_product_attention``, which converters lower only for 4-D inputs (Twins, NesT and
    Hiera call it on 5-D windows: the ONNX exporter fails there)."""
    for module in model.modules():
        if getattr(module, "fused_attn", None) is True:
            module.fused_attn = False
            report.replaced["unfused_attention"] += 1


def _static_pos_embed(model: nn.Module, report: RewriteReport) -> None:
    """Switch timm ViTs built with ``dynamic_img_size`` to the static position-embedding path.

    Eager timm skips the resample when the grid is the native one; under export it always
    resamples (bicubic, antialiased) to keep the graph size-generic. At the native grid that
    resample is the identity, so the static path computes the same, without an op no converter
    lowers (``aten._upsample_bicubic2d_aa``). Applied only where the position embedding has exactly
    the native grid's tokens; the artifact's input size is that grid (a static-shape export).
    """
    kinds = _classes("timm.models.vision_transformer:VisionTransformer",
                     "timm.models.deit:VisionTransformerDistilled")
    if not kinds:
        return
    for name, module in model.named_modules():
        if type(module) not in kinds or not getattr(module, "dynamic_img_size", False):
            continue
        embed = module.patch_embed
        grid = tuple(getattr(embed, "grid_size", None) or ())
        pos = getattr(module, "pos_embed", None)
        prefix = 0 if module.no_embed_class else module.num_prefix_tokens
        if pos is None or len(grid) != 2 or pos.shape[1] != grid[0] * grid[1] + prefix or embed.dynamic_img_pad:
            report.skipped[name or "<model>"] = "static_pos_embed: position embedding does not match the native grid"
            continue
        from timm.layers import Format

        module.dynamic_img_size = False
        embed.flatten = True
        embed.output_fmt = Format.NCHW
        embed.strict_img_size = True  # a frame of another size is an error, not a silent mismatch
        report.replaced["static_pos_embed"] += 1


# ------------------------------------------------------------------------------------------------
# Attention no rule recognises

_ATTENTION_NAME = re.compile(r"att(n|ention)", re.IGNORECASE)
# Child names by which a module holds the projections of an attention.
_PROJECTIONS = (
    {"qkv"}, {"to_qkv"}, {"qk", "v"}, {"q", "kv"}, {"q", "k", "v"}, {"query", "key", "value"},
    {"q_proj", "k_proj", "v_proj"}, {"wq", "wk", "wv"},
)


def _holds_projections(module: nn.Module) -> bool:
    names = {name for name, child in module._modules.items() if child is not None}
    return any(p <= names for p in _PROJECTIONS)


def unrecognised_attention(model: nn.Module, recognised: tuple[type, ...] | None = None) -> dict[str, str]:
    """Attention-like modules of ``model`` that are neither of a ``recognised`` class (by default
    those the attention and window rules take, enabled or not) nor edge forms of attention.

    Attention-like: the class name says attention/attn, or the module holds query/key/value
    projections (``qkv``, ``q``+``kv``, ``query``/``key``/``value``, ...). The outermost such
    module is listed, except that a module named like attention which only wraps the one that
    holds the projections (a block, or an attention + output pair) gives way to it, and one that
    holds a recognised or rewritten attention is looked into. Returns path -> class name.
    """

    if recognised is None:
        recognised = tuple(k for rule in _rules() if rule.attention for k in _classes(*rule.classes))

    def known(m: nn.Module) -> bool:
        return isinstance(m, _ATTENTION_FORMS) or type(m) in recognised

    found: dict[str, str] = {}

    def visit(module: nn.Module, path: str) -> None:
        if known(module):
            return
        holds = _holds_projections(module)
        if path and (holds or _ATTENTION_NAME.search(type(module).__name__)):
            inner = [m for m in module.modules() if m is not module]
            if not any(known(m) for m in inner) and (holds or not any(_holds_projections(m) for m in inner)):
                found[path] = type(module).__name__
                return
        for name, child in module._modules.items():
            if child is not None:
                visit(child, f"{path}.{name}" if path else name)

    visit(model, "")
    return found


# ------------------------------------------------------------------------------------------------
# Shared pieces


def _split_heads(x: torch.Tensor, heads: int, transpose: bool = False) -> torch.Tensor:
    """(B, N, heads * d) -> (B * heads, N, d), or (B * heads, d, N) with ``transpose``."""
    b, n, c = x.shape
    x = x.reshape(b, n, heads, c // heads)
    x = x.permute(0, 2, 3, 1) if transpose else x.permute(0, 2, 1, 3)
    return x.reshape(b * heads, *x.shape[2:])


def _merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B * heads, N, d) -> (B, N, heads * d)."""
    bh, n, d = x.shape
    return x.reshape(bh // heads, heads, n, d).permute(0, 2, 1, 3).reshape(bh // heads, n, heads * d)


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.requires_grad_(False)
    return layer


def _attention_bias(module: nn.Module) -> torch.Tensor:
    """The (heads, Nq, Nk) relative-position bias LeViT / EfficientFormerV2 gather each call."""
    with torch.no_grad():
        return module.attention_biases[:, module.attention_bias_idxs].detach().clone()


def _softmax_with_bias(scores: torch.Tensor, bias: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Softmax over keys of (B * heads, Nq, Nk) scores plus a constant (groups, Nq, Nk) bias, where
    groups is a multiple of heads (windows x heads for Swin), added batch-wise at rank 4."""
    if bias is not None:
        bh, nq, nk = scores.shape
        g = bias.shape[0]
        scores = (scores.reshape(bh // g, g, nq, nk) + bias).reshape(bh, nq, nk)
    return scores.softmax(dim=-1)


# ------------------------------------------------------------------------------------------------
# ViT / DeiT / MobileViT attention (timm.layers.Attention)


class BmmAttention(nn.Module):
    """timm ``Attention`` as separate q/k/v projections and rank-3 batched matmuls per head.

    The query weights carry the 1/sqrt(d) scale (or it is applied after ``q_norm`` where the
    model normalises queries); the key is produced already transposed, (B*h, d, N), by its
    head split, so no separate transpose runs.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.head_dim = src.num_heads, src.head_dim
        a = src.num_heads * src.head_dim
        w, b = src.qkv.weight.detach(), (src.qkv.bias.detach() if src.qkv.bias is not None else None)
        self.q_norm, self.k_norm = src.q_norm, src.k_norm
        self.scale_after_norm = not isinstance(src.q_norm, nn.Identity)
        s = 1.0 if self.scale_after_norm else src.scale
        self.scale = src.scale
        self.q = _linear_from(w[:a] * s, None if b is None else b[:a] * s)
        self.k = _linear_from(w[a : 2 * a], None if b is None else b[a : 2 * a])
        self.v = _linear_from(w[2 * a :], None if b is None else b[2 * a :])
        self.norm, self.gate, self.proj = src.norm, getattr(src, "gate", None), src.proj
        self.attn_drop, self.proj_drop = src.attn_drop, src.proj_drop

    def _heads(self, x: torch.Tensor, norm: nn.Module, transpose: bool) -> torch.Tensor:
        if isinstance(norm, nn.Identity):
            return _split_heads(x, self.num_heads, transpose)
        b, n, _ = x.shape
        x = norm(x.reshape(b, n, self.num_heads, self.head_dim)).reshape(b, n, -1)
        return _split_heads(x, self.num_heads, transpose)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ConfigError("the edge attention rewrite handles unmasked self-attention only")
        b, n, _ = x.shape
        q = self._heads(self.q(x), self.q_norm, False)
        if self.scale_after_norm:
            q = q * self.scale
        k = self._heads(self.k(x), self.k_norm, True)
        v = _split_heads(self.v(x), self.num_heads)
        attn = self.attn_drop(torch.bmm(q, k).softmax(dim=-1))
        out = _merge_heads(torch.bmm(attn, v), self.num_heads)
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(self.norm(out)))


def _qkv_split(qkv: nn.Linear, scale: float) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """A fused [q | k | v] projection as three linears, the query carrying ``scale``."""
    a = qkv.weight.shape[0] // 3
    w, b = qkv.weight.detach(), (qkv.bias.detach() if qkv.bias is not None else None)
    return (
        _linear_from(w[:a] * scale, None if b is None else b[:a] * scale),
        _linear_from(w[a : 2 * a], None if b is None else b[a : 2 * a]),
        _linear_from(w[2 * a :], None if b is None else b[2 * a :]),
    )


class BmmTokenAttention(nn.Module):
    """edgevit's reference ``FullAttention`` (models/attention.py) as rank-3 per-head matmuls."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        self.q, self.k, self.v = _qkv_split(src.qkv, src.scale)
        self.proj = src.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x), self.num_heads)
        k = _split_heads(self.k(x), self.num_heads, transpose=True)
        v = _split_heads(self.v(x), self.num_heads)
        return self.proj(_merge_heads(torch.bmm(torch.bmm(q, k).softmax(dim=-1), v), self.num_heads))


class BmmMapAttention(BmmTokenAttention):
    """FastViT's ``Attention`` over the pixels of an NCHW map, as rank-3 per-head matmuls."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__(src)
        self.attn_drop, self.proj_drop = src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q = _split_heads(self.q(t), self.num_heads)
        k = _split_heads(self.k(t), self.num_heads, transpose=True)
        v = _split_heads(self.v(t), self.num_heads)
        attn = self.attn_drop(torch.bmm(q, k).softmax(dim=-1))
        out = self.proj_drop(self.proj(_merge_heads(torch.bmm(attn, v), self.num_heads)))
        return out.transpose(1, 2).reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------------
# Swin: windows at rank <= 5, cyclic shift as slices + cat, bias and shift mask as one constant


def _roll2d(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """``torch.roll(x, (sh, sw), dims=(1, 2))`` as slices + concatenation (delegate-friendly)."""
    h, w = x.shape[1], x.shape[2]
    sh, sw = sh % h, sw % w
    if sh:
        x = torch.cat([x[:, h - sh :], x[:, : h - sh]], dim=1)
    if sw:
        x = torch.cat([x[:, :, w - sw :], x[:, :, : w - sw]], dim=2)
    return x


def window_partition_rank4(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nH * nW, wh * ww, C), windows in Swin's order, with rank-4 tensors."""
    b, h, w, c = x.shape
    x = x.reshape(b * (h // wh), wh, w // ww, ww * c).permute(0, 2, 1, 3)
    return x.reshape(-1, wh * ww, c)


def window_reverse_rank4(x: torch.Tensor, wh: int, ww: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition_rank4`: (B * nH * nW, wh * ww, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.reshape(-1, w // ww, wh, ww * c).permute(0, 2, 1, 3)
    return x.reshape(-1, h, w, c)


class WindowBmmAttention(nn.Module):
    """Swin ``WindowAttention`` with its relative-position bias and (for shifted blocks) the
    shift mask precomputed as one constant (windows * heads, N, N), per-head rank-3 matmuls."""

    def __init__(self, src: nn.Module, mask: torch.Tensor | None) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        a = src.qkv.weight.shape[0] // 3
        w, b = src.qkv.weight.detach(), (src.qkv.bias.detach() if src.qkv.bias is not None else None)
        self.q = _linear_from(w[:a] * src.scale, None if b is None else b[:a] * src.scale)
        self.k = _linear_from(w[a : 2 * a], None if b is None else b[a : 2 * a])
        self.v = _linear_from(w[2 * a :], None if b is None else b[2 * a :])
        self.proj, self.attn_drop, self.proj_drop = src.proj, src.attn_drop, src.proj_drop
        with torch.no_grad():
            bias = src._get_rel_pos_bias()[0].detach()  # (heads, N, N)
            if mask is not None:  # (nW, N, N) -> (nW, heads, N, N) -> (nW * heads, N, N)
                bias = (mask[:, None].to(bias.dtype) + bias[None]).flatten(0, 1)
        self.register_buffer("bias", bias.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x), self.num_heads)
        k = _split_heads(self.k(x), self.num_heads, transpose=True)
        v = _split_heads(self.v(x), self.num_heads)
        attn = self.attn_drop(_softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads))
        return self.proj_drop(self.proj(_merge_heads(torch.bmm(attn, v), self.num_heads)))


class EdgeSwinBlock(nn.Module):
    """timm ``SwinTransformerBlock`` (B, H, W, C) -> (B, H, W, C) with rank <= 4 windowing."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        h, w = src.input_resolution
        (wh, ww), (sh, sw) = tuple(src.window_size), tuple(src.shift_size)
        if h % wh or w % ww:
            raise _Skip(f"input {h}x{w} is not a whole number of {wh}x{ww} windows")
        if getattr(src, "dynamic_mask", False):
            raise _Skip("dynamic masks (input size changes at run time) are not rewritten")
        self.resolution, self.window, self.shift = (h, w), (wh, ww), (sh, sw)
        mask = src.attn_mask if any(self.shift) else None
        self.norm1, self.norm2, self.mlp = src.norm1, src.norm2, src.mlp
        self.drop_path1, self.drop_path2 = src.drop_path1, src.drop_path2
        self.attn = WindowBmmAttention(src.attn, mask)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if (h, w) != self.resolution:
            raise ConfigError(f"edge Swin block built for {self.resolution}, got input {h}x{w}")
        (wh, ww), (sh, sw) = self.window, self.shift
        if sh or sw:
            x = _roll2d(x, -sh, -sw)
        x = window_reverse_rank4(self.attn(window_partition_rank4(x, wh, ww)), wh, ww, h, w)
        if sh or sw:
            x = _roll2d(x, sh, sw)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(b, -1, c)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)


class EdgePatchMerging(nn.Module):
    """timm Swin ``PatchMerging`` with a rank-5 (not rank-6) space-to-depth."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.norm, self.reduction = src.norm, src.reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            b, h, w, c = x.shape
        # timm: (B, H/2, 2r, W/2, 2s, C) -> (B, H/2, W/2, s, r, C); here B and H/2 are merged.
        x = x.reshape(b * h // 2, 2, w // 2, 2, c).permute(0, 2, 3, 1, 4).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class BmmTokenWindowAttention(nn.Module):
    """edgevit's ``WindowAttention`` (models/attention.py; the windowed ViT): rank-4 windows,
    the shift as slices + concatenation, the shift mask as a (windows * heads, N, N) constant."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.grid, self.window, self.shift = src.num_heads, tuple(src.grid), src.window, src.shift
        self.q, self.k, self.v = _qkv_split(src.qkv, src.scale)
        self.proj = src.proj
        bias = None
        if src.mask is not None:  # (1, nW, 1, N, N) -> (nW * heads, N, N)
            m = src.mask.detach()[0, :, 0]
            bias = m[:, None].expand(m.shape[0], self.num_heads, *m.shape[1:]).reshape(-1, *m.shape[1:])
        self.register_buffer("bias", None if bias is None else bias.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        (gh, gw), ws, s = self.grid, self.window, self.shift
        x = x.reshape(b, gh, gw, c)
        if s:
            x = _roll2d(x, -s, -s)
        win = window_partition_rank4(x, ws, ws)
        q = _split_heads(self.q(win), self.num_heads)
        k = _split_heads(self.k(win), self.num_heads, transpose=True)
        v = _split_heads(self.v(win), self.num_heads)
        attn = _softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads)
        out = window_reverse_rank4(self.proj(_merge_heads(torch.bmm(attn, v), self.num_heads)), ws, ws, gh, gw)
        if s:
            out = _roll2d(out, s, s)
        return out.reshape(b, n, c)


# ------------------------------------------------------------------------------------------------
# EfficientViT: ReLU linear attention phi(Q) (phi(K)^T V), kept in the channels-first layout


class EdgeLinearSelfAttention(nn.Module):
    """MobileViTv2's separable linear self-attention without ``expand_as``: the context vector
    (B, d, P, 1) multiplies the values (B, d, P, N) by broadcasting, the same product, which TFLite
    converts (the expanded form fails: ``'tfl.mul' op operands don't have broadcast-compatible
    shapes``). Cross-attention calls (``x_prev``) go to the original module."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.embed_dim = src.embed_dim
        self.qkv_proj, self.out_proj = src.qkv_proj, src.out_proj
        self.attn_drop, self.out_drop = src.attn_drop, src.out_drop
        self._cross = [src]  # a plain list: not a submodule, its weights are the shared ones above

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor | None = None) -> torch.Tensor:
        if x_prev is not None:
            return self._cross[0](x, x_prev)
        query, key, value = self.qkv_proj(x).split([1, self.embed_dim, self.embed_dim], dim=1)
        context = (key * self.attn_drop(torch.softmax(query, dim=-1))).sum(dim=-1, keepdim=True)
        return self.out_drop(self.out_proj(torch.relu(value) * context))


class BmmLiteMLA(nn.Module):
    """EfficientViT ``LiteMLA``: out = phi(Q) (phi(K)^T [V 1]) normalised by its last column.

    Computed transposed, on (B * groups, dim, H * W) slices of the channels-first map: the key is
    the only operand that needs a transpose and the output is already in the map's layout. The
    all-ones row of V^T is a zero pad plus a constant one-hot row (TFLite's XNNPACK delegate takes
    PAD but not PADV2, a pad with value 1). Cost stays linear in the number of pixels.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.dim, self.eps = src.dim, src.eps
        self.qkv, self.aggreg, self.kernel_func, self.proj = src.qkv, src.aggreg, src.kernel_func, src.proj
        last = torch.zeros(1, src.dim + 1, 1)
        last[0, -1, 0] = 1.0
        self.register_buffer("ones_row", last, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        d = self.dim
        qkv = qkv.reshape(-1, 3 * d, h * w)  # (B * groups, 3d, HW)
        q_t = self.kernel_func(qkv[:, :d])  # (G, d, HW)
        k = self.kernel_func(qkv[:, d : 2 * d]).permute(0, 2, 1)  # (G, HW, d)
        v_t = F.pad(qkv[:, 2 * d :], (0, 0, 0, 1)) + self.ones_row  # (G, d + 1, HW), last row ones
        out_t = torch.bmm(torch.bmm(v_t, k), q_t)  # (G, d + 1, HW)
        out_t = out_t[:, :d] / (out_t[:, d:] + self.eps)
        return self.proj(out_t.reshape(b, -1, h, w))


# ------------------------------------------------------------------------------------------------
# LeViT


def fold_linear_norm(src: nn.Module) -> nn.Linear:
    """LeViT ``LinearNorm`` (Linear + BatchNorm1d) as one Linear (eval-mode statistics)."""
    lin, bn = src.linear, src.bn
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    w = lin.weight.detach() * s[:, None]
    b = (bn.bias - bn.running_mean * s).detach()
    if lin.bias is not None:
        b = b + lin.bias.detach() * s
    return _linear_from(w, b)


def _levit_linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    layer = module if isinstance(module, nn.Linear) else fold_linear_norm(module)
    return layer.weight.detach(), (layer.bias.detach() if layer.bias is not None else torch.zeros(layer.out_features))


class BmmLevitAttention(nn.Module):
    """LeViT ``Attention`` (token mode) with q/k/v regrouped from the per-head qkv layout."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if src.use_conv:
            raise _Skip("convolutional LeViT attention is not rewritten")
        h, kd, vd = src.num_heads, src.key_dim, src.val_dim
        w, b = _levit_linear(src.qkv)
        w, b = w.reshape(h, 2 * kd + vd, -1), b.reshape(h, 2 * kd + vd)
        self.num_heads = h
        self.q = _linear_from(w[:, :kd].reshape(h * kd, -1) * src.scale, b[:, :kd].reshape(-1) * src.scale)
        self.k = _linear_from(w[:, kd : 2 * kd].reshape(h * kd, -1), b[:, kd : 2 * kd].reshape(-1))
        self.v = _linear_from(w[:, 2 * kd :].reshape(h * vd, -1), b[:, 2 * kd :].reshape(-1))
        self.register_buffer("bias", _attention_bias(src), persistent=False)
        self.proj = src.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x), self.num_heads)
        k = _split_heads(self.k(x), self.num_heads, transpose=True)
        v = _split_heads(self.v(x), self.num_heads)
        attn = _softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads)
        return self.proj(_merge_heads(torch.bmm(attn, v), self.num_heads))


class EdgeSubsample(nn.Module):
    """LeViT ``Downsample`` (strided token subsampling) as pad + reshape + unit-stride slices."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if src.pool is not None:
            raise _Skip("pooling downsample is already delegate-friendly")
        self.stride, self.resolution = src.stride, tuple(src.resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        s, (h, w) = self.stride, self.resolution
        x = x.reshape(b, h, w, c)
        ph, pw = -h % s, -w % s
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        x = x.reshape(b * (h + ph) // s, s, (w + pw) // s, s * c)[:, :1, :, :c]
        return x.reshape(b, -1, c)


class BmmLevitAttentionDownsample(nn.Module):
    """LeViT ``AttentionDownsample`` (token mode): queries from the subsampled tokens."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if src.use_conv:
            raise _Skip("convolutional LeViT attention is not rewritten")
        h, kd, vd = src.num_heads, src.key_dim, src.val_dim
        w, b = _levit_linear(src.kv)
        w, b = w.reshape(h, kd + vd, -1), b.reshape(h, kd + vd)
        self.num_heads = h
        self.k = _linear_from(w[:, :kd].reshape(h * kd, -1), b[:, :kd].reshape(-1))
        self.v = _linear_from(w[:, kd:].reshape(h * vd, -1), b[:, kd:].reshape(-1))
        subsample, q_lin = src.q[0], src.q[1]
        qw, qb = _levit_linear(q_lin)
        self.subsample = EdgeSubsample(subsample) if subsample.pool is None else subsample
        self.q = _linear_from(qw * src.scale, qb * src.scale)
        self.register_buffer("bias", _attention_bias(src), persistent=False)
        self.proj = src.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(self.subsample(x)), self.num_heads)
        k = _split_heads(self.k(x), self.num_heads, transpose=True)
        v = _split_heads(self.v(x), self.num_heads)
        attn = _softmax_with_bias(torch.bmm(q, k), self.bias, self.num_heads)
        return self.proj(_merge_heads(torch.bmm(attn, v), self.num_heads))


# ------------------------------------------------------------------------------------------------
# EfficientFormerV2 (channels-first attention with talking heads)


class BmmAttention2d(nn.Module):
    """EfficientFormerV2 ``Attention2d`` with rank-3 per-head matmuls and a constant bias."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.scale, self.resolution = src.num_heads, src.scale, tuple(src.resolution)
        self.stride_conv, self.upsample = src.stride_conv, src.upsample
        self.q, self.k, self.v, self.v_local = src.q, src.k, src.v, src.v_local
        self.talking_head1, self.talking_head2 = HeadMix.of(src.talking_head1), HeadMix.of(src.talking_head2)
        self.act, self.proj = src.act, src.proj
        self.register_buffer("bias", _attention_bias(src)[None], persistent=False)  # (1, h, N, N)

    def _channels_to_heads(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        b, c, h, w = x.shape  # -> (B * heads, N, c / heads) or (B * heads, c / heads, N)
        x = x.reshape(b * self.num_heads, c // self.num_heads, h * w)
        return x if transpose else x.permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        q = self._channels_to_heads(self.q(x), False)
        k = self._channels_to_heads(self.k(x), True)
        v = self.v(x)
        v_local = self.v_local(v)
        v = self._channels_to_heads(v, False)
        n = q.shape[1]
        attn = torch.bmm(q, k).reshape(b, self.num_heads, n, n) * self.scale + self.bias
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        out = torch.bmm(attn.reshape(b * self.num_heads, n, n), v)  # (B * h, N, d)
        out = out.permute(0, 2, 1).reshape(b, -1, *self.resolution) + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(self.act(out))


class BmmAttention2dDownsample(BmmAttention2d):
    """EfficientFormerV2 ``Attention2dDownsample``: local-global queries at half resolution."""

    def __init__(self, src: nn.Module) -> None:
        nn.Module.__init__(self)
        self.num_heads, self.scale, self.resolution = src.num_heads, src.scale, tuple(src.resolution2)
        self.q, self.k, self.v, self.v_local = src.q, src.k, src.v, src.v_local
        self.act, self.proj = src.act, src.proj
        self.register_buffer("bias", _attention_bias(src)[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self._channels_to_heads(self.q(x), False)
        k = self._channels_to_heads(self.k(x), True)
        v = self.v(x)
        v_local = self.v_local(v)
        v = self._channels_to_heads(v, False)
        nq, nk = q.shape[1], k.shape[2]
        attn = (torch.bmm(q, k).reshape(b, self.num_heads, nq, nk) * self.scale + self.bias).softmax(dim=-1)
        out = torch.bmm(attn.reshape(b * self.num_heads, nq, nk), v)
        out = out.permute(0, 2, 1).reshape(b, -1, *self.resolution) + v_local
        return self.proj(self.act(out))


# ------------------------------------------------------------------------------------------------
# Normalisation and pooling


class LinearMeanLayerNorm(nn.Module):
    """LayerNorm over the last dim with mean and variance from a one-output linear layer.

    mean = x @ (1/C), var = ((x - mean)^2) @ (1/C): every op (linear, sub, mul, add, rsqrt) is
    one XNNPACK's ExecuTorch partitioner takes, at any rank.
    """

    def __init__(self, src: nn.LayerNorm) -> None:
        super().__init__()
        if len(src.normalized_shape) != 1:
            raise _Skip(f"normalises over {tuple(src.normalized_shape)}, not one dim")
        c = src.normalized_shape[0]
        self.eps = src.eps
        self.register_buffer("average", torch.full((1, c), 1.0 / c), persistent=False)
        self.weight = src.weight if src.elementwise_affine else None
        self.bias = src.bias if src.elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.average)
        y = centred * torch.rsqrt(F.linear(centred * centred, self.average) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


class ConvMeanLayerNorm2d(nn.Module):
    """timm ``LayerNorm2d`` (channels of an NCHW map) with the means as 1x1 convolutions."""

    def __init__(self, src: nn.LayerNorm) -> None:
        super().__init__()
        c = src.normalized_shape[0]
        self.eps = src.eps
        self.register_buffer("average", torch.full((1, c, 1, 1), 1.0 / c), persistent=False)
        self.weight = src.weight if src.elementwise_affine else None
        self.bias = src.bias if src.elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.conv2d(x, self.average)
        y = centred * torch.rsqrt(F.conv2d(centred * centred, self.average) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class KeepDimsAvgPool(nn.Module):
    """timm ``FastAdaptiveAvgPool`` as the NCHW keep-dims mean over (2, 3) that XNNPACK runs."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.flatten = src.flatten
        self.channels_last = tuple(src.dim) == (1, 2)
        if tuple(src.dim) not in ((1, 2), (2, 3)):
            raise _Skip(f"pools over dims {src.dim}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = x.mean((2, 3), keepdim=True)
        return x.flatten(1) if self.flatten else (x.permute(0, 2, 3, 1) if self.channels_last else x)


class KeepDimsAvgPool1d(nn.Module):
    """``nn.AdaptiveAvgPool1d(1)`` over (B, C, L) (transformers' Swin pooler) as the rank-4
    keep-dims mean over (2, 3) that XNNPACK runs, instead of unsqueeze + 2-D pool + squeeze."""

    def __init__(self, src: nn.AdaptiveAvgPool1d) -> None:
        super().__init__()
        size = src.output_size
        if (size[0] if isinstance(size, (tuple, list)) else size) != 1:
            raise _Skip(f"pools to {size}, not 1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) or unbatched (C, L)
        return x.reshape(-1, 1, x.shape[-1], 1).mean((2, 3), keepdim=True).reshape(*x.shape[:-1], 1)


class RowsLinear(nn.Module):
    """A linear layer applied to its input flattened to (rows, features) and reshaped back."""

    def __init__(self, src: nn.Linear) -> None:
        super().__init__()
        self.linear = src

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.linear(x)
        return self.linear(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.linear.out_features)

    # Models that read their linear layers' parameters directly (timm's SwinV2 builds the qkv bias
    # from ``qkv.bias`` pieces and calls ``F.linear(x, qkv.weight, bias)``) see the wrapped ones.
    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features


# ------------------------------------------------------------------------------------------------
# CaiT / XCiT attention (timm.models.cait, timm.models.xcit)


class HeadMix(nn.Module):
    """Talking heads: a (heads x heads) mixing of (B, heads, N, N) attention maps, as one batched
    matmul of the weight over (B, heads, N * N) plus the bias. The 1x1-convolution form of the
    same product computes wrong numbers on ExecuTorch's XNNPACK around a softmax (CaiT cosine 0.84,
    EfficientFormerV2-S1 0.90 with non-degenerate weights); this one is exact there."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().reshape(weight.shape[0], weight.shape[1]).clone())
        heads = weight.shape[0]
        b = bias.detach().clone() if bias is not None else torch.zeros(heads, dtype=weight.dtype)
        self.register_buffer("bias", b.reshape(1, heads, 1))

    @classmethod
    def of(cls, layer: nn.Module) -> HeadMix:
        """From a ``Linear(heads, heads)`` or a 1x1 ``Conv2d(heads, heads)``."""
        return cls(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, m = x.shape
        return (torch.matmul(self.weight, x.reshape(b, h, n * m)) + self.bias).reshape(b, h, n, m)


class BmmClassAttention(nn.Module):
    """CaiT's ``ClassAttn`` (also XCiT's class-attention layers): the class token attends to all
    tokens; rank-3 per-head matmuls, the scale folded into the query weights."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        q = src.q
        self.q = _linear_from(q.weight.detach() * src.scale, None if q.bias is None else q.bias.detach() * src.scale)
        self.k, self.v, self.proj = src.k, src.v, src.proj
        self.attn_drop, self.proj_drop = src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x[:, :1]), self.num_heads)  # (B * h, 1, d)
        k = _split_heads(self.k(x), self.num_heads, transpose=True)
        v = _split_heads(self.v(x), self.num_heads)
        attn = self.attn_drop(torch.bmm(q, k).softmax(dim=-1))
        return self.proj_drop(self.proj(_merge_heads(torch.bmm(attn, v), self.num_heads)))


class BmmTalkingHeadAttention(nn.Module):
    """CaiT's ``TalkingHeadAttn``: per-head matmuls; the two head-mixing linear layers (before and
    after the softmax) as :class:`HeadMix` batched matmuls over the (B, heads, N, N) scores."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        self.q, self.k, self.v = _qkv_split(src.qkv, src.scale)
        self.talk_before, self.talk_after = HeadMix.of(src.proj_l), HeadMix.of(src.proj_w)
        self.proj, self.attn_drop, self.proj_drop = src.proj, src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.num_heads
        q = _split_heads(self.q(x), h)
        k = _split_heads(self.k(x), h, transpose=True)
        v = _split_heads(self.v(x), h)
        scores = self.talk_before(torch.bmm(q, k).reshape(b, h, n, n))
        attn = self.attn_drop(self.talk_after(scores.softmax(dim=-1)))
        return self.proj_drop(self.proj(_merge_heads(torch.bmm(attn.reshape(b * h, n, n), v), h)))


def _inverse_norm(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """1 / max(|row|, eps) for the rows of (G, R, N), as (G, R, 1): ``F.normalize``'s divisor. The
    sum of squares is N x the rank-4 keep-dims mean XNNPACK runs (its partitioner takes no sum)."""
    g, r, n = x.shape
    squares = (x * x).reshape(g * r, 1, n, 1).mean((2, 3), keepdim=True).reshape(g, r, 1) * n
    return torch.rsqrt(torch.clamp_min(squares, eps * eps))


class BmmCrossCovarianceAttention(nn.Module):
    """XCiT's ``XCA``: softmax(temperature * q^ k^T) over (d x d) channel covariances per head,
    q and k L2-normalised over the tokens; rank-3 matmuls on (B * h, d, N) slices, the key's
    normalisation applied to the columns of q^ k instead of to k."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        self.q, self.k, self.v = _qkv_split(src.qkv, 1.0)
        self.temperature = src.temperature  # (h, 1, 1), a learnt parameter
        self.proj, self.attn_drop, self.proj_drop = src.proj, src.attn_drop, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        q_t = _split_heads(self.q(x), h, transpose=True)  # (B * h, d, N)
        k_tokens = self.k(x)
        k_norm = _inverse_norm(_split_heads(k_tokens, h, transpose=True)).reshape(b * h, 1, d)
        scores = torch.bmm(q_t * _inverse_norm(q_t), _split_heads(k_tokens, h)) * k_norm  # (B * h, d, d)
        attn = self.attn_drop((scores.reshape(b, h, d, d) * self.temperature).softmax(dim=-1))
        out = torch.bmm(attn.reshape(b * h, d, d), _split_heads(self.v(x), h, transpose=True))  # (B * h, d, N)
        return self.proj_drop(self.proj(out.reshape(b, c, n).transpose(1, 2)))  # channels (head, d) as timm


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers: ViT-family self-attention, Swin / SwinV2 layers and patch merging


class HfBmmAttention(nn.Module):
    """transformers' ViT / DeiT / DINOv2 ... self-attention (``q_proj``/``k_proj``/``v_proj``/
    ``o_proj`` with an eager or SDPA attention interface) as rank-3 per-head matmuls.

    Same call signature and return structure, ``(output, attention weights)``; the weights are
    ``None`` (as with SDPA), so ``output_attentions`` records nothing for rewritten layers. An
    attention mask is honoured: a float mask is added to the scores, a boolean one keeps True.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        if not all(isinstance(getattr(src, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise _Skip("expected q_proj/k_proj/v_proj/o_proj linear layers")
        if getattr(src, "is_causal", False):
            raise _Skip("causal attention is not rewritten")
        self.num_heads = src.num_attention_heads
        s, q = src.scaling, src.q_proj
        self.q = _linear_from(q.weight.detach() * s, None if q.bias is None else q.bias.detach() * s)
        self.k, self.v, self.proj = src.k_proj, src.v_proj, src.o_proj

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
        h = self.num_heads
        q = _split_heads(self.q(hidden_states), h)
        k = _split_heads(self.k(hidden_states), h, transpose=True)
        v = _split_heads(self.v(hidden_states), h)
        scores = torch.bmm(q, k)
        if attention_mask is not None:
            bh, nq, nk = scores.shape
            scores4 = scores.reshape(bh // h, h, nq, nk)
            if attention_mask.dtype == torch.bool:
                scores4 = scores4.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores4 = scores4 + attention_mask
            scores = scores4.reshape(bh, nq, nk)
        out = _merge_heads(torch.bmm(scores.softmax(dim=-1), v), h)
        return self.proj(out), None


def _hf_shift_mask(hp: int, wp: int, window: int, shift: int) -> torch.Tensor:
    """transformers' Swin shifted-window mask for a padded (hp, wp) map: (windows, N, N) with
    -100 between tokens of different cyclic-shift regions, 0 within one."""
    def regions(size: int) -> torch.Tensor:
        i = torch.arange(size)
        return (i >= size - window).long() + (i >= size - shift).long()

    ids = (regions(hp)[:, None] * 3 + regions(wp)[None, :]).to(torch.float32)
    ids = window_partition_rank4(ids[None, :, :, None], window, window)[..., 0]  # (windows, N)
    return torch.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0)


class _HfWindowLayer(nn.Module):
    """Shared windowing of transformers' Swin / SwinV2 layers: zero padding to whole windows, the
    cyclic shift as slices + concatenation, windows at rank 4, and the constant per-window score
    bias (relative positions + shift mask) as one (windows * heads, N, N) tensor.

    The bias is precomputed for the layer's built resolution; another resolution (odd feature
    maps, where transformers' ``input_resolution`` rounds down) gets its own, computed once.
    """

    num_heads: int
    window: int
    shift: int

    def _init_bias(self, rel_bias: torch.Tensor, mask_scale: float, resolution: tuple[int, int],
                   always_partition: bool) -> None:
        rel_bias = rel_bias.detach().clone(memory_format=torch.contiguous_format)
        self.register_buffer("rel_bias", rel_bias, persistent=False)  # (h, N, N)
        self.mask_scale = mask_scale
        self._other_biases: dict[tuple, torch.Tensor] = {}
        self.built_geometry = None
        try:
            geometry = self._geometry(*resolution, always_partition)
        except ConfigError:
            self.register_buffer("bias", None, persistent=False)
        else:
            self.built_geometry = geometry
            self.register_buffer("bias", self._make_bias(*geometry), persistent=False)

    def _geometry(self, h: int, w: int, always_partition: bool = True) -> tuple[int, int, int, int]:
        """(window, shift, padded height, padded width) for an h x w map."""
        window, shift = self.window, self.shift
        if not always_partition and min(h, w) <= window:  # transformers' set_shift_and_window_size
            window, shift = min(h, w), 0
        if window * window != self.rel_bias.shape[-1]:
            raise ConfigError(f"a {h}x{w} map needs {window}x{window} windows, but the layer's relative-position "
                              f"bias is for {self.rel_bias.shape[-1]} tokens")
        return window, shift, -(-h // window) * window, -(-w // window) * window

    def _make_bias(self, window: int, shift: int, hp: int, wp: int) -> torch.Tensor:
        with torch.no_grad():
            if not shift:
                return self.rel_bias.clone()
            mask = _hf_shift_mask(hp, wp, window, shift).to(self.rel_bias)
            return (self.mask_scale * mask[:, None] + self.rel_bias[None]).flatten(0, 1).contiguous()

    def _bias_for(self, geometry: tuple[int, int, int, int]) -> torch.Tensor:
        if geometry == self.built_geometry:
            return self.bias
        key = (geometry, self.rel_bias.device, self.rel_bias.dtype)  # the cache is no buffer: .to() skips it
        if key in self._other_biases:
            return self._other_biases[key]
        bias = self._make_bias(*geometry)
        if not torch.compiler.is_compiling():  # never keep a traced tensor
            self._other_biases[key] = bias
        return bias

    def _scores(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-head scores (B * nW * h, N, N) before the bias, values (B * nW * h, N, d))."""
        raise NotImplementedError

    def _windowed_attention(self, x: torch.Tensor, h: int, w: int, always_partition: bool = True) -> torch.Tensor:
        """(B, h, w, C) normalised map -> attention output (B, h * w, C), before the residual."""
        b, _, _, c = x.shape
        geometry = self._geometry(h, w, always_partition)
        window, shift, hp, wp = geometry
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            x = _roll2d(x, -shift, -shift)
        scores, v = self._scores(window_partition_rank4(x, window, window))
        attn = self.attn_drop(_softmax_with_bias(scores, self._bias_for(geometry), self.num_heads))
        out = self.proj_drop(self.proj(_merge_heads(torch.bmm(attn, v), self.num_heads)))
        out = window_reverse_rank4(out, window, window, hp, wp)
        if shift:
            out = _roll2d(out, shift, shift)
        if (hp, wp) != (h, w):
            out = out[:, :h, :w]
        return out.reshape(b, h * w, c)


class EdgeHfSwinLayer(_HfWindowLayer):
    """transformers' ``SwinLayer`` (pre-norm; dot-product window attention with a learnt
    relative-position table): same signature, ``(hidden_states, None)`` out."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        attn = src.attention
        self.num_heads, self.window, self.shift = attn.num_attention_heads, int(src.window_size), int(src.shift_size)
        self.resolution = tuple(int(r) for r in src.input_resolution)
        s, q = attn.scaling, attn.q_proj
        self.q = _linear_from(q.weight.detach() * s, None if q.bias is None else q.bias.detach() * s)
        self.k, self.v, self.proj = attn.k_proj, attn.v_proj, attn.o_proj
        self.attn_drop, self.proj_drop = nn.Identity(), src.dropout
        self.layernorm_before, self.layernorm_after, self.mlp = src.layernorm_before, src.layernorm_after, src.mlp
        self.dropout, self.drop_path = src.dropout, src.drop_path
        with torch.no_grad():
            rel = attn.relative_position_bias()[0]
        # Built for transformers' default call (always_partition=False: the window shrinks to a
        # map no larger than it, without shift).
        self._init_bias(rel, 1.0, self.resolution, always_partition=False)

    def _scores(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = _split_heads(self.q(windows), self.num_heads)
        k = _split_heads(self.k(windows), self.num_heads, transpose=True)
        return torch.bmm(q, k), _split_heads(self.v(windows), self.num_heads)

    def forward(self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int], always_partition: bool = False,
                **kwargs) -> tuple[torch.Tensor, None]:
        h, w = int(input_dimensions[0]), int(input_dimensions[1])
        b, _, c = hidden_states.shape
        x = self.layernorm_before(hidden_states).reshape(b, h, w, c)
        x = hidden_states + self.drop_path(self._windowed_attention(x, h, w, always_partition))
        return x + self.dropout(self.mlp(self.layernorm_after(x))), None


class EdgeHfSwinV2Layer(_HfWindowLayer):
    """transformers' ``Swinv2Layer`` (post-norm; cosine window attention with a per-head logit
    scale and a continuous relative-position bias, precomputed here): same signature and outputs.

    The cosine normalisation runs on tokens: per-head sums of squares and their expansion back to
    channels are two small linear layers, the logit scale folded into the second. transformers
    adds the shift mask twice (``-200`` between regions); so does this form, to stay equal.
    """

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        sa = src.attention.self
        self.num_heads, self.window, self.shift = sa.num_attention_heads, int(src.window_size), int(src.shift_size)
        self.resolution = tuple(int(r) for r in src.input_resolution)
        self.q, self.k, self.v = sa.query, sa.key, sa.value
        self.proj, self.proj_drop, self.attn_drop = src.attention.output.dense, src.attention.output.dropout, sa.dropout
        self.layernorm_before, self.layernorm_after = src.layernorm_before, src.layernorm_after
        self.intermediate, self.output, self.drop_path = src.intermediate, src.output, src.drop_path
        h, c = self.num_heads, sa.all_head_size
        head_of = torch.arange(c) // (c // h)
        member = (head_of[None, :] == torch.arange(h)[:, None]).float()  # (h, C)
        with torch.no_grad():
            scale = torch.clamp(sa.logit_scale.detach(), max=math.log(1.0 / 0.01)).exp().reshape(h)
            table = sa.continuous_position_bias_mlp(sa.relative_coords_table).view(-1, h)
            n = sa.window_size[0] * sa.window_size[1]
            rel = 16 * torch.sigmoid(table[sa.relative_position_index.view(-1)].view(n, n, h).permute(2, 0, 1))
        self.register_buffer("head_sum", member, persistent=False)  # sums of squares per head
        # contiguous: ExecuTorch's constant passes lose track of strided (transposed) buffers
        self.register_buffer("q_expand", (member.t() * scale[None, :]).contiguous(), persistent=False)
        self.register_buffer("k_expand", member.t().contiguous(), persistent=False)
        self._init_bias(rel, 2.0, self.resolution, always_partition=True)  # SwinV2 fixes its window at init

    def _cosine(self, x: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        inv = torch.rsqrt(torch.clamp_min(F.linear(x * x, self.head_sum), 1e-24))  # F.normalize's eps 1e-12
        return x * F.linear(inv, expand)

    def _scores(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = _split_heads(self._cosine(self.q(windows), self.q_expand), self.num_heads)
        k = _split_heads(self._cosine(self.k(windows), self.k_expand), self.num_heads, transpose=True)
        return torch.bmm(q, k), _split_heads(self.v(windows), self.num_heads)

    def forward(self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int],
                output_attentions: bool | None = False) -> tuple[torch.Tensor, ...]:
        h, w = int(input_dimensions[0]), int(input_dimensions[1])
        b, _, c = hidden_states.shape
        attn = self._windowed_attention(hidden_states.reshape(b, h, w, c), h, w)
        x = hidden_states + self.drop_path(self.layernorm_before(attn))
        out = x + self.drop_path(self.layernorm_after(self.output(self.intermediate(x))))
        return (out, None) if output_attentions else (out,)


class EdgeHfPatchMerging(nn.Module):
    """transformers' Swin / SwinV2 patch merging with a rank-5 space-to-depth instead of four
    strided slices (same channel order); Swin normalises then reduces, SwinV2 the reverse."""

    def __init__(self, src: nn.Module, norm_first: bool) -> None:
        super().__init__()
        self.norm, self.reduction, self.norm_first = src.norm, src.reduction, norm_first

    def forward(self, input_feature: torch.Tensor, input_dimensions: tuple[int, int]) -> torch.Tensor:
        h, w = int(input_dimensions[0]), int(input_dimensions[1])
        b, _, c = input_feature.shape
        x = input_feature.reshape(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # (B * H/2, row, W/2, col, C) -> (B * H/2, W/2, col, row, C): channels in transformers' order
        x = x.reshape(b * h // 2, 2, w // 2, 2, c).permute(0, 2, 3, 1, 4).reshape(b, -1, 4 * c)
        return self.reduction(self.norm(x)) if self.norm_first else self.norm(self.reduction(x))


# The edge forms of attention: what a rewrite left is never reported as unrecognised.
_ATTENTION_FORMS: tuple[type, ...] = (
    BmmAttention, BmmTokenAttention, BmmMapAttention, WindowBmmAttention, EdgeSwinBlock, BmmTokenWindowAttention,
    BmmLiteMLA, BmmLevitAttention, BmmLevitAttentionDownsample, BmmAttention2d, BmmAttention2dDownsample,
    BmmClassAttention, BmmTalkingHeadAttention, BmmCrossCovarianceAttention, HfBmmAttention, EdgeHfSwinLayer,
    EdgeHfSwinV2Layer, EdgeLinearSelfAttention,
    EdgeMobileVitBlock, PatchTokenBlock, EdgeMobileVitV2Block, MapLinearSelfAttention,  # MobileViT rules
)


# ------------------------------------------------------------------------------------------------
# Converter hook

REWRITE_OPTION = "rewrite"


def rewrite_for_target(model: nn.Module, config, rewrites: EdgeRewriteConfig) -> nn.Module:
    """Apply ``rewrites`` to ``model`` (in place) unless the export option ``rewrite`` is false.

    Called from a converter's ``prepare()`` with its :class:`~edgevit.converters.base.ExportConfig`.
    The report of what was replaced is kept on the model as ``edgevit_rewrites`` (a dict).
    """
    enabled = config.options.get(REWRITE_OPTION, True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{config.target} option {REWRITE_OPTION} must be true or false, got {enabled!r}")
    if not enabled:
        return model
    model.eval()  # exports are inference graphs; folding reads BatchNorm running statistics
    report = edge_rewrite(model, rewrites)
    model.edgevit_rewrites = report.to_dict()
    return model
