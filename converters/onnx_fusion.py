"""ONNX Runtime's own transformer fusions for ViT-family ONNX artifacts (opt-in: contrib ops).

ONNX Runtime ships a graph optimizer for transformer models,
``onnxruntime.transformers.optimizer.optimize_model`` (``model_type="vit"``), which replaces
recognised subgraphs with ONNX Runtime *contrib* operators in the ``com.microsoft`` domain:
``Attention`` (q/k/v projections, scaled-dot-product attention and head merge in one kernel),
``SkipLayerNormalization`` (residual add + LayerNorm), ``BiasGelu`` / ``Gelu`` / ``FastGelu``.
Those operators exist only in ONNX Runtime: a fused artifact no longer runs on other ONNX engines,
so the fusion is opt-in and the artifact's metadata says so (``extra["onnxruntime_fusion"]``).

Two steps:

* :func:`prepare_for_ort_fusion` (torch side, before export) swaps the model's standard
  multi-head self-attention modules (timm ``Attention``, edgevit ``FullAttention``) for
  :class:`OrtFusableAttention`, the same math written the way ONNX Runtime's pattern matcher
  recognises it: three projections (MatMul + Add), heads as (B, h, N, d) through Reshape +
  Transpose, ``Q K^T / sqrt(d)`` as MatMul + Div, Softmax, MatMul, Transpose + Reshape. The
  dynamo exporter's own form of timm's attention (one fused qkv projection unbound by
  Slice/Squeeze, scale split over q and k) and edgevit's edge rewrites (rank-3 per-head matmuls,
  Gemm linears) do not match, so without this step no ``Attention`` is fused.
* :func:`fuse_for_onnxruntime` (ONNX side, after export) runs the optimizer with the model's
  head count and width, counts the fused operators, keeps the edgevit ``metadata_props``,
  records the fusion in the metadata and checks the result loads and computes the same logits as
  the unfused graph in ONNX Runtime's CPU execution provider.

Models without one uniform standard attention geometry (convolutional hybrids, Swin's per-stage
heads, linear/sparse attention variants) are left unchanged and the report says why.

Why opt-in and not the default (measured with ``benchmarks/fused.py --ort-fusion``, onnxruntime
1.32 CPU, fp32, batch 1; see benchmarks/results/fused.md): on DeiT-Tiny/-Small and edgevit's
vit_tiny_full every block fuses (Attention 12, SkipLayerNormalization 24, BiasGelu 12) and the
result verifies on real photos at the fp32 tolerance, but it does no less work than the graph
ONNX Runtime's own session optimizations make of the default export: 1-thread CPU time per run is
0.98-1.00x of the plain export's and 0.94-0.95x of the default's (i.e. about 5% *more* work), and
the file then needs onnxruntime. Within the fused graph, Attention is the part that helps
(SkipLayerNormalization/BiasGelu alone cost more than the session's own fusions).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit.errors import ConversionError

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

__all__ = [
    "CONTRIB_DOMAIN",
    "FUSED_OP_TYPES",
    "FusionReport",
    "OrtFusableAttention",
    "attention_geometry",
    "fuse_for_onnxruntime",
    "prepare_for_ort_fusion",
    "write_onnx",
]

CONTRIB_DOMAIN = "com.microsoft"
FUSED_OP_TYPES = (
    "Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization",
    "Gelu", "FastGelu", "BiasGelu", "GemmFastGelu",
)
METADATA_EXTRA_KEY = "onnxruntime_fusion"
# max |fused - unfused| on one random input, relative to max |unfused logit| (fp32 reordering only)
SELF_CHECK_REL = 1e-4


@dataclasses.dataclass
class FusionReport:
    """What :func:`fuse_for_onnxruntime` did to a graph."""

    applied: bool
    reason: str = ""
    model_type: str = "vit"
    num_heads: int = 0
    hidden_size: int = 0
    opt_level: int = 0
    tool: str = ""
    fused_ops: dict[str, int] = dataclasses.field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    contrib_ops: dict[str, int] = dataclasses.field(default_factory=dict)
    self_check_max_abs_diff: float | None = None
    residual_adds_reordered: int = 0
    seconds: float = 0.0

    @property
    def attention_fused(self) -> int:
        return self.fused_ops.get("Attention", 0) + self.fused_ops.get("MultiHeadAttention", 0)

    def summary(self) -> str:
        if not self.applied:
            return f"onnxruntime fusion not applied: {self.reason}"
        ops = ", ".join(f"{k} x{v}" for k, v in self.fused_ops.items()) or "nothing fused"
        return (f"onnxruntime fusion ({self.model_type}, {self.num_heads} heads, hidden {self.hidden_size}): {ops}; "
                f"{self.nodes_before} -> {self.nodes_after} nodes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def metadata_entry(self) -> dict[str, Any]:
        """The record kept in the artifact's metadata (``extra["onnxruntime_fusion"]``)."""
        return {
            "tool": self.tool,
            "model_type": self.model_type,
            "num_heads": self.num_heads,
            "hidden_size": self.hidden_size,
            "fused_ops": dict(self.fused_ops),
            "contrib_ops": dict(self.contrib_ops),
            "contrib_domain": CONTRIB_DOMAIN,
            "runs_on": "onnxruntime only (com.microsoft contrib operators)",
        }


# ------------------------------------------------------------------------------------------------
# Torch side: attention in the form ONNX Runtime's fusion recognises


_STANDARD_ATTENTION = (
    "timm.layers.attention.Attention",  # timm >= 1.0.20 (VisionTransformer, DeiT)
    "timm.models.vision_transformer.Attention",  # older timm
    "edgevit.models.attention.FullAttention",
)


def _is_standard_attention(module: nn.Module) -> str | None:
    """None when ``module`` is plain unmasked multi-head self-attention we can rewrite, else why not."""
    from torch import nn

    qkv = getattr(module, "qkv", None)
    heads = getattr(module, "num_heads", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(heads, int) or qkv.out_features != 3 * qkv.in_features:
        return "not a fused-qkv self-attention"
    if qkv.in_features % heads:
        return "width not divisible by heads"
    cls = f"{type(module).__module__}.{type(module).__qualname__}"
    if cls not in _STANDARD_ATTENTION:
        return f"{type(module).__name__} is not standard softmax attention"
    head_dim = qkv.in_features // heads
    if not math.isclose(float(getattr(module, "scale", 0.0)), head_dim**-0.5, rel_tol=1e-6):
        return "scale is not 1/sqrt(head_dim) (ONNX Runtime's Attention assumes it)"
    for name in ("q_norm", "k_norm", "norm"):
        sub = getattr(module, name, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            return f"has a {name}"
    if getattr(module, "gate", None) is not None:
        return "has an output gate"
    if cls.startswith("edgevit") and getattr(module, "num_prefix", 1) not in (0, 1):
        return "has several prefix tokens"  # FullAttention treats all tokens alike; kept conservative
    return None


def attention_geometry(model: nn.Module) -> tuple[tuple[int, int] | None, str]:
    """((num_heads, hidden_size), "") when every attention in ``model`` is standard and alike,
    else (None, the reason ONNX Runtime's ViT fusion does not apply)."""
    found: set[tuple[int, int]] = set()
    other: list[str] = []
    for name, module in model.named_modules():
        if getattr(module, "num_heads", None) is None:
            continue
        why = _is_standard_attention(module)
        if why is None:
            found.add((module.num_heads, module.qkv.in_features))
        elif type(module).__name__ != "OrtFusableAttention":
            other.append(f"{name or 'model'} ({type(module).__name__}: {why})")
        else:
            found.add((module.num_heads, module.hidden_size))
    if other:
        return None, "attention ONNX Runtime's ViT fusion cannot take: " + "; ".join(other[:3]) + (
            f" and {len(other) - 3} more" if len(other) > 3 else "")
    if not found:
        return None, "no multi-head self-attention (not a ViT-family model)"
    if len(found) > 1:
        return None, f"several attention geometries {sorted(found)}; the optimizer takes one (heads, hidden)"
    return next(iter(found)), ""


def _split_linear(weight: torch.Tensor, bias: torch.Tensor | None, i: int, width: int) -> nn.Linear:
    from torch import nn

    lin = nn.Linear(weight.shape[1], width, bias=bias is not None)
    lin.weight.data.copy_(weight[i * width:(i + 1) * width])
    if bias is not None:
        lin.bias.data.copy_(bias[i * width:(i + 1) * width])
    return lin


def _torch_module():
    from torch import nn

    class _OrtFusableAttention(nn.Module):
        """Multi-head self-attention exported as the subgraph ONNX Runtime fuses into ``Attention``."""

        def __init__(self, src: nn.Module) -> None:
            super().__init__()
            self.num_heads = src.num_heads
            self.hidden_size = src.qkv.in_features
            self.head_dim = self.hidden_size // self.num_heads
            w = src.qkv.weight.detach()
            b = src.qkv.bias.detach() if src.qkv.bias is not None else None
            if b is None:  # ONNX Runtime's pattern needs the bias Add; a zero bias keeps the math
                import torch

                b = torch.zeros(3 * self.hidden_size, dtype=w.dtype)
            self.q, self.k, self.v = (_split_linear(w, b, i, self.hidden_size) for i in range(3))
            self.proj = src.proj
            self.sqrt_d = float(math.sqrt(self.head_dim))

        def forward(self, x, *args, **kwargs):
            if args or any(v is not None and v is not False for v in kwargs.values()):
                from edgevit.errors import ConfigError

                raise ConfigError("the onnxruntime-fusion attention handles unmasked self-attention only")
            n, h, d = x.shape[1], self.num_heads, self.head_dim
            q = self.q(x).reshape(-1, n, h, d).transpose(1, 2)          # (B, h, N, d)
            k = self.k(x).reshape(-1, n, h, d).permute(0, 2, 3, 1)      # (B, h, d, N)
            v = self.v(x).reshape(-1, n, h, d).transpose(1, 2)          # (B, h, N, d)
            attn = (q @ k / self.sqrt_d).softmax(dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(-1, n, h * d)
            return self.proj(out)

    _OrtFusableAttention.__name__ = _OrtFusableAttention.__qualname__ = "OrtFusableAttention"
    return _OrtFusableAttention


_CLASS = None


def OrtFusableAttention(src: nn.Module) -> nn.Module:  # noqa: N802 - a class factory (torch imported lazily)
    """The ONNX-Runtime-fusable form of a standard attention module ``src`` (same math)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _torch_module()
    return _CLASS(src)


def prepare_for_ort_fusion(model: nn.Module) -> dict[str, Any]:
    """Swap ``model``'s standard attention modules (in place) for :func:`OrtFusableAttention`.

    Returns ``{"replaced": n, "geometry": (heads, hidden) or None, "reason": str}``; a model whose
    attention the fusion cannot take (see :func:`attention_geometry`) is left untouched.
    """
    geometry, reason = attention_geometry(model)
    if geometry is None:
        return {"replaced": 0, "geometry": None, "reason": reason}
    model.eval()
    targets = [name for name, m in model.named_modules() if name and _is_standard_attention(m) is None]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, OrtFusableAttention(parent.get_submodule(child)))
    return {"replaced": len(targets), "geometry": geometry, "reason": ""}


# ------------------------------------------------------------------------------------------------
# ONNX side: run ONNX Runtime's optimizer, keep metadata, check the result


def _load(proto_or_path) -> onnx.ModelProto:
    import onnx

    if isinstance(proto_or_path, (str, Path)):
        return onnx.load(str(proto_or_path))
    return proto_or_path


def _projection_first(proto) -> int:
    """Put the projection branch first in residual adds (in place; returns how many were swapped).

    ONNX Runtime's attention matcher looks for the output projection (Add <- MatMul) as the
    *first* Add among the inputs of the SkipLayerNormalization after attention. In the first
    block of a ViT the residual stream comes from the position-embedding Add, which it finds
    first, so that block's attention stays unfused. Add is commutative (bit-exact in IEEE 754),
    so ``proj + x`` instead of ``x + proj`` changes no number.
    """
    producer = {o: n for n in proto.graph.node for o in n.output}

    def projection(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "Add" and any(
            producer.get(i) is not None and producer[i].op_type == "MatMul" for i in node.input)

    swapped = 0
    for node in proto.graph.node:
        if (node.op_type == "Add" and not node.domain and len(node.input) == 2 and all(i in producer for i in node.input)
                and projection(node.input[1]) and not projection(node.input[0])):
            node.input[0], node.input[1] = node.input[1], node.input[0]
            swapped += 1
    return swapped


def _first_input_shape(proto, batch: int = 1) -> list[int]:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in dims]


def _ort_outputs(data: bytes, x) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def fuse_for_onnxruntime(
    proto_or_path: onnx.ModelProto | str | Path,
    model: nn.Module | None = None,
    spec: Any = None,
    *,
    num_heads: int | None = None,
    hidden_size: int | None = None,
    opt_level: int = 0,
    self_check: bool = True,
) -> tuple[onnx.ModelProto, FusionReport]:
    """ONNX Runtime's ViT fusions on an exported graph: ``(fused ModelProto, FusionReport)``.

    ``num_heads``/``hidden_size`` default to the geometry of ``model`` (the torch module that was
    exported, before or after :func:`prepare_for_ort_fusion`). Where the model has no single
    standard attention geometry, the input graph is returned unchanged with ``applied=False`` and
    the reason. ``opt_level`` 0 runs only the Python fusions (ONNX Runtime applies its own graph
    optimizations when a session loads the file anyway). The edgevit metadata entry, if present,
    is kept and gains ``extra["onnxruntime_fusion"]``; an ``edgevit.sha256`` trailer is dropped (the
    bytes change: :func:`write_onnx` writes a new one). With ``self_check``, the fused graph must
    load in ONNX Runtime's CPU provider and match the unfused graph on one random input within
    :data:`SELF_CHECK_REL` of its largest logit, else :class:`ConversionError`.
    """
    import numpy as np
    import onnx

    from edgevit.metadata import METADATA_KEY, ArtifactMetadata

    start = time.perf_counter()
    proto = _load(proto_or_path)
    tool = f"onnxruntime.transformers.optimizer {importlib.metadata.version('onnxruntime')}"
    if num_heads is None or hidden_size is None:
        if model is None:
            raise ConversionError("fuse_for_onnxruntime needs the torch model or num_heads and hidden_size")
        geometry, reason = attention_geometry(model)
        if geometry is None:
            family = getattr(spec, "family", "") if spec is not None else ""
            return proto, FusionReport(applied=False, reason=reason + (f" [family {family}]" if family else ""),
                                       tool=tool, nodes_before=len(proto.graph.node), nodes_after=len(proto.graph.node))
        num_heads, hidden_size = geometry

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    props = [(p.key, p.value) for p in proto.metadata_props]
    before = len(proto.graph.node)
    options = FusionOptions("vit")
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    reordered = _projection_first(work)
    with tempfile.TemporaryDirectory(prefix="edgevit-ort-fusion-") as tmp:
        # A path, not the ModelProto: given a proto, onnxruntime 1.32's optimizer hands the weights
        # to its session as external initializers and constant-shape Reshapes then fail to load.
        src = Path(tmp) / "model.onnx"
        src.write_bytes(work.SerializeToString())
        del work
        try:
            import logging

            logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
            optimizer = optimize_model(str(src), model_type="vit", num_heads=num_heads, hidden_size=hidden_size,
                                       optimization_options=options, opt_level=opt_level, use_gpu=False)
        except Exception as exc:
            raise ConversionError(f"onnxruntime's transformer optimizer failed: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from exc
    fused = optimizer.model
    stats = {k: int(v) for k, v in optimizer.get_fused_operator_statistics().items() if v}
    contrib = Counter(n.op_type for n in fused.graph.node if n.domain == CONTRIB_DOMAIN)
    report = FusionReport(
        applied=True, num_heads=int(num_heads), hidden_size=int(hidden_size), opt_level=opt_level, tool=tool,
        fused_ops=stats, nodes_before=before, nodes_after=len(fused.graph.node), contrib_ops=dict(contrib.most_common()),
        residual_adds_reordered=reordered,
    )
    if not report.attention_fused:
        report.reason = ("no Attention fused: export with the attention in the form ONNX Runtime recognises "
                         "(prepare_for_ort_fusion before export)")

    # Metadata: the optimizer keeps metadata_props, but rebuild them to be sure of order and content.
    del fused.metadata_props[:]
    from edgevit.converters._onnx_seal import CHECKSUM_KEY

    for key, value in props:
        if key == CHECKSUM_KEY:
            continue
        if key == METADATA_KEY:
            meta = ArtifactMetadata.from_json(value)
            value = meta.replace(extra={**meta.extra, METADATA_EXTRA_KEY: report.metadata_entry()}).to_json()
        entry = fused.metadata_props.add()
        entry.key, entry.value = key, value
    if contrib and CONTRIB_DOMAIN not in {o.domain for o in fused.opset_import}:
        fused.opset_import.add(domain=CONTRIB_DOMAIN, version=1)  # the optimizer leaves it out
    fused.producer_name, fused.producer_version = proto.producer_name, proto.producer_version
    fused.doc_string = proto.doc_string

    if self_check:
        shape = _first_input_shape(proto)
        elem = proto.graph.input[0].type.tensor_type.elem_type
        rng = np.random.default_rng(0)
        if elem == onnx.TensorProto.UINT8:
            x = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            x = rng.standard_normal(shape).astype(np.float32)
        try:
            ref = _ort_outputs(proto.SerializeToString(), x)
            out = _ort_outputs(fused.SerializeToString(), x)
        except Exception as exc:
            raise ConversionError(f"the onnxruntime-fused graph does not run in onnxruntime (CPU): "
                                  f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from exc
        diff = float(np.abs(ref.astype(np.float64) - out).max())
        report.self_check_max_abs_diff = diff
        if diff > SELF_CHECK_REL * max(float(np.abs(ref).max()), 1.0):
            raise ConversionError(f"onnxruntime fusion changed the logits: max abs diff {diff:.3g} on a random input "
                                  f"(limit {SELF_CHECK_REL:g} x max|logit|)")
    report.seconds = time.perf_counter() - start
    return fused, report


def write_onnx(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``proto`` as one file with the ``edgevit.sha256`` trailer the ONNX runtime checks."""
    import hashlib

    from edgevit.converters._onnx_seal import checksum_trailer

    path = Path(path)
    body = proto.SerializeToString()
    path.write_bytes(body + checksum_trailer(hashlib.sha256(body).hexdigest()))
    return path
