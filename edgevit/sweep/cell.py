"""One cell, wherever it runs (a local thread or a Ray task): the export, verification and
optional bench happen in a fresh child process (``python -m edgevit.sweep.cell SPEC PARENT``)
whose output goes to a log file, so a converter that segfaults, runs out of memory or hangs takes
only its own cell down and still leaves its log tail and exit signal. The cell returns the
artifact's bytes: nothing is shared through a file system.

Standard library only at the top: Ray workers import this module before any work.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgevit._version import __version__
from edgevit.errors import EdgeVitError

__all__ = ["DONE", "RUNNING", "child_command", "remove_stale_cell_folders", "run_cell", "worker_facts"]

DONE = ("verified", "structural")
LOG_TAIL_LINES = 30
_RESULT = "result.json"


def worker_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"host": platform.node(), "pid": os.getpid()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(Exception):
            ctx = ray.get_runtime_context()
            facts["ray_node_id"] = ctx.get_node_id()
            facts["ray_worker_id"] = ctx.get_worker_id()
    return facts


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_bytes()[-200_000:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _pack(path: Path) -> tuple[bytes, bool]:
    """An artifact's bytes: the file, or a tar of a package folder (CoreML ``.mlpackage``)."""
    if not path.is_dir():
        return path.read_bytes(), False
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=".")
    return buf.getvalue(), True


RUNNING: set[subprocess.Popen] = set()  # export processes of local cells, stopped when a sweep is interrupted


def child_command(spec_file: Path) -> list[str]:
    return [sys.executable, "-m", "edgevit.sweep.cell", str(spec_file), str(os.getpid())]


_CELL_PREFIX = "edgevit-cell-"


def remove_stale_cell_folders(root: str | None = None) -> list[str]:
    """Remove the working folders of cells whose process is gone: a worker killed mid-cell (out of
    memory, a node lost, SIGKILL) cannot clean up after itself, so the next cell on that machine
    does. A folder is named after the process that made it (``edgevit-cell-<pid>-...``); one whose
    process still runs, or that is not named so, is left alone."""
    import shutil

    from edgevit._process import pid_alive

    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        pid = name[len(_CELL_PREFIX):].partition("-")[0]
        if not name.startswith(_CELL_PREFIX) or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed


def run_cell(spec: Mapping[str, Any], weights: bytes | None = None) -> dict[str, Any]:
    """Export (and verify, and optionally bench) one cell in a child process; return its outcome
    with the artifact's bytes and the log tail. Never raises for a failing export."""
    start = time.perf_counter()
    remove_stale_cell_folders()
    with tempfile.TemporaryDirectory(prefix=f"{_CELL_PREFIX}{os.getpid()}-") as tmp_name:
        tmp = Path(tmp_name)
        child = {**spec, "out": str(tmp / "out"), "result": str(tmp / _RESULT)}
        if weights is not None:
            wfile = tmp / f"weights{spec.get('weights_suffix') or '.safetensors'}"
            wfile.write_bytes(weights)
            child["weights_file"] = str(wfile)
        spec_file = tmp / "cell.json"
        spec_file.write_text(json.dumps(child))
        threads = int(spec.get("threads") or 1)
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        log = tmp / "log.txt"
        timeout = spec.get("timeout")
        timed_out = False
        with open(log, "wb") as f:
            proc = subprocess.Popen(child_command(spec_file), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
            RUNNING.add(proc)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                timed_out = True
            except BaseException:  # the task is being cancelled: take the child with us
                proc.kill()
                proc.wait()
                raise
            finally:
                RUNNING.discard(proc)
        tail = _tail(log)
        out: dict[str, Any] = {"worker": worker_facts(), "edgevit_version": __version__, "returncode": rc}
        result_file = tmp / _RESULT
        if timed_out:
            out.update(status="timeout", error=f"timed out after {timeout:.0f} s", log_tail=tail)
        elif not result_file.is_file():
            if rc is not None and rc < 0:
                name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
                why = f"the export process was killed by {name}" + (
                    " (out of memory, or killed by hand)" if name == "SIGKILL" else "")
            else:
                why = f"the export process exited with code {rc} without a result"
            out.update(status="crashed", error=why, log_tail=tail)
        else:
            result = json.loads(result_file.read_text())
            out.update(result)
            if result["status"] in DONE:
                produced = Path(result["export"]["path"])
                out["artifact_name"] = produced.name
                out["artifact"], out["artifact_is_dir"] = _pack(produced)
            else:
                out["log_tail"] = tail
        out["wall_s"] = time.perf_counter() - start
        return out


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the process that started it dies (a killed Ray worker)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(3)


def _cell_main(spec_file: str, parent: int) -> int:
    """The child process of :func:`run_cell`: export, verify, bench; the result goes to a file."""
    _die_with_parent(parent)
    spec = json.loads(Path(spec_file).read_text())
    result: dict[str, Any]
    try:
        from edgevit.converters import export

        r = export(spec["source"], spec["target"], spec["precision"], out=spec["out"], force=True,
                   pretrained=bool(spec.get("pretrained")) and not spec.get("weights_file"),
                   weights=spec.get("weights_file"), options=dict(spec.get("options") or {}),
                   calibration=spec.get("calibration"))
        d = r.to_dict()
        v = d.get("verification") or {}
        status = "verified" if v.get("ran") and v.get("passed") else "structural" if not v.get("ran") else "failed"
        result = {"status": status, "export": d}
        if spec.get("bench") and status in DONE:
            from edgevit.measure.bench import bench

            b = spec["bench"]
            rep = bench([r.path], threads=int(b.get("threads", 1)), warmup=int(b.get("warmup", 3)),
                        runs=int(b.get("runs", 10)), memory_baseline=False, gemm=False)
            result["bench"] = rep.to_dict()
    except EdgeVitError as exc:
        result = {"status": "failed", "op": getattr(exc, "op", None), "error": f"{type(exc).__name__}: {exc}"[:2000]}
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, spec["result"])
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3:
        sys.exit(_cell_main(sys.argv[1], int(sys.argv[2])))
    print("usage: edgevit sweep ... (this module's command line is internal)", file=sys.stderr)
    sys.exit(2)
