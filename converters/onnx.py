"""ONNX target: PyTorch -> ONNX through torch's dynamo exporter (torch.export + onnxscript).

The artifact is one self-contained ``.onnx`` file (weights inside, no external-data file) with
input ``input`` (batch dimension dynamic by default) and output ``logits``. The edgevit metadata
JSON sits in the model's ``metadata_props`` under :data:`~edgevit.metadata.METADATA_KEY`.

Integrity: the last ``metadata_props`` entry, ``edgevit.sha256``, holds the SHA-256 of every byte
of the file before that entry. Protobuf merges concatenated messages, so the file stays a plain
ONNX model for every tool, and the ONNX runtime can detect a flipped bit or a partial copy (which
ONNX itself cannot: a corrupted weight still parses).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit.converters.base import ConvertOutput, Converter, ExportConfig, register_converter
from edgevit.errors import ConfigError, ConversionError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["CHECKSUM_KEY", "MAX_OPSET", "MIN_OPSET", "ONNXConverter", "checksum_trailer"]

CHECKSUM_KEY = "edgevit.sha256"
# torchlib (the dynamo exporter's op library) is written against opset 18; other opsets go
# through the ONNX version converter. Below 18 the converter loses ops (LayerNormalization is 17+,
# the exporter refuses < 18); above what onnxruntime 1.32 implements the file would not load.
MIN_OPSET = 18
MAX_OPSET = 23
_PROTOBUF_LIMIT = 2**31 - 1


def checksum_trailer(digest_hex: str) -> bytes:
    """The serialized ``metadata_props`` entry that carries ``digest_hex`` (appended last)."""
    import onnx

    entry = onnx.ModelProto()
    prop = entry.metadata_props.add()
    prop.key = CHECKSUM_KEY
    prop.value = digest_hex
    return entry.SerializeToString()


@register_converter
class ONNXConverter(Converter):
    """torch.onnx dynamo export at a stated opset; runs on onnxruntime (CPU execution provider).

    Options: ``opset`` (18..23, default 18: torchlib's native opset, no version conversion),
    ``dynamic_batch`` (default True: the batch dimension is symbolic ``batch``).
    """

    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32",)
    options = {"opset": 18, "dynamic_batch": True, "rewrite": True}
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
        del proto.metadata_props[:]
        prop = proto.metadata_props.add()
        prop.key = METADATA_KEY
        prop.value = metadata.to_json()
        proto.doc_string = f"edgevit export of {metadata.model} ({metadata.precision})"
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
        body = proto.SerializeToString()
        # Written in one piece: the caller's temporary path, never an external-data side file.
        path.write_bytes(body + checksum_trailer(hashlib.sha256(body).hexdigest()))

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
        return ConvertOutput(warnings=_relevant(caught), details=details)

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
