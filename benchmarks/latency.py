"""Latency of every artifact side by side with torch eager: one model per family, fp32, exported
to TFLite, ONNX and ExecuTorch (default options, verification on), then timed by
:func:`edgevit.measure.bench.bench` in ONE bench run per model (the three artifacts + the catalog model in
torch eager; batch 1, 2 threads, warm-up, median of >= 20 runs).

Usage::

    python benchmarks/latency.py                       # every default model, smallest first
    python benchmarks/latency.py --models mobilevit_xxs vit_fmnist_tiny --reuse
    python benchmarks/latency.py --render              # re-render latency.md from latency.json

Artifacts go to ``--out`` (default ``/tmp/edgevit-latency``); ``--reuse`` times artifacts already
there instead of exporting them again. Results are merged into ``benchmarks/results/latency.json``
after every model (a long run can be resumed model by model) and rendered to ``latency.md``.

How to read the figures: edgevit.measure.bench runs every measurement in a fresh process, one after the
other (not interleaved): first the artifacts in the order tflite, onnx, executorch, then torch
eager. On a shared machine the load can change between them, so the load average is recorded
before and after each model's bench run; compare runtimes through the same-run ratios (speed-up vs
torch eager), not across models or runs. CoreML is not in the table: coremltools converts on Linux
but predicts only on macOS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "latency.json"

# One model per family; vit_fmnist_tiny with its shipped Fashion-MNIST weights, the others random
# (latency does not depend on the weights' values).
DEFAULT_MODELS = (
    "deit_tiny_patch16_224",
    "mobilevit_xxs",
    "mobilevitv2_050",
    "efficientvit_b0",
    "swin_tiny_patch4_window7_224",
    "levit_128s",
    "efficientformerv2_s0",
    "fastvit_t8",
    "mobilenetv3_large_100",
    "vit_fmnist_tiny",
    "vit_tiny_window",
    "vit_tiny_linformer",
)
PRETRAINED = {"vit_fmnist_tiny"}
TARGETS = ("tflite", "onnx", "executorch")


def _loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ai-edge-litert", "onnxruntime", "executorch", "torch", "timm", "litert-torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _load_results() -> dict:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {"models": {}}


def _save(results: dict) -> None:
    on_disk = _load_results()
    on_disk["models"].update(results["models"])
    for key in ("machine", "command", "commands", "settings", "requested", "order"):
        if key in results:
            on_disk[key] = results[key]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(on_disk, indent=2, default=str) + "\n")
    RESULTS.with_suffix(".md").write_text(render(on_disk))


def _by_size(models) -> list[str]:
    from edgevit.models import get_spec

    def key(name: str) -> float:
        spec = get_spec(name)
        return getattr(spec, "gmacs", None) or 0.0

    return sorted(models, key=key)


def export_artifact(model: str, target: str, out: Path, reuse: bool) -> tuple[Path | None, dict]:
    """Export (or reuse) the fp32 artifact of ``model`` for ``target``; returns (path, record)."""
    from edgevit.converters import export
    from edgevit.converters.base import get_converter
    from edgevit.converters.export import default_artifact_name

    path = out / default_artifact_name(model, target, "fp32", get_converter(target).suffix)
    if reuse and path.exists():
        return path, {"reused": True, "path": str(path)}
    t = time.perf_counter()
    try:
        r = export(model, target, "fp32", out=path, force=True, pretrained=model in PRETRAINED)
    except Exception as exc:  # recorded and shown in the table; the other targets still run
        return None, {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "seconds": round(time.perf_counter() - t, 1)}
    finally:
        gc.collect()
    v = r.verification
    return r.path, {
        "reused": False,
        "path": str(r.path),
        "seconds": round(r.seconds, 1),
        "bytes": r.bytes,
        "verified": bool(v and v.ran and v.passed),
        "cosine_min": v.cosine_min if v else None,
        "max_abs_diff": v.max_abs_diff if v else None,
        "top1_agreement": v.top1_agreement if v else None,
        "delegated_share": r.delegation.share if r.delegation else None,
        "fallbacks": list(r.fallbacks),
    }


def run_model(model: str, args) -> dict:
    from edgevit.measure.bench import bench

    rec: dict = {"model": model, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    rec["load_avg_export_start"] = _loadavg()
    artifacts, exports = [], {}
    for target in args.targets:
        print(f"[{model}] export {target} ...", file=sys.stderr, flush=True)
        path, info = export_artifact(model, target, Path(args.out), args.reuse)
        exports[target] = info
        if path is not None:
            artifacts.append(path)
        else:
            print(f"[{model}] export {target} FAILED: {info['error']}", file=sys.stderr, flush=True)
    rec["exports"] = exports
    rec["load_avg_bench_start"] = _loadavg()
    keep = ("name", "runtime", "engine", "target", "precision", "size_bytes", "import_ms", "load_ms", "first_ms",
            "cold_start_ms", "median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "throughput", "peak_rss_mb",
            "rss_delta_mb", "top1_index", "gmacs", "efficiency_pct", "process_wall_ms")
    rounds = []
    t = time.perf_counter()
    for i in range(args.rounds):
        # Odd rounds time the artifacts in reverse order (torch eager is always last in a bench run).
        order = artifacts if i % 2 == 0 else artifacts[::-1]
        print(f"[{model}] bench round {i + 1}/{args.rounds}: {[p.name for p in order]} + torch eager ...",
              file=sys.stderr, flush=True)
        report = bench(
            order,
            torch_models=[model],
            torch_pretrained=model in PRETRAINED,
            threads=args.threads,
            warmup=args.warmup,
            runs=args.runs,
            memory_baseline=False,
            gemm=args.gemm,
            progress=lambda m: print(f"[{model}]   {m}", file=sys.stderr, flush=True),
        )
        rows = [{k: r.get(k) for k in keep} for r in report.rows]
        eager = next((r for r in rows if r["runtime"] == "torch-eager"), None)
        for r in rows:
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager and r["median_ms"] else None
        rounds.append({"order": [r["name"] for r in rows], "load_avg_end": _loadavg(), "rows": rows})
    rec["bench_seconds"] = round(time.perf_counter() - t, 1)
    rec["load_avg_bench_end"] = _loadavg()
    rec["machine"] = report.machine
    rec["settings"] = {**report.settings, "rounds": args.rounds}
    rec["rounds"] = rounds
    # One row per runtime: the median over rounds of each figure; the speed-up is the median of the
    # per-round (same-run) ratios.
    rows = []
    for first in rounds[0]["rows"]:
        same = [next(r for r in rd["rows"] if r["name"] == first["name"]) for rd in rounds]
        row = dict(first)
        for k in ("median_ms", "p90_ms", "mean_ms", "load_ms", "cold_start_ms", "peak_rss_mb", "speedup_vs_eager"):
            vals = [r[k] for r in same if r.get(k) is not None]
            row[k] = statistics.median(vals) if vals else None
        row["round_medians_ms"] = [r["median_ms"] for r in same]
        rows.append(row)
    rec["rows"] = rows
    return rec


# --------------------------------------------------------------------------------------------


def _f(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def render(results: dict) -> str:
    m = results.get("machine", {})
    s = results.get("settings", {})
    lines = [
        "# Latency: TFLite, ONNX Runtime, ExecuTorch vs torch eager (fp32, batch 1)",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('system', '?')}, Python "
        f"{m.get('python', '?')}. {s.get('threads', 2)} threads for every runtime; batch 1; per bench run "
        f"{s.get('warmup', '?')} warm-up runs, then median and p90 of {s.get('runs', '?')} timed runs on one real "
        f"photo ({s.get('image', '?')}); {s.get('rounds', 1)} bench run(s) per model, every figure is the median "
        "over them (per-round medians in their own column). Versions: "
        + (", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) or "?") + ".",
        "",
        "**Shared machine.** The 2 cores were shared with other heavy jobs (an export run of the support matrix "
        "and another benchmark) for the whole run; the load average (1 min) is given per model before and after "
        "its bench run. Absolute milliseconds are therefore inflated and noisy; read the *same-run ratio* "
        "(speed-up vs torch eager, measured minutes apart in one bench run), not differences across models.",
        "",
        "**Order, not interleaved.** `edgevit.measure.bench` times each artifact in its own fresh process, one after "
        "the other, then torch eager (`OMP_WAIT_POLICY=PASSIVE`) last. Rounds 1 and 3 run TFLite, ONNX, "
        "ExecuTorch; round 2 the reverse. Each runtime's timed runs are consecutive, so a load burst hits one "
        "runtime rather than all alike; that is why there are several rounds (see e.g. efficientvit_b0 and "
        "swin torch eager, or levit_128s ExecuTorch: one round off by 2-3x).",
        "",
        "**CoreML is not measured:** coremltools converts on Linux but `.mlpackage` prediction needs macOS.",
        "",
        "**ExecuTorch load time includes importing torch:** ExecuTorch's Python bindings need torch loaded "
        "(`runtimes/executorch.py`), and edgevit imports them lazily in `load()`, so the ExecuTorch load "
        "column (and its peak RSS) carries torch's import (seconds under this load); loading the program "
        "itself takes ~0.1-0.4 s. A C++/Android ExecuTorch runtime pays neither.",
        "",
        "**Weights:** vit_fmnist_tiny uses its shipped Fashion-MNIST weights (torch eager too); every other "
        "model is randomly initialised *per export* (unseeded), so the three artifacts of one model hold "
        "different random weights and may disagree on the top-1 class. Latency does not depend on the values; "
        "each artifact was verified against its own float model (cos min column).",
        "",
        "**p90 vs median:** on 2 oversubscribed cores a timed run is sometimes preempted for a scheduler "
        "time slice (several ms), which dominates p90 of the sub-millisecond models.",
        "",
        "Columns: speed-up = median over rounds of (torch eager median / this median) in the same bench run "
        "(> 1 is faster than eager); load = "
        "`edgevit.runtimes.load()` (file to ready interpreter/session, torch: `create_model`); peak RSS = "
        "the worker process's VmHWM after all runs (includes the Python interpreter and the runtime's "
        "imports); size = artifact on disk (torch: parameters + buffers). Export s = export + verification "
        "wall time (under load).",
        "",
        f"Reproduce: `{results.get('command', 'python benchmarks/latency.py')}`"
        + "".join(f"; then `{c}`" for c in results.get("commands", [])[1:]),
        "",
        "| model | GMACs | runtime | median ms | p90 ms | speed-up vs eager | median per round ms | load ms | peak RSS MB | size MB "
        "| export s | verified (cos min) | load avg before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = results.get("order") or list(results["models"])
    notes = []
    for name in order:
        rec = results["models"].get(name)
        if not rec:
            continue
        if rec.get("error"):
            lines.append(f"| {name} | - | (failed) | - | - | - | - | - | - | - | - | {rec['error'][:120]} | - |")
            continue
        la0 = (rec.get("load_avg_bench_start") or [None])[0]
        la1 = (rec.get("load_avg_bench_end") or [None])[0]
        la = f"{_f(la0, '{:.1f}')} / {_f(la1, '{:.1f}')}"
        exports = rec.get("exports", {})
        by_target = {r.get("target"): r for r in rec["rows"]}
        for target in [*TARGETS, "torch"]:
            r = by_target.get(target)
            ex = exports.get(target, {})
            if r is None:
                if target in exports and ex.get("error"):
                    lines.append(f"| {name} | - | {target} | export failed | - | - | - | - | - | - | "
                                 f"{_f(ex.get('seconds'), '{:.0f}')} | {ex['error'][:160].replace('|', '/')} | {la} |")
                continue
            runtime = "torch eager" if target == "torch" else f"{r['runtime']}"
            if ex.get("reused") and ex.get("seconds") is None:
                exp_s, ver = "reused", "-"
            elif target == "torch":
                exp_s, ver = "-", "(reference)"
            else:
                exp_s = _f(ex.get("seconds"), "{:.0f}")
                ver = ("yes" if ex.get("verified") else "NO") + f" ({_f(ex.get('cosine_min'), '{:.6f}')})"
            lines.append(
                f"| {name} | {_f(r.get('gmacs'), '{:.3f}')} | {runtime} | {_f(r['median_ms'], '{:.2f}')} | "
                f"{_f(r['p90_ms'], '{:.2f}')} | {_f(r.get('speedup_vs_eager'), '{:.2f}x')} | "
                f"{', '.join(f'{v:.1f}' for v in r.get('round_medians_ms') or [r['median_ms']])} | "
                f"{_f(r['load_ms'], '{:.0f}')} | {_f(r['peak_rss_mb'], '{:.0f}')} | "
                f"{_f(r['size_bytes'] / 1e6 if r.get('size_bytes') else None, '{:.2f}')} | {exp_s} | {ver} | {la} |"
            )
        for n in rec.get("notes", []):
            notes.append(f"- {name}: {n}")
    missing = [n for n in results.get("requested", []) if n not in results["models"]]
    if missing:
        notes.append("- not run (time box): " + ", ".join(missing))
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--out", default="/tmp/edgevit-latency", help="artifact folder")
    p.add_argument("--reuse", action="store_true", help="time artifacts already in --out instead of re-exporting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1,
                   help="bench runs per model (odd ones time the artifacts in reverse order); figures are medians over rounds")
    p.add_argument("--gemm", action="store_true", help="also measure the GEMM peak (efficiency column in the JSON)")
    p.add_argument("--deadline", metavar="HH:MM", help="UTC time after which no further model is started")
    p.add_argument("--render", action="store_true", help="only re-render latency.md from latency.json")
    args = p.parse_args(argv)
    if args.render:
        RESULTS.with_suffix(".md").write_text(render(_load_results()))
        return 0
    if args.runs < 20:
        p.error("--runs must be >= 20 (the issue asks for the median of at least 20 runs)")
    from edgevit.measure.results import host_info

    models = _by_size(args.models)
    results = _load_results()
    # A partial run (--models a subset) adds to / replaces rows of the table; it never drops others.
    everything = _by_size(dict.fromkeys([*results.get("requested", []), *models]))
    results["requested"] = everything
    results["order"] = everything
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results["commands"] = [*results.get("commands", []), command]
    results["command"] = results["commands"][0]
    results["machine"] = {**host_info(), "platform": platform.platform(), "versions": _versions()}
    results["settings"] = {"threads": args.threads, "warmup": args.warmup, "runs": args.runs}
    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if deadline <= now:  # the next HH:MM (a run may cross midnight)
            deadline += dt.timedelta(days=1)
    for model in models:
        if deadline is not None:
            if dt.datetime.now(dt.timezone.utc) >= deadline:
                print(f"deadline {args.deadline} UTC reached; not run: {model}", file=sys.stderr)
                continue
        try:
            rec = run_model(model, args)
        except Exception as exc:
            traceback.print_exc()
            rec = {"model": model, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "load_avg": _loadavg()}
        old = results["models"].get(model)
        if old and not old.get("error"):  # kept in the JSON: a rerun replaces the row, not the history
            for target, info in rec.get("exports", {}).items():  # a reused artifact keeps its export's record
                prev = old.get("exports", {}).get(target, {})
                if info.get("reused") and prev.get("seconds") is not None:
                    rec["exports"][target] = {**prev, "reused": True}
            rec["previous_runs"] = [*old.pop("previous_runs", []), old]
        results["models"][model] = rec
        results["settings"].update(rec.get("settings", {}))
        _save(results)
        for r in rec.get("rows", []):
            print(f"[{model}] {r['runtime']:12s} median {r['median_ms']:.2f} ms  p90 {r['p90_ms']:.2f}  "
                  f"x{r['speedup_vs_eager']:.2f} vs eager", file=sys.stderr, flush=True)
    _save(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
