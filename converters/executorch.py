"""ExecuTorch target: ``torch.export`` -> edge dialect -> XNNPACK delegate -> ``.pte`` program.

The edgevit metadata travels inside the program as a *constant method*: ExecuTorch's
``constant_methods`` argument emits an extra method (named :data:`~edgevit.metadata.METADATA_KEY`,
``"edgevit"``) that takes no input and returns the metadata JSON as a string. The runtime reads it
back with ``program.load_method("edgevit").execute([])``; nothing beside the ``.pte`` is needed.
A second constant method, ``edgevit_sha256``, holds the SHA-256 of the file (computed over the
file with the digest itself zeroed), so the runtime can reject damaged files before loading them.
Its slot is located by walking the program flatbuffer to that method's string
(:func:`~edgevit.runtimes.executorch.pte_digest_slot`), at export and at load alike, so a label that
contains the marker text ``edgevit-sha256:`` is just content.
"""

from __future__ import annotations

import operator
from collections import Counter
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgevit.converters.base import ConvertOutput, Converter, DelegationReport, ExportConfig, register_converter
from edgevit.converters.quantize import (
    QUANT_OPTIONS,
    QuantSettings,
    add_size_and_latency,
    metadata_summary,
    summary_lines,
    torch_threads,
)
from edgevit.errors import ArtifactError, ConversionError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.executorch import DIGEST_METHOD, check_pte, pte_digest_slot
from edgevit.runtimes.integrity import DIGEST_HEX, PLACEHOLDER, seal_at

if TYPE_CHECKING:
    import torch

__all__ = ["ExecuTorchConverter", "delegation_report", "export_for_quant", "lower"]

_DELEGATE = "XnnpackBackend"


def _op_name(target: Any) -> str:
    """A readable op name: ``aten.mul.Tensor`` for aten/edge ops, the qualified name otherwise."""
    name = getattr(target, "__name__", None) or str(target)
    if hasattr(target, "_overloadpacket") or hasattr(target, "_op"):
        # torch OpOverload / EdgeOpOverload: ``name()`` is ``aten::mul.Tensor``
        qualified = getattr(target, "name", None)
        if callable(qualified):
            return str(qualified()).replace("::", ".")
    return name


def _is_compute(node: Any) -> bool:
    """A call_function node that does work (not tuple unpacking, not the delegate call itself)."""
    import torch

    if node.op != "call_function":
        return False
    return node.target is not operator.getitem and node.target is not torch.ops.higher_order.executorch_call_delegate


def delegation_report(graph_module: torch.fx.GraphModule, delegate: str = _DELEGATE) -> DelegationReport:
    """Count how much of a lowered edge-dialect graph runs inside the delegate.

    Counting rule: a *compute node* is a ``call_function`` node of the edge-dialect graph, not
    counting ``operator.getitem`` (tuple unpacking) or the ``executorch_call_delegate`` call
    itself; placeholders, ``get_attr`` and ``output`` nodes are bookkeeping and never count.
    Delegated nodes are the compute nodes inside every lowered module's original subgraph
    (whatever backend took them: the XNNPACK partitioner is the only one used here);
    ``outside_ops`` are the compute nodes left in the top-level graph (they run on ExecuTorch's
    portable/optimized CPU kernels), by op name. ``partitions`` is the number of lowered modules.
    """
    outside: Counter[str] = Counter()
    delegated = 0
    partitions = 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            lowered = getattr(graph_module, node.target)
            partitions += 1
            delegated += sum(1 for n in lowered.original_module.graph.nodes if _is_compute(n))
        elif _is_compute(node):
            outside[_op_name(node.target)] += 1
    total = delegated + sum(outside.values())
    return DelegationReport(
        delegate=delegate,
        delegated_nodes=delegated,
        total_nodes=total,
        partitions=partitions,
        outside_ops=dict(sorted(outside.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


@register_converter
class ExecuTorchConverter(Converter):
    """ExecuTorch lowering with the XNNPACK partitioner; portable kernels run the rest."""

    name = "executorch"
    suffix = ".pte"
    precisions = ("fp32", "int8-dynamic", "int8")
    options = {**QUANT_OPTIONS, "rewrite": True}
    requires = ("executorch",)
    runtime = "executorch"

    def prepare(self, model: torch.nn.Module, config: ExportConfig) -> torch.nn.Module:
        """Edge rewrites for XNNPACK (option ``rewrite``, default on): attention as per-head
        batched matmuls, LayerNorm with its means as one-output linear layers, Swin's windows at
        rank <= 5, so the graph lowers into XNNPACK whole (see :mod:`edgevit.converters.rewrites`)."""
        from edgevit.converters.rewrites import EdgeRewriteConfig, rewrite_for_target

        return rewrite_for_target(model, config, EdgeRewriteConfig(layer_norm="linear"))

    def convert(
        self,
        model: torch.nn.Module,
        example: torch.Tensor,
        path: Path,
        metadata: ArtifactMetadata,
        config: ExportConfig,
    ) -> ConvertOutput:
        """fp32 lowering; int8-dynamic / int8 quantize first through PT2E with the XNNPACK
        quantizer (int8 with a calibrated, ViT-aware mix; see :mod:`edgevit.converters.quantize`)."""
        from executorch import version as et_version

        section = None
        warnings: list[str] = []
        artifact_meta = metadata
        lowered_model = model
        judge = None
        if config.precision != "fp32":
            with torch_threads(1):
                lowered_model, section, warnings, judge = _quantize_pt2e(model, example, metadata, config)
            artifact_meta = metadata.replace(extra={**metadata.extra, "quantization": metadata_summary(section)})
        speed: dict[str, Any] = {}
        if section is not None and QuantSettings.from_options(config.options).speed_check:
            def restamp(first: bytes, delegation: DelegationReport) -> ArtifactMetadata:
                """Time the lowered program against its fp32 twin; the figures go into its metadata."""
                path.write_bytes(first)
                speed["check"], speed["fp32_bytes"] = _speed_check(model, example, path, metadata, config.precision,
                                                                   delegation)
                return artifact_meta.replace(speed_check=speed["check"].to_dict())
        else:
            restamp = None
        data, report = lower(lowered_model, example, artifact_meta, restamp=restamp)
        path.write_bytes(data)
        if judge is not None:  # the fidelity of the real artifact, on the held-out images
            missed = _judge_artifact(path, self.runtime, section, *judge)
            if missed:
                warnings.append(missed)
        if report.share < 1.0:
            outside = ", ".join(f"{op} x{n}" for op, n in list(report.outside_ops.items())[:6])
            warnings.append(
                f"{report.share:.1%} of compute nodes delegated to XNNPACK in {report.partitions} "
                f"partition(s); outside the delegate: {outside}"
            )
        details: dict[str, Any] = {
            "converter": f"executorch {et_version.__version__}",
            "metadata_method": METADATA_KEY,
            "digest_method": DIGEST_METHOD,
        }
        if section is not None:
            latency = None
            if "check" in speed:
                check = speed["check"]
                details["speed_check"] = check.to_dict()
                latency = {"fp32": check.fp32_ms, "quantized": check.optimized_ms}
                if check.slower:
                    warnings.append(check.warning())
            if QuantSettings.from_options(config.options).compare_fp32:
                fp32_bytes = speed.get("fp32_bytes") or len(lower(model, example, metadata.replace(precision="fp32"))[0])
                add_size_and_latency(section, fp32_bytes, len(data), latency)
            elif latency:
                add_size_and_latency(section, None, len(data), latency)
            details["quantization"] = section
            details["quantization_summary"] = summary_lines(section)
        return ConvertOutput(warnings=warnings, delegation=report, details=details)


def _seal(buffer: bytes) -> bytes:
    """Write the file's SHA-256 into the digest placeholder (same length, so the flatbuffer
    layout does not move); the runtime checks it before loading (see runtimes/integrity.py).

    The placeholder is the string of the ``edgevit_sha256`` method, found by position in the
    program (:func:`pte_digest_slot`), not by searching for the marker a label may hold too."""
    try:
        at = pte_digest_slot(buffer, "the exported program")
        if buffer[at : at + DIGEST_HEX] != PLACEHOLDER[-DIGEST_HEX:]:
            raise ValueError("the digest method does not hold the placeholder")
        data = seal_at(buffer, at)
    except (ArtifactError, ValueError) as exc:
        raise ConversionError(f"ExecuTorch program: cannot seal its edgevit digest: {exc}") from None
    check_pte(data, "the exported program")
    return data


def _failing_op(exc: BaseException) -> str | None:
    import re

    text = str(exc)
    m = re.search(r"\b(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?)", text)
    return m.group(1).replace("::", ".") if m else None


def _describe_failure(stage: str, exc: BaseException) -> str:
    op = _failing_op(exc)
    lines = str(exc).strip().splitlines()
    first = lines[0][:400] if lines else type(exc).__name__
    return f"ExecuTorch {stage} failed{f' (op {op})' if op else ''}: {type(exc).__name__}: {first}"


def lower(model: torch.nn.Module, example: torch.Tensor, metadata: ArtifactMetadata,
          restamp: Callable[[bytes, DelegationReport], ArtifactMetadata] | None = None) -> tuple[bytes, DelegationReport]:
    """torch.export -> edge dialect -> XNNPACK -> sealed ``.pte`` bytes, and the delegation report.

    ``restamp`` (optional) gets the sealed program and the report and returns new metadata; the
    program is then emitted again with it (emission only: the lowering is not repeated). The
    speed check uses it to write the program's own timing into its metadata."""
    import copy

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    stage = "torch.export"
    try:
        with torch.no_grad():
            exported = torch.export.export(model, (example,), strict=False)
        stage = "edge lowering (XNNPACK partitioner)"
        methods = {METADATA_KEY: metadata.to_json(), DIGEST_METHOD: PLACEHOLDER.decode("ascii")}
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()], constant_methods=methods)
        report = delegation_report(edge.exported_program().graph_module)
        # to_executorch() rewrites the edge program in place (out-variants), so a second emission
        # needs an untouched copy
        spare = copy.deepcopy(edge) if restamp is not None else None
        stage = "to_executorch"
        buffer = edge.to_executorch().buffer
    except Exception as exc:
        raise ConversionError(_describe_failure(stage, exc), op=_failing_op(exc)) from exc
    if restamp is None:
        return _seal(buffer), report
    again = restamp(_seal(buffer), report)
    constants = getattr(spare, "_config_methods", None)  # where ExecuTorch 1.5 keeps the constant methods
    if not (isinstance(constants, dict) and METADATA_KEY in constants):
        return lower(model, example, again)[0], report  # another ExecuTorch: lower again (slower, same program)
    constants[METADATA_KEY] = again.to_json()
    try:
        buffer = spare.to_executorch().buffer
    except Exception as exc:
        raise ConversionError(_describe_failure("to_executorch", exc), op=_failing_op(exc)) from exc
    data = _seal(buffer)
    if again.to_json().encode() not in data:  # the constant method's string, stored verbatim
        raise ConversionError("ExecuTorch program: re-emitting it with its speed-check metadata did not take")
    return data, report


def _speed_check(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: ArtifactMetadata,
                 precision: str, delegation: DelegationReport):
    """(speed check, fp32 twin bytes): the program at ``path`` timed against its fp32 twin."""
    from edgevit.converters._speed import slower_cause, time_twins, twin_path

    twin = twin_path(path, "fp32")
    try:
        fp32_data, _ = lower(model, example, metadata.replace(precision="fp32"))
        twin.write_bytes(fp32_data)
        check = time_twins(twin, path, "executorch", precision, example.detach().cpu().numpy(),
                           cause=lambda: slower_cause("executorch", precision, delegation=delegation))
    finally:
        twin.unlink(missing_ok=True)
    return check, len(fp32_data)


# ----------------------------------------------------------------------------------------------
# Quantization through PT2E with the XNNPACK quantizer.
#
# The XNNPACK quantizer annotates linear/conv, add, mul, cat and average pooling; softmax, GELU
# and matmuls between activations stay float by design (XNNPACK runs them in fp32). The
# ViT-aware recipe also keeps layer norm float (the rewrite computes its means with linear
# layers, which the quantizer would otherwise take), uses global min/max activation ranges, and
# searches which of the remaining annotated ops to leave float. The search runs on a
# *simulation*: one prepared, calibrated graph whose observers are swapped for switchable
# fake-quantizers, so each candidate mix costs one forward pass instead of a new prepare.

# Reuse in the search (False: as before, for comparison): the final graph takes the search's
# calibrated ranges, and the sensitivity pass resumes each candidate from the base run's activations.
_CALIBRATION_CACHE = True
_PT2E_LINEAR = ("aten.linear", "aten.conv2d", "aten.conv1d", "aten.convolution")  # _op_name drops ".default"
_PT2E_ANNOTATED = _PT2E_LINEAR + ("aten.add.Tensor", "aten.mul.Tensor", "aten.cat", "aten.adaptive_avg_pool2d")
_BY_DESIGN = ["softmax", "GELU and other activations", "matmuls between activations (attention)"]


def _by_design_present(graph_module: Any) -> list[str]:
    """The float-by-design categories (:data:`_BY_DESIGN`) this graph has ops of: the quantizer
    leaves them float wherever they are; the report names only those the model contains."""
    found = set()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if "softmax" in name:
            found.add(_BY_DESIGN[0])
        elif any(a in name for a in ("gelu", "silu", "sigmoid", "hardswish", "tanh")):
            found.add(_BY_DESIGN[1])
        elif "scaled_dot_product_attention" in name or (
                any(m in name for m in ("aten.matmul", "aten.bmm", "aten.mm")) and
                sum(1 for a in node.args[:2] if getattr(a, "op", None) not in (None, "get_attr")) == 2):
            found.add(_BY_DESIGN[2])
    return [c for c in _BY_DESIGN if c in found]


def _module_path(node: Any) -> str:
    import re

    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    path = path.replace("L['self'].", "").replace("L['self']", "")
    path = re.sub(r"_modules\['([^']+)'\]", r"\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return path.strip(".")


def _pt2e_ops(graph_module: Any, model: Any) -> list:
    """The ops the XNNPACK quantizer would annotate, as :class:`QuantOp` (id = FX node name)."""
    from edgevit.converters.quantize import QuantOp, role_of_module

    modules = dict(model.named_modules())
    ops = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        kind = _op_name(node.target)
        if kind not in _PT2E_ANNOTATED:
            continue
        module = _module_path(node)
        # the innermost module that says what its ops are (a norm's linears are the norm's)
        parts = module.split(".") if module else []
        roles = [role_of_module(type(modules[".".join(parts[:i])]).__name__)
                 for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules]
        if "norm" in roles[:2]:
            role = "norm"
        elif kind in _PT2E_LINEAR:
            role = "linear"
        elif kind == "aten.add.Tensor":
            tensors = [a for a in node.args[:2] if hasattr(a, "op") and a.op != "get_attr"]
            role = "residual_add" if len(tensors) == 2 else "elementwise"
        elif kind == "aten.mul.Tensor":
            role = "elementwise"
        else:
            role = "other"
        if role == "linear" and not module:
            module = node.name
        ops.append(QuantOp(id=node.name, kind=kind, role=role, module=module))
    return ops


def export_for_quant(model: torch.nn.Module, example: torch.Tensor) -> tuple[Any, bool]:
    """The model as a pre-autograd FX graph for PT2E, with a dynamic batch if it traces so."""
    import torch

    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        pair = torch.cat([example, example])
        with torch.no_grad():
            ep = torch.export.export(model, (pair,), dynamic_shapes=({0: batch},), strict=False)
        return ep.module(), True
    except Exception:  # a graph that specialises on the batch: evaluate one image at a time
        with torch.no_grad():
            ep = torch.export.export(model, (example,), strict=False)
        return ep.module(), False


_BATCH = 64  # images per forward of the simulation


def _forward_all(module: Any, inputs: Any, batched: bool, batch: int = _BATCH) -> Any:
    """Logits of ``module`` on a numpy stack of single inputs."""
    import numpy as np
    import torch

    rows = []
    with torch.no_grad():
        data = torch.from_numpy(np.ascontiguousarray(inputs))
        step = batch if batched else 1
        for i in range(0, len(data), step):
            out = module(data[i : i + step])
            rows.append(out.float().reshape(out.shape[0], -1).numpy())
    return np.concatenate(rows)


def _quantizer_class() -> Any:
    """The XNNPACK quantizer without its conv-batchnorm patterns: those match only the training
    form of batch norm (QAT), and ``prepare_pt2e`` folds eval-mode batch norms into their
    convolutions before annotating; matching them costs a dynamo export per pattern (minutes on a
    busy machine) for nothing."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class PtqXnnpackQuantizer(XNNPACKQuantizer):
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]

    return PtqXnnpackQuantizer


def _xnnpack_config(dynamic: bool, global_range: bool) -> Any:
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    if dynamic or not global_range:
        return config
    from torchao.quantization.pt2e.observer import MinMaxObserver

    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def _switchable_fake_quant(observer: Any) -> Any:
    """A module that fake-quantizes like ``observer`` would quantize, while ``enabled``."""
    import torch

    class SwitchableFakeQuant(torch.nn.Module):
        def __init__(self, obs: Any) -> None:
            super().__init__()
            scale, zero = obs.calculate_qparams()
            self.register_buffer("scale", scale.float().reshape(-1))
            self.register_buffer("zero", zero.to(torch.int32).reshape(-1))
            self.qmin, self.qmax = int(obs.quant_min), int(obs.quant_max)
            self.per_channel = obs.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
            self.axis = int(getattr(obs, "ch_axis", 0))
            self.enabled = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return x
            if self.per_channel:
                return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero, self.axis, self.qmin, self.qmax)
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale[0]), int(self.zero[0]), self.qmin, self.qmax)

    return SwitchableFakeQuant(observer)


def _observers_by_input(prepared: Any) -> dict:
    """The observers of a prepared graph keyed by the nodes each one observes. Calibration runs the
    float graph, so an observer's statistics depend only on the tensors it sees: another prepared
    graph of the same model and config (with fewer ops annotated) can take them over."""
    seen: dict[str, set] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.args and hasattr(node.args[0], "name"):
            module = prepared.get_submodule(node.target)
            if hasattr(module, "calculate_qparams") and hasattr(module, "quant_min"):
                seen.setdefault(node.target, set()).add(node.args[0].name)
    return {frozenset(inputs): prepared.get_submodule(target) for target, inputs in seen.items()}


def _copy_ranges(prepared: Any, ranges: dict) -> bool:
    """Give every observer of ``prepared`` the statistics of its twin in ``ranges`` (see
    :func:`_observers_by_input`); False, and nothing copied, unless every observer has one."""
    mine = _observers_by_input(prepared)
    pairs = [(obs, ranges.get(key)) for key, obs in mine.items()]
    if not mine or any(src is None or type(src) is not type(obs) for obs, src in pairs):
        return False
    for obs, src in pairs:
        obs.load_state_dict(src.state_dict())
    return True


def _install_switches(prepared: Any, op_ids: set) -> list:
    """Swap every observer of a calibrated prepared graph for a switchable fake-quantizer;
    return (switch, ops it serves) pairs. An observer serves the annotated op that produced its
    tensor and the annotated ops that read it; it is off only when all of them stay float."""
    switches = []
    for node in list(prepared.graph.nodes):
        if node.op != "call_module":
            continue
        obs = prepared.get_submodule(node.target)
        if not (hasattr(obs, "calculate_qparams") and hasattr(obs, "quant_min")):
            continue
        served = set()
        producer = node.args[0] if node.args else None
        if getattr(producer, "name", None) in op_ids:
            served.add(producer.name)
        served |= {u.name for u in node.users if u.name in op_ids}
        switch = _switchable_fake_quant(obs)
        setattr(prepared, node.target, switch)
        switches.append((switch, frozenset(served)))
    return switches


def _quantize_pt2e(model: torch.nn.Module, example: torch.Tensor, metadata: ArtifactMetadata, config: ExportConfig):
    """(converted PT2E module, report section, warnings, judge) for int8-dynamic / int8; ``judge``
    is (search images, float logits, labels, target) for measuring the lowered artifact, or None."""
    import copy

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgevit.converters import quantize as qz

    settings = QuantSettings.from_options(config.options)
    dynamic = config.precision == "int8-dynamic"
    vit_aware = not dynamic and settings.recipe == "vit-aware"
    Quantizer = _quantizer_class()
    tool = "executorch XNNPACKQuantizer + torchao PT2E"
    warnings: list[str] = []
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

    try:
        graph, batched = export_for_quant(model, example)
        reference = _forward_all(model, search.inputs, True) if search is not None else None

        def quantize(exclude: frozenset = frozenset(), naive: bool = False, ranges: dict | None = None) -> Any:
            """A prepared graph, calibrated; with ``ranges`` (observers of an already calibrated graph
            of the same config) their statistics are copied instead of running the images again."""
            quantizer = Quantizer().set_global(_xnnpack_config(dynamic, global_range=not naive))
            if dynamic:  # XNNPACK's dynamic int8 is for linear layers; dynamic convs fail to lower (MobileViT)
                quantizer.set_filter_function(lambda n: n.op == "call_function" and _op_name(n.target) == "aten.linear")
            elif exclude:
                quantizer.set_filter_function(lambda n: n.name not in exclude)
            prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
            if not (ranges and _copy_ranges(prepared, ranges)):
                _forward_all(prepared, example.detach().numpy() if dynamic else calib.inputs, batched)
            return prepared

        if dynamic:
            converted = convert_pt2e(quantize())
            scheme = "int8 dynamic: per-channel int8 weights, activations quantized per call (linear layers)"
            section = qz.report("int8-dynamic", scheme, tool, settings, calibration=calibration_info)
            judge = (search, reference, search.labels) if search is not None else None
            return converted, section, warnings, judge

        ops = _pt2e_ops(graph, model)
        op_ids = {op.id for op in ops}
        by_design = frozenset(op.id for op in ops if op.role == "norm") if vit_aware else frozenset()
        groups = []
        if vit_aware:
            scores = qz.linear_outlier_scores(model, calib.inputs)
            groups = qz.build_groups([op for op in ops if op.id not in by_design], scores)
        members = {g.name: frozenset(g.op_ids) for g in groups}

        simulated = quantize(by_design, naive=not vit_aware)
        ranges = _observers_by_input(simulated) if _CALIBRATION_CACHE else None  # before the switches replace them
        switches = _install_switches(simulated, op_ids)
        # the sensitivity pass (one batch) resumes each candidate from the base run's activations
        resumable = qz.SwitchedGraph(simulated, [sw for sw, _ in switches]) if batched and _CALIBRATION_CACHE else None
        batches: dict[int, Any] = {}

        def states(kept: frozenset) -> list[bool]:
            floating = by_design.union(*(members[k] for k in kept))
            return [not served or not served <= floating for _switch, served in switches]

        def evaluate(kept: frozenset, n: int):
            if resumable is not None and kept and n <= _BATCH:
                import numpy as np
                import torch

                x = batches.setdefault(n, torch.from_numpy(np.ascontiguousarray(search.inputs[:n])))
                if resumable.inputs is not x:
                    resumable.record(states(frozenset()), x, [states(frozenset([g.name])) for g in groups])
                out = resumable.run(states(kept), x)
                if out is not None:
                    return out.float().reshape(out.shape[0], -1).numpy()
            for (switch, _served), on in zip(switches, states(kept)):
                switch.enabled = on
            return _forward_all(simulated, search.inputs[:n], batched)

        target = settings.target(search.labelled)
        result = qz.search_mix(groups, evaluate, reference, search.labels, target)
        naive = None
        if vit_aware:
            naive_sim = quantize(naive=True)
            _install_switches(naive_sim, op_ids)
            naive = qz.fidelity(reference, _forward_all(naive_sim, search.inputs, batched), search.labels)
        if vit_aware and not result.met:
            raise ConversionError(
                f"int8 could not meet the fidelity target ({target.describe()}): naive int8 gives "
                f"{naive.summary()}; the ViT-aware mix keeping {', '.join(result.kept) or 'no further group'} out "
                f"of int8 gives {result.final.summary()}. Relax it (--option max_drop=N / min_agreement=A / min_cosine=C), or use "
                "--precision int8-dynamic"
            )
        exclude = by_design.union(*(members[k] for k in result.kept))
        converted = convert_pt2e(quantize(exclude, naive=not vit_aware, ranges=ranges))
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"PT2E quantization (XNNPACK quantizer) failed: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                              op=_failing_op(exc)) from exc
    scheme = "int8 static: per-channel int8 weights, int8 activations from calibrated ranges"
    scheme += " (global min/max ranges)" if vit_aware else " (histogram observer)"
    fixed = _by_design_present(graph) + ([f"layer norm ({len(by_design)} ops)"] if by_design else [])
    section = qz.report("int8", scheme, tool, settings, calibration=calibration_info, groups=groups, search=result,
                        naive=naive, fixed_float=fixed)
    if not vit_aware:
        section["note"] = "naive recipe: every op the XNNPACK quantizer supports is int8 (no search)"
    return converted, section, warnings, (search, reference, search.labels, target)


def _judge_artifact(path: Path, runtime: str, section: dict, search: Any, reference: Any, labels: Any,
                    target: Any = None) -> str | None:
    """Record the lowered artifact's own fidelity on the held-out images in ``section`` (the
    search judged PT2E's simulation of it); return a warning when the artifact misses the target
    that the simulation met (XNNPACK's int8 kernels round differently from the simulation)."""
    import numpy as np

    from edgevit.converters import quantize as qz
    from edgevit.runtimes import load

    rt = load(path, runtime=runtime)
    logits = np.stack([rt.run(x[None])[0] for x in search.inputs])
    actual = qz.fidelity(reference, logits, labels)
    if "search" not in section:
        section["evaluation"] = actual.to_dict()
        return None
    s = section["search"]
    s["simulated_final"] = s["final"]
    s["final"] = actual.to_dict()
    if target is None:
        return None
    simulated_met, s["met"] = s["met"], target.met(actual)
    if simulated_met and not s["met"]:
        return (f"the int8 artifact misses the fidelity target ({target.describe()}) that PT2E's simulation of it "
                f"met: the artifact gives {actual.summary()}. To hold it, tighten the target "
                "for the search (--min-agreement / --max-drop) or keep more of the model float")
    return None
