"""Side-by-side latency, load time, memory and efficiency of artifacts (any registered runtime)
and torch eager, measured in one run on this machine.

Every measurement runs in a fresh Python process, one after the other, so memory figures do not
leak between artifacts and every artifact pays its own imports:

* ``gemm``: this machine's practical fp32 GEMM peak with the same thread count (2048^3 numpy
  matmuls, best of several, at the start and at the end; the torch workers add a torch matmul),
  the yardstick for efficiency.
* each artifact: ``import edgevit.runtimes`` + :func:`edgevit.runtimes.load` + the first
  classification of a real photo (the *cold start*), then ``warmup`` + ``runs`` timed inferences
  on that photo's tensor. Peak RSS (``VmHWM``) after the first prediction and at the end, and the
  RSS growth over the bare interpreter process.
* ``--torch MODEL``: the catalog model in torch eager (``OMP_WAIT_POLICY=PASSIVE``, same threads).
* for ``.tflite`` artifacts, the bare ai-edge-litert interpreter running the same file once in
  its own process: the memory target compares edgevit's peak RSS to it.

Efficiency is ``2 x MACs / median latency`` as a share of the GEMM peak (MACs from
:mod:`edgevit.measure.profile` at the artifact's input size).

This module's top level imports only the standard library: the worker processes
(``python -m edgevit.measure.bench --worker SPEC``) measure their own imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevit.errors import ArtifactError, ConfigError, EdgeVitError

__all__ = [
    "BENCH_COLUMNS",
    "MEMORY_TARGET_RATIO",
    "COLD_START_TARGET_S",
    "BenchReport",
    "bench",
    "format_bench",
    "measure_gemm_peak",
]

MEMORY_TARGET_RATIO = 1.2
# /proc reports memory in kB of 1024 bytes; edgevit reports MB of 10^6 bytes everywhere.
_KB = 1024 / 1e6
COLD_START_TARGET_S = 0.5
GEMM_N = 2048

# (key, header, format) for the human formats; JSON carries every field.
BENCH_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "artifact", "{}"),
    ("runtime", "runtime", "{}"),
    ("precision", "precision", "{}"),
    ("top1_label", "top-1", "{}"),
    ("size_mb", "size MB", "{:.2f}"),
    ("load_ms", "load ms", "{:.1f}"),
    ("cold_start_ms", "cold start ms", "{:.0f}"),
    ("median_ms", "median ms", "{:.2f}"),
    ("p90_ms", "p90 ms", "{:.2f}"),
    ("speedup_vs_torch", "vs torch", "{:.2f}x"),
    ("throughput", "img/s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.1f}"),
    ("rss_delta_mb", "RSS delta MB", "{:.1f}"),
    ("bare_peak_rss_mb", "bare RSS MB", "{:.1f}"),
    ("memory_ratio", "mem/bare", "{:.2f}x"),
    ("gmacs", "GMACs", "{:.3f}"),
    ("efficiency_pct", "eff %", "{:.1f}"),
)


# The default table's columns (it fits 120 characters); ``wide`` shows every column above.
NARROW_COLUMNS = ("name", "runtime", "precision", "top1_label", "size_mb", "median_ms", "speedup_vs_torch",
                  "peak_rss_mb", "efficiency_pct")
TABLE_WIDTH = 120


@dataclass
class BenchReport:
    """One bench run: a row per artifact (and torch baseline) plus the machine's GEMM peak."""

    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    settings: dict[str, Any]
    targets: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "machine": self.machine, "settings": self.settings, "targets": self.targets}


# --------------------------------------------------------------------------------------------
# Worker side (fresh process; standard library until the work starts)


def _status_kb(field_name: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    if field_name == "VmHWM":
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak / 1024) if sys.platform == "darwin" else int(peak)
    return 0


def _stats(times: Sequence[float]) -> dict[str, float]:
    # numpy's percentile (linear interpolation) is the one definition edgevit uses everywhere:
    # here, on the Pi app's status page and in the benchmarks.
    import numpy as np

    ms = 1e3 * np.asarray(times, dtype=np.float64)
    mean = float(ms.mean())
    return {
        "median_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": mean,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "throughput": 1e3 / mean if mean > 0 else 0.0,
    }


def _timed(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _worker_artifact(spec: Mapping[str, Any]) -> dict[str, Any]:
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    from edgevit.runtimes import Classifier, load

    t_import = time.perf_counter()
    runtime = load(spec["path"], threads=spec["threads"])
    t_load = time.perf_counter()
    clf = Classifier(runtime)
    x = clf.preprocess(spec["image"])
    first = clf.runtime.run(x)
    top = int(first[0].argmax())
    t_first = time.perf_counter()
    hwm_first = _status_kb("VmHWM")
    times = _timed(lambda: runtime.run(x), spec["warmup"], spec["runs"])
    meta = runtime.metadata
    return {
        "import_ms": 1e3 * (t_import - t0),
        "load_ms": 1e3 * (t_load - t_import),
        "first_ms": 1e3 * (t_first - t_load),
        "cold_start_ms": 1e3 * (t_first - t0),
        "top1_index": top,
        "top1_label": meta.labels[top] if top < len(meta.labels) else str(top),
        "rss_start_mb": rss0 * _KB,
        "peak_rss_first_mb": hwm_first * _KB,
        "peak_rss_mb": _status_kb("VmHWM") * _KB,
        "rss_delta_mb": (_status_kb("VmHWM") - rss0) * _KB,
        "model": meta.model,
        "target": meta.target,
        "precision": meta.precision,
        "runtime": runtime.name,
        "engine": getattr(runtime, "engine", runtime.name),
        "resolution": int(meta.input_size[0]),
        "input_size": list(meta.input_size),
        "fused_input": meta.fused_input,
        **_stats(times),
    }


def _worker_bare_tflite(spec: Mapping[str, Any]) -> dict[str, Any]:
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=spec["path"], num_threads=spec["threads"])
    interpreter.allocate_tensors()
    t_load = time.perf_counter()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    interpreter.invoke()
    interpreter.get_tensor(out["index"])
    t_first = time.perf_counter()
    return {
        "load_ms": 1e3 * (t_load - t0),
        "cold_start_ms": 1e3 * (t_first - t0),
        "rss_start_mb": rss0 * _KB,
        "peak_rss_mb": _status_kb("VmHWM") * _KB,
    }


def _worker_torch(spec: Mapping[str, Any]) -> dict[str, Any]:
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    from edgevit.converters.export import build_metadata
    from edgevit.models import create_model, get_spec
    from edgevit.preprocess import preprocess

    t_import = time.perf_counter()
    model_spec = get_spec(spec["model"])
    model = create_model(spec["model"], pretrained=spec.get("pretrained", False), weights=spec.get("weights"))
    t_load = time.perf_counter()
    meta = build_metadata(model_spec, "torch", "fp32", model_spec.label_names(), model.edgevit_weights)
    x = torch.from_numpy(np.ascontiguousarray(preprocess(spec["image"], meta)))
    with torch.inference_mode():
        first = model(x)
        top = int(first[0].argmax())
        t_first = time.perf_counter()
        hwm_first = _status_kb("VmHWM")
        times = _timed(lambda: model(x), spec["warmup"], spec["runs"])
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    hwm = _status_kb("VmHWM")  # before the GEMM's matrices
    gemm = _torch_gemm(torch, spec["threads"]) if spec.get("gemm") else None
    return {
        "torch_gemm_gflops": gemm,
        "import_ms": 1e3 * (t_import - t0),
        "load_ms": 1e3 * (t_load - t_import),
        "first_ms": 1e3 * (t_first - t_load),
        "cold_start_ms": 1e3 * (t_first - t0),
        "top1_index": top,
        "rss_start_mb": rss0 * _KB,
        "peak_rss_first_mb": hwm_first * _KB,
        "peak_rss_mb": hwm * _KB,
        "rss_delta_mb": (hwm - rss0) * _KB,
        "size_bytes": size,
        "model": model_spec.name,
        "target": "torch",
        "precision": "fp32",
        "runtime": "torch-eager",
        "engine": f"torch {torch.__version__}",
        "resolution": int(model_spec.input_size[0]),
        "input_size": list(model_spec.input_size),
        **_stats(times),
    }


def _torch_gemm(torch: Any, threads: int, n: int = GEMM_N, repeats: int = 5) -> float:
    """Best-of GFLOP/s of an n^3 fp32 torch matmul (measured in the torch worker, which has torch
    imported already)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    times = _timed(lambda: a @ b, 1, repeats)
    return 2.0 * n**3 / min(times) / 1e9


def _worker_gemm(spec: Mapping[str, Any]) -> dict[str, Any]:
    n, repeats = int(spec.get("n", GEMM_N)), int(spec.get("repeats", 5))
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    times = _timed(lambda: a @ b, 1, repeats)
    return {"n": n, "numpy_gflops": 2.0 * n**3 / min(times) / 1e9}


_WORKERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "artifact": _worker_artifact,
    "bare-tflite": _worker_bare_tflite,
    "torch": _worker_torch,
    "gemm": _worker_gemm,
}


def _worker_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    try:
        result = _WORKERS[spec["kind"]](spec)
    except EdgeVitError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# Parent side


def _thread_env(threads: int, torch: bool) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    if torch:
        # Spinning OpenMP workers distort eager timings on shared machines (STACK.md).
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def _run_worker(spec: Mapping[str, Any], env: Mapping[str, str], what: str, timeout: float = 900) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgevit.measure.bench", "--worker", json.dumps(dict(spec))]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(env), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeVitError(f"bench worker for {what} took longer than {timeout:.0f} s") from None
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or result is None or "error" in result:
        if result and "error" in result:
            raise ArtifactError(f"{what}: {result['message']}")
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise EdgeVitError(f"bench worker for {what} failed (exit {proc.returncode}):\n{tail}")
    result["process_wall_ms"] = 1e3 * wall
    return result


def measure_gemm_peak(threads: int) -> dict[str, Any]:
    """This machine's practical fp32 GEMM peak (GFLOP/s) with ``threads`` threads, measured in a
    fresh process: the best of several 2048^3 numpy matmuls. (:func:`bench` also counts the torch
    matmul measured in its torch eager workers.)"""
    res = _run_worker({"kind": "gemm", "threads": threads}, _thread_env(threads, True), "gemm")
    res["peak_gflops"] = res["numpy_gflops"]
    return res


def _artifact_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _default_image(tmpdir: Path) -> str:
    from edgevit.data.samples import natural_photos

    photos = natural_photos(limit=1)
    if not photos:
        from edgevit.errors import DataError

        raise DataError("no sample photo was found (edgevit ships four; reinstall it) - or pass --image FILE")
    name, img = photos[0]
    path = tmpdir / f"{name}.png"
    img.save(path)
    return str(path)


_MACS_CACHE: dict[tuple[str, int, int], float] = {}


def _gmacs(model: str, size: Sequence[int]) -> float | None:
    """GMACs of catalog ``model`` at ``size`` (None when torch is not installed here)."""
    key = (model, int(size[0]), int(size[1]))
    if key not in _MACS_CACHE:
        try:
            import torch  # noqa: F401
        except ImportError:
            return None
        from edgevit.measure.profile import profile_model

        _MACS_CACHE[key] = profile_model(model, (key[1], key[2])).gmacs
    return _MACS_CACHE[key]


def bench(
    artifacts: Sequence[str | os.PathLike] = (),
    *,
    torch_models: Sequence[str] = (),
    torch_pretrained: bool = False,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 20,
    image: str | os.PathLike | None = None,
    memory_baseline: bool = True,
    gemm: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Benchmark ``artifacts`` and ``torch_models`` side by side, each in a fresh process.

    Returns a :class:`BenchReport` whose rows hold latency (median, p90, mean, min, max in ms),
    throughput (images/s at batch 1), load and cold-start times, peak RSS, artifact size, GMACs
    and efficiency (share of the GEMM peak). With ``memory_baseline`` every ``.tflite`` artifact
    is also run once by the bare ai-edge-litert interpreter for the memory target.
    ``torch_pretrained`` builds the torch eager models with their catalog weights (latency does not
    depend on it; the top-1 of the eager row then matches the artifacts exported with weights).
    Every row of a model that also has a torch eager row gets ``speedup_vs_torch`` (eager median /
    its median). The measurements run one after the other (artifacts in the order given, then torch
    eager), not interleaved: on a shared machine compare them through these same-run ratios.
    """
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if warmup < 0 or runs < 1:
        raise ConfigError(f"--warmup must be >= 0 and --runs >= 1, got {warmup} and {runs}")
    if not artifacts and not torch_models:
        raise ConfigError("nothing to benchmark: pass artifacts and/or --torch MODEL")
    paths = [Path(a) for a in artifacts]
    for p in paths:
        if not p.exists():
            raise ArtifactError(f"{p}: no such artifact")
    from edgevit.runtimes import runtime_for_path

    kinds = {p: runtime_for_path(p) for p in paths}  # fails early on unknown suffixes
    if torch_models:
        from edgevit.models import get_spec

        for name in torch_models:
            get_spec(name)
    note = progress or (lambda msg: None)
    rows: list[dict[str, Any]] = []
    machine: dict[str, Any] = {}
    from edgevit.measure.results import host_info

    machine.update(host_info())
    machine["threads"] = threads
    try:
        machine["load_avg"] = list(os.getloadavg())
    except OSError:
        pass
    with tempfile.TemporaryDirectory(prefix="edgevit-bench-") as tmp:
        photo = str(image) if image is not None else _default_image(Path(tmp))
        if gemm:
            note(f"GEMM peak ({GEMM_N}^3, {threads} threads)")
            machine["gemm"] = measure_gemm_peak(threads)
        plain_env = _thread_env(threads, torch=False)
        for p in paths:
            note(f"{p.name} ({kinds[p].name})")
            spec = {"kind": "artifact", "path": str(p), "threads": threads, "warmup": warmup, "runs": runs, "image": photo}
            row = _run_worker(spec, plain_env, p.name)
            row.update(name=p.name, artifact=str(p), size_bytes=_artifact_size(p))
            if memory_baseline and kinds[p].name == "tflite":
                note(f"{p.name} (bare ai-edge-litert interpreter)")
                bare = _run_worker({"kind": "bare-tflite", "path": str(p), "threads": threads}, plain_env, f"{p.name} (bare)")
                row["bare_peak_rss_mb"] = bare["peak_rss_mb"]
                row["bare_cold_start_ms"] = bare["cold_start_ms"]
                row["memory_ratio"] = row["peak_rss_first_mb"] / bare["peak_rss_mb"]
            rows.append(row)
        torch_env = _thread_env(threads, torch=True)
        for name in torch_models:
            note(f"torch eager {name}")
            spec = {"kind": "torch", "model": name, "threads": threads, "warmup": warmup, "runs": runs, "image": photo,
                    "gemm": gemm, "pretrained": torch_pretrained}
            row = _run_worker(spec, torch_env, f"torch {name}")
            row.update(name=f"torch:{name}", artifact=None)
            rows.append(row)
        if gemm:
            # Measured again at the end: on a shared machine the best of both is the practical peak.
            note(f"GEMM peak again ({GEMM_N}^3, {threads} threads)")
            again = measure_gemm_peak(threads)
            first = machine["gemm"]
            torch_gemm = max((r.get("torch_gemm_gflops") or 0 for r in rows), default=0) or None
            machine["gemm"] = {
                "n": GEMM_N,
                "numpy_gflops": max(first["numpy_gflops"], again["numpy_gflops"]),
                "torch_gflops": torch_gemm,
                "before_gflops": first["peak_gflops"],
                "after_gflops": again["peak_gflops"],
                "peak_gflops": max(first["peak_gflops"], again["peak_gflops"], torch_gemm or 0),
            }
            machine["gemm_peak_gflops"] = machine["gemm"]["peak_gflops"]
    try:
        machine["load_avg_end"] = list(os.getloadavg())
    except OSError:
        pass
    from edgevit._text import distinct_names

    artifact_rows = [r for r in rows if r.get("artifact")]
    for row, name in zip(artifact_rows, distinct_names([r["artifact"] for r in artifact_rows])):
        row["name"] = name  # one row per artifact: two files of one name get their folders
    peak = machine.get("gemm_peak_gflops")
    for row in rows:
        row["size_mb"] = row["size_bytes"] / 1e6
        row["threads"] = threads
        g = _gmacs(row["model"], row["input_size"]) if row.get("model") else None
        row["gmacs"] = g
        if g and peak:
            achieved = 2.0 * g / (row["median_ms"] / 1e3)  # GFLOP/s
            row["achieved_gflops"] = achieved
            row["efficiency_pct"] = 100.0 * achieved / peak
    eager = {r["model"]: r["median_ms"] for r in rows if r.get("runtime") == "torch-eager"}
    for row in rows:
        ref = eager.get(row.get("model"))
        if ref and row["median_ms"] > 0:
            row["speedup_vs_torch"] = ref / row["median_ms"]
    targets = _targets(rows)
    settings = {"threads": threads, "warmup": warmup, "runs": runs, "torch_pretrained": torch_pretrained, "image": Path(photo).name if image is None else str(image)}
    return BenchReport(rows, machine, settings, targets)


def _targets(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, for every .tflite artifact: memory vs the bare interpreter, cold start."""
    out = []
    for row in rows:
        if row.get("runtime") != "tflite":
            continue
        if row.get("memory_ratio") is not None:
            out.append(
                {
                    "artifact": row["name"],
                    "target": "memory",
                    "value": row["memory_ratio"],
                    "limit": MEMORY_TARGET_RATIO,
                    "passed": row["memory_ratio"] <= MEMORY_TARGET_RATIO,
                    "detail": f"edgevit runtime + one photo peaks at {row['peak_rss_first_mb']:.1f} MB RSS vs "
                    f"{row['bare_peak_rss_mb']:.1f} MB for the bare ai-edge-litert interpreter",
                }
            )
        out.append(
            {
                "artifact": row["name"],
                "target": "cold start",
                "value": row["cold_start_ms"] / 1e3,
                "limit": COLD_START_TARGET_S,
                "passed": row["cold_start_ms"] / 1e3 < COLD_START_TARGET_S,
                "detail": f"import {row['import_ms']:.0f} ms + load {row['load_ms']:.0f} ms + first prediction "
                f"{row['first_ms']:.0f} ms",
            }
        )
    return out


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "~" + text[len(text) - (width - 1 - head):]


def _fit(widths: list[int], cells: list[list[str]], headers: list[str], keys: list[str]) -> tuple[list[int], list[list[str]]]:
    """Shrink the name and top-1 columns (middle-shortened with ``~``) until the table fits."""
    widths = list(widths)
    for key, floor in (("top1_label", 10), ("name", 24)):
        excess = sum(widths) + 2 * (len(widths) - 1) - TABLE_WIDTH
        if excess <= 0 or key not in keys:
            continue
        i = keys.index(key)
        widths[i] = max(floor, len(headers[i]), widths[i] - excess)
        cells = [[_shorten(c, widths[i]) if j == i else c for j, c in enumerate(row)] for row in cells]
    return widths, cells


def format_bench(report: BenchReport, fmt: str = "table", wide: bool = False) -> str:
    """``report`` as ``table`` (aligned text), ``md`` (Markdown), ``csv`` or ``json``. The table
    and Markdown show :data:`NARROW_COLUMNS` (the table fits :data:`TABLE_WIDTH` characters,
    long names shortened in the middle) unless ``wide``; CSV and JSON carry every field."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, default=str)
    columns = [c for c in BENCH_COLUMNS if fmt == "csv" or wide or c[0] in NARROW_COLUMNS]
    if not wide and fmt != "csv":  # a column nothing filled in (no torch baseline, no GEMM) is left out
        columns = [c for c in columns if c[0] == "name" or any(r.get(c[0]) is not None for r in report.rows)]
    headers = [h for _, h, _ in columns]
    cells = [[_cell(r, k, f) for k, _, f in columns] for r in report.rows]
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        keys = [k for k, _, _ in BENCH_COLUMNS] + ["mean_ms", "min_ms", "max_ms", "first_ms", "import_ms", "model", "target", "threads", "artifact"]
        writer.writerow(keys)
        for r in report.rows:
            writer.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
        return buf.getvalue()
    m = report.machine
    peak = m.get("gemm_peak_gflops")
    footer = [
        f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {report.settings['threads']} threads; "
        f"warmup {report.settings['warmup']}, runs {report.settings['runs']}; input: {report.settings['image']}",
    ]
    if peak:
        g = m["gemm"]
        parts = [f"numpy {g['numpy_gflops']:.0f}"] + ([f"torch {g['torch_gflops']:.0f}"] if g.get("torch_gflops") else [])
        footer.append(
            f"GEMM peak {peak:.0f} GFLOP/s ({GEMM_N}^3 fp32, best of start {g.get('before_gflops', peak):.0f}, "
            f"end {g.get('after_gflops', peak):.0f}: {', '.join(parts)})"
        )
        footer.append("eff % = 2 x MACs / median latency / GEMM peak")
    if m.get("load_avg"):
        end = m.get("load_avg_end")
        footer.append(
            f"load average at start {m['load_avg'][0]:.2f}" + (f", at end {end[0]:.2f}" if end else "")
            + (" (shared CPU: expect noisy timings)" if m["load_avg"][0] > 0.5 * (m.get("cores") or 1) else "")
        )
    for t in report.targets:
        verdict = "PASS" if t["passed"] else "FAIL"
        if t["target"] == "memory":
            footer.append(f"target memory {t['artifact']}: {t['value']:.3f}x <= {t['limit']}x: {verdict} ({t['detail']})")
        else:
            footer.append(f"target cold start {t['artifact']}: {t['value']:.3f} s < {t['limit']} s: {verdict} ({t['detail']})")
    if fmt == "md":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {f}" for f in footer) + "\n"
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r}; one of table, md, csv, json")
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if not wide:
        widths, cells = _fit(widths, cells, headers, [k for k, _, _ in columns])
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines + [""] + footer) + "\n"


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))
    print("usage: edgevit bench ARTIFACT... (this module's --worker mode is internal)", file=sys.stderr)
    sys.exit(2)
