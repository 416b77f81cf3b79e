"""CoreML target: PyTorch -> Core ML ML Program (``.mlpackage``) through coremltools.

* Graph capture: ``torch.export`` (the path coremltools develops; ``torch.jit.trace`` is deprecated
  in torch 2.13 and converted 1.3-3x slower here), lowered with ``run_decompositions({})``; ``aten.alias`` nodes,
  which Swin's export contains and coremltools' torch.export frontend does not know, are removed
  (an alias is the identity in a functional graph). ``options={"frontend": "trace"}`` converts a
  ``torch.jit.trace`` instead, for models torch.export cannot capture.
* Precision: ``fp16``/``fp32`` is Core ML's *compute precision* (weights and activations in fp16
  or fp32); the model's input and ``logits`` output stay float32 multiarrays either way.
* I/O: one ``TensorType`` input ``input`` (NCHW, float32, normalised as the metadata says) and
  one output ``logits`` of shape (1, classes). No ``ClassifierConfig``: a Core ML classifier
  replaces the logits with a label string and a probability dictionary, which would break the
  runtime contract (raw logits, batch x classes). The labels travel in the metadata instead:
  ``user_defined_metadata["edgevit"]`` (the edgevit JSON) and ``["classes"]`` (a JSON list).
* Verification: Core ML cannot predict off macOS (coremltools has no Linux execution engine), so
  on Linux the export is checked structurally (:meth:`CoreMLConverter.structure`: inputs,
  outputs, metadata, labels, op counts, weight and compute precision) and the captured graph is
  run against the eager model before it is handed to coremltools.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgevit.converters.base import ConvertOutput, Converter, ExportConfig, register_converter
from edgevit.errors import ConfigError, ConversionError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata

__all__ = [
    "DEPLOYMENT_TARGETS",
    "FRONTENDS",
    "CoreMLConverter",
    "check_package",
    "mlprogram_structure",
    "structure_problems",
    "use_fused_sdpa",
]

#: deployment target -> the first macOS that runs it. ML Programs start at iOS15/macOS12; edgevit's
#: floor is iOS16/macOS13 (fp16 I/O, a newer op set); iOS18/macOS15 adds fused attention.
DEPLOYMENT_TARGETS = {"iOS16": "macOS13", "iOS17": "macOS14", "iOS18": "macOS15"}
FRONTENDS = ("export", "trace")
_CAPTURE_MAX_REL_DIFF = 1e-4  # captured graph vs eager model, max |diff| / max |logit|

_DTYPE_NAMES = {
    "FLOAT16": "fp16",
    "FLOAT32": "fp32",
    "FLOAT64": "fp64",
    "DOUBLE": "fp64",
    "BFLOAT16": "bf16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
}


@register_converter
class CoreMLConverter(Converter):
    """coremltools conversion to an ML Program (``.mlpackage`` folder); runs on Apple devices."""

    name = "coreml"
    suffix = ".mlpackage"
    precisions = ("fp32", "fp16")
    # ``weights``: post-training weight compression on top of the fp32/fp16 program (coremltools'
    # linear_quantize_weights / palettize_weights). W8A8 (precision int8) would need coremltools'
    # PT2E CoreMLQuantizer, which imports torch.ao.quantization.quantizer, gone from torch 2.13.
    options = {"frontend": "export", "deployment_target": "iOS16", "fused_attention": True, "weights": "float"}
    requires = ("coremltools",)
    extra = "coreml"
    runtime = "coreml"
    runs_here = sys.platform == "darwin"
    # Core ML multiarrays have no uint8 type (FLOAT16/32, DOUBLE, INT32; INT8 from iOS26), so the
    # uint8 NHWC fused input stage cannot be expressed; an ImageType input would be the Core ML way.
    supports_fused_input = False

    def make_config(
        self,
        precision: str = "fp32",
        options: Mapping[str, Any] | None = None,
        calibration: Any = None,
        fused_input: bool = False,
    ) -> ExportConfig:
        config = super().make_config(precision, options, calibration, fused_input)
        if config.options["frontend"] not in FRONTENDS:
            raise ConfigError(
                f"coreml option frontend must be one of {', '.join(FRONTENDS)}, got {config.options['frontend']!r}"
            )
        if not isinstance(config.options["fused_attention"], bool):
            raise ConfigError(f"coreml option fused_attention must be true or false, got {config.options['fused_attention']!r}")
        if config.options["deployment_target"] not in DEPLOYMENT_TARGETS:
            raise ConfigError(
                f"coreml option deployment_target must be one of {', '.join(DEPLOYMENT_TARGETS)}, "
                f"got {config.options['deployment_target']!r}"
            )
        return config

    def prepare(self, model, config: ExportConfig):
        """From iOS18 Core ML has a fused ``scaled_dot_product_attention`` op; coremltools emits it
        for ``F.scaled_dot_product_attention``. timm's attention already calls it; edgevit's own
        :class:`~edgevit.models.attention.FullAttention` uses explicit matmuls (the form delegates
        without a fused op want), so for iOS18+ its ``attend`` is switched to the fused call
        (same math; ``fused_attention=False`` keeps the matmuls)."""
        if config.options["fused_attention"] and _has_fused_sdpa(config.options["deployment_target"]):
            use_fused_sdpa(model)
        return model

    def convert(self, model, example, path: Path, metadata: ArtifactMetadata, config: ExportConfig) -> ConvertOutput:
        import coremltools as ct
        import numpy as np

        frontend = config.options["frontend"]
        target_name = config.options["deployment_target"]
        compression = _weight_compression(config.options["weights"])  # validated before any work
        notes: list[str] = []
        captured, capture_report = _capture(model, example, frontend)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mlmodel = ct.convert(
                    captured,
                    source="pytorch",
                    inputs=[ct.TensorType(name="input", shape=tuple(example.shape), dtype=np.float32)],
                    outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                    convert_to="mlprogram",
                    minimum_deployment_target=getattr(ct.target, target_name),
                    compute_precision=ct.precision.FLOAT16 if config.precision == "fp16" else ct.precision.FLOAT32,
                    skip_model_load=True,
                )
            except Exception as exc:
                op = _failing_op(exc)
                raise ConversionError(
                    f"coremltools could not convert the model{f' (op {op})' if op else ''}: "
                    f"{type(exc).__name__}: {_first_line(exc)}",
                    op=op,
                ) from exc
        notes += sorted({str(w.message).splitlines()[0][:300] for w in caught if not _is_noise(w)})
        quant_section = None
        if compression is not None:
            mlmodel, quant_section = _compress_weights(mlmodel, compression, config, path)
            recorded = {k: v for k, v in quant_section.items() if not k.startswith("_")}
            metadata = metadata.replace(extra={**metadata.extra, "quantization": recorded})
        _describe(mlmodel, metadata)
        try:
            mlmodel.save(str(path))
        except Exception as exc:
            raise ConversionError(f"coremltools could not save {path.name}: {type(exc).__name__}: {exc}") from exc

        structure = self.structure(path)
        problems = structure_problems(structure, metadata)
        if problems:
            raise ConversionError("the saved Core ML package failed its structural checks: " + "; ".join(problems))
        details = {
            "converter": f"coremltools {ct.__version__}",
            "frontend": "torch.export" if frontend == "export" else "torch.jit.trace",
            "deployment_target": f"{target_name} ({DEPLOYMENT_TARGETS[target_name]})",
            "compute_precision": structure["compute_precision"],
            "ops": structure["ops"],
            "weights": structure["weights"],
            "max_rank": structure["max_rank"],
            "fused_attention_rewrites": sum(1 for m in model.modules() if getattr(m, "_edgevit_fused_sdpa", False)),
            "graph_capture": capture_report,
        }
        if quant_section is not None:
            from edgevit.converters.quantize import add_size_and_latency, summary_lines

            add_size_and_latency(quant_section, quant_section.pop("_uncompressed_bytes"),
                                 sum(f.stat().st_size for f in path.rglob("*") if f.is_file()), None)
            details["quantization"] = quant_section
            details["quantization_summary"] = summary_lines(quant_section)
        return ConvertOutput(warnings=notes, details=details)

    def structure(self, path: Path) -> dict[str, Any]:
        """Structural facts about a CoreML artifact, readable on any OS (no prediction)."""
        from edgevit.runtimes.coreml import CLASSES_KEY, read_coreml_spec

        return mlprogram_structure(read_coreml_spec(path), CLASSES_KEY)


# --- edge rewrites ---------------------------------------------------------------------------


def _has_fused_sdpa(target: str) -> bool:
    return int(target.removeprefix("iOS")) >= 18


def _fused_attend(self, q, k, v):
    import torch.nn.functional as F

    # No ``scale`` argument: coremltools emits the fused op only for the default 1/sqrt(head_dim),
    # which use_fused_sdpa checked this layer uses.
    return F.scaled_dot_product_attention(q, k, v)


def use_fused_sdpa(model) -> int:
    """Switch edgevit's reference softmax attention to ``F.scaled_dot_product_attention`` (in place).

    Returns how many attention layers were switched. Only the exact
    :class:`~edgevit.models.attention.FullAttention` type is touched: other mechanisms mask,
    gather or normalise differently, and a layer with a non-default scale is left alone.
    """
    import types

    from edgevit.models.attention import FullAttention

    switched = 0
    for module in model.modules():
        if type(module) is FullAttention and abs(module.scale - module.head_dim**-0.5) < 1e-12:
            module.attend = types.MethodType(_fused_attend, module)
            module._edgevit_fused_sdpa = True
            switched += 1
    return switched


# --- graph capture --------------------------------------------------------------------------


def _capture(model, example, frontend: str) -> tuple[Any, dict[str, Any]]:
    """Capture ``model`` for coremltools and check the captured graph against eager torch."""
    import torch

    model = model.eval()
    removed = 0
    with torch.inference_mode():
        reference = model(example).float()
    try:
        if frontend == "trace":
            with torch.no_grad():
                captured = torch.jit.trace(model, (example,), check_trace=False)
            run = captured
        else:
            program = torch.export.export(model, (example,)).run_decompositions({})
            removed = _remove_alias_nodes(program)
            captured, run = program, program.module()
    except Exception as exc:
        how = "torch.jit.trace" if frontend == "trace" else "torch.export"
        hint = " (try options={'frontend': 'trace'})" if frontend == "export" else ""
        raise ConversionError(f"{how} could not capture the model{hint}: {type(exc).__name__}: {_first_line(exc)}") from exc
    with torch.no_grad():
        out = run(example)
    out = (out[0] if isinstance(out, (tuple, list)) else out).float()
    diff = float((out - reference).abs().max())
    scale = max(float(reference.abs().max()), 1.0)
    report = {
        "alias_nodes_removed": removed,
        "max_abs_diff": diff,
        "max_abs_logit": float(reference.abs().max()),
        "passed": diff <= _CAPTURE_MAX_REL_DIFF * scale,
    }
    if not report["passed"]:
        raise ConversionError(
            f"the captured graph differs from the eager model before Core ML conversion: max abs diff "
            f"{diff:.3g} > {_CAPTURE_MAX_REL_DIFF:g} x max|logit| ({scale:.3g})"
        )
    return captured, report


def _remove_alias_nodes(program) -> int:
    """Drop ``aten.alias`` nodes (not known to coremltools' torch.export frontend) in place."""
    import torch

    graph_module = program.graph_module
    targets = {torch.ops.aten.alias.default}
    removed = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_function" and node.target in targets:
            if any(user.op == "output" for user in node.users):
                continue  # an output's name is part of the signature; keep it (coremltools will say)
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            removed += 1
    if removed:
        graph_module.graph.lint()
        graph_module.recompile()
    return removed


# --- metadata and structure ------------------------------------------------------------------


def _describe(mlmodel, metadata: ArtifactMetadata) -> None:
    from edgevit.runtimes.coreml import CLASSES_KEY

    mlmodel.user_defined_metadata[METADATA_KEY] = metadata.to_json()
    mlmodel.user_defined_metadata[CLASSES_KEY] = json.dumps(list(metadata.labels))
    mlmodel.short_description = (
        f"{metadata.model} ({metadata.attention or metadata.family}) image classifier, exported by edgevit "
        f"{metadata.edgevit_version}; class labels in metadata '{CLASSES_KEY}'"
    )
    mlmodel.version = metadata.edgevit_version
    if metadata.source:
        mlmodel.author = metadata.source
    h, w = metadata.input_size
    mlmodel.input_description["input"] = (
        f"{metadata.color_mode} image, float32 NCHW (1, {metadata.channels}, {h}, {w}), "
        f"(pixel/255 - mean) / std with mean={list(metadata.mean)} std={list(metadata.std)}"
    )
    mlmodel.output_description["logits"] = (
        f"raw class scores (1, {metadata.num_classes}), before softmax; labels in metadata '{CLASSES_KEY}'"
    )


def _tensor_info(feature) -> dict[str, Any]:
    kind = feature.type.WhichOneof("Type")
    info: dict[str, Any] = {"name": feature.name, "type": kind}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        info["shape"] = [int(d) for d in array.shape]
        dtype = type(array).ArrayDataType.Name(array.dataType)
        info["dtype"] = _DTYPE_NAMES.get(dtype, dtype.lower())
    return info


def _walk_ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def _tensor_elements(value_type) -> int:
    tensor = value_type.tensorType
    n = 1
    for dim in tensor.dimensions:
        if dim.WhichOneof("dimension") != "constant":
            return 0
        n *= int(dim.constant.size)
    return n


def mlprogram_structure(spec, classes_key: str = "classes") -> dict[str, Any]:
    """Inputs, outputs, op counts, weight/compute precision and metadata of a Core ML spec."""
    from coremltools.proto import MIL_pb2

    model_type = spec.WhichOneof("Type")
    user = dict(spec.description.metadata.userDefined)
    labels = None
    if classes_key in user:
        try:
            labels = json.loads(user[classes_key])
        except ValueError:
            labels = None
    ops: Counter[str] = Counter()
    weights: dict[str, dict[str, int]] = {}
    outputs_by_dtype: Counter[str] = Counter()
    opsets: list[str] = []
    max_rank = 0
    if model_type == "mlProgram":
        for function in spec.mlProgram.functions.values():
            opsets.append(function.opset)
            for block in function.block_specializations.values():
                for op in _walk_ops(block):
                    if op.type == "const":
                        value = op.attributes["val"].type
                        dtype = MIL_pb2.DataType.Name(value.tensorType.dataType)
                        if dtype.startswith(("FLOAT", "BFLOAT", "INT8", "UINT8")):
                            elements = _tensor_elements(value)
                            if elements > 1:  # scalars are op parameters, not weights
                                entry = weights.setdefault(_DTYPE_NAMES.get(dtype, dtype), {"tensors": 0, "elements": 0})
                                entry["tensors"] += 1
                                entry["elements"] += elements
                        continue
                    ops[op.type] += 1
                    for out in op.outputs:
                        if out.type.WhichOneof("type") == "tensorType":
                            max_rank = max(max_rank, int(out.type.tensorType.rank))
                            dtype = MIL_pb2.DataType.Name(out.type.tensorType.dataType)
                            if dtype.startswith("FLOAT"):
                                outputs_by_dtype[_DTYPE_NAMES[dtype]] += 1
    elif model_type == "neuralNetwork":
        for layer in spec.neuralNetwork.layers:
            ops[layer.WhichOneof("layer")] += 1
    compute = None
    if outputs_by_dtype:
        compute = "fp16" if outputs_by_dtype["fp16"] > outputs_by_dtype["fp32"] else "fp32"
    return {
        "model_type": model_type,
        "specification_version": int(spec.specificationVersion),
        "opsets": opsets,
        "inputs": [_tensor_info(f) for f in spec.description.input],
        "outputs": [_tensor_info(f) for f in spec.description.output],
        "ops": dict(ops.most_common()),
        "total_ops": sum(ops.values()),
        "max_rank": max_rank,
        "weights": weights,
        "activations_by_dtype": dict(outputs_by_dtype),
        "compute_precision": compute,
        "user_metadata": user,
        "labels": labels,
    }


def structure_problems(structure: dict[str, Any], metadata: ArtifactMetadata) -> list[str]:
    """What is wrong with a package's ``structure`` for the runtime contract its ``metadata`` states:
    input ``input`` (metadata's shape, float32), output ``logits`` (batch, classes, float32), the
    edgevit metadata and labels embedded, compute and weight precision as ``metadata.precision``."""
    from edgevit.runtimes.coreml import CLASSES_KEY

    problems = []
    input_shape = list(metadata.input_shape(1))
    expected_in = {"name": "input", "type": "multiArrayType", "shape": input_shape, "dtype": "fp32"}
    if structure["inputs"] != [expected_in]:
        problems.append(f"input is {structure['inputs']}, expected {expected_in}")
    expected_out = {"name": "logits", "type": "multiArrayType", "shape": [1, metadata.num_classes], "dtype": "fp32"}
    if structure["outputs"] != [expected_out]:
        problems.append(f"output is {structure['outputs']}, expected {expected_out}")
    stored = structure["user_metadata"].get(METADATA_KEY)
    if stored is None or ArtifactMetadata.from_json(stored) != metadata:
        problems.append("the embedded edgevit metadata does not round-trip")
    if structure["labels"] != list(metadata.labels):
        problems.append(f"metadata '{CLASSES_KEY}' does not hold the {metadata.num_classes} labels")
    precision = metadata.precision
    if structure["compute_precision"] != precision:
        problems.append(f"compute precision is {structure['compute_precision']}, expected {precision}")
    float_weights = {k: v for k, v in structure["weights"].items() if k in ("fp16", "fp32")}
    if float_weights and max(float_weights, key=lambda k: float_weights[k]["elements"]) != precision:
        problems.append(f"weights are stored as {float_weights}, expected {precision}")
    if not structure["ops"]:
        problems.append("the ML Program has no operations")
    return problems


def check_package(path: str | os.PathLike) -> dict[str, Any]:
    """Structural verification of a CoreML artifact against its own embedded metadata, on any OS.

    Returns ``{"passed", "problems", "structure"}``; what ``edgevit verify`` can do off macOS.
    """
    from edgevit.runtimes.coreml import CLASSES_KEY, metadata_from_spec, read_coreml_spec

    spec = read_coreml_spec(path)
    metadata = metadata_from_spec(spec, Path(path).name)
    structure = mlprogram_structure(spec, CLASSES_KEY)
    problems = structure_problems(structure, metadata)
    return {"passed": not problems, "problems": problems, "structure": structure}


# --- failures -------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def _failing_op(exc: BaseException) -> str | None:
    import re

    text = str(exc)
    for pattern in (
        r"Unsupported fx node (\w+)",
        r"convert function for op '([\w.]+)' not implemented",
        r"PyTorch convert function for op '([\w.]+)'",
        r"op '([\w.]+)'",
    ):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _is_noise(w: warnings.WarningMessage) -> bool:
    text = str(w.message)
    return issubclass(w.category, (DeprecationWarning, FutureWarning, ResourceWarning)) or "has not been tested with coremltools" in text


# --- weight compression ----------------------------------------------------------------------

_WEIGHT_MODES = ("float", "int8", "palettize-8", "palettize-6", "palettize-4")


def _weight_compression(value: Any) -> str | None:
    if value not in _WEIGHT_MODES:
        raise ConfigError(f"coreml option weights must be one of {', '.join(_WEIGHT_MODES)}, got {value!r}")
    return None if value == "float" else value


def _compress_weights(mlmodel, mode: str, config: ExportConfig, path: Path):
    """(compressed model, report section): int8 per-channel symmetric weights, or an n-bit k-means
    palette per tensor; compute stays at the program's precision."""
    import tempfile

    import coremltools as ct
    import coremltools.optimize.coreml as cto

    with tempfile.TemporaryDirectory(prefix="edgevit-coreml-") as tmp:
        plain = Path(tmp) / "uncompressed.mlpackage"
        mlmodel.save(str(plain))
        uncompressed = sum(f.stat().st_size for f in plain.rglob("*") if f.is_file())
    try:
        if mode == "int8":
            op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
            compressed = cto.linear_quantize_weights(mlmodel, config=cto.OptimizationConfig(global_config=op))
            scheme = "int8 per-channel symmetric weights (constexpr dequantize), compute " + config.precision
        else:
            bits = int(mode.split("-")[1])
            op = cto.OpPalettizerConfig(mode="kmeans", nbits=bits, granularity="per_tensor")
            compressed = cto.palettize_weights(mlmodel, config=cto.OptimizationConfig(global_config=op))
            scheme = f"{bits}-bit k-means palettized weights (per tensor), compute " + config.precision
    except Exception as exc:
        raise ConversionError(f"coremltools weight compression ({mode}) failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    section = {"precision": config.precision, "weights": mode, "scheme": scheme,
               "tool": f"coremltools {ct.__version__} optimize.coreml", "_uncompressed_bytes": uncompressed}
    return compressed, section
