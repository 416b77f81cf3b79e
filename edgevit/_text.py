"""Printing strings that come from an artifact (labels, model names) without letting them drive
the terminal.

An artifact's labels and names are data written by whoever made the file. Printed raw, an escape
sequence in a label can clear the screen, retitle the window, or forge lines of output; a bidi
override can make text read differently from what it is. :func:`safe_text` shows such characters
as visible escapes instead. JSON output does not need it (``json.dumps`` escapes control
characters already). Device-safe: standard library only.
"""

from __future__ import annotations

import re

__all__ = ["distinct_names", "safe_text"]

# C0 controls (newline and tab included: one label must stay one line), DEL, C1 controls, the
# line/paragraph separators, and the bidirectional formatting characters (embeddings, overrides,
# isolates and marks, U+061C the Arabic letter mark).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe_text(value: object) -> str:
    """``str(value)`` with control, line-separator and bidi characters shown as ``\\xNN`` /
    ``\\uNNNN`` escapes, for human (non-JSON) output of artifact-derived strings.

    >>> safe_text("cat\\x1b[2J")
    'cat\\\\x1b[2J'
    """
    return _UNSAFE.sub(_escape, str(value))



def distinct_names(paths: list[str]) -> list[str]:
    """Short display names for ``paths``: the file name, or as many trailing folders as it takes
    to tell two files of one name apart (``a/model.onnx`` and ``b/model.onnx``)."""
    from pathlib import PurePath

    parts = [PurePath(p).parts for p in paths]
    depth = [1] * len(paths)
    while True:
        shown = ["/".join(pp[-d:]) for pp, d in zip(parts, depth)]
        clashes = {n for n in shown if shown.count(n) > 1}
        grown = False
        for i, n in enumerate(shown):
            if n in clashes and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:
            return shown
