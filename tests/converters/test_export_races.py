"""Export under races and signals: no file is lost, nothing half-done is left behind.

One test per class of problem (issue 15, items 1-4). The conversion itself is replaced by a
fast fake that writes a small file (or package folder): these tests are about what lands in the
output folder, not about converters. Signal tests drive a real ``edgevit export`` subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgevit.errors import EdgeVitError, OutputExistsError

REPO = Path(__file__).resolve().parents[2]
ONNX_NAME = "vit_fmnist_tiny_onnx_fp32.onnx"
PACKAGE_NAME = "vit_fmnist_tiny_coreml_fp16.mlpackage"


# ------------------------------------------------------------------------------------------------
# helpers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _write_package(path: Path, *, edgevit: bool, tag: str = "") -> None:
    """A minimal ``.mlpackage`` folder; with ``edgevit`` its spec carries edgevit metadata
    (encoded as coremltools does: a ``userDefined`` map entry ``edgevit`` -> JSON)."""
    from edgevit.converters.export import build_metadata
    from edgevit.models import get_spec

    spec = get_spec("vit_fmnist_tiny")
    data = path / "Data" / "com.apple.CoreML"
    data.mkdir(parents=True)
    (path / "Manifest.json").write_text(json.dumps({
        "fileFormatVersion": "1.0.0",
        "itemInfoEntries": {"root": {"author": "com.apple.CoreML", "name": "model.mlmodel",
                                     "path": "com.apple.CoreML/model.mlmodel"}},
        "rootModelIdentifier": "root",
    }))
    body = b"\x08\x08"
    if edgevit:
        meta = build_metadata(spec, "coreml", "fp16", spec.label_names(), "random-init").to_json().encode()
        entry = b"\x0a\x07edgevit\x12" + _varint(len(meta)) + meta
        body += b"\xa2\x06" + _varint(len(entry)) + entry
    (data / "model.mlmodel").write_bytes(body)
    (path / "written-by.txt").write_text(tag)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def fake_convert(monkeypatch):
    """``fake_convert(target, content=..., during=...)``: the target's converter writes
    ``content`` (bytes, or a package folder tagged with it) after calling ``during(path)``.
    ``fake_convert(target, reached=False)`` makes any conversion fail the test."""
    from edgevit.converters.base import ConvertOutput, get_converter

    def install(target: str = "onnx", content: str = "new artifact", during=None, reached: bool = True):
        cls = type(get_converter(target))

        def convert(self, model, example, path, metadata, config):
            assert reached, "the conversion started although the export should have been refused first"
            if during is not None:
                during(path)
            if cls.suffix == ".mlpackage":
                _write_package(path, edgevit=True, tag=content)
            else:
                path.write_bytes(content.encode())
            return ConvertOutput()

        monkeypatch.setattr(cls, "convert", convert)

    return install


def _export(out: Path, target: str = "onnx", **kw):
    from edgevit.converters import export

    precision = "fp16" if target == "coreml" else "fp32"
    return export("vit_fmnist_tiny", target, precision, out=out, verify=False, **kw)


# ------------------------------------------------------------------------------------------------
# 1. the final step must not replace what appeared meanwhile; --force must replace atomically


def test_file_appearing_at_the_output_during_export_is_kept(tmp_path, fake_convert):
    """A user's file written at the output path while the export runs survives it, with or
    without --force (force replaces what was there when the export started, nothing newer)."""
    for force in (False, True):
        out = tmp_path / f"force-{force}"
        final = out / ONNX_NAME
        fake_convert("onnx", during=lambda path, final=final: final.write_text("user's file"))
        with pytest.raises(OutputExistsError, match="while|during"):
            _export(out, force=force)
        assert final.read_text() == "user's file"
        assert _entries(out) == [ONNX_NAME], "a temporary file was left behind"


def test_concurrent_exports_to_one_path_exactly_one_wins(tmp_path, fake_convert):
    """Two exports to one path that both pass the start-up check: one publishes, the other
    reports that the path is taken, and the file is the winner's, whole."""
    barrier = threading.Barrier(2, timeout=120)

    def during(path):
        barrier.wait()  # both exports are past their start-up checks

    fake_convert("onnx", during=during, content="artifact")
    results: list[object] = []

    def run(tag: str) -> None:
        try:
            results.append(_export(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(results) == 2 and len(errors) == 1, results
    assert isinstance(errors[0], OutputExistsError), errors[0]
    assert (tmp_path / ONNX_NAME).read_text() == "artifact"
    assert _entries(tmp_path) == [ONNX_NAME]


_WATCH: dict = {"path": None, "hits": []}


def _audit(event: str, args: tuple) -> None:
    watched = _WATCH["path"]
    if watched is None or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    if event in ("os.remove", "os.rmdir", "shutil.rmtree", "os.rename") and os.fsdecode(args[0]) == watched:
        _WATCH["hits"].append(event)  # the file at the output path was deleted or moved away


def test_force_replaces_an_existing_artifact_without_a_moment_of_absence(tmp_path, fake_convert):
    """--force swaps the new artifact in with one atomic replace: the old file is never deleted
    or moved away first (an observer would see no file at that moment)."""
    if not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)
        _audit.installed = True
    final = tmp_path / ONNX_NAME
    final.write_text("old artifact")
    fake_convert("onnx", content="new artifact")
    _WATCH["path"], _WATCH["hits"] = str(final), []
    try:
        _export(tmp_path, force=True)
    finally:
        _WATCH["path"] = None
    assert _WATCH["hits"] == [], f"the old artifact was removed before the new one took its place: {_WATCH['hits']}"
    assert final.read_text() == "new artifact"
    assert _entries(tmp_path) == [ONNX_NAME]


# ------------------------------------------------------------------------------------------------
# 2. --force replaces artifacts, never folders; a dangling symlink is an existing entry


def test_force_never_deletes_a_folder_only_an_edgevit_package(tmp_path, fake_convert):
    # A folder where a file artifact goes: refused before any work, folder intact.
    folder = tmp_path / "a" / ONNX_NAME
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    fake_convert("onnx", reached=False)
    with pytest.raises(EdgeVitError, match="folder"):
        _export(folder.parent, force=True)
    assert (folder / "thesis.tex").read_text() == "years of work"

    # A .mlpackage folder that edgevit did not write: refused too.
    foreign = tmp_path / "b" / PACKAGE_NAME
    _write_package(foreign, edgevit=False, tag="someone else's")
    fake_convert("coreml", reached=False)
    with pytest.raises(EdgeVitError, match="folder"):
        _export(foreign.parent, "coreml", force=True)
    assert (foreign / "written-by.txt").read_text() == "someone else's"

    # An edgevit-written package is an artifact: replaced whole, nothing else left.
    ours = tmp_path / "c" / PACKAGE_NAME
    _write_package(ours, edgevit=True, tag="old export")
    fake_convert("coreml", content="new export")
    _export(ours.parent, "coreml", force=True)
    assert (ours / "written-by.txt").read_text() == "new export"
    assert _entries(ours.parent) == [PACKAGE_NAME]


def test_dangling_symlink_at_the_output_is_an_existing_entry(tmp_path, fake_convert):
    link = tmp_path / ONNX_NAME
    link.symlink_to(tmp_path / "elsewhere" / "model.onnx")
    fake_convert("onnx", reached=False)
    with pytest.raises(OutputExistsError):
        _export(tmp_path)
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "elsewhere" / "model.onnx")
    assert _entries(tmp_path) == [ONNX_NAME]


# ------------------------------------------------------------------------------------------------
# 3. SIGTERM is handled like Ctrl-C; temporaries of killed exports are removed later, only those

_DRIVER = r"""
import os, sys, time
from pathlib import Path
from edgevit.converters.base import ConvertOutput, get_converter

marker, hold = Path(sys.argv[1]), float(sys.argv[2])
cls = type(get_converter("onnx"))

def convert(self, model, example, path, metadata, config):
    path.write_bytes(b"half-written artifact")
    tmp = marker.with_name(marker.name + ".part")
    tmp.write_text(str(path))
    os.replace(tmp, marker)  # the parent signals once it sees this
    end = time.monotonic() + hold
    while time.monotonic() < end:
        time.sleep(0.05)
    return ConvertOutput()

cls.convert = convert
from edgevit.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _start_export(marker: Path, out: Path, hold: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(marker), str(hold), "export", "vit_fmnist_tiny", "--target", "onnx",
         "--out", str(out), "--no-verify", "--no-record"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
    )


def _wait_for(marker: Path, proc: subprocess.Popen, deadline: float) -> Path:
    while not marker.exists():
        assert proc.poll() is None, f"export ended before converting: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the conversion never started"
        time.sleep(0.05)
    return Path(marker.read_text())


def test_sigterm_during_export_cleans_up_and_exits_nonzero(tmp_path):
    out = tmp_path / "out"
    proc = _start_export(tmp_path / "marker", out, hold=1.5)
    try:
        temp = _wait_for(tmp_path / "marker", proc, time.monotonic() + 240)
        assert temp.exists()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert proc.returncode != -signal.SIGTERM, "SIGTERM killed the export before it could clean up"
    assert "Traceback" not in err, err[-3000:]
    assert _entries(out) == [], f"left behind: {_entries(out)}"


def test_next_export_removes_temporaries_of_killed_exports_and_only_those(tmp_path, fake_convert):
    """An export killed with SIGKILL leaves its temporary file; the next export into that folder
    removes it, but keeps the temporary of an export still running and files that only look
    similar."""
    out = tmp_path / "out"
    out.mkdir()
    lookalike = out / ".vit_fmnist_tiny_onnx_fp32.tmp-1a2b3c4d.onnx"  # no pid in the name: kept
    lookalike.write_text("not provably stale")
    killed = _start_export(tmp_path / "marker-killed", out, hold=300)
    running = _start_export(tmp_path / "marker-running", out, hold=300)
    try:
        deadline = time.monotonic() + 240
        dead_temp = _wait_for(tmp_path / "marker-killed", killed, deadline)
        live_temp = _wait_for(tmp_path / "marker-running", running, deadline)
        killed.kill()
        killed.wait(60)
        assert dead_temp.exists() and live_temp.exists()

        fake_convert("onnx")
        _export(out)
        assert not dead_temp.exists(), "the temporary of the killed export was not removed"
        assert live_temp.exists(), "the temporary of a running export was removed"
        assert lookalike.exists()
        assert (out / ONNX_NAME).read_text() == "new artifact"
    finally:
        for proc in (killed, running):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=60)


# ------------------------------------------------------------------------------------------------
# 4. the results database: recording is secondary, an explicit one is checked before any work


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from edgevit.cli import main

    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_results_database_error_after_a_good_export_warns_and_keeps_the_result(tmp_path, fake_convert,
                                                                                 monkeypatch, capsys):
    fake_convert("onnx")
    # The default database is not a database at all.
    monkeypatch.delenv("EDGEVIT_RESULTS_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    broken = tmp_path / "cache" / "edgevit" / "results.sqlite"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not a database" * 100)
    out = tmp_path / "one"
    rc, stdout, err = _cli(["export", "vit_fmnist_tiny", "--target", "onnx", "--out", str(out), "--no-verify",
                            "--json"], capsys)
    assert rc == 0, err[-2000:]
    result = json.loads(stdout)
    assert Path(result["path"]).read_text() == "new artifact"
    assert any("not recorded" in w for w in result["warnings"]), result["warnings"]
    assert "Warning:" in err and "Traceback" not in err

    # A named database that opens but fails on write (a trigger stands in for a full disk).
    db = tmp_path / "refuses.sqlite"
    from edgevit.measure.results import ResultsStore

    ResultsStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER full BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    out = tmp_path / "two"
    rc, stdout, err = _cli(["export", "vit_fmnist_tiny", "--target", "onnx", "--out", str(out), "--no-verify",
                            "--db", str(db)], capsys)
    assert rc == 0, err[-2000:]
    assert (out / ONNX_NAME).read_text() == "new artifact"
    assert "not recorded" in stdout + err and "Traceback" not in err


def test_named_results_database_that_cannot_be_used_is_refused_before_work(tmp_path, fake_convert, capsys):
    fake_convert("onnx", reached=False)
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("my notes, not a database\n" * 50)
    under_a_file = not_a_db / "results.sqlite"
    for db in (not_a_db, under_a_file, tmp_path):
        out = tmp_path / "out"
        rc, stdout, err = _cli(["export", "vit_fmnist_tiny", "--target", "onnx", "--out", str(out), "--no-verify",
                                "--db", str(db)], capsys)
        assert rc == 1, err[-2000:]
        assert "Error:" in err and str(db) in err and "Traceback" not in err, err[-2000:]
        assert not out.exists(), "the export ran although its database cannot be used"
    assert not_a_db.read_text() == "my notes, not a database\n" * 50
