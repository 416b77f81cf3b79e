"""TFLite target: PyTorch -> LiteRT flatbuffer through litert-torch, metadata embedded."""

from __future__ import annotations

from pathlib import Path

from edgevit.converters.base import ConvertOutput, Converter, ExportConfig, register_converter
from edgevit.errors import ConversionError
from edgevit.metadata import METADATA_KEY, ArtifactMetadata

__all__ = ["TFLiteConverter", "embed_tflite_metadata"]


def embed_tflite_metadata(data: bytes, key: str, value: bytes) -> bytes:
    """Return ``data`` with a metadata entry ``key`` (replacing one of the same name)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = list(value)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = key
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (key, key.encode())] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@register_converter
class TFLiteConverter(Converter):
    """litert-torch conversion (torch.export -> StableHLO -> TFLite); runs on XNNPACK."""

    name = "tflite"
    suffix = ".tflite"
    precisions = ("fp32",)
    requires = ("litert_torch", "ai_edge_litert")
    runtime = "tflite"

    def convert(self, model, example, path: Path, metadata: ArtifactMetadata, config: ExportConfig) -> ConvertOutput:
        import litert_torch

        try:
            edge_model = litert_torch.convert(model, (example,))
        except Exception as exc:
            raise ConversionError(_describe_failure(exc), op=_failing_op(exc)) from exc
        data = embed_tflite_metadata(edge_model.model_content(), METADATA_KEY, metadata.to_json().encode())
        path.write_bytes(data)
        return ConvertOutput(details={"converter": f"litert-torch {litert_torch.__version__}"})


def _failing_op(exc: Exception) -> str | None:
    import re

    m = re.search(r"'(tfl\.[a-z_0-9]+|stablehlo\.[a-z_0-9]+|aten\.[a-z_0-9.]+)'", str(exc))
    return m.group(1) if m else None


def _describe_failure(exc: Exception) -> str:
    op = _failing_op(exc)
    first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
    return f"litert-torch could not convert the model{f' (op {op})' if op else ''}: {first}"
