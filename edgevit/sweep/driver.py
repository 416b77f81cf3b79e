"""The driver of a sweep: plans the cells, skips those verified before, runs the rest in local
threads (each cell its own process) or as Ray tasks, runs a crashed cell once more, writes the
artifacts under ``out`` (atomic publish) and is the only writer of the results database."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from edgevit._version import __version__
from edgevit.errors import ConfigError, EdgeVitError
from edgevit.sweep.cell import DONE, RUNNING, run_cell
from edgevit.sweep.cluster import bench_on, ray_connection
from edgevit.sweep.plan import Cell, plan

__all__ = ["SweepReport", "default_jobs", "sweep"]


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
                except Exception as exc:  # noqa: BLE001 - a bug in run_cell itself: the cell fails, the sweep goes on
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
            for proc in list(RUNNING):  # interrupted: the running exports stop too (their cells stay unrecorded)
                with contextlib.suppress(OSError):
                    proc.kill()
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
        ray_mod = stack.enter_context(ray_connection(ray, verbose)) if mode == "ray" else None
        if ray_mod is not None:
            n_workers = int(ray_mod.cluster_resources().get("CPU", 1) // threads) or 1
            todo = _feasible(ray_mod, todo, threads, memory_gb, rows, db, record)
            payloads = {d: ray_mod.put(p.read_bytes()) for d, p in files.items()}  # once per file, by reference
        else:
            payloads = {d: p.read_bytes() for d, p in files.items()}
        runner = _Runner(mode, n_workers, ray_mod)
        stack.callback(runner.close)
        attempts: dict[str, list[dict[str, Any]]] = {}
        queue = list(todo)

        def submit(cell: Cell, avoid: str | None = None) -> None:
            spec = {"source": cell.source, "target": cell.target, "precision": cell.precision,
                    "options": dict(cell.options), "pretrained": pretrained, "calibration": calibration,
                    "threads": threads, "timeout": timeout, "label": cell.label,
                    "bench": {"threads": threads, "runs": bench_runs, "warmup": 3} if bench else None,
                    "weights_suffix": files[cell.weights].suffix if cell.weights in files else None}
            resources: dict[str, Any] = {"num_cpus": threads, "memory": _memory_bytes(cell.source, memory_gb)}
            if avoid and ray_mod is not None and _fits_elsewhere(ray_mod, avoid, threads, resources["memory"]):
                resources["label_selector"] = {"ray.io/node-id": f"!{avoid}"}  # the retry runs on another node
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
                    # once more, in a fresh process; on Ray on another node when one can take it
                    submit(cell, avoid=(res.get("worker") or {}).get("ray_node_id"))
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


def _fits_elsewhere(ray: Any, node_id: str, threads: int, memory: int) -> bool:
    """Whether an alive node other than ``node_id`` has ``threads`` CPUs and ``memory`` bytes."""
    return any(n.get("Alive") and n.get("NodeID") != node_id and n["Resources"].get("CPU", 0) >= threads
               and n["Resources"].get("memory", 0) >= memory for n in ray.nodes())


def _feasible(ray: Any, todo: list[Cell], threads: int, memory_gb: float | None, rows: list[dict[str, Any]], db: Any,
              record: bool) -> list[Cell]:
    """The cells some node of the cluster can take; the others fail now (Ray would keep them
    pending for ever) with what they need and what the largest node offers."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    keep = []
    for cell in todo:
        need = _memory_bytes(cell.source, memory_gb)
        if any(r.get("CPU", 0) >= threads and r.get("memory", 0) >= need for r in nodes):
            keep.append(cell)
            continue
        best = max((r.get("memory", 0) for r in nodes if r.get("CPU", 0) >= threads), default=0)
        err = (f"no node of the cluster offers {threads} CPU(s) and {need / 2**30:.1f} GB (the largest with the CPUs "
               f"has {best / 2**30:.1f} GB); pass --memory-gb or fewer --threads, or add a bigger node")
        res = {"status": "failed", "error": err}
        rows.append(_finish(cell, res, [res], None, db, record))
    return keep


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
        row["partitions"] = (export.get("delegation") or {}).get("partitions")
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
