"""The SHA-256 integrity digest that edgevit seals into ``.pte`` and ``.tflite`` artifacts.

At export, the converter embeds a placeholder ``edgevit-sha256:`` + 64 ``0`` characters (an
ExecuTorch constant method, a TFLite metadata entry) and :func:`seal` / :func:`seal_at` overwrite
the zeros with the SHA-256 of the whole file as it is with the zeros in place. Same length, so
nothing in the flatbuffer moves.

Each format's parser finds the slot by position (TFLite: the ``edgevit_sha256`` metadata entry's
buffer; ExecuTorch: the string that the ``edgevit_sha256`` method returns), and
:func:`check_digest_at` / :func:`seal_at` work on that offset, so a label or any other content that
happens to contain the marker text is just content. :func:`find_digest`, :func:`check_digest` and
:func:`seal` (searching for the marker, which must then occur once) are kept for callers that have
no parser; edgevit's runtimes and converters no longer use them. The runtimes check the digest in
plain Python *before* the bytes reach the C++ loader: the native loaders trust their input (a
damaged flatbuffer can crash the process, and a flipped bit in the weights is not noticed at all),
so a truncated, damaged or edited file is reported as :class:`ArtifactError` instead.

This is integrity, not authenticity: anyone can re-seal an edited file. Load artifacts you trust.
"""

from __future__ import annotations

import hashlib

from edgevit.errors import ArtifactError

__all__ = [
    "DIGEST_HEX",
    "DIGEST_PREFIX",
    "PLACEHOLDER",
    "check_digest",
    "check_digest_at",
    "digest_at",
    "find_digest",
    "seal",
    "seal_at",
]

DIGEST_PREFIX = b"edgevit-sha256:"
DIGEST_HEX = 64
PLACEHOLDER = DIGEST_PREFIX + b"0" * DIGEST_HEX
_HEX = frozenset(b"0123456789abcdef")


def digest_at(data: bytes | bytearray | memoryview, at: int) -> str:
    """SHA-256 of ``data`` with the 64 digest characters at offset ``at`` read as ``0``."""
    h = hashlib.sha256()
    with memoryview(data) as view:  # released on return: ``data`` may be an mmap about to close
        h.update(view[:at])
        h.update(b"0" * DIGEST_HEX)
        h.update(view[at + DIGEST_HEX :])
    return h.hexdigest()


def find_digest(data, name: str, export_hint: str) -> tuple[int, str]:
    """``(offset of the 64 hex characters, their text)`` of the one digest in ``data``.

    ``export_hint`` completes the message for a file without one (``"edgevit export --target X"``).
    """
    at = data.find(DIGEST_PREFIX)
    if at < 0:
        raise ArtifactError(
            f"{name} has no edgevit integrity digest: it was not exported by edgevit, by an edgevit "
            f"older than the digest, or it is damaged; export it again with `{export_hint}`"
        )
    if data.find(DIGEST_PREFIX, at + 1) >= 0:
        raise ArtifactError(f"{name} is corrupt: it holds more than one edgevit digest")
    start = at + len(DIGEST_PREFIX)
    stored = bytes(data[start : start + DIGEST_HEX])
    if len(stored) != DIGEST_HEX or not set(stored) <= _HEX:
        raise ArtifactError(f"{name} is corrupt: its integrity digest is damaged")
    return start, stored.decode("ascii")


def check_digest(data, name: str, export_hint: str) -> str:
    """Raise :class:`ArtifactError` unless ``data`` holds a digest matching its content; return it."""
    at, stored = find_digest(data, name, export_hint)
    return _compare(data, at, stored, name)


def check_digest_at(data, at: int, name: str) -> str:
    """Like :func:`check_digest` for a slot found by position: ``at`` is the offset of the 64 hex
    characters (the format's parser located them). Returns the digest."""
    stored = bytes(data[at : at + DIGEST_HEX])
    if at < len(DIGEST_PREFIX) or bytes(data[at - len(DIGEST_PREFIX) : at]) != DIGEST_PREFIX:
        raise ArtifactError(f"{name} is corrupt: its integrity digest entry is damaged")
    if len(stored) != DIGEST_HEX or not set(stored) <= _HEX:
        raise ArtifactError(f"{name} is corrupt: its integrity digest is damaged")
    return _compare(data, at, stored.decode("ascii"), name)


def _compare(data, at: int, stored: str, name: str) -> str:
    if digest_at(data, at) != stored:
        raise ArtifactError(
            f"{name} is corrupt: its SHA-256 does not match the digest stored at export "
            "(damaged in transfer or edited); copy the file again or re-export it"
        )
    return stored


def seal(data: bytes | bytearray) -> bytes:
    """``data`` with its one digest (placeholder or stale) set to the SHA-256 of the content.

    Raises :class:`ValueError` when ``data`` does not hold exactly one digest slot.
    """
    out = bytearray(data)
    at = out.find(DIGEST_PREFIX)
    if at < 0 or out.find(DIGEST_PREFIX, at + 1) >= 0 or at + len(DIGEST_PREFIX) + DIGEST_HEX > len(out):
        raise ValueError("the artifact does not hold exactly one edgevit digest slot")
    return seal_at(out, at + len(DIGEST_PREFIX))


def seal_at(data: bytes | bytearray, at: int) -> bytes:
    """``data`` with the 64 digest characters at offset ``at`` (after a ``edgevit-sha256:``
    prefix) set to the SHA-256 of the content. Raises :class:`ValueError` when no slot is there."""
    out = bytearray(data)
    if at < len(DIGEST_PREFIX) or out[at - len(DIGEST_PREFIX) : at] != DIGEST_PREFIX or at + DIGEST_HEX > len(out):
        raise ValueError(f"no edgevit digest slot at offset {at}")
    out[at : at + DIGEST_HEX] = digest_at(out, at).encode("ascii")
    return bytes(out)
