"""Sweeps: model sources x targets x precisions x options, every cell an export verified on real
photos (and optionally benchmarked), run in parallel local processes or as tasks of a Ray cluster;
and benchmarks on devices that joined that cluster.

>>> from edgevit.measure.sweep import sweep
>>> report = sweep(["vit_fmnist_*"], targets=["tflite", "onnx"], precisions=["fp32"], out="zoo/")  # doctest: +SKIP
>>> report = sweep(["mobilevit_*"], ray="auto", out="zoo/")        # every cell a Ray task  # doctest: +SKIP

How a cell runs (:func:`run_cell`, the same locally and on a Ray node): the export happens in a
fresh child process (``python -m edgevit.measure.sweep --cell SPEC``) whose stdout and stderr go
to a log file, so a converter that segfaults, runs out of memory or hangs takes only its own cell
down and still leaves its log tail and exit signal. The cell returns the artifact's bytes, the
export result and that log tail; nothing is shared through a file system. The driver (the process
that called :func:`sweep`) writes the artifacts under ``out`` with the atomic publish of
:mod:`edgevit.converters._output` and is the only writer of the results database.

Each cell is keyed by (model source, weights digest, target, precision, options, edgevit
version). A rerun skips cells whose latest record is verified (or structural, for CoreML on Linux)
and whose artifact is still under ``out`` (``redo=True`` forces), so an interrupted sweep resumes.
A cell whose child process crashed is run once more (locally: submitted again; on Ray: a new task,
placed wherever the scheduler likes); a Ray worker or node lost mid-task is retried once by Ray
itself (``max_retries=1``).

Devices: a box joins the cluster with a custom resource (``ray start --address HEAD --num-cpus 0
--resources '{"device:rpi5": 1}'``) and :func:`bench_on` ships artifact bytes to it and runs
:func:`edgevit.measure.bench.bench` there. The device task imports only the standard library,
``edgevit.runtimes`` and the torch-free measure code; it runs with torch made unimportable, as on
a device install, and returns the device's facts (CPU, cores, OS, runtime versions) beside the
figures.

The top of this module imports only the standard library and edgevit's device-safe core: Ray
workers on devices import it, and a local sweep never imports Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import io
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from edgevit._version import __version__
from edgevit.errors import ConfigError, EdgeVitError

__all__ = ["CLUSTER_HINT", "Cell", "SweepReport", "bench_on", "device_facts", "plan", "run_cell", "sweep"]

CLUSTER_HINT = "pip install 'edgevit[cluster]'"
DONE = ("verified", "structural")
LOG_TAIL_LINES = 30
_RESULT = "result.json"


# ------------------------------------------------------------------------------------------------
# cells


@dataclasses.dataclass(frozen=True)
class Cell:
    """One export of a sweep: a model source at a target, precision and options, with weights."""

    source: str
    target: str
    precision: str
    options: tuple[tuple[str, Any], ...] = ()
    weights: str = "random-init"  # the weights digest: random-init, sha256:<hex>, hub:<id>

    @property
    def key(self) -> str:
        """Stable id of what the cell produces; changes with any input or the edgevit version."""
        doc = [self.source, self.weights, self.target, self.precision, [list(o) for o in self.options], __version__]
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.source} {self.target} {self.precision}" + (f" [{opts}]" if opts else "")

    def artifact_name(self, produced: str) -> str:
        """The name under ``out``: the export's own file name, plus an options tag when options are set."""
        if not self.options:
            return produced
        p = Path(produced)
        tag = hashlib.sha256(json.dumps(self.options, default=str).encode()).hexdigest()[:8]
        return f"{p.stem}_opt{tag}{p.suffix}"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _weights_for(source: str, pretrained: bool, weights: str | os.PathLike | None) -> tuple[str, Path | None]:
    """(digest tag, file to ship) for a source's weights."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights file {path} does not exist; pass an existing checkpoint")
        return _file_digest(path), path
    if not pretrained:
        return "random-init", None
    from edgevit.models import get_spec
    from edgevit.models._registry import WEIGHTS_DIR

    spec = get_spec(source)
    if spec.embedded_weights:
        return _file_digest(WEIGHTS_DIR / spec.embedded_weights), None
    return f"hub:{spec.hub_id or spec.default_weights or source}", None


def expand_sources(patterns: Sequence[str]) -> list[str]:
    """Catalog names, glob patterns over catalog names, and ``timm:`` names or patterns, in order."""
    from edgevit.models import list_models

    catalog = list_models()
    out: list[str] = []
    for pat in patterns:
        if pat.startswith("timm:") and any(c in pat for c in "*?["):
            from edgevit.models._timm import import_timm

            found = [f"timm:{n}" for n in import_timm().list_models(pat[5:])]
        elif any(c in pat for c in "*?["):
            found = [n for n in catalog if fnmatch.fnmatchcase(n, pat)]
        else:
            found = [pat]
        if not found:
            raise ConfigError(f"model pattern {pat!r} matches nothing; `edgevit list` shows the catalog, "
                              f"timm:PATTERN matches timm's architectures")
        out += [f for f in found if f not in out]
    return out


def _option_axes(options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[tuple[tuple[str, Any], ...]]:
    """``{"rewrite": [True, False]}`` -> one option set per combination (a list value is an axis)."""
    if not options:
        return [()]
    if not isinstance(options, Mapping):
        return [tuple(sorted(dict(o).items())) for o in options]
    keys = sorted(options)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in (options[k] for k in keys)]
    return [tuple(zip(keys, combo)) for combo in itertools.product(*values)]


def plan(
    models: Sequence[str],
    targets: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    calibration: str | None = None,
) -> tuple[list[Cell], list[tuple[Cell, str]], dict[str, Path]]:
    """The cells of a sweep: (cells to run, (cell, reason) the converters do not support, weights
    files to ship by digest). Unknown targets and sources fail here, before any work."""
    from edgevit.converters import available_targets, get_converter
    from edgevit.models import get_spec

    known = list(available_targets())
    targets = list(targets or known)
    bad = [t for t in targets if t not in known]
    if bad:
        raise ConfigError(f"unknown target(s) {', '.join(bad)}; one of {', '.join(known)}")
    sources = expand_sources(models)
    files: dict[str, Path] = {}
    cells, unsupported = [], []
    for source in sources:
        get_spec(source)  # an unknown source fails now, with the catalog's hint
        w = weights.get(source) if isinstance(weights, Mapping) else weights
        digest, path = _weights_for(source, pretrained, w)
        if path is not None:
            files[digest] = path
        for target, precision, opts in itertools.product(targets, precisions, _option_axes(options)):
            cell = Cell(source, target, precision, opts, digest)
            try:
                get_converter(target).make_config(precision, dict(opts), calibration, False)
            except ConfigError as exc:
                unsupported.append((cell, str(exc)))
                continue
            cells.append(cell)
    return cells, unsupported, files


# ------------------------------------------------------------------------------------------------
# one cell, wherever it runs (standard library only until the child process)


def _worker_facts() -> dict[str, Any]:
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


def _child_command(spec_file: Path) -> list[str]:
    return [sys.executable, "-m", "edgevit.measure.sweep", "--cell", str(spec_file), str(os.getpid())]


def run_cell(spec: Mapping[str, Any], weights: bytes | None = None) -> dict[str, Any]:
    """Export (and verify, and optionally bench) one cell in a child process; return its outcome
    with the artifact's bytes and the log tail. Never raises for a failing export."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgevit-cell-") as tmp_name:
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
            proc = subprocess.Popen(_child_command(spec_file), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
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
        tail = _tail(log)
        out: dict[str, Any] = {"worker": _worker_facts(), "edgevit_version": __version__, "returncode": rc}
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


# ------------------------------------------------------------------------------------------------
# the driver


@dataclasses.dataclass
class SweepReport:
    """What a sweep did: one row per cell (skipped ones too) and the wall time."""

    rows: list[dict[str, Any]]
    wall_s: float
    mode: str
    workers: int
    out: str | None

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.rows:
            c[r["status"]] = c.get(r["status"], 0) + 1
        return c

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "workers": self.workers, "wall_s": round(self.wall_s, 2), "out": self.out,
                "counts": self.counts(), "cells": self.rows}


def _row(cell: Cell, status: str, **fields: Any) -> dict[str, Any]:
    return {"key": cell.key, "source": cell.source, "target": cell.target, "precision": cell.precision,
            "options": dict(cell.options), "weights": cell.weights, "status": status, **fields}


def _done_before(db: Any) -> dict[str, dict[str, Any]]:
    """Cell key -> the latest sweep record of that key (any status)."""
    from edgevit.measure.results import ResultsStore

    latest: dict[str, dict[str, Any]] = {}
    with ResultsStore(db) as store:
        for run in store.runs("export"):
            s = run.data.get("sweep")
            if isinstance(s, Mapping) and s.get("key"):
                latest[s["key"]] = {**s, "artifact": run.artifact}
    return latest


def _publish(out: Path, name: str, payload: bytes, is_dir: bool) -> Path:
    from edgevit.converters._output import entry_of, publish, remove_entry, temp_path

    out.mkdir(parents=True, exist_ok=True)
    final = out / name
    expected = entry_of(final)
    tmp = temp_path(final)
    try:
        if is_dir:
            tmp.mkdir()
            with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # pragma: no cover - Python before 3.10.12
                    tar.extractall(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        publish(tmp, final, force=True, expected=expected)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_entry(tmp)
        raise
    return final


def _memory_bytes(source: str, memory_gb: float | None) -> int:
    """The memory a cell asks of a Ray node: given, or 1.5 GB + 0.15 GB per million parameters
    (a Swin-T export peaks near 5 GB)."""
    if memory_gb is None:
        params = 0.0
        with contextlib.suppress(EdgeVitError):
            from edgevit.models import get_spec

            params = float(get_spec(source).params_m or 0)
        memory_gb = 1.5 + 0.15 * params
    return int(memory_gb * 2**30)


def default_jobs(threads: int = 1) -> int:
    """Local parallel cells: one per ``threads`` cores, at most one per 2 GB of available memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, cores // max(1, threads))
    with contextlib.suppress(OSError, ValueError):
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        jobs = min(jobs, max(1, int(avail // (2 * 2**30))))
    return jobs


def import_ray() -> Any:
    """Ray, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError(f"running on a Ray cluster needs Ray, which is not installed here; install it with: "
                          f"{CLUSTER_HINT}") from None
    return ray


@contextlib.contextmanager
def _ray_connection(address: str | None, verbose: bool = False):
    """Ray connected to the cluster at ``address`` (``auto``: RAY_ADDRESS or the local cluster);
    disconnects at the end only if it connected here."""
    import logging

    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", logging_level=logging.ERROR,
                 log_to_driver=verbose, configure_logging=True)
    except ConnectionError as exc:
        raise ConfigError(f"no Ray cluster at {address or 'auto'} ({exc}); start one with `ray start --head` "
                          f"or pass its address (HOST:PORT)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class _Runner:
    """Submits cells and yields outcomes as they finish: local threads (each cell its own child
    process) or Ray tasks."""

    def __init__(self, mode: str, jobs: int, ray: Any = None) -> None:
        self.mode, self.jobs, self.ray = mode, jobs, ray
        self.pending: dict[Any, Any] = {}
        if mode == "local":
            self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="edgevit-sweep")
        else:
            self.remote = ray.remote(run_cell)
            self.refs: dict[Any, Any] = {}

    def submit(self, tag: Any, spec: Mapping[str, Any], weights: Any, resources: Mapping[str, Any]) -> None:
        if self.mode == "local":
            self.pending[self.pool.submit(run_cell, spec, weights)] = tag
        else:
            ref = self.remote.options(max_retries=1, retry_exceptions=False, name=f"edgevit-cell {spec['label']}",
                                      **resources).remote(spec, weights)
            self.pending[ref] = tag

    def next_done(self) -> Iterable[tuple[Any, dict[str, Any]]]:
        if self.mode == "local":
            done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
            for fut in done:
                tag = self.pending.pop(fut)
                try:
                    yield tag, fut.result()
                except Exception as exc:  # a bug in run_cell itself: the cell fails, the sweep goes on
                    yield tag, {"status": "crashed", "error": f"{type(exc).__name__}: {exc}"}
            return
        done, _ = self.ray.wait(list(self.pending), num_returns=1)
        for ref in done:
            tag = self.pending.pop(ref)
            try:
                yield tag, self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:  # worker or node lost (after Ray's own retry), OOM
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                yield tag, {"status": "lost", "error": f"Ray: {type(exc).__name__}: {first}"[:800]}

    def close(self) -> None:
        if self.mode == "local":
            self.pool.shutdown(wait=False, cancel_futures=True)
        else:
            for ref in self.pending:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)


def sweep(
    models: Sequence[str],
    targets: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    out: str | os.PathLike | None = "sweep-out",
    db: Any = None,
    record: bool = True,
    jobs: int | None = None,
    ray: str | None = None,
    redo: bool = False,
    pretrained: bool = False,
    weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    calibration: str | None = None,
    bench: bool = False,
    bench_on: str | None = None,
    bench_runs: int = 10,
    threads: int = 1,
    memory_gb: float | None = None,
    timeout: float | None = 1800,
    verbose: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> SweepReport:
    """Export and verify every cell of ``models x targets x precisions x options``.

    ``models``: catalog names, glob patterns over them, ``timm:`` names or patterns. ``options``:
    converter options for every cell; a list value is an axis (``{"rewrite": [True, False]}``).
    Locally ``jobs`` cells run at once (default: one per ``threads`` cores, memory permitting);
    ``ray`` (an address, or ``"auto"``) makes every cell a Ray task asking for ``threads`` CPUs and
    its memory estimate (``memory_gb`` overrides). Artifacts land under ``out`` (None: not kept);
    every cell is recorded in the results database ``db`` unless ``record=False``. Cells verified
    before (same key, artifact still there) are skipped unless ``redo``. ``progress`` gets a dict
    per finished cell (``done``, ``total``, ``eta_s``, ``row``). ``bench`` benchmarks each artifact
    where it was exported; ``bench_on`` (a custom resource such as ``device:rpi5``; needs ``ray``)
    ships the sweep's artifacts to the cluster node carrying it afterwards and benchmarks them there
    (:func:`bench_on`), recording the device's facts.
    """
    if bench_on and not ray:
        raise ConfigError("--on RESOURCE benchmarks on a node of a Ray cluster: pass --ray ADDRESS (or auto) too")
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    t0 = time.perf_counter()
    cells, unsupported, files = plan(models, targets, precisions, options, pretrained=pretrained, weights=weights,
                                     calibration=calibration)
    out_dir = Path(out).expanduser() if out is not None else None
    if record:
        from edgevit.measure.results import check_database

        check_database(db)
    rows: list[dict[str, Any]] = [_row(c, "unsupported", error=why) for c, why in unsupported]
    todo: list[Cell] = []
    before = _done_before(db) if record and not redo else {}
    for cell in cells:
        prev = before.get(cell.key)
        kept = prev is not None and prev.get("status") in DONE and (
            out_dir is None or (prev.get("artifact") and Path(prev["artifact"]).exists()))
        if kept:
            rows.append(_row(cell, "skipped", previous=prev.get("status"), artifact=prev.get("artifact")))
        else:
            todo.append(cell)
    mode = "ray" if ray else "local"
    n_workers = jobs or default_jobs(threads)
    if not todo:  # nothing to export (all skipped or unsupported)
        report = SweepReport(rows, time.perf_counter() - t0, mode, 0 if mode == "ray" else n_workers,
                             str(out_dir) if out_dir else None)
        return _bench_on_device(report, bench_on, ray, bench_runs, threads, db, record)
    with contextlib.ExitStack() as stack:
        ray_mod = stack.enter_context(_ray_connection(ray, verbose)) if mode == "ray" else None
        if ray_mod is not None:
            n_workers = int(ray_mod.cluster_resources().get("CPU", 1) // threads) or 1
            payloads = {d: ray_mod.put(p.read_bytes()) for d, p in files.items()}  # once per file, by reference
        else:
            payloads = {d: p.read_bytes() for d, p in files.items()}
        runner = _Runner(mode, n_workers, ray_mod)
        stack.callback(runner.close)
        attempts: dict[str, list[dict[str, Any]]] = {}
        queue = list(todo)

        def submit(cell: Cell) -> None:
            spec = {"source": cell.source, "target": cell.target, "precision": cell.precision,
                    "options": dict(cell.options), "pretrained": pretrained, "calibration": calibration,
                    "threads": threads, "timeout": timeout, "label": cell.label,
                    "bench": {"threads": threads, "runs": bench_runs, "warmup": 3} if bench else None,
                    "weights_suffix": files[cell.weights].suffix if cell.weights in files else None}
            resources = {"num_cpus": threads, "memory": _memory_bytes(cell.source, memory_gb)}
            runner.submit(cell, spec, payloads.get(cell.weights), resources)

        in_flight = 0
        while queue and (mode == "ray" or in_flight < n_workers):  # Ray queues and places them itself
            submit(queue.pop(0))
            in_flight += 1
        done = 0
        while in_flight:
            for cell, res in runner.next_done():
                in_flight -= 1
                tries = attempts.setdefault(cell.key, [])
                tries.append({k: res.get(k) for k in ("status", "error", "worker", "wall_s")})
                if res.get("status") == "crashed" and len(tries) == 1:
                    submit(cell)  # once more, in a fresh process (on Ray: wherever the scheduler puts it)
                    in_flight += 1
                    continue
                row = _finish(cell, res, tries, out_dir, db, record)
                rows.append(row)
                done += 1
                if progress is not None:
                    elapsed = time.perf_counter() - t0
                    left = len(todo) - done
                    progress({"done": done, "total": len(todo), "eta_s": elapsed / done * left, "row": row})
                if queue:
                    submit(queue.pop(0))
                    in_flight += 1
    report = SweepReport(rows, time.perf_counter() - t0, mode, n_workers, str(out_dir) if out_dir else None)
    return _bench_on_device(report, bench_on, ray, bench_runs, threads, db, record)


def _bench_on_device(report: SweepReport, on: str | None, address: str | None, runs: int, threads: int, db: Any,
                     record: bool) -> SweepReport:
    """``sweep(bench_on=...)``: the sweep's artifact files benchmarked in one task on the device."""
    if not on:
        return report
    arts = [r for r in report.rows if r.get("artifact") and Path(r["artifact"]).is_file()]
    if not arts:
        return report
    rep = bench_on([r["artifact"] for r in arts], on=on, address=address, threads=threads, warmup=3, runs=runs,
                   memory_baseline=False, gemm=False)
    by_path = {row.get("artifact"): row for row in rep.rows}
    for r in arts:
        b = by_path.get(r["artifact"]) or {}
        r["device_bench"] = {"on": on, "node": rep.machine.get("host"), **{k: b.get(k) for k in ("median_ms", "p90_ms")}}
    if record:
        from edgevit.measure.results import record_bench

        record_bench(rep.rows, {**rep.machine, "settings": rep.settings}, db=db)
    return report


def _finish(cell: Cell, res: Mapping[str, Any], tries: list[dict[str, Any]], out_dir: Path | None,
            db: Any, record: bool) -> dict[str, Any]:
    """Publish a cell's artifact (driver only) and record it; returns the report row."""
    status = res.get("status", "crashed")
    if status == "lost":
        status = "crashed"
    row = _row(cell, status, attempts=len(tries), worker=res.get("worker"), wall_s=res.get("wall_s"))
    if res.get("edgevit_version") not in (None, __version__):
        status = row["status"] = "failed"
        res = {**res, "error": f"the worker runs edgevit {res['edgevit_version']}, this driver {__version__}; "
                              f"install the same version on every node"}
    export = dict(res.get("export") or {})
    if status in DONE and out_dir is not None:
        try:
            final = _publish(out_dir, cell.artifact_name(res["artifact_name"]), res["artifact"], res["artifact_is_dir"])
            export["path"] = row["artifact"] = str(final)
        except EdgeVitError as exc:
            status = row["status"] = "failed"
            res = {**res, "error": f"could not write the artifact: {exc}"}
    for k in ("op", "error", "log_tail"):
        if res.get(k):
            row[k] = res[k]
    if tries[:-1]:
        row["earlier_attempts"] = tries[:-1]
    v = export.get("verification") or {}
    for k in ("cosine_min", "max_abs_diff", "top1_agreement"):
        if v.get(k) is not None:
            row[k] = v[k]
    if export.get("bytes"):
        row["bytes"] = export["bytes"]
        row["export_s"] = export.get("seconds")
        row["delegated_share"] = (export.get("delegation") or {}).get("share")
        row["warnings"] = list(export.get("warnings") or [])[:3]
    if res.get("bench"):
        row["bench"] = [{k: r.get(k) for k in ("median_ms", "p90_ms", "peak_rss_mb")} for r in res["bench"]["rows"]]
    if record:
        _record(cell, row, export, res, db)
    return row


def _record(cell: Cell, row: Mapping[str, Any], export: Mapping[str, Any], res: Mapping[str, Any], db: Any) -> None:
    from edgevit.measure.results import ResultsStore, record_bench

    sweep_doc = {k: row.get(k) for k in ("key", "source", "weights", "options", "status", "op", "error", "log_tail",
                                          "attempts", "earlier_attempts", "worker")}
    data = {**export, "model": export.get("model") or cell.source, "target": cell.target,
            "precision": cell.precision, "sweep": sweep_doc}
    with ResultsStore(db) as store:
        store.add("export", data, model=data["model"], target=cell.target, precision=cell.precision,
                  artifact=row.get("artifact"))
        if res.get("bench"):
            b = res["bench"]
            rows = [{**r, "artifact": row.get("artifact")} for r in b["rows"]]
            record_bench(rows, {**b["machine"], "settings": b["settings"]}, db=store)


# ------------------------------------------------------------------------------------------------
# devices


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_facts() -> dict[str, Any]:
    """This machine as a benchmark device: CPU model, cores, OS, Python and runtime versions."""
    from edgevit.measure.results import host_info

    facts = dict(host_info())
    with contextlib.suppress(OSError, AttributeError):
        facts["os"] = platform.freedesktop_os_release().get("PRETTY_NAME")
    facts["edgevit"] = __version__
    facts["runtimes"] = {d: v for d in ("ai-edge-litert", "tflite-runtime", "onnxruntime", "executorch", "numpy")
                         if (v := _dist_version(d)) is not None}
    facts.update(_worker_facts())
    return facts


@contextlib.contextmanager
def _without_torch() -> Iterable[None]:
    """torch unimportable for a moment, as on a device install (a torch already loaded stays)."""
    if sys.modules.get("torch") is not None:
        yield
        return
    saved = {k: sys.modules.pop(k) for k in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]}
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["torch"]
        sys.modules.update(saved)


def device_bench(artifacts: Sequence[tuple[str, bytes]], image: tuple[str, bytes],
                 settings: Mapping[str, Any]) -> dict[str, Any]:
    """The device side of :func:`bench_on`: write the shipped artifacts, bench them, return the
    report with the device's facts. Imports no torch (it is made unimportable while it runs)."""
    from edgevit.measure.bench import bench

    with tempfile.TemporaryDirectory(prefix="edgevit-device-") as tmp, _without_torch():
        paths = []
        for name, payload in artifacts:
            p = Path(tmp) / Path(name).name
            p.write_bytes(payload)
            paths.append(p)
        img = Path(tmp) / f"input{Path(image[0]).suffix or '.png'}"
        img.write_bytes(image[1])
        report = bench(paths, threads=int(settings["threads"]), warmup=int(settings["warmup"]),
                       runs=int(settings["runs"]), image=img, memory_baseline=bool(settings["memory_baseline"]),
                       gemm=bool(settings["gemm"]))
        facts = device_facts()
        facts["torch_loaded"] = sys.modules.get("torch") is not None
    return {"report": report.to_dict(), "facts": facts}


def _bench_image(image: str | os.PathLike | None) -> tuple[str, bytes]:
    if image is not None:
        p = Path(image)
        if not p.is_file():
            raise ConfigError(f"image {p} does not exist")
        return p.name, p.read_bytes()
    from edgevit.data.samples import natural_photos
    from edgevit.errors import DataError

    photos = natural_photos(limit=1)
    if not photos:
        raise DataError("no sample photo is installed (scikit-image or matplotlib); pass --image FILE")
    name, img = photos[0]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"{name}.png", buf.getvalue()


def bench_on(
    artifacts: Sequence[str | os.PathLike],
    *,
    on: str,
    address: str | None = None,
    torch_models: Sequence[str] = (),
    torch_pretrained: bool = False,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 20,
    image: str | os.PathLike | None = None,
    memory_baseline: bool = True,
    gemm: bool = True,
    progress: Callable[[str], None] | None = None,
    timeout: float = 1800,
) -> Any:
    """:func:`edgevit.measure.bench.bench` on the cluster node that carries resource ``on``
    (``device:rpi5``): the artifacts' bytes travel through Ray's object store, the figures come back
    with the device's facts as the report's ``machine``. ``address``: the cluster (default
    ``RAY_ADDRESS``, else the local one)."""
    from edgevit.measure.bench import BenchReport

    if torch_models:
        raise ConfigError("--torch times torch eager, which a device install does not have; drop it with --on")
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    paths = [Path(a) for a in artifacts]
    if not paths:
        raise ConfigError("name at least one artifact to benchmark on the device")
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"{p}: no such artifact file (a device bench ships files; a CoreML package stays on macOS)")
    shipped = [(p.name, p.read_bytes()) for p in paths]
    img = _bench_image(image)
    settings = {"threads": threads, "warmup": warmup, "runs": runs, "memory_baseline": memory_baseline, "gemm": gemm}
    note = progress or (lambda msg: None)
    with _ray_connection(address) as ray:
        have = ray.cluster_resources()
        if have.get(on, 0) < 1:
            devices = sorted(k for k in have if ":" in k and not k.startswith("node:"))
            raise ConfigError(f"no node of the Ray cluster carries resource {on!r} (it has: "
                              f"{', '.join(devices) or 'no custom resources'}); join the device with "
                              f"`ray start --address HEAD --num-cpus 0 --resources '{{\"{on}\": 1}}'`")
        note(f"{len(paths)} artifact(s) on {on}")
        task = ray.remote(device_bench).options(num_cpus=0, resources={on: 1}, max_retries=1,
                                                name=f"edgevit-bench on {on}")
        ref = task.remote(shipped, img, settings)
        ready, _ = ray.wait([ref], timeout=timeout)
        if not ready:
            ray.cancel(ref, force=True)
            raise EdgeVitError(f"the benchmark on {on} took longer than {timeout:.0f} s")
        try:
            done = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), EdgeVitError) else None
            if cause is not None:
                raise cause from None
            raise EdgeVitError(f"the benchmark on {on} failed: {str(exc).strip().splitlines()[-1][:500]}") from None
    rep = done["report"]
    local = {p.name: str(p) for p in paths}
    for row in rep["rows"]:
        row["artifact"] = local.get(row.get("name"), row.get("artifact"))
    machine = {**rep["machine"], **done["facts"], "ray_resource": on}
    return BenchReport(rep["rows"], machine, {**rep["settings"], "on": on}, rep["targets"])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--cell":
        sys.exit(_cell_main(sys.argv[2], int(sys.argv[3])))
    print("usage: edgevit sweep ... (this module's --cell mode is internal)", file=sys.stderr)
    sys.exit(2)
