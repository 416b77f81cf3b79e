"""TFLite target: PyTorch -> LiteRT flatbuffer through litert-torch, metadata embedded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgevit.converters.base import ConvertOutput, Converter, ExportConfig, register_converter
from edgevit.converters.quantize import (
    QUANT_OPTIONS,
    QuantSettings,
    add_size_and_latency,
    metadata_summary,
    summary_lines,
    torch_threads,
)
from edgevit.errors import ConfigError, ConversionError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.integrity import PLACEHOLDER, seal_at
from edgevit.runtimes.tflite import DIGEST_KEY, digest_slot, tflite_metadata_spans

__all__ = ["TFLiteConverter", "embed_tflite_metadata"]


def embed_tflite_metadata(data: bytes, key: str, value: bytes, strip_names: bool = False) -> bytes:
    """Return ``data`` with a metadata entry ``key`` (replacing one of the same name), sealed with
    the edgevit integrity digest (entry ``edgevit_sha256``, see :mod:`edgevit.runtimes.integrity`),
    which the runtime checks before the interpreter reads the file.

    ``strip_names`` drops the tensor names: litert-torch names every tensor after the module stack
    that produced it, which is debugging information only (the runtime addresses tensors by index
    and signature), yet 0.26 MB of MobileViT-XXS's file, 16% of its int8 model. Signatures, op
    codes and metadata are kept (unlike ``flatbuffer_utils.strip_strings``, which drops signatures).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    if strip_names:
        for subgraph in model.subgraphs:
            for tensor in subgraph.tensors:
                tensor.name = None
    _set_metadata(model, key, value)
    _set_metadata(model, DIGEST_KEY, PLACEHOLDER)
    out = flatbuffer_utils.convert_object_to_bytearray(model)
    # The slot by position (the entry's buffer), so labels holding the marker text do not count.
    return seal_at(out, digest_slot(tflite_metadata_spans(out, "the converted model"), "the converted model"))


def _set_metadata(model, key: str, value: bytes) -> None:
    """Set entry ``key`` to ``value``, rewriting the buffer of an existing entry in place (an
    orphaned old buffer would keep its bytes, a stale digest among them, in the file)."""
    from ai_edge_litert import schema_py_generated as schema

    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == key:
            model.buffers[entry.buffer].data = list(value)
            return
    buffer = schema.BufferT()
    buffer.data = list(value)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = key
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]


@register_converter
class TFLiteConverter(Converter):
    """litert-torch conversion (torch.export -> StableHLO -> TFLite); runs on XNNPACK."""

    name = "tflite"
    suffix = ".tflite"
    precisions = ("fp32", "fp16", "int8-dynamic", "int8")
    options = {**QUANT_OPTIONS, "rewrite": True, "tensor_names": False}
    requires = ("litert_torch", "ai_edge_litert")
    runtime = "tflite"

    def prepare(self, model, config: ExportConfig):
        """Edge rewrites for TFLite's XNNPACK (option ``rewrite``, default on): attention as
        per-head batched matmuls (BATCH_MATMUL + SOFTMAX, no rank-5 transposes), Swin's windows
        at rank <= 5; LayerNorm stays as litert-torch lowers it (MEAN-based, delegated). See
        :mod:`edgevit.converters.rewrites`."""
        from edgevit.converters.rewrites import EdgeRewriteConfig, rewrite_for_target

        keep_names = config.options.get("tensor_names", False)
        if not isinstance(keep_names, bool):
            raise ConfigError(f"tflite option tensor_names must be true or false, got {keep_names!r}")
        return rewrite_for_target(model, config, EdgeRewriteConfig(layer_norm="keep"))

    def convert(self, model, example, path: Path, metadata: ArtifactMetadata, config: ExportConfig) -> ConvertOutput:
        """fp32 through litert-torch; fp16 (weights), int8-dynamic (weights int8, activations
        quantized on the fly) and int8 (static, calibrated, ViT-aware mix) through
        ai-edge-quantizer on that float flatbuffer (see :mod:`edgevit.converters.quantize`)."""
        import litert_torch

        try:
            edge_model = litert_torch.convert(model, (example,))
        except Exception as exc:
            raise ConversionError(_describe_failure(exc), op=_failing_op(exc)) from exc
        float_data = edge_model.model_content()
        keep_names = config.options.get("tensor_names", False)
        strip = not keep_names
        details: dict = {"converter": f"litert-torch {litert_torch.__version__}",
                         "tensor_names": "kept" if keep_names else "stripped (--option tensor_names=true keeps them)"}
        if config.precision == "fp32":
            path.write_bytes(embed_tflite_metadata(float_data, METADATA_KEY, metadata.to_json().encode(), strip))
            return ConvertOutput(warnings=_delegation_warnings(delegation := _delegation(path)),
                                 delegation=delegation, details=details)
        with torch_threads(1):
            quantized, section, warnings, fallbacks = _quantize_tflite(float_data, model, metadata, config)
        meta = metadata.replace(
            extra={**metadata.extra, "quantization": metadata_summary(section)},
            fallbacks=tuple(metadata.fallbacks) + tuple(fallbacks),
        )
        path.write_bytes(embed_tflite_metadata(quantized, METADATA_KEY, meta.to_json().encode(), strip))
        settings = QuantSettings.from_options(config.options, _KEEP)
        latency = None
        delegation = _delegation(path)
        if settings.speed_check:  # time it against its fp32 twin; the figures go inside the artifact
            check = _compare_tflite_latency(float_data, path, metadata, example, strip, config.precision, delegation)
            meta = meta.replace(speed_check=check.to_dict())
            path.write_bytes(embed_tflite_metadata(quantized, METADATA_KEY, meta.to_json().encode(), strip))
            details["speed_check"] = check.to_dict()
            latency = {"fp32": check.fp32_ms, "quantized": check.optimized_ms}
            warnings = warnings + ([check.warning()] if check.slower else [])
        add_size_and_latency(section, len(embed_tflite_metadata(float_data, METADATA_KEY, metadata.to_json().encode(), strip))
                             if settings.compare_fp32 else None, path.stat().st_size, latency)
        details["quantization"] = section
        details["quantization_summary"] = summary_lines(section)
        return ConvertOutput(warnings=warnings + _delegation_warnings(delegation), delegation=delegation, details=details)


def _delegation(path: Path):
    """How much of the written model XNNPACK takes (the interpreter applies it by default)."""
    from edgevit.converters.tflite_delegation import tflite_delegation_report

    return tflite_delegation_report(path)


def _delegation_warnings(report) -> list[str]:
    if report.share >= 1.0:
        return []
    outside = ", ".join(f"{op} x{n}" for op, n in list(report.outside_ops.items())[:6])
    return [f"XNNPACK takes {100 * report.share:.1f}% of the TFLite operators ({report.partitions} partition(s)); "
            f"left on TFLite's builtin kernels: {outside}"]


def _failing_op(exc: Exception) -> str | None:
    import re

    m = re.search(r"'(tfl\.[a-z_0-9]+|stablehlo\.[a-z_0-9]+|aten\.[a-z_0-9.]+)'", str(exc))
    return m.group(1) if m else None


def _describe_failure(exc: Exception) -> str:
    op = _failing_op(exc)
    first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
    return f"litert-torch could not convert the model{f' (op {op})' if op else ''}: {first}"


# ----------------------------------------------------------------------------------------------
# Quantization through ai-edge-quantizer (AEQ), on the float flatbuffer litert-torch wrote.

_KEEP = ("float", "int16")  # what an op kept out of int8 can be here
_CALIBRATION_CACHE = True  # calibrate once per export (False: once per search candidate, as before; tests compare)
_LINEAR_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE", "EMBEDDING_LOOKUP")
_ACTIVATION_OPS = ("GELU", "TANH")  # the transformer MLP's activation (TANH: GELU's tanh form)
# Sigmoid-family activations (SiLU = x * LOGISTIC(x), hard-swish, ReLU) of the conv stages: XNNPACK
# runs them in int8 with a lookup table, so they are searched like any other group, not float by design.
_GATE_OPS = ("LOGISTIC", "HARD_SWISH", "RELU", "RELU6")
_ELEMENTWISE_OPS = ("MUL", "SUB", "DIV", "SQUARED_DIFFERENCE", "RSQRT", "SQRT", "MAXIMUM")
# The ViT-aware recipe keeps these float from the start: they are the range-sensitive ops of a
# ViT *and* XNNPACK has no fast int8 kernel for them, so int8 there costs accuracy and time
# (DeiT-Tiny, 2 threads: all-int8 50 ms, fp32 30 ms, int8 with these float 15 ms).
_FLOAT_BY_DESIGN_ROLES = {
    "softmax": "softmax",
    "norm": "layer norm internals (mean, variance, rsqrt)",
    "activation": "GELU",
    "attention_matmul": "matmuls between activations (attention)",
}
_FLOAT_BY_DESIGN_KINDS = {"DIV": "division (inexact in int8; its int8 kernel fails on some graphs)"}


def _aeq():
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.calibrator import CalibrationMode
    from ai_edge_quantizer.recipe_manager import RecipeManager

    return qtyping, quantizer, recipe, AlgorithmName, CalibrationMode, RecipeManager


def _aeq_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ai-edge-quantizer {version('ai-edge-quantizer')}"
    except PackageNotFoundError:
        return "ai-edge-quantizer"


def _module_scopes(model) -> list[tuple[str, str]]:
    """(scope prefix, module path) for every module: litert-torch names a tensor after the
    module stack that produced it, each level as ``<class>_<attribute>``."""
    def cls_name(m) -> str:
        return f"{type(m).__module__}.{type(m).__qualname__}"

    out = []
    prefixes = {"": cls_name(model)}
    for name, mod in model.named_modules():
        if not name:
            continue
        parent, _, attr = name.rpartition(".")
        if parent not in prefixes:
            continue
        prefixes[name] = f"{prefixes[parent]}/{cls_name(mod)}_{attr}"
        out.append((prefixes[name], name))
    out.sort(key=lambda pm: -len(pm[0]))
    return out


def _module_of(path: str, scopes: list[tuple[str, str]]) -> str:
    """The deepest module whose scope prefix ``path`` lies under ("" if none)."""
    return next((m for prefix, m in scopes if path == prefix or path.startswith(prefix + "/")), "")


def _tflite_ops(data: bytes, model) -> list:
    """The float flatbuffer's quantizable ops as :class:`QuantOp` (id = the op's scope)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fbu

    from edgevit.converters.quantize import QuantOp, role_of_module

    fm = fbu.read_model(bytearray(data))
    graph = fm.subgraphs[0]
    scopes = _module_scopes(model)
    modules = dict(model.named_modules())

    def is_constant(tensor_index: int) -> bool:
        if tensor_index < 0:
            return True
        buf = fm.buffers[graph.tensors[tensor_index].buffer]
        return (buf.data is not None and len(buf.data) > 0) or bool(getattr(buf, "offset", 0))

    ops = []
    for index, op in enumerate(graph.operators):
        code = fm.operatorCodes[op.opcodeIndex].builtinCode
        kind = fbu.TFL_OP_CODE_TO_NAME.get(code)
        if kind is None:
            continue  # AEQ cannot quantize it: it stays float anyway
        kind_name = kind.value if hasattr(kind, "value") else str(kind)
        scope = fbu.get_op_scope(op, graph.tensors)
        # A scope lists every location the op's tensor came from ("loc;idx;loc;idx;"), e.g. a
        # convolution with the batch norm folded into it, or a linear with the norm before it.
        located = [m for m in (_module_of(part, scopes) for part in scope.split(";") if part and not part.isdigit()) if m]
        if kind_name in _LINEAR_OPS or kind_name == "BATCH_MATMUL":
            weighted = [m for m in located if getattr(modules[m], "weight", None) is not None
                        and getattr(modules[m].weight, "dim", lambda: 0)() >= 2]
            module = weighted[-1] if weighted else (located[-1] if located else "")
        else:
            module = located[0] if located else ""
        module_role = role_of_module(type(modules[module]).__name__) if module else None
        activations = [i for i in op.inputs if not is_constant(i)]
        if kind_name == "SOFTMAX":
            role = "softmax"
        elif module_role == "norm":
            role = "norm"
        elif kind_name in _LINEAR_OPS:
            role = "linear"
        elif kind_name == "BATCH_MATMUL":
            role = "attention_matmul" if len(activations) >= 2 else "linear"
        elif kind_name == "ADD":
            role = "residual_add" if len(activations) >= 2 else "elementwise"
        elif kind_name in _ACTIVATION_OPS:
            role = "activation"
        elif kind_name in _GATE_OPS:
            role = "gate"
        elif kind_name in _ELEMENTWISE_OPS:
            role = "elementwise"
        else:
            role = "other"
        if role == "linear" and not module:  # the head's tensor is renamed after the model output
            module = "output" if list(op.outputs)[:1] and op.outputs[0] in list(graph.outputs) else f"{kind_name.lower()}#{index}"
        ops.append(QuantOp(id=scope, kind=kind_name, role=role, module=module))
    return ops


def _aeq_recipe(ops_by_id: dict, keep_float: set, keep_int16: set, precision: str, float_io: bool = False):
    """An AEQ recipe: every op a8w8 except the ops listed (one alternation regex per op type);
    ``float_io`` keeps the model's input and output tensors float."""
    import re

    qtyping, _q, recipe, AlgorithmName, _cm, RecipeManager = _aeq()
    OP = qtyping.TFLOperationName
    if precision == "fp16":
        rm = RecipeManager()
        rm.add_weight_only_config(".*", OP.ALL_SUPPORTED, 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        return rm.get_quantization_recipe()
    if precision == "int8-dynamic":
        return recipe.dynamic_wi8_afp32()
    rm = RecipeManager()
    rm.add_static_config(".*", OP.ALL_SUPPORTED, 8, 8)
    if float_io:
        rm.add_quantization_config(".*", OP.INPUT, None, AlgorithmName.NO_QUANTIZE)
        rm.add_quantization_config(".*", OP.OUTPUT, None, AlgorithmName.NO_QUANTIZE)

    def regex(ids) -> str:
        return "^(?:" + "|".join(re.escape(i) for i in sorted(ids)) + ")$"

    by_kind: dict[str, list[str]] = {}
    for op_id in keep_int16:
        by_kind.setdefault(ops_by_id[op_id].kind, []).append(op_id)
    for kind, ids in sorted(by_kind.items()):
        try:
            rm.add_static_config(regex(ids), OP(kind), 16, 8)
        except ValueError:  # this op type has no a16w8 kernel: it stays float instead
            rm.add_quantization_config(regex(ids), OP(kind), None, AlgorithmName.NO_QUANTIZE)
    by_kind = {}
    for op_id in keep_float:
        by_kind.setdefault(ops_by_id[op_id].kind, []).append(op_id)
    for kind, ids in sorted(by_kind.items()):
        rm.add_quantization_config(regex(ids), OP(kind), None, AlgorithmName.NO_QUANTIZE)
    return rm.get_quantization_recipe()


def _aeq_quantize(float_data: bytes, recipe_json, calib_inputs, global_range: bool = False,
                  qsv_cache: dict | None = None) -> bytes:
    """Run AEQ (calibrating first when the recipe needs it) and return the flatbuffer.

    AEQ's calibration keeps a moving average of each tensor's per-image min/max (so the range
    clips the rarer extremes); ``global_range`` keeps the true min/max over all images instead.
    ``qsv_cache`` (a dict kept by the caller) holds the ranges of the profiler-based calibration,
    which records every tensor of the float model whatever the recipe: the search's candidates
    then reuse one calibration pass instead of running the float model again each."""
    import copy

    import numpy as np

    from edgevit.converters.quantize import quiet_tools

    _qt, quantizer, _r, _a, CalibrationMode, _rm = _aeq()
    q = quantizer.Quantizer(bytearray(float_data), recipe_json)
    result = None
    with quiet_tools():
        if q.need_calibration and qsv_cache is not None and global_range in qsv_cache:
            result = copy.deepcopy(qsv_cache[global_range])
        elif q.need_calibration:
            from ai_edge_litert.interpreter import Interpreter

            signatures = Interpreter(model_content=float_data).get_signature_list()
            key = next(iter(signatures))
            name = signatures[key]["inputs"][0]
            data = {key: [{name: np.ascontiguousarray(x[None])} for x in calib_inputs]}
            try:
                if global_range:
                    from ai_edge_quantizer import calibrator
                    from ai_edge_quantizer.utils import qsv_utils

                    calib = calibrator.Calibrator(bytearray(float_data), num_threads=2,
                                                  mode=CalibrationMode.CALIBRATION_PROFILER_BASED,
                                                  qsv_update_func=qsv_utils.min_max_update)
                    calib.calibrate(data, q._recipe_manager)  # noqa: SLF001 (the recipe of this Quantizer)
                    result = calib.get_model_qsvs()
                else:
                    result = q.calibrate(data, mode=CalibrationMode.CALIBRATION_PROFILER_BASED, num_threads=2)
                result = _keepdims_qsvs(result, float_data)
                if qsv_cache is not None:
                    qsv_cache[global_range] = copy.deepcopy(result)
            except Exception:  # the fast profiler path does not cover every graph: record all tensors
                q = quantizer.Quantizer(bytearray(float_data), recipe_json)
                result = q.calibrate(data, num_threads=2)
        out = q.quantize(result, enable_progress_report=False).quantized_model
    return bytes(out)


def _keepdims_qsvs(qsvs: dict, float_data: bytes) -> dict:
    """The profiler-based calibration returns per-tensor min/max of shape (1,); AEQ's other
    calibration mode, and some of its ops (a concatenation with a constant input), expect them
    with the tensor's rank, (1, ..., 1). Reshape them so."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fbu

    fm = fbu.read_model(bytearray(float_data))
    ranks = {}
    for graph in fm.subgraphs:
        for t in graph.tensors:
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            ranks[name] = len(t.shape) if t.shape is not None else 0
    out = {}
    for name, qsv in qsvs.items():
        rank = ranks.get(name)
        if rank and isinstance(qsv, dict) and all(getattr(qsv.get(k), "size", 0) == 1 for k in ("min", "max")):
            qsv = {**qsv, "min": qsv["min"].reshape((1,) * rank), "max": qsv["max"].reshape((1,) * rank)}
        out[name] = qsv
    return out


def _run_tflite(data: bytes, inputs, threads: int = 2):
    """Logits of a flatbuffer on a stack of single inputs, (de)quantising int8/int16 I/O."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for x in inputs:
        x = x[None]
        if np.issubdtype(inp["dtype"], np.integer) and x.dtype != inp["dtype"]:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.rint(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if np.issubdtype(y.dtype, np.integer) and out["quantization"][0]:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        rows.append(np.asarray(y, dtype=np.float32).reshape(-1))
    return np.stack(rows)


def _failed_kernel(exc: Exception) -> str | None:
    """The op type named in an interpreter failure ("Node number 45 (DIV) failed to invoke")."""
    import re

    m = re.search(r"\(([A-Z_0-9]+)\) failed to (?:invoke|prepare)", str(exc))
    return m.group(1) if m else None


def _int8_kinds_outside_delegate(quantized: bytes, float_data: bytes, ops, float_ids: set) -> dict[str, int]:
    """Op kinds whose every int8 instance in ``quantized`` runs outside XNNPACK while the float model
    delegates them: {kind: count}. Kinds only partly outside are left alone (a neighbour, not the
    kernel, is then the cause)."""
    from edgevit.converters.tflite_delegation import tflite_delegation_report

    outside = tflite_delegation_report(quantized).outside_ops
    float_outside = tflite_delegation_report(float_data).outside_ops
    int8_ops = Counter(op.kind for op in ops if op.id not in float_ids)
    return {kind: n for kind, n in outside.items()
            if kind not in float_outside and int8_ops.get(kind) and n >= int8_ops[kind]}


def _quantize_tflite(float_data: bytes, model, metadata: ArtifactMetadata, config: ExportConfig):
    """(quantized flatbuffer, report section, warnings, fallbacks) for fp16 / int8-dynamic / int8."""
    from edgevit.converters import quantize as qz

    settings = QuantSettings.from_options(config.options, _KEEP)
    precision = config.precision
    warnings: list[str] = []
    fallbacks: list[str] = []
    vit_aware = precision == "int8" and settings.recipe == "vit-aware"
    scheme = {
        "fp16": "fp16 weights (float casting), fp32 compute",
        "int8-dynamic": "int8 per-channel weights, activations quantized at run time (dynamic range)",
        "int8": "int8 static: per-channel int8 weights, int8 activations from calibrated ranges",
    }[precision]

    calib = search = None
    if config.calibration is not None:
        calib, search, note = qz.load_quant_data(config.calibration, metadata, settings)
        if note:
            warnings.append(note)
        if search.note:
            warnings.append(f"calibration {search.note}")
    calibration_info = calib.describe() if calib is not None else None
    if calibration_info is not None and search is not calib:
        calibration_info["search_images"] = len(search)

    if precision != "int8":
        quantized = _aeq_quantize(float_data, _aeq_recipe({}, set(), set(), precision), None)
        evaluation = None
        if search is not None:
            evaluation = qz.fidelity(_run_tflite(float_data, search.inputs), _run_tflite(quantized, search.inputs), search.labels)
        section = qz.report(precision, scheme, _aeq_version(), settings, calibration=calibration_info, evaluation=evaluation)
        return quantized, section, warnings, fallbacks

    ops = _tflite_ops(float_data, model)
    ops_by_id = {op.id: op for op in ops}
    forced_float: set[str] = set()  # op types whose int8 kernels failed (opt-in fallback)
    groups = []
    by_design: set[str] = set()
    by_design_notes: list[str] = []
    if vit_aware:
        for key, why in {**_FLOAT_BY_DESIGN_ROLES, **_FLOAT_BY_DESIGN_KINDS}.items():
            ids = {op.id for op in ops if op.role == key or op.kind == key}
            if ids:
                by_design |= ids
                by_design_notes.append(f"{why} ({len(ids)} ops)")
        by_design_notes.append("the model's input and output tensors (int8 logits clip at the calibrated range)")
        groups = qz.build_groups([op for op in ops if op.id not in by_design], qz.linear_outlier_scores(model, calib.inputs))
    members = {g.name: g.op_ids for g in groups}
    reference = _run_tflite(float_data, search.inputs)
    qsv_cache: dict = {}  # one calibration pass per range mode, shared by every candidate

    def build(kept: frozenset, naive: bool = False, may_fall_back: bool = True) -> bytes:
        while True:
            forced = {op.id for op in ops if op.kind in forced_float}
            fixed = forced if naive else forced | by_design
            chosen = {i for name in kept for i in members[name]} - fixed
            keep_float, keep_int16 = (chosen | fixed, set()) if settings.keep == "float" else (fixed, chosen)
            recipe = _aeq_recipe(ops_by_id, keep_float, keep_int16, "int8", float_io=not naive)
            data = _aeq_quantize(float_data, recipe, calib.inputs, global_range=not naive,
                                 qsv_cache=qsv_cache if _CALIBRATION_CACHE else None)
            try:
                _run_tflite(data, search.inputs[:1])
                return data
            except (RuntimeError, ValueError) as exc:
                kind = _failed_kernel(exc)
                if kind is None or kind in forced_float:
                    raise ConversionError(f"the int8 TFLite model does not run: {str(exc).strip()[:300]}") from exc
                if not settings.fallback or not may_fall_back:
                    raise ConversionError(
                        f"the int8 kernel of {kind} fails in the TFLite interpreter ({str(exc).strip()[:200]}); "
                        f"pass --option fallback=true to keep {kind} ops in float (recorded in the artifact)",
                        op=kind,
                    ) from exc
                forced_float.add(kind)
                fallbacks.append(f"{kind} ops kept in float: their int8 kernel fails at invoke")
                warnings.append(fallbacks[-1])

    base = None  # the all-int8 ViT-aware model, built once: the delegation check and the search's first candidate
    if vit_aware:
        # An op kind whose int8 kernel XNNPACK does not take (every one of them left outside, where the
        # float ones are delegated) splits the graph into many partitions and runs on TFLite's
        # reference kernels: EfficientViT's HARD_SWISH made its int8 file 5x slower than fp32. Such
        # ops are float by design; the quantize/dequantize pairs around them stay in the delegate.
        base = build(frozenset())
        undelegated = _int8_kinds_outside_delegate(base, float_data, ops, by_design)
        if undelegated:
            by_design |= {op.id for op in ops if op.kind in undelegated}
            by_design_notes.insert(-1, "ops whose int8 kernels XNNPACK does not take, kept float to stay in the delegate ("
                                   + ", ".join(f"{k} x{n}" for k, n in sorted(undelegated.items())) + ")")
            base = None  # built before those ops went float

    def evaluate(kept: frozenset, n: int):
        data = base if base is not None and not kept else build(kept, naive=not vit_aware)
        return _run_tflite(data, search.inputs[:n])

    target = settings.target(search.labelled)
    result = qz.search_mix(groups, evaluate, reference, search.labels, target)
    naive, naive_failure = None, None
    if vit_aware:  # the comparison with the naive recipe is a report: a naive graph that cannot run is said, not fatal
        try:
            naive = qz.fidelity(reference, _run_tflite(build(frozenset(), naive=True, may_fall_back=False), search.inputs),
                                search.labels)
        except ConversionError as exc:
            naive_failure = str(exc)
    if vit_aware and not result.met:
        raise ConversionError(
            f"int8 could not meet the fidelity target ({target.describe()}): naive int8 gives "
            f"{naive.summary() if naive else 'no runnable model'}; the ViT-aware mix keeping {', '.join(result.kept) or 'no further group'} out of int8 "
            f"gives {result.final.summary()}. Relax it (--option max_drop=N / min_agreement=A / min_cosine=C), or use "
            "--precision int8-dynamic or fp16"
        )
    quantized = build(frozenset(result.kept), naive=not vit_aware)
    if vit_aware:
        scheme += " (global min/max ranges)"
    section = qz.report(precision, scheme, _aeq_version(), settings, calibration=calibration_info, groups=groups,
                        search=result, naive=naive, fixed_float=by_design_notes, fallbacks=fallbacks)
    if not vit_aware:
        section["note"] = "naive recipe: every quantizable op int8, AEQ's default calibration (no search)"
    if naive_failure:
        section["naive"] = {"error": naive_failure[:400]}
    return quantized, section, warnings, fallbacks


def _compare_tflite_latency(float_data: bytes, quantized_path: Path, metadata: ArtifactMetadata, example,
                            strip_names: bool = False, precision: str = "int8", delegation=None):
    """The speed check (:mod:`edgevit.converters._speed`): the written artifact against its fp32
    twin, interleaved, with the TFLite runtime."""
    import numpy as np

    from edgevit.converters._speed import slower_cause, time_twins, twin_path

    fp32_path = twin_path(quantized_path, "fp32")
    try:
        fp32_meta = metadata.replace(precision="fp32")
        fp32_path.write_bytes(embed_tflite_metadata(float_data, METADATA_KEY, fp32_meta.to_json().encode(), strip_names))
        x = np.ascontiguousarray(example.detach().cpu().numpy())
        return time_twins(fp32_path, quantized_path, "tflite", precision, x,
                          cause=lambda: slower_cause("tflite", precision, delegation=delegation))
    finally:
        fp32_path.unlink(missing_ok=True)
