"""ONNX target: PyTorch -> ONNX through torch's dynamo exporter (torch.export + onnxscript).

The artifact is one self-contained ``.onnx`` file (weights inside, no external-data file) with
input ``input`` (batch dimension dynamic by default) and output ``logits``. The edgevit metadata
JSON sits in the model's ``metadata_props`` under :data:`~edgevit.metadata.METADATA_KEY`.

Integrity: the ``metadata_props`` entry ``edgevit.sha256`` holds the SHA-256 of the file with that
entry's bytes (the whole protobuf field) left out. It is appended last, so the digest is the hash of
everything written before it; protobuf merges concatenated messages, so the file stays a plain ONNX
model for every tool. The ONNX runtime locates the entry by parsing, wherever it ends up (a tool
may append fields after it), and can detect a flipped bit, a partial copy or an edit (which ONNX
itself cannot: a corrupted weight still parses).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit.converters._onnx_seal import CHECKSUM_KEY, checksum_trailer
from edgevit.converters._speed import check_option, slower_cause, time_twins, twin_path
from edgevit.converters.base import ConvertOutput, Converter, ExportConfig, register_converter
from edgevit.converters.quantize import QUANT_OPTIONS, add_size_and_latency, metadata_summary, summary_lines, torch_threads
from edgevit.errors import ConfigError, ConversionError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["CHECKSUM_KEY", "MAX_OPSET", "MIN_OPSET", "ONNXConverter", "checksum_trailer"]

# torchlib (the dynamo exporter's op library) is written against opset 18; other opsets go
# through the ONNX version converter. Below 18 the converter loses ops (LayerNormalization is 17+,
# the exporter refuses < 18); above what onnxruntime 1.32 implements the file would not load.
MIN_OPSET = 18
MAX_OPSET = 23
_PROTOBUF_LIMIT = 2**31 - 1


@register_converter
class ONNXConverter(Converter):
    """torch.onnx dynamo export at a stated opset; runs on onnxruntime (CPU execution provider).

    Options: ``opset`` (18..23, default 18: torchlib's native opset, no version conversion),
    ``dynamic_batch`` (default True: the batch dimension is symbolic ``batch``), ``ort_fusion``
    (default False, fp32 only: ONNX Runtime's transformer fusions into com.microsoft contrib ops,
    see :mod:`edgevit.converters.onnx_fusion`; the file then runs on onnxruntime only).
    """

    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "fp16", "int8-dynamic", "int8")
    options = {"opset": 18, "dynamic_batch": True, "rewrite": True, "ort_fusion": False, **QUANT_OPTIONS}
    requires = ("onnx", "onnxruntime", "onnxscript")
    extra = "export"
    runtime = "onnx"

    def prepare(self, model: nn.Module, config: ExportConfig) -> nn.Module:
        """Edge rewrites that keep the math (applied to the copy being exported).

        With option ``rewrite`` (default on): attention as per-head batched MatMul + Softmax (no
        SDPA decomposition, no Squeeze/Slice unbinding), Swin's windows at rank <= 5, and linear
        layers on (rows, features) so ONNX Runtime runs each as one Gemm with its bias; LayerNorm
        stays ONNX's LayerNormalization. See :mod:`edgevit.converters.rewrites`.
        """
        from edgevit.converters.rewrites import EdgeRewriteConfig, rewrite_for_target

        _warm_attention_bias_caches(model)
        if config.options["ort_fusion"]:
            # Attention in the form ONNX Runtime's optimizer fuses; the edge attention and Gemm
            # rewrites would hide it from the matcher (convert() runs the fusion itself).
            from edgevit.converters.onnx_fusion import prepare_for_ort_fusion

            model.edgevit_ort_fusion = prepare_for_ort_fusion(model)
            return rewrite_for_target(model, config, EdgeRewriteConfig(attention="keep", layer_norm="keep"))
        return rewrite_for_target(model, config, EdgeRewriteConfig(layer_norm="keep", linear_2d=True))

    def make_config(self, precision="fp32", options=None, calibration=None, fused_input=False) -> ExportConfig:
        config = super().make_config(precision, options, calibration, fused_input)
        opset = config.options["opset"]
        if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
            raise ConfigError(
                f"onnx option opset must be an integer from {MIN_OPSET} to {MAX_OPSET} "
                f"(the torch dynamo exporter's range that onnxruntime 1.32 runs), got {opset!r}"
            )
        dynamic = config.options["dynamic_batch"]
        if not isinstance(dynamic, bool):
            raise ConfigError(f"onnx option dynamic_batch must be true or false, got {dynamic!r}")
        fusion = config.options["ort_fusion"]
        if not isinstance(fusion, bool):
            raise ConfigError(f"onnx option ort_fusion must be true or false, got {fusion!r}")
        if fusion and config.precision != "fp32":
            raise ConfigError(
                f"onnx option ort_fusion is for fp32 exports; drop it or use --precision fp32 (got {config.precision})"
            )
        return config

    def convert(
        self,
        model: nn.Module,
        example: torch.Tensor,
        path: Path,
        metadata: ArtifactMetadata,
        config: ExportConfig,
    ) -> ConvertOutput:
        import onnx
        import onnxscript
        import torch

        opset: int = config.options["opset"]
        dynamic_batch: bool = config.options["dynamic_batch"]
        kwargs: dict[str, Any] = {}
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
            if example.shape[0] == 1:
                # A batch-1 example invites torch.export's 0/1 specialisation (seen with the
                # fused uint8 NHWC input stage: "Invalid ranges [2:1]"); trace with two rows.
                example = torch.cat([example, example])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    opset_version=opset,
                    input_names=["input"],
                    output_names=["logits"],
                    external_data=False,
                    optimize=True,
                    verbose=False,
                    report=False,
                    **kwargs,
                )
            except Exception as exc:
                hint = " (if it concerns the batch dimension, retry with --option dynamic_batch=false)"
                raise ConversionError(
                    _describe_failure(exc) + (hint if dynamic_batch else ""), op=_failing_op(exc)
                ) from exc
        if program is None:  # only the legacy exporter returns None; dynamo=True never should
            raise ConversionError("torch.onnx.export returned no ONNX program")

        proto = program.model_proto
        fusion_warnings, fusion = [], None
        if config.options["ort_fusion"]:
            from edgevit.converters.onnx_fusion import METADATA_EXTRA_KEY, fuse_for_onnxruntime

            proto, fusion = fuse_for_onnxruntime(proto, model)
            if fusion.applied:
                metadata = metadata.replace(extra={**metadata.extra, METADATA_EXTRA_KEY: fusion.metadata_entry()})
            if not fusion.applied or fusion.reason:
                fusion_warnings.append(f"ort_fusion: {fusion.summary()}{'; ' + fusion.reason if fusion.applied else ''}")
        section, quant_warnings, float_bytes = None, [], proto.ByteSize()
        float_proto = proto
        if config.precision != "fp32":  # onnxruntime's quantization tools on the float graph
            with torch_threads(1):
                proto, section, quant_warnings = _quantize_onnx(proto, model, metadata, config)
            metadata = metadata.replace(extra={**metadata.extra, "quantization": metadata_summary(section)})
        _embed(proto, metadata)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ConversionError(
                f"the exported ONNX model fails onnx.checker: {str(exc).strip().splitlines()[0][:400]}"
            ) from exc

        size = proto.ByteSize()
        if size > _PROTOBUF_LIMIT:
            raise ConversionError(
                f"{metadata.model} is {size / 2**30:.1f} GiB as ONNX, over protobuf's 2 GiB limit "
                "for a single-file model; edgevit writes single-file artifacts only"
            )
        _write(proto, path)

        ops = Counter(n.op_type if not n.domain else f"{n.domain}.{n.op_type}" for n in proto.graph.node)
        details = {
            "exporter": f"torch.onnx dynamo (torch {torch.__version__}, onnxscript {onnxscript.__version__})",
            "capture_strategy": getattr(program, "_capture_strategy", None),
            "opset": _default_opset(proto),
            "dynamic_batch": dynamic_batch,
            "nodes": sum(ops.values()),
            "op_types": dict(ops.most_common()),
            "initializers": len(proto.graph.initializer),
        }
        if fusion is not None:
            details["onnxruntime_fusion"] = fusion.to_dict()
        speed_warnings: list[str] = []
        if section is not None:
            latency = None
            if check_option(config.options):  # time it against its fp32 twin; the figures go inside
                check = _speed_check(float_proto, path, metadata, config, details)
                metadata = metadata.replace(speed_check=check.to_dict())
                _embed(proto, metadata)
                _write(proto, path)
                details["speed_check"] = check.to_dict()
                latency = {"fp32": check.fp32_ms, "quantized": check.optimized_ms}
                speed_warnings = [check.warning()] if check.slower else []
            add_size_and_latency(section, float_bytes if section.pop("_compare_fp32", False) else None,
                                 path.stat().st_size, latency)
            details["quantization"] = section
            details["quantization_summary"] = summary_lines(section)
        return ConvertOutput(warnings=_relevant(caught) + fusion_warnings + quant_warnings + speed_warnings,
                             details=details)

    def structure(self, path: Path) -> dict[str, Any]:
        """Inputs, outputs, opset, op counts and metadata keys of a written ``.onnx`` file."""
        import onnx

        proto = onnx.load(str(path), load_external_data=False)

        def shape(value) -> list[int | str]:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]

        ops = Counter(n.op_type for n in proto.graph.node)
        return {
            "inputs": {v.name: shape(v) for v in proto.graph.input},
            "outputs": {v.name: shape(v) for v in proto.graph.output},
            "opset": _default_opset(proto),
            "ir_version": proto.ir_version,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "nodes": sum(ops.values()),
            "op_types": dict(ops.most_common()),
            "metadata_keys": [p.key for p in proto.metadata_props],
        }


def _warm_attention_bias_caches(model: nn.Module) -> int:
    """Fill the eval-mode attention-bias caches of timm's LeViT / EfficientFormerV2 attention.

    Those modules gather their relative-position biases into a per-device dict on first call.
    Traced cold, torch.export warns that tensor attributes are assigned during export and the
    graph keeps the gather (GatherND). Warm, the bias tables are constants the exporter folds.
    Same numbers either way; returns how many modules were warmed.
    """
    import torch

    if model.training:
        return 0  # train() clears the caches again; the exporter traces eval models
    warmed = 0
    with torch.no_grad():
        for module in model.modules():
            cache = getattr(module, "attention_bias_cache", None)
            getter = getattr(module, "get_attention_biases", None)
            if isinstance(cache, dict) and callable(getter):
                ref = next(module.parameters(), None)
                getter(ref.device if ref is not None else torch.device("cpu"))
                warmed += 1
    return warmed


def _embed(proto, metadata: ArtifactMetadata) -> None:
    """Set the edgevit metadata entry (the only ``metadata_props`` entry) and the doc string."""
    del proto.metadata_props[:]
    prop = proto.metadata_props.add()
    prop.key = METADATA_KEY
    prop.value = metadata.to_json()
    proto.doc_string = f"edgevit export of {metadata.model} ({metadata.precision})"


def _write(proto, path: Path) -> None:
    """Write ``proto`` in one piece, sealed with the edgevit checksum trailer."""
    body = proto.SerializeToString()
    # The caller's temporary path, never an external-data side file.
    path.write_bytes(body + checksum_trailer(hashlib.sha256(body).hexdigest()))


def _speed_check(float_proto, path: Path, metadata: ArtifactMetadata, config: ExportConfig, details: dict):
    """Time the written artifact against its fp32 twin with the ONNX runtime (see :mod:`._speed`)."""
    import numpy as np

    twin = twin_path(path, "fp32")
    try:
        fp32 = type(float_proto)()
        fp32.CopyFrom(float_proto)
        _embed(fp32, metadata.replace(precision="fp32", extra={k: v for k, v in metadata.extra.items() if k != "quantization"}))
        _write(fp32, twin)
        example = np.zeros(metadata.input_shape(1), np.uint8 if metadata.fused_input else np.float32)
        return time_twins(twin, path, "onnx", config.precision, example,
                          cause=lambda: slower_cause("onnx", config.precision, details))
    finally:
        twin.unlink(missing_ok=True)


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def _relevant(caught: list[warnings.WarningMessage]) -> list[str]:
    """Warnings worth showing a user: not the exporter's internal deprecation chatter."""
    seen: list[str] = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning)):
            continue
        message = str(w.message).strip()
        text = f"{w.category.__name__}: {message.splitlines()[0][:300] if message else ''}"
        if text not in seen:
            seen.append(text)
    return seen[:10]


_OP_PATTERNS = (
    # torchlib dispatch: "No ONNX function found for <OpOverload(op='aten.foo', overload='default')>"
    re.compile(r"op='(aten\.[A-Za-z_0-9]+)', overload='([A-Za-z_0-9]+)'"),
    re.compile(r"\b(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?)"),
    re.compile(r"\b(torchvision[.:]{1,2}[A-Za-z_0-9]+)"),
)


def _failing_op(exc: BaseException) -> str | None:
    """The aten op named by the exporter's error chain, where it names one."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        text = str(current)
        for pattern in _OP_PATTERNS:
            m = pattern.search(text)
            if m:
                op = m.group(1).replace("::", ".")
                if m.lastindex and m.lastindex >= 2 and m.group(2) != "default":
                    op = f"{op}.{m.group(2)}"
                return op
        current = current.__cause__ or current.__context__
        seen += 1
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY_CAUSE = re.compile(r"^<class '(?:[\w.]+\.)?(\w+)'>: (.+)$", re.MULTILINE)


def _root_cause(exc: BaseException) -> str:
    """The innermost cause from the exporter's "Exception summary", else the first message line."""
    text = _ANSI.sub("", str(exc))
    m = _SUMMARY_CAUSE.search(text.split("## Exception summary", 1)[-1]) if "## Exception summary" in text else None
    if m:
        return f"{m.group(1)}: {m.group(2).strip()}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _describe_failure(exc: BaseException) -> str:
    op = _failing_op(exc)
    stage = (
        "torch.export could not capture the model"
        if "TorchExportError" in type(exc).__name__
        else "the torch dynamo ONNX exporter failed"
    )
    return f"{stage}{f' at op {op}' if op else ''}: {_root_cause(exc)[:400]}"


# ------------------------------------------------------------------------------------------------
# Quantization with onnxruntime's tools: fp16 (float16 conversion, float I/O), int8-dynamic
# (quantize_dynamic of the MatMul/Gemm weights, activations quantized per call) and int8
# (quantize_static, QDQ format, MinMax calibration). The ViT-aware recipe quantizes only the ops
# ONNX Runtime's CPU kernels run faster in int8 (Conv, MatMul with a weight, Gemm) and searches
# which of those to leave float (nodes_to_exclude); the naive recipe quantizes every op type
# onnxruntime knows (softmax, layer norm, attention matmuls included) with its default types.
#
# What makes int8 faster than fp32 here, measured on x86 (``benchmarks/int8_speed.py onnx-recipes``):
# * u8 activations x s8 per-channel weights: MLAS's int8 GEMMs (AVX2 VPMADDUBSW, AVX512/AVX-VNNI
#   VPDPBUSD) take an unsigned activation operand. With s8 activations ONNX Runtime fused only 37 of
#   DeiT-Tiny's 73 Gemm into QGemm (the rest ran DequantizeLinear + float Gemm) and the int8 model
#   ran at 0.96x of fp32 (MobileViT-XXS 0.48x); with u8 all 73 became QGemm (1.3-1.5x; MobileViT 1.0x).
# * residual adds and element-wise multiplies stay candidates of the search: int8 there is faster
#   (QLinearAdd/QLinearMul; MobileViT's SiLU gates become QLinearSigmoid x QLinearMul, without them
#   each conv stage re-quantizes: 0.83x), but DeiT-Tiny's residual stream in int8 costs cosine 0.952,
#   so the search keeps it float there.
# * attention matmuls (activation x activation) stay float: QLinearMatMul there was slower
#   (1.07-1.20x against 1.28-1.31x with them float, same run).
# * QDQ rather than QOperator: level within noise on this CPU, and QDQ files also run on other
#   runtimes' int8 paths (OpenVINO reads the same file).
# * int8-dynamic quantizes MatMul/Gemm only: ConvInteger (dynamic convolutions) is slower than
#   float Conv in ONNX Runtime (MobileViT-XXS ran 0.35x of fp32 with its convolutions dynamic, 1.04x without).
# MobileViT-XXS stays level with fp32 at best (1.0x): its convolutions are depthwise 3x3 and 1x1 on
# 16-96 channels, where MLAS's int8 kernels gain little over its NCHWc fp32 convolutions, and every
# float op between int8 ones (LayerNorm, Softmax, attention matmuls, the unfold/fold reshapes) adds
# a quantize/dequantize pair. The speed check (converters/_speed.py) says so on the export host.

_ORT_INT8_OPS = ("Conv", "MatMul", "Gemm", "Add", "Mul")
_ORT_DYNAMIC_OPS = ["MatMul", "Gemm"]
_CALIBRATION_CACHE = True  # calibrate once per export (False: once per search candidate, as before; tests compare)
_ORT_BY_DESIGN = ["softmax", "layer norm", "GELU and other activations", "matmuls between activations (attention)", "division"]


def _ort_by_design_present(proto) -> list[str]:
    """The float-by-design categories (:data:`_ORT_BY_DESIGN`) this graph has nodes of."""
    initializers = {t.name for t in proto.graph.initializer}
    constants = initializers | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    found = set()
    for node in proto.graph.node:
        t = node.op_type
        if t == "Softmax":
            found.add(_ORT_BY_DESIGN[0])
        elif t in ("LayerNormalization", "ReduceMean"):
            found.add(_ORT_BY_DESIGN[1])
        elif t in ("Gelu", "Erf", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Relu", "Clip"):
            found.add(_ORT_BY_DESIGN[2])
        elif t == "MatMul" and sum(1 for i in node.input[:2] if i not in constants) == 2:
            found.add(_ORT_BY_DESIGN[3])
        elif t == "Div":
            found.add(_ORT_BY_DESIGN[4])
    return [c for c in _ORT_BY_DESIGN if c in found]


def _onnx_ops(proto, model) -> list:
    """The graph's candidate nodes as :class:`QuantOp` (id = node name)."""
    import ast

    from edgevit.converters.quantize import QuantOp, role_of_module

    initializers = {t.name for t in proto.graph.initializer}
    constants = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    modules = dict(model.named_modules())
    ops = []
    for node in proto.graph.node:
        if node.op_type not in _ORT_INT8_OPS:
            continue
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        paths = [s for s in scopes[:-1] if s in modules]
        module = paths[-1] if paths else ""
        activations = [i for i in node.input if i and i not in initializers and i not in constants]
        # a norm's own ops (LayerNorm rewritten as linear/conv means) stay float by design; a
        # convolution carrying a folded BatchNorm (the exporter names it after the BatchNorm) is a conv
        if any(role_of_module(type(modules[p]).__name__) == "norm" and "batchnorm" not in type(modules[p]).__name__.lower()
               for p in paths[-2:]):
            role = "norm"
        elif node.op_type in ("Conv", "Gemm") or (node.op_type == "MatMul" and len(activations) == 1):
            role = "linear"
        elif node.op_type == "MatMul":
            role = "attention_matmul"
        elif node.op_type == "Add":
            role = "residual_add" if len(activations) == 2 else "elementwise"
        else:
            role = "elementwise"
        ops.append(QuantOp(id=node.name, kind=node.op_type, role=role, module=module or node.name))
    return ops


class _Reader:
    """onnxruntime CalibrationDataReader over a stack of inputs (batches when the batch is dynamic)."""

    def __init__(self, name: str, inputs, batch: int) -> None:
        self.name, self.inputs, self.batch, self.i = name, inputs, batch, 0

    def get_next(self):
        if self.i >= len(self.inputs):
            return None
        chunk = self.inputs[self.i : self.i + self.batch]
        self.i += self.batch
        return {self.name: chunk}

    def rewind(self) -> None:
        self.i = 0


def _ort_logits(model_bytes: bytes, inputs, dynamic: bool):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    step = 64 if dynamic else 1
    rows = [session.run(None, {name: inputs[i : i + step]})[0] for i in range(0, len(inputs), step)]
    return np.concatenate(rows).reshape(len(inputs), -1)


def _quantize_onnx(proto, model, metadata: ArtifactMetadata, config: ExportConfig):
    """(quantized ModelProto, report section, warnings) for fp16 / int8-dynamic / int8."""
    import importlib.metadata
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from edgevit.converters import quantize as qz
    from edgevit.converters.quantize import QuantSettings

    settings = QuantSettings.from_options(config.options)
    precision = config.precision
    dynamic_batch = bool(config.options.get("dynamic_batch", True))
    vit_aware = precision == "int8" and settings.recipe == "vit-aware"
    tool = f"onnxruntime.quantization {importlib.metadata.version('onnxruntime')}"
    warnings: list[str] = []
    calib = search = None
    if config.calibration is not None:
        calib, search, note = qz.load_quant_data(config.calibration, metadata, settings)
        warnings += [note] if note else []
        warnings += [f"calibration {search.note}"] if search.note else []
    calibration_info = calib.describe() if calib is not None else None
    if calibration_info is not None and search is not calib:
        calibration_info["search_images"] = len(search)
    float_bytes = proto.SerializeToString()
    reference = _ort_logits(float_bytes, search.inputs, dynamic_batch) if search is not None else None
    input_name = proto.graph.input[0].name

    with tempfile.TemporaryDirectory(prefix="edgevit-onnx-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "quantized.onnx"
        src.write_bytes(float_bytes)

        def static(exclude, naive: bool = False) -> bytes:
            # One calibration pass per op-type set: onnxruntime's calibration cache holds the tensor
            # ranges, so every later candidate of the search only re-runs the quantizer.
            cache = Path(tmp) / f"ranges-{'naive' if naive else 'vit-aware'}.json" if _CALIBRATION_CACHE else None
            quantize_static(
                src, dst, _Reader(input_name, calib.inputs, 16 if dynamic_batch else 1),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if naive else QuantType.QUInt8,  # see the notes above
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=None if naive else list(_ORT_INT8_OPS), nodes_to_exclude=sorted(exclude),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False}, calibration_cache_path=cache,
            )
            return dst.read_bytes()

        try:
            with qz.quiet_tools():
                if precision == "fp16":
                    from onnxruntime.transformers.float16 import convert_float_to_float16

                    half = convert_float_to_float16(onnx.load_from_string(float_bytes), keep_io_types=True)
                    data = _topologically_sorted(half).SerializeToString()
                    scheme = "fp16 weights and compute (float32 input and output)"
                elif precision == "int8-dynamic":
                    quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8,
                                     op_types_to_quantize=_ORT_DYNAMIC_OPS)
                    data = dst.read_bytes()
                    scheme = ("int8 per-channel weights of MatMul/Gemm, activations quantized per call (dynamic); "
                              "convolutions float")
                else:
                    ops = _onnx_ops(proto, model)
                    by_design = frozenset(op.id for op in ops if op.role in ("norm", "attention_matmul")) if vit_aware else frozenset()
                    groups = qz.build_groups([op for op in ops if op.id not in by_design],
                                             qz.linear_outlier_scores(model, calib.inputs)) if vit_aware else []
                    members = {g.name: frozenset(g.op_ids) for g in groups}
                    cache: dict = {}

                    def build(kept: frozenset) -> bytes:
                        if kept not in cache:
                            cache.clear()  # keep one model in memory
                            cache[kept] = static(by_design.union(*(members[k] for k in kept)), naive=not vit_aware)
                        return cache[kept]

                    target = settings.target(search.labelled)
                    result = qz.search_mix(groups, lambda kept, n: _ort_logits(build(kept), search.inputs[:n], dynamic_batch),
                                           reference, search.labels, target)
                    naive = qz.fidelity(reference, _ort_logits(static(frozenset(), naive=True), search.inputs, dynamic_batch),
                                        search.labels) if vit_aware else None
                    if vit_aware and not result.met:
                        raise ConversionError(
                            f"int8 could not meet the fidelity target ({target.describe()}): naive int8 gives "
                            f"{naive.summary()}; the ViT-aware mix keeping {', '.join(result.kept) or 'no further group'} "
                            f"out of int8 gives {result.final.summary()}. Relax it (--option max_drop=N / min_agreement=A / min_cosine=C), "
                            "or use --precision int8-dynamic or fp16"
                        )
                    data = build(frozenset(result.kept))
                    scheme = ("int8 static QDQ: per-channel s8 weights, u8 activations (MinMax calibration)" if vit_aware else
                              "int8 static QDQ: per-channel s8 weights, s8 activations (MinMax calibration)")
                    fixed = _ort_by_design_present(proto) if vit_aware else []
                    section = qz.report("int8", scheme, tool, settings, calibration=calibration_info, groups=groups,
                                        search=result, naive=naive, fixed_float=fixed)
                    if not vit_aware:
                        section["note"] = "naive recipe: every op type onnxruntime quantizes is int8 (no search)"
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"onnxruntime quantization ({precision}) failed: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from exc
    if precision != "int8":
        evaluation = qz.fidelity(reference, _ort_logits(data, search.inputs, dynamic_batch), search.labels) if search else None
        section = qz.report(precision, scheme, tool, settings, calibration=calibration_info, evaluation=evaluation)
    if settings.compare_fp32:
        section["_compare_fp32"] = True  # size against the fp32 graph (latency: the speed check)
    return onnx.load_from_string(data), section, warnings


def _topologically_sorted(proto):
    """``proto`` with its graph's nodes in dependency order (the float16 converter appends the
    input casts at the end, which onnx.checker refuses)."""
    available = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer} | {""}
    pending, ordered = list(proto.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest as it was, the checker will say
            ordered += pending
            break
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if not any(n is r for r in ready)]
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered):
        new.CopyFrom(old)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto
