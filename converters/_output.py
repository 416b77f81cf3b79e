"""Putting an artifact in place without losing anyone's files.

An export writes its artifact under a hidden temporary name beside the destination,
``.<stem>.tmp-<host>-<pid>-<random><suffix>``, and publishes it only when it is complete:

* without ``force`` by an atomic *no-replace* move (``renameat2(RENAME_NOREPLACE)`` on Linux,
  ``renamex_np(RENAME_EXCL)`` on macOS, else a hard link then unlink), so an entry that appeared
  at the destination meanwhile (a second export, a user's file) is never replaced;
* with ``force`` by an atomic replacement of the entry that was there when the export started
  (``os.replace`` for a file; for a package folder an exchange, then the old one is removed).
  An entry that appeared or changed during the export is kept, and a folder is replaced only when
  it is an edgevit-written package (CoreML ``.mlpackage``).

The host and pid in a temporary name let a later export remove the leftovers of processes that
died without cleaning up (SIGKILL, power loss), and only those (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import NamedTuple

from edgevit._process import pid_alive
from edgevit.errors import EdgeVitError, OutputExistsError

__all__ = [
    "Entry",
    "OutputChangedError",
    "OutputNotReplaceableError",
    "PublishError",
    "check_destination",
    "entry_of",
    "is_edgevit_package",
    "publish",
    "remove_entry",
    "remove_stale_temps",
    "temp_path",
]

#: Artifact suffixes that are folders rather than files.
PACKAGE_SUFFIXES = (".mlpackage",)

# A temporary name, or one a converter derived from it (``.<tmp stem>.fp32-compare.tflite``).
_TEMP_NAME = re.compile(r"^\..*\.tmp-(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8}(\..*)?$")


class OutputChangedError(OutputExistsError):
    """Something appeared at (or replaced) the output path while the export ran; it was kept."""

    def __init__(self, path: Path, *, force: bool) -> None:
        super().__init__(path)
        again = "run the export again with --force (force=True) to replace it" if force else \
            "pass --force (force=True) to replace it"
        self.args = (f"{path} appeared or changed while this export was running (another export, or a file "
                     f"written there); it was kept and this export's artifact discarded. Choose another --out, or "
                     f"{again}",)


class OutputNotReplaceableError(OutputExistsError):
    """``force`` replaces artifacts, never a folder that edgevit did not write."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(path)
        self.args = (f"{path} is {why}; --force replaces an artifact, never a folder. Move or remove it "
                     f"yourself, or choose another --out",)


class PublishError(EdgeVitError):
    """The finished artifact could not be moved into place."""


class Entry(NamedTuple):
    """What a directory entry is (``lstat``), to tell whether it changed."""

    dev: int
    ino: int
    mode: int
    size: int
    mtime_ns: int


def entry_of(path: Path) -> Entry | None:
    """The entry at ``path`` without following a symlink (a dangling link is an entry), or None."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file where the folder should be
        return None
    return Entry(st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)


# ------------------------------------------------------------------------------------------------
# temporary names and stale temporaries


def _host_tag() -> str:
    # PIDs mean something only on the host that made them (an output folder may be shared).
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temp_path(final: Path) -> Path:
    """A fresh hidden name beside ``final`` that carries this host and process id."""
    return final.parent / f".{final.stem}.tmp-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{final.suffix}"


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temporaries in ``folder`` left by dead exports of this host; returns what went.

    Only names this module makes are considered, and only those whose process is gone; a
    temporary of a running export, or of another host sharing the folder, is kept.
    """
    removed = []
    host = _host_tag()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_NAME.match(name)
        if m is None or m["host"] != host or pid_alive(int(m["pid"])):
            continue
        path = folder / name
        try:
            remove_entry(path)
        except OSError:
            continue  # another export removed it first, or it cannot be removed: not our business
        removed.append(path)
    return removed


def remove_entry(path: Path) -> None:
    """Remove a file, link or folder tree at ``path`` (a link itself, never what it points to)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# ------------------------------------------------------------------------------------------------
# what --force may replace


def _embedded_metadata_ok(spec_bytes: bytes) -> bool:
    """Whether a CoreML spec carries edgevit metadata: a ``userDefined`` map entry with key
    ``edgevit`` (protobuf: field 1 "edgevit", field 2 the JSON) that parses as edgevit's."""
    from edgevit.metadata import ArtifactMetadata

    key = b"\x0a\x07edgevit\x12"
    start = spec_bytes.find(key)
    while start >= 0:
        i, length, shift = start + len(key), 0, 0
        while i < len(spec_bytes) and shift < 35:
            byte = spec_bytes[i]
            length |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not byte & 0x80:
                break
        try:
            ArtifactMetadata.from_json(spec_bytes[i:i + length])
            return True
        except (EdgeVitError, ValueError):
            start = spec_bytes.find(key, start + 1)
    return False


def is_edgevit_package(path: Path) -> bool:
    """Whether the folder ``path`` is a CoreML package written by edgevit (its metadata says so)."""
    from edgevit.runtimes.coreml import check_coreml_artifact

    try:
        spec_file = check_coreml_artifact(path)
        return _embedded_metadata_ok(spec_file.read_bytes())
    except (EdgeVitError, OSError):
        return False


def _check_replaceable(final: Path, package: bool) -> None:
    st = os.lstat(final)
    if not stat.S_ISDIR(st.st_mode):
        return  # a file or a link (the link itself is replaced, not what it points to)
    if not package:
        raise OutputNotReplaceableError(final, "a folder")
    if not is_edgevit_package(final):
        raise OutputNotReplaceableError(final, "a folder that edgevit did not write (no edgevit metadata in it)")


def check_destination(final: Path, *, force: bool) -> Entry | None:
    """Before any work: refuse an existing entry at ``final`` unless ``force`` may replace it.

    Returns the entry found (what ``force`` will replace, see :func:`publish`), or None.
    """
    entry = entry_of(final)
    if entry is None:
        return None
    if not force:
        raise OutputExistsError(final)
    _check_replaceable(final, final.suffix in PACKAGE_SUFFIXES)
    return entry


# ------------------------------------------------------------------------------------------------
# atomic moves

_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}
_libc_fn: object = None


def _rename_call():
    """``(function, noreplace_flag, exchange_flag, takes_dirfds)`` or None where unavailable."""
    global _libc_fn
    if _libc_fn is None:
        _libc_fn = False
        try:
            if sys.platform.startswith("linux"):
                fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                    _libc_fn = (fn, 1, 2, True)  # RENAME_NOREPLACE, RENAME_EXCHANGE
            elif sys.platform == "darwin":
                fn = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), "renamex_np", None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
                    _libc_fn = (fn, 0x4, 0x2, False)  # RENAME_EXCL, RENAME_SWAP
        except OSError:
            pass
    return _libc_fn or None


def _rename_flagged(src: Path, dst: Path, exchange: bool) -> bool:
    """One atomic rename with the no-replace (or exchange) flag. False where the system or the
    file system does not support it; FileExistsError / FileNotFoundError as the flag implies."""
    call = _rename_call()
    if call is None:
        return False
    fn, noreplace, swap, dirfds = call
    flag = swap if exchange else noreplace
    a, b = os.fsencode(src), os.fsencode(dst)
    rc = fn(_AT_FDCWD, a, _AT_FDCWD, b, flag) if dirfds else fn(a, b, flag)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _move_noreplace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` atomically unless an entry is at ``dst`` (then FileExistsError)."""
    if _rename_flagged(src, dst, exchange=False):
        return
    is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
    if not is_dir:
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED | {errno.EMLINK, errno.EXDEV}:
                raise
        else:
            os.unlink(src)
            return
    # Last resort (no renameat2, no hard links): claim the name exclusively with an empty
    # placeholder, then rename over our own placeholder.
    if is_dir:
        os.mkdir(dst)
    else:
        os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        os.replace(src, dst)
    except BaseException:
        try:
            os.rmdir(dst) if is_dir else os.unlink(dst)
        except OSError:
            pass
        raise


def _replace(src: Path, dst: Path) -> None:
    """Replace the entry at ``dst`` by ``src`` with no moment where ``dst`` is missing."""
    if not stat.S_ISDIR(os.lstat(src).st_mode):
        os.replace(src, dst)  # atomic for files; a link at dst is itself replaced
        return
    if _rename_flagged(src, dst, exchange=True):
        remove_entry(src)  # ``src`` now names the old package
        return
    # No exchange here: move the old entry aside under a temporary name (removed as stale if we
    # die), then move the new one in. ``dst`` is missing for that moment.
    aside = temp_path(dst)
    os.rename(dst, aside)
    try:
        _move_noreplace(src, dst)
    except BaseException:
        try:
            _move_noreplace(aside, dst)
        except OSError:
            pass
        raise
    remove_entry(aside)


def publish(tmp: Path, final: Path, *, force: bool, expected: Entry | None) -> None:
    """Move the finished artifact ``tmp`` to ``final``.

    Without ``force`` nothing at ``final`` is ever replaced. With ``force`` only ``expected``
    (the entry found when the export started, see :func:`check_destination`) is replaced; an
    entry that appeared or changed since is kept. Either refusal raises :class:`OutputChangedError`.
    """
    try:
        for _ in range(3):  # the entry may come or go between a look and a move
            current = entry_of(final)
            if current is None:
                try:
                    _move_noreplace(tmp, final)
                    return
                except FileExistsError:
                    continue
            if not force or current != expected:
                raise OutputChangedError(final, force=force)
            _check_replaceable(final, stat.S_ISDIR(os.lstat(tmp).st_mode))
            _replace(tmp, final)
            return
        raise OutputChangedError(final, force=force)
    except OSError as exc:
        if isinstance(exc, EdgeVitError):
            raise
        raise PublishError(
            f"could not move the finished artifact to {final}: {exc.strerror or exc}; nothing was replaced"
        ) from exc
