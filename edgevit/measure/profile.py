"""Parameters, MACs and activation memory of a model, split by component, as resolution grows.

Counting runs one forward pass (batch 1, by default on the ``meta`` device: shapes only, no
arithmetic, a second or less even for Swin at 512) under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
that sees every aten op, with forward hooks telling which module is running. Each op is assigned
to one component:

    stem        patch embedding / convolutional stem (and position embeddings)
    attn_score  the attention score product: Q K^T (softmax attention), Q (K^T V) in linear attention
    attn_value  the attention value product: A V (softmax attention), K^T V in linear attention
    proj        the attention's own projections (qkv, output proj, multi-scale aggregation convs)
    mlp         the feed-forward network (MLP, conv FFN)
    norm        LayerNorm / BatchNorm / GroupNorm
    conv        any other convolution (CNN blocks, MobileViT local convs)
    head        everything after the backbone: pooling, conv head, classifier
    other       the rest (patch merging, downsampling linears, reshapes)

MACs follow the convention of torch's ``FlopCounterMode`` and fvcore: one multiply-accumulate
per multiply in matmuls and convolutions (``FlopCounterMode`` reports 2 x MACs); elementwise ops,
norms and softmax count zero MACs (their memory is counted). Fused scaled-dot-product attention
is counted too (torch's counter skips it on CPU), and timm models are built with fused attention
off, so the attention products appear as explicit matmuls.

Activation memory is measured by tracking every tensor storage an op allocates until Python
frees it: ``peak_activation_bytes`` is the largest total alive at once during an eager
``torch.no_grad()`` forward (parameters and buffers excluded, the input included), and each
component's share of it is the bytes alive at that moment that its ops produced. The largest
single tensor per component (the attention matrix, for ``attn_score``) is reported too.
"""

from __future__ import annotations

import contextlib
import math
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgevit.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "COMPONENTS",
    "COMPONENT_LABELS",
    "DEFAULT_PROFILE_MODELS",
    "ComponentStats",
    "ProfileResult",
    "build_at_resolution",
    "catalog_figures",
    "format_profile_table",
    "plot_profiles",
    "profile_model",
    "profile_models",
    "timm_fused_attention",
]

COMPONENTS = ("stem", "attn_score", "attn_value", "proj", "mlp", "norm", "conv", "head", "other")
COMPONENT_LABELS = {
    "stem": "patch-embed/stem",
    "attn_score": "attn QK^T",
    "attn_value": "attn AV",
    "proj": "attn proj (qkv/proj)",
    "mlp": "MLP/FFN",
    "norm": "norm",
    "conv": "other conv",
    "head": "head",
    "other": "other",
}
# One model per attention kind: global, windowed, linear, and the CNN baseline.
DEFAULT_PROFILE_MODELS = (
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "efficientvit_b0",
    "mobilenetv3_large_100",
)

_STEM_NAMES = {"patch_embed", "stem", "conv_stem", "bn1", "conv1", "bn_stem", "patch_embed1"}
_HEAD_NAMES = {"head", "fc", "classifier", "head_dist", "conv_head", "global_pool", "last_linear", "fc_norm"}
_MLP_NAMES = {"mlp", "ffn", "feed_forward", "local_module", "channel_mixer"}
_ATTENTION_CLASS = re.compile(r"(Attention|Attn|MLA)(\d[dD])?(Downsample)?$")
_MLP_CLASS = re.compile(r"(Mlp|MLP|FFN|FeedForward)(\d[dD])?(WithNorm)?$")
_SCORE_PARAM = re.compile(r"(bias_table|attention_bias|rel_pos|relative_position)")


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ComponentStats:
    """One component's share: parameters, MACs, bytes alive at the model's activation peak and
    its largest single activation tensor."""

    params: int = 0
    macs: int = 0
    peak_bytes: int = 0
    max_tensor_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "params": self.params,
            "macs": self.macs,
            "peak_bytes": self.peak_bytes,
            "max_tensor_bytes": self.max_tensor_bytes,
        }


@dataclass(frozen=True)
class ProfileResult:
    """The profile of one model at one input resolution (batch 1, fp32 activations)."""

    model: str
    resolution: tuple[int, int]
    params: int
    macs: int
    peak_activation_bytes: int
    components: Mapping[str, ComponentStats]
    attention: str = ""
    family: str = ""
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def peak_activation_mb(self) -> float:
        return self.peak_activation_bytes / 1e6  # MB = 10^6 bytes, as everywhere in edgevit

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "attention": self.attention,
            "family": self.family,
            "resolution": list(self.resolution),
            "params": self.params,
            "params_m": round(self.params_m, 4),
            "macs": self.macs,
            "gmacs": round(self.gmacs, 5),
            "peak_activation_bytes": self.peak_activation_bytes,
            "peak_activation_mb": round(self.peak_activation_mb, 3),
            "components": {k: v.to_dict() for k, v in self.components.items()},
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileResult:
        return cls(
            model=data["model"],
            resolution=tuple(data["resolution"]),  # type: ignore[arg-type]
            params=int(data["params"]),
            macs=int(data["macs"]),
            peak_activation_bytes=int(data["peak_activation_bytes"]),
            components={k: ComponentStats(**v) for k, v in data.get("components", {}).items()},
            attention=data.get("attention", ""),
            family=data.get("family", ""),
            notes=dict(data.get("notes", {})),
        )


# --------------------------------------------------------------------------------------------
# Building models at a resolution


@contextlib.contextmanager
def timm_fused_attention(enabled: bool) -> Iterator[None]:
    """Build timm models with fused scaled-dot-product attention on or off, restoring the
    previous setting afterwards (timm reads the flag when a layer is built)."""
    from edgevit.models._timm import import_timm

    import_timm()
    import timm.layers.config as timm_config

    previous = timm_config._USE_FUSED_ATTN
    timm_config.set_fused_attn(enabled)
    try:
        yield
    finally:
        timm_config._USE_FUSED_ATTN = previous


def _as_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        h = w = resolution
    else:
        h, w = (int(v) for v in resolution)
    if h < 8 or w < 8:
        raise ConfigError(f"resolution must be at least 8 pixels, got {h}x{w}")
    return h, w


def _closest_divisor(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    # Closest to the original window; on a tie the larger (more context per window).
    return min(divisors, key=lambda d: (abs(d - target), -d))


def _edgevit_at(model: nn.Module, h: int, w: int, notes: dict[str, Any]) -> nn.Module:
    """Rebuild an :class:`edgevit.models.vit.EdgeViT` for an ``h x w`` input: the same geometry,
    and every block's attention rebuilt from its own ``config()`` for the new patch grid."""
    from edgevit.models.vit import ConvStem, EdgeViT, PatchEmbed

    blocks = list(model.blocks)
    stride = model.patch_embed.stride
    if h % stride or w % stride:
        raise ConfigError(f"this model has patch size {stride}; the resolution {h}x{w} must be a multiple of it")
    convs = [m for m in model.patch_embed.modules() if isinstance(m, torch_nn().Conv2d)]
    if isinstance(model.patch_embed, ConvStem) and len(convs) > 1 and convs[0].out_channels != 24:
        raise ConfigError("cannot rebuild a ConvStem with a custom width at another resolution")
    new = EdgeViT(
        img_size=(h, w),
        patch_size=stride,
        in_chans=convs[0].in_channels,
        num_classes=model.num_classes,
        embed_dim=model.embed_dim,
        depth=getattr(model, "depth", len(blocks)),
        share_layers=getattr(model, "share_layers", None),
        embed_rank=getattr(model, "embed_rank", None),
        num_heads=blocks[0].attn.num_heads,
        mlp_ratio=blocks[0].mlp.fc1.out_features / model.embed_dim,
        attention="full",
        global_pool=model.global_pool,
        stem="patch" if isinstance(model.patch_embed, PatchEmbed) else "conv",
    )
    grid = new.grid
    for old_block, new_block in zip(blocks, new.blocks):
        attn = old_block.attn
        options = dict(attn.config()) if hasattr(attn, "config") else {}
        if "window" in options and type(attn).__name__ == "WindowAttention":
            win = options["window"]
            if grid[0] % win or grid[1] % win:
                options["window"] = _closest_divisor(math.gcd(*grid), win)
                notes["window"] = f"{win} -> {options['window']} (divides the {grid[0]}x{grid[1]} grid)"
        try:
            new_block.attn = type(attn)(attn.dim, attn.num_heads, grid, new.num_prefix, **options)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{attn.name} attention cannot run on a {grid[0]}x{grid[1]} patch grid ({h}x{w} px): {exc}") from None
    try:
        from edgevit.models.attention import share_projections_across_layers
    except ImportError:
        pass
    else:
        share_projections_across_layers(new)
    return new


def torch_nn() -> Any:
    from torch import nn

    return nn


def build_at_resolution(
    name: str,
    resolution: int | Sequence[int] | None = None,
    *,
    device: str = "cpu",
    fused_attention: bool = False,
    window_policy: str = "pad",
) -> nn.Module:
    """Catalog model ``name`` built for input ``resolution`` (default: the catalog's), in eval mode.

    * timm ViT/DeiT/Swin/MobileViT/LeViT/EfficientFormerV2 take ``img_size=`` (position embeddings
      and attention biases are sized for it; Swin pads the grid to whole 7x7 windows as timm does).
    * convolutional models (MobileNetV3, EfficientViT, FastViT) are the same module; they take
      the larger input as it is.
    * edgevit's own ViTs are rebuilt with ``img_size``; window attention gets the window closest
      to the original that divides the patch grid (recorded in ``model.edgevit_build_notes``).

    Swin's window at a resolution whose stage grids are not multiples of it: ``window_policy``
    ``"pad"`` keeps the window (and the weights' shapes) and lets timm pad the grid, ``"fit"``
    uses the window closest to the original that divides every stage grid (6 at 384, 8 at 512).

    timm models are built with fused attention off unless ``fused_attention`` (the explicit
    matmuls are what MAC counters see). ``device="meta"`` builds without allocating weights.
    """
    if window_policy not in ("pad", "fit"):
        raise ConfigError(f"window_policy must be 'pad' or 'fit', got {window_policy!r}")
    import torch

    from edgevit.models import get_spec
    from edgevit.models.vit import EdgeViT

    spec = get_spec(name)
    h, w = _as_hw(resolution if resolution is not None else spec.input_size)
    notes: dict[str, Any] = {}
    with timm_fused_attention(fused_attention), torch.device(device):
        model = spec.builder(num_classes=None, pretrained=False)
        if (h, w) != tuple(spec.input_size):
            if spec.timm_name:
                import timm

                kwargs: dict[str, Any] = {"img_size": (h, w) if h != w else h}
                if spec.family in ("swin", "swinv2"):
                    window = 7 if spec.family == "swin" else 8
                    last = math.gcd(h // 32, w // 32)  # every stage grid is a multiple of the last
                    if (h // 32) % window or (w // 32) % window:
                        if window_policy == "fit":
                            kwargs["window_size"] = _closest_divisor(last, window)
                            notes["window"] = f"{window} -> {kwargs['window_size']} (divides every stage grid)"
                        else:
                            notes["window"] = f"{window}, grid padded to whole windows (timm)"
                try:
                    model = timm.create_model(spec.timm_name, **kwargs)
                    notes["rebuilt"] = "timm img_size"
                except TypeError as exc:
                    if "img_size" not in str(exc):
                        raise
                    model = spec.builder(num_classes=None, pretrained=False)
                    notes["rebuilt"] = "same module, larger input"
            elif isinstance(model, EdgeViT):
                model = _edgevit_at(model, h, w, notes)
                notes["rebuilt"] = "EdgeViT img_size"
            else:
                notes["rebuilt"] = "same module, larger input"
    model.eval()
    model.edgevit_spec = spec  # type: ignore[attr-defined]
    model.edgevit_build_notes = notes  # type: ignore[attr-defined]
    return model


# --------------------------------------------------------------------------------------------
# The counter


class _Record:
    """One tensor storage allocated by an op: its size, who made it and how it may be relabelled."""

    __slots__ = ("nbytes", "label", "origin", "tainted", "refs")

    def __init__(self, nbytes: int, label: str, origin: _Product | None = None, tainted: bool = False) -> None:
        self.nbytes = nbytes
        self.label = label
        self.origin = origin  # an attention product whose label is decided when its call ends
        self.tainted = tainted  # derived from a softmax output
        self.refs = 0

    @property
    def component(self) -> str:
        return self.origin.label if self.origin is not None and self.origin.label else self.label


class _Product:
    __slots__ = ("macs", "tainted", "feeds_product", "label")

    def __init__(self, macs: int, tainted: bool) -> None:
        self.macs, self.tainted = macs, tainted
        self.feeds_product = False  # its output is an operand of a later product (K^T V in Q (K^T V))
        self.label = ""


class _AttentionCall:
    __slots__ = ("softmax", "products")

    def __init__(self) -> None:
        self.softmax = False
        self.products: list[_Product] = []

    def resolve(self) -> None:
        for p in self.products:
            if self.softmax:  # products consuming the softmax output are A V, the others Q K^T
                p.label = "attn_value" if p.tainted else "attn_score"
            else:  # kernel/linear attention: K^T V feeds the query product Q (K^T V)
                p.label = "attn_value" if p.feeds_product else "attn_score"


class _Frame:
    __slots__ = ("module", "ctx", "call", "internal")

    def __init__(self, module: Any, ctx: str | None, call: _AttentionCall | None, internal: bool) -> None:
        self.module, self.ctx, self.call, self.internal = module, ctx, call, internal


class _Profiler:
    """Forward hooks + a dispatch mode; see the module docstring for the rules."""

    def __init__(self, model: nn.Module) -> None:
        import torch
        from torch import nn

        self.torch = torch
        self.model = model
        self.norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
        if hasattr(nn, "RMSNorm"):
            self.norm_types = (*self.norm_types, nn.RMSNorm)
        self.names = {id(m): n for n, m in model.named_modules()}
        self.const_keys = {self._key(t) for t in (*model.parameters(), *model.buffers())}
        self.phase = "features"
        self.split_phases = callable(getattr(model, "forward_features", None)) and callable(
            getattr(model, "forward_head", None)
        )
        self.stack: list[_Frame] = [_Frame(model, None, None, False)]
        self.macs = dict.fromkeys(COMPONENTS, 0)
        self.seen_modules: set[int] = set()
        self.params = dict.fromkeys(COMPONENTS, 0)
        self.live: dict[int, _Record] = {}
        self.records: list[_Record] = []
        self.live_bytes = 0
        self.peak = 0
        self.peak_snapshot: list[_Record] = []
        self.finalizers: list[weakref.finalize] = []

    # -- module context ----------------------------------------------------------------------

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def _context(self, module: nn.Module, args: tuple) -> _Frame:
        parent = self.stack[-1]
        name = self.names.get(id(module), "")
        leaf = name.rsplit(".", 1)[-1]
        cls = type(module).__name__
        depth = name.count(".") + 1 if name else 0
        ctx, call, internal = parent.ctx, parent.call, False
        if self.phase == "head":
            ctx = "head"
        elif ctx in ("head", "stem"):
            pass
        elif depth == 1 and not self.split_phases and leaf in _HEAD_NAMES:
            ctx = "head"
        elif depth == 1 and leaf in _STEM_NAMES:
            ctx = "stem"
        elif _ATTENTION_CLASS.search(cls):
            ctx, call, internal = "attn", _AttentionCall(), True
        elif ctx == "attn":
            # Inside an attention: modules with weights are projections, the rest (activations,
            # dropout, identity) are part of the attention's own arithmetic.
            internal = not any(True for _ in module.parameters(recurse=False)) and parent.internal
        elif ctx != "mlp" and (_MLP_CLASS.search(cls) or leaf in _MLP_NAMES):
            ctx = "mlp"
        return _Frame(module, ctx, call, internal)

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        frame = self._context(module, args)
        self.stack.append(frame)
        if id(module) not in self.seen_modules:
            self.seen_modules.add(id(module))
            for pname, p in module.named_parameters(recurse=False):
                self._add_param(p, self._param_component(frame, pname))

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        frame = self.stack.pop()
        if frame.ctx == "attn" and frame.call is not None and self.stack[-1].call is not frame.call:
            frame.call.resolve()
            for p in frame.call.products:
                self.macs[p.label] += p.macs

    def _param_component(self, frame: _Frame, pname: str) -> str:
        if frame.ctx in ("head", "stem"):
            return frame.ctx
        if isinstance(frame.module, self.norm_types):
            return "norm"
        if frame.ctx == "attn":
            return "attn_score" if _SCORE_PARAM.search(pname) else "proj"
        if frame.ctx == "mlp":
            return "mlp"
        if isinstance(frame.module, self.torch.nn.modules.conv._ConvNd):
            return "conv"
        return "other"

    def _add_param(self, p: torch.Tensor, component: str) -> None:
        key = id(p)
        if key in self._seen_params:
            return
        self._seen_params.add(key)
        self.params[component] += p.numel()

    # -- ops ----------------------------------------------------------------------------------

    def _op_component(self, frame: _Frame, func: Any) -> str:
        if frame.ctx in ("head", "stem"):
            return frame.ctx
        if isinstance(frame.module, self.norm_types):
            return "norm"
        if frame.ctx == "attn":
            return "proj"
        if frame.ctx == "mlp":
            return "mlp"
        if frame.module is self.model:
            return "stem" if self.phase == "features" and not self._body_started else "other"
        if func.overloadpacket in self._conv_ops:
            return "conv"
        return "other"

    def on_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        torch = self.torch
        frame = self.stack[-1]
        if frame.module is not self.model and self.names.get(id(frame.module), "").split(".")[0] not in _STEM_NAMES:
            self._body_started = True
        flat_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        flat_out = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        in_records = [self.live.get(self._key(t)) for t in flat_in]
        component = self._op_component(frame, func)
        macs = self._macs(func, args, flat_out)
        packet = func.overloadpacket
        origin: _Product | None = None
        # Tensors derived from a softmax output (through any op, talking-head convs included).
        tainted = frame.ctx == "attn" and any(r is not None and r.tainted for r in in_records)
        if frame.ctx == "attn" and frame.internal and frame.call is not None:
            call = frame.call
            if packet in self._sdpa_ops:
                score, value = macs
                self.macs["attn_score"] += score
                self.macs["attn_value"] += value
                macs, component = 0, "attn_value"
            elif macs and not any(self._key(t) in self.const_keys for t in flat_in):
                product = _Product(macs, tainted)
                for r in in_records:
                    if r is not None and r.origin is not None:
                        r.origin.feeds_product = True
                call.products.append(product)
                origin, macs, component, tainted = product, 0, "attn_score", False
            elif packet in self._softmax_ops:
                call.softmax, tainted, component = True, True, "attn_score"
            else:
                origins = [r.origin for r in in_records if r is not None and r.origin is not None]
                if tainted:
                    component = "attn_score"
                elif origins:
                    origin = origins[0]
        elif packet in self._sdpa_ops:
            score, value = macs
            self.macs["attn_score"] += score
            self.macs["attn_value"] += value
            macs, component = 0, "attn_value"
        if macs:
            self.macs[component] += macs
        for t in flat_out:
            self._track(t, component, origin, tainted)
        if self.live_bytes > self.peak:
            self.peak = self.live_bytes
            self.peak_snapshot = list(self.live.values())

    def _macs(self, func: Any, args: tuple, outs: list) -> Any:
        aten = self.torch.ops.aten
        packet = func.overloadpacket
        if packet is aten.mm:
            a, b = args[0], args[1]
            return int(a.shape[0] * a.shape[1] * b.shape[1])
        if packet in (aten.addmm, aten._addmm_activation):
            a, b = args[1], args[2]
            return int(a.shape[0] * a.shape[1] * b.shape[1])
        if packet is aten.bmm:
            a, b = args[0], args[1]
            return int(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2])
        if packet is aten.baddbmm:
            a, b = args[1], args[2]
            return int(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2])
        if packet in self._conv_ops:
            x, weight = args[0], args[1]
            transposed = bool(args[6]) if len(args) > 6 else False
            out = outs[0]
            spatial = (x.shape if transposed else out.shape)[2:]
            return int(x.shape[0] * math.prod(spatial) * math.prod(weight.shape))
        if packet in self._sdpa_ops:
            q, k, v = args[0], args[1], args[2]
            b, h, lq, e = q.shape
            s, ev = k.shape[-2], v.shape[-1]
            return (int(b * h * lq * s * e), int(b * h * lq * s * ev))
        return 0

    def _track(self, t: torch.Tensor, component: str, origin: _Product | None, tainted: bool) -> None:
        try:
            key = self._key(t)
        except (RuntimeError, NotImplementedError):
            return
        if key in self.const_keys:
            return
        rec = self.live.get(key)
        if rec is None:
            rec = _Record(int(t.untyped_storage().nbytes()), component, origin, tainted)
            self.live[key] = rec
            self.records.append(rec)
            self.live_bytes += rec.nbytes
        elif tainted:
            rec.tainted = True
        rec.refs += 1
        self.finalizers.append(weakref.finalize(t, self._release, key, rec))

    def _release(self, key: int, rec: _Record) -> None:
        rec.refs -= 1
        if rec.refs == 0 and self.live.get(key) is rec:
            del self.live[key]
            self.live_bytes -= rec.nbytes

    # -- run ----------------------------------------------------------------------------------

    def run(self, x: torch.Tensor) -> None:
        torch = self.torch
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        self._seen_params: set[int] = set()
        self._body_started = False
        self._conv_ops = {aten.convolution, aten._convolution, aten._slow_conv2d_forward, aten.mkldnn_convolution}
        self._sdpa_ops = {
            getattr(aten, n)
            for n in (
                "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention",
                "_scaled_dot_product_fused_attention_overrideable",
            )
            if hasattr(aten, n)
        }
        self._softmax_ops = {aten._softmax, aten.softmax, aten._safe_softmax} if hasattr(aten, "_safe_softmax") else {
            aten._softmax,
            aten.softmax,
        }
        profiler = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                profiler.on_op(func, args, kwargs, out)
                return out

        handles = []
        for module in self.model.modules():
            if module is self.model:
                continue
            handles.append(module.register_forward_pre_hook(self._pre_hook))
            handles.append(module.register_forward_hook(self._post_hook, always_call=True))
        self._track(x, "input", None, False)
        self.live_bytes = sum(r.nbytes for r in self.live.values())
        for p in self.model.parameters(recurse=False):
            self._add_param(p, "stem")
        try:
            with torch.no_grad(), Mode():
                if self.split_phases:
                    feats = self.model.forward_features(x)
                    self.phase = "head"
                    self.stack[0] = _Frame(self.model, "head", None, False)
                    out = self.model.forward_head(feats)
                    del feats
                else:
                    out = self.model(x)
            del out
        finally:
            for h in handles:
                h.remove()
            for f in self.finalizers:
                f.detach()
        # Parameters of modules that never ran.
        for p in self.model.parameters():
            self._add_param(p, "other")

    def result(self) -> dict[str, ComponentStats]:
        peak = dict.fromkeys(COMPONENTS, 0)
        for rec in self.peak_snapshot:
            c = rec.component
            if c in peak:
                peak[c] += rec.nbytes
            elif c == "input":
                peak["stem"] += rec.nbytes
        biggest = dict.fromkeys(COMPONENTS, 0)
        for rec in self.records:
            c = rec.component if rec.component in biggest else "stem"
            biggest[c] = max(biggest[c], rec.nbytes)
        return {
            c: ComponentStats(self.params[c], self.macs[c], peak[c], biggest[c]) for c in COMPONENTS
        }


def profile_model(
    model: str | nn.Module,
    resolution: int | Sequence[int] | None = None,
    *,
    device: str = "meta",
    batch: int = 1,
    window_policy: str = "pad",
) -> ProfileResult:
    """Profile catalog model ``model`` (a name; built with :func:`build_at_resolution`) or a
    module, at ``resolution`` (int or (h, w); default: the catalog's input size).

    ``device="meta"`` counts shapes without computing (exact for MACs, parameters and the
    tensors an eager forward allocates); ``"cpu"`` runs the real forward.
    """
    import torch

    if isinstance(model, str):
        module = build_at_resolution(model, resolution, device=device, window_policy=window_policy)
    else:
        module = model.eval()
        on = {p.device.type for p in module.parameters()} or {device}
        if on != {device}:
            raise ConfigError(f"the module's weights are on {', '.join(sorted(on))}, not {device}; pass device= to match")
    spec = getattr(module, "edgevit_spec", None)
    if resolution is None:
        if spec is None:
            raise ConfigError("pass resolution= when profiling a module that is not from the catalog")
        resolution = spec.input_size
    h, w = _as_hw(resolution)
    in_chans = spec.in_chans if spec is not None else 3
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    with timm_fused_attention(False) if spec is not None and spec.timm_name else contextlib.nullcontext():
        x = torch.zeros(batch, in_chans, h, w, device=device)
        profiler = _Profiler(module)
        profiler.run(x)
    components = profiler.result()
    return ProfileResult(
        model=spec.name if spec is not None else type(module).__name__,
        resolution=(h, w),
        params=sum(c.params for c in components.values()),
        macs=sum(c.macs for c in components.values()),
        peak_activation_bytes=profiler.peak,
        components=components,
        attention=spec.attention if spec is not None else "",
        family=spec.family if spec is not None else "",
        notes={"batch": batch, "device": device, **getattr(module, "edgevit_build_notes", {})},
    )


def profile_models(
    names: Sequence[str],
    resolutions: Sequence[int] | None = None,
    *,
    device: str = "meta",
    window_policy: str = "pad",
    progress: Any = None,
) -> list[ProfileResult]:
    """:func:`profile_model` for every name x resolution (``None``: each model's default)."""
    out = []
    for name in names:
        for res in resolutions or [None]:
            out.append(profile_model(name, res, device=device, window_policy=window_policy))
            if progress is not None:
                progress()
    return out


def catalog_figures(names: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    """``{name: (params_m, gmacs)}`` at each catalog model's default resolution, as measured here
    (the figures :class:`~edgevit.models.ModelSpec` carries)."""
    from edgevit.models import list_models

    figures = {}
    for name in names or list_models():
        r = profile_model(name)
        figures[name] = (round(r.params_m, 3), float(f"{r.gmacs:.4g}"))
    return figures


# --------------------------------------------------------------------------------------------
# Presentation


def format_profile_table(results: Sequence[ProfileResult]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per model x resolution, MACs per component in GMACs."""
    headers = ["model", "attention", "res", "params M", "GMACs", "peak act MB", "attn matrix MB"]
    headers += [f"{COMPONENT_LABELS[c]}" for c in COMPONENTS]
    rows = []
    for r in results:
        row = [
            r.model,
            r.attention,
            f"{r.resolution[0]}" if r.resolution[0] == r.resolution[1] else f"{r.resolution[0]}x{r.resolution[1]}",
            f"{r.params_m:.2f}",
            f"{r.gmacs:.3f}",
            f"{r.peak_activation_mb:.1f}",
            f"{r.components['attn_score'].max_tensor_bytes / 1e6:.1f}",
        ]
        row += [f"{r.components[c].macs / 1e9:.3f}" for c in COMPONENTS]
        rows.append(row)
    return headers, rows


_KIND_STYLE = {"global": "-", "windowed": "--", "linear": "-.", "conv-hybrid": ":", "cnn": (0, (1, 1))}


def plot_profiles(results: Sequence[ProfileResult], path: str | Any, title: str | None = None) -> None:
    """Write a PNG comparing the models as resolution grows: total GMACs, peak activation memory
    and the attention products' share of the MACs, plus the MAC split by component at the
    largest resolution. Uses matplotlib's Agg canvas directly (no pyplot, no global backend)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        from edgevit.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", "export", "plot profiles") from None
    by_model: dict[str, list[ProfileResult]] = {}
    for r in results:
        by_model.setdefault(r.model, []).append(r)
    fig = Figure(figsize=(15, 10.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    ax_macs, ax_mem, ax_attn, ax_split = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    for name, rs in by_model.items():
        rs = sorted(rs, key=lambda r: r.resolution[0] * r.resolution[1])
        xs = [r.resolution[0] for r in rs]
        style = _KIND_STYLE.get(rs[0].attention, "-")
        label = f"{name} ({rs[0].attention})"
        ax_macs.plot(xs, [r.gmacs for r in rs], linestyle=style, marker="o", label=label)
        ax_mem.plot(xs, [r.peak_activation_mb for r in rs], linestyle=style, marker="o", label=label)
        share = [
            100.0 * (r.components["attn_score"].macs + r.components["attn_value"].macs) / r.macs if r.macs else 0.0
            for r in rs
        ]
        ax_attn.plot(xs, share, linestyle=style, marker="o", label=label)
    ax_macs.set(title="compute", xlabel="input resolution (px)", ylabel="GMACs", yscale="log")
    ax_mem.set(title="peak activation memory (batch 1, fp32)", xlabel="input resolution (px)", ylabel="MB")
    ax_attn.set(title="attention products (QK^T + AV) share of MACs", xlabel="input resolution (px)", ylabel="%")
    for ax in (ax_macs, ax_mem, ax_attn):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_macs.yaxis.set_major_formatter(ScalarFormatter())
    ax_macs.yaxis.set_minor_formatter(NullFormatter())
    # Stacked split (share of the model's MACs) at each model's largest resolution.
    last = [max(rs, key=lambda r: r.resolution[0] * r.resolution[1]) for rs in by_model.values()]
    bottoms = [0.0] * len(last)
    labels = [f"{r.model}\n@{r.resolution[0]}: {r.gmacs:.2f} GMACs" for r in last]
    for comp in COMPONENTS:
        vals = [100.0 * r.components[comp].macs / r.macs if r.macs else 0.0 for r in last]
        if not any(vals):
            continue
        ax_split.bar(range(len(last)), vals, bottom=bottoms, label=COMPONENT_LABELS[comp])
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    ax_split.set_xticks(range(len(last)), labels, fontsize=7)
    ax_split.set(title="MACs by component at the largest resolution", ylabel="% of MACs", ylim=(0, 100))
    ax_split.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.suptitle(title or "edgevit profile: global vs windowed vs linear attention vs CNN")
    fig.tight_layout()
    fig.savefig(path, format="png")
