"""The SHA-256 seal of an ONNX file edgevit writes (shared by the ONNX target and its onnxruntime
fusion): a ``metadata_props`` entry appended after the model bytes it hashes. The device side
(:mod:`edgevit.runtimes.onnx`) checks it."""

from __future__ import annotations

__all__ = ["CHECKSUM_KEY", "checksum_trailer"]

CHECKSUM_KEY = "edgevit.sha256"


def checksum_trailer(digest_hex: str) -> bytes:
    """The serialized ``metadata_props`` entry that carries ``digest_hex``: appended to a model
    whose bytes hash to ``digest_hex``, it seals it (the runtime hashes the file without it)."""
    import onnx

    entry = onnx.ModelProto()
    prop = entry.metadata_props.add()
    prop.key = CHECKSUM_KEY
    prop.value = digest_hex
    return entry.SerializeToString()
