"""Other libraries' output, kept off the terminal: converters and runtimes print to the process's
file descriptors from C++ (absl, TensorFlow Lite, XNNPACK) as well as from Python, so capture works
at the descriptor level. Standard library only (the device runtime uses it)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import TextIO

__all__ = ["Captured", "capture_output", "console", "stdout_to_stderr"]

_lock = threading.Lock()
_console_fd: int | None = None  # the terminal's stderr while a capture is active


class Captured:
    """What a :func:`capture_output` block printed (its descriptors 1 and 2, interleaved)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(mode="w+b")
        self.text = ""

    def _finish(self) -> None:
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()

    def tail(self, lines: int = 30) -> str:
        kept = [line for line in self.text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or replaced stream: nothing to flush
            stream.flush()


@contextlib.contextmanager
def capture_output(enabled: bool = True) -> Iterator[Captured]:
    """Send everything written to stdout and stderr (file descriptors 1 and 2, C++ included) into
    a :class:`Captured` instead of the terminal; with ``enabled=False`` nothing is captured.
    :func:`console` still reaches the terminal inside the block."""
    global _console_fd
    captured = Captured()
    if not enabled:
        try:
            yield captured
        finally:
            captured._finish()
        return
    with _lock:
        _flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
        outer = _console_fd
        if outer is None:
            _console_fd = saved_err
        os.dup2(captured._file.fileno(), 1)
        os.dup2(captured._file.fileno(), 2)
    try:
        yield captured
    finally:
        with _lock:
            _flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            if outer is None:
                _console_fd = None
            os.close(saved_out)
            os.close(saved_err)
        captured._finish()


def console() -> TextIO:
    """A stream to the terminal's stderr, also inside :func:`capture_output` (for edgevit's own
    progress and messages)."""
    fd = _console_fd
    if fd is None:
        return sys.stderr
    return os.fdopen(os.dup(fd), "w", buffering=1, closefd=True)


def say(message: str) -> None:
    """Print one line of edgevit's own to the terminal's stderr, captured output or not."""
    stream = console()
    try:
        print(message, file=stream, flush=True)
    finally:
        if stream is not sys.stderr:
            stream.close()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While converters run from the Python API, their chatter goes to stderr (descriptor level
    too): a program's stdout carries only what it prints itself."""
    _flush()
    with _lock:
        saved = os.dup(1)
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _flush()
        with _lock:
            os.dup2(saved, 1)
            os.close(saved)
