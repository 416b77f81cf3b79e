"""How much of a TFLite model the XNNPACK delegate takes: a :class:`DelegationReport` for ``.tflite``.

The interpreter (ai-edge-litert, XNNPACK applied by default as TFLite does on every CPU) is built
and its tensors allocated, which applies the delegate. Its node list then holds the model's
original operators (indices ``0 .. n-1``, in flatbuffer order) followed by one ``DELEGATE`` node
per partition the delegate claimed. The operators a partition replaced are exactly those between
its input and output tensors: walking back from each ``DELEGATE`` node's outputs through the
producing operators, stopping at its inputs, recovers them. Every original operator not reached
this way stays in the execution plan and runs on TFLite's builtin kernels; those are the
``outside_ops``, by op name.

Counting rule (same spirit as the ExecuTorch report): one compute node per operator of the main
subgraph; ``partitions`` is the number of ``DELEGATE`` nodes.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from edgevit.converters.base import DelegationReport
from edgevit.errors import ArtifactError

__all__ = ["XNNPACK_DELEGATE", "tflite_delegation_report"]

XNNPACK_DELEGATE = "XNNPACK"
_DELEGATE_OP = "DELEGATE"


def tflite_delegation_report(model: bytes | str | os.PathLike, threads: int = 1) -> DelegationReport:
    """Delegation of a ``.tflite`` model (bytes or path) to XNNPACK with the default resolver."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the export extra installs it
        from edgevit.errors import MissingDependencyError

        raise MissingDependencyError("ai-edge-litert", "tflite", "report TFLite delegation") from None
    data = Path(model).read_bytes() if isinstance(model, (str, os.PathLike)) else bytes(model)
    try:
        interpreter = Interpreter(model_content=data, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ArtifactError(f"the TFLite interpreter cannot load the model: {str(exc).strip()[:300]}") from None
    native = interpreter._interpreter  # the node accessors the Python wrapper does not expose
    nodes = [
        (native.NodeName(i), [int(t) for t in native.NodeInputs(i)], [int(t) for t in native.NodeOutputs(i)])
        for i in range(native.NumNodes())
    ]
    original = _operator_count(data)
    if original > len(nodes):
        raise ArtifactError(f"the interpreter lists {len(nodes)} nodes for {original} operators")
    return _report(nodes, original)


def _report(nodes: list[tuple[str, list[int], list[int]]], original: int) -> DelegationReport:
    """``nodes``: (op name, input tensors, output tensors) per interpreter node; the first
    ``original`` are the model's operators, the rest delegate kernels (see module docstring)."""
    producer: dict[int, int] = {}
    for index, (_, _, outputs) in enumerate(nodes[:original]):
        for t in outputs:
            producer[t] = index
    delegated: set[int] = set()
    partitions = 0
    for name, inputs, outputs in nodes[original:]:
        if name != _DELEGATE_OP and not name.startswith("TfLite"):
            continue
        partitions += 1
        boundary = {t for t in inputs if t >= 0}
        stack = [t for t in outputs if t >= 0]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            op = producer[t]
            if op not in delegated:
                delegated.add(op)
                stack.extend(i for i in nodes[op][1] if i >= 0)
    outside = Counter(nodes[i][0] for i in range(original) if i not in delegated)
    return DelegationReport(
        delegate=XNNPACK_DELEGATE,
        delegated_nodes=len(delegated),
        total_nodes=original,
        partitions=partitions,
        outside_ops=dict(sorted(outside.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def _operator_count(data: bytes) -> int:
    """Operators in the main subgraph of a TFLite flatbuffer (the interpreter's first nodes)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() == 0:
        raise ArtifactError("the TFLite model has no subgraph")
    return model.Subgraphs(0).OperatorsLength()
