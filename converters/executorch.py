"""ExecuTorch target: ``torch.export`` -> edge dialect -> XNNPACK delegate -> ``.pte`` program.

The edgevit metadata travels inside the program as a *constant method*: ExecuTorch's
``constant_methods`` argument emits an extra method (named :data:`~edgevit.metadata.METADATA_KEY`,
``"edgevit"``) that takes no input and returns the metadata JSON as a string. The runtime reads it
back with ``program.load_method("edgevit").execute([])``; nothing beside the ``.pte`` is needed.
A second constant method, ``edgevit_sha256``, holds the SHA-256 of the file (computed over the
file with the digest itself zeroed), so the runtime can reject damaged files before loading them.
"""

from __future__ import annotations

import operator
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit.converters.base import ConvertOutput, Converter, DelegationReport, ExportConfig, register_converter
from edgevit.errors import ConversionError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.runtimes.executorch import DIGEST_METHOD, DIGEST_PREFIX, check_pte, pte_digest

if TYPE_CHECKING:
    import torch

__all__ = ["ExecuTorchConverter", "delegation_report"]

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
    precisions = ("fp32",)
    requires = ("executorch",)
    runtime = "executorch"

    def convert(
        self,
        model: torch.nn.Module,
        example: torch.Tensor,
        path: Path,
        metadata: ArtifactMetadata,
        config: ExportConfig,
    ) -> ConvertOutput:
        import torch
        from executorch import version as et_version
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        stage = "torch.export"
        try:
            with torch.no_grad():
                exported = torch.export.export(model, (example,), strict=False)
            stage = "edge lowering (XNNPACK partitioner)"
            edge = to_edge_transform_and_lower(
                exported,
                partitioner=[XnnpackPartitioner()],
                constant_methods={
                    METADATA_KEY: metadata.to_json(),
                    DIGEST_METHOD: (DIGEST_PREFIX + b"0" * 64).decode("ascii"),
                },
            )
            report = delegation_report(edge.exported_program().graph_module)
            stage = "to_executorch"
            program = edge.to_executorch()
            buffer = program.buffer
        except Exception as exc:
            raise ConversionError(_describe_failure(stage, exc), op=_failing_op(exc)) from exc
        path.write_bytes(_seal(buffer))
        warnings = []
        if report.share < 1.0:
            outside = ", ".join(f"{op} x{n}" for op, n in list(report.outside_ops.items())[:6])
            warnings.append(
                f"{report.share:.1%} of compute nodes delegated to XNNPACK in {report.partitions} "
                f"partition(s); outside the delegate: {outside}"
            )
        return ConvertOutput(
            warnings=warnings,
            delegation=report,
            details={
                "converter": f"executorch {et_version.__version__}",
                "metadata_method": METADATA_KEY,
                "digest_method": DIGEST_METHOD,
            },
        )


def _seal(buffer: bytes) -> bytes:
    """Write the file's SHA-256 into the digest placeholder (same length, so the flatbuffer
    layout does not move); the runtime checks it before loading (see runtimes/executorch.py)."""
    data = bytearray(buffer)
    at = data.find(DIGEST_PREFIX)
    if at < 0 or data.find(DIGEST_PREFIX, at + 1) >= 0:
        raise ConversionError("ExecuTorch program does not hold exactly one edgevit digest placeholder")
    at += len(DIGEST_PREFIX)
    data[at : at + 64] = pte_digest(data, at).encode("ascii")
    check_pte(bytes(data), "the exported program")
    return bytes(data)


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
