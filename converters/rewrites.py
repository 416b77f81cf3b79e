"""Edge rewrites that keep the math: applied to a model before any target converts it.

* :func:`reparameterize` folds train-time branches (FastViT/MobileOne-style blocks) into single
  convolutions, as timm does for deployment.
* :func:`fuse_input_stage` makes the model take the camera frame as it comes (uint8, N x H x W x 3)
  with the mean/std normalisation (and, for grayscale models, the RGB->luma conversion) folded into
  the weights of the convolution(s) that read the image, so the device runs no normalise pass.
* :func:`edge_rewrite` swaps attention, LayerNorm, Swin's windowing and pooling modules for forms a
  runtime's delegate takes whole (the forms are in :mod:`~edgevit.converters.rewrites_forms`, those
  of Hugging Face modules in :mod:`~edgevit.converters.rewrites_hf`); converters apply it in
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
import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.converters.rewrites_forms import (
    BmmAttention,
    BmmAttention2d,
    BmmAttention2dDownsample,
    BmmClassAttention,
    BmmCrossCovarianceAttention,
    BmmLevitAttention,
    BmmLevitAttentionDownsample,
    BmmLiteMLA,
    BmmMapAttention,
    BmmTalkingHeadAttention,
    BmmTokenAttention,
    BmmTokenWindowAttention,
    ConvMeanLayerNorm2d,
    EdgeLinearSelfAttention,
    EdgePatchMerging,
    EdgeSubsample,
    EdgeSwinBlock,
    KeepDimsAvgPool,
    KeepDimsAvgPool1d,
    LinearMeanLayerNorm,
    RewriteSkipped,
    RowsLinear,
    WindowBmmAttention,
    fold_linear_norm,
    window_partition_rank4,
    window_reverse_rank4,
)
from edgevit.converters.rewrites_hf import (
    EdgeHfPatchMerging,
    EdgeHfSwinLayer,
    EdgeHfSwinV2Layer,
    HfBmmAttention,
)
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
# source up to float reassociation; tests/converters/test_rewrites.py and test_rewrites_any_vit.py state
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
        except RewriteSkipped as why:
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
            raise RewriteSkipped(str(why)) from None

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
