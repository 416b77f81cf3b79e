"""int8 that is never slower than fp32, exported in about a minute (issue #17, items 2 and 4).

One command per table; each writes ``benchmarks/results/int8_speed.{json,md}``::

    python benchmarks/int8_speed.py all            # every table below
    python benchmarks/int8_speed.py export         # DeiT-Tiny int8 export time per target: one calibration pass vs one per candidate
    python benchmarks/int8_speed.py latency        # every optimized precision vs its fp32 twin, per target, interleaved
    python benchmarks/int8_speed.py onnx-recipes   # ONNX Runtime int8 choices, each measured (format, activation type, ops)
    python benchmarks/int8_speed.py render         # re-render the .md from the .json

    # a part: --models / --targets; --runs N for the latency loops
    python benchmarks/int8_speed.py export --targets onnx

``export``: each export runs in a fresh process (imports included, as a user's ``edgevit export``
would; wall and CPU seconds, the CPU figure being the one to compare on a shared machine), the two modes alternating (cached, uncached, cached, ...) so machine load hits both alike;
"uncached" switches each target's ``_CALIBRATION_CACHE`` off: every search candidate is calibrated
afresh, which is what the search did before. Weights: seeded, non-degenerate
(``benchmarks/_weights.py``); calibration: 48 crops of the installed real photos (so the search
judges by cosine, ``min_cosine`` 0.99, the default). The chosen mix and the fidelity of both modes
are recorded: they must be equal.

``latency``: fp32, fp16 (where the target has it), int8-dynamic and int8 of each model/target are
exported (speed check off) and timed interleaved in one loop (batch 1, 2 threads, median of
``--runs``); the export's own speed check (2 s) is recorded beside it.

``onnx-recipes``: the choices ONNX Runtime's static int8 offers on x86, each on the same float
graph and calibration ranges: QDQ vs QOperator, s8 vs u8 activations (MLAS's VNNI/AVX2 kernels take
u8 activations x s8 weights), which op types are quantized (linears only, or also Add/Mul), the
attention matmuls in int8 or float, dynamic MatMul/Gemm, ONNX Runtime's graph optimization level;
with the op types ONNX Runtime's optimized graph (``session.optimized_model_filepath``) holds, the
cosine to fp32 on held-out photo crops and the speed-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "int8_speed.json"
MODELS = ("deit_tiny_patch16_224", "mobilevit_xxs")
TARGETS = ("tflite", "executorch", "onnx")
PRECISIONS = {"tflite": ("fp16", "int8-dynamic", "int8"), "executorch": ("int8-dynamic", "int8"),
              "onnx": ("fp16", "int8-dynamic", "int8")}
THREADS = 2


def _load() -> dict:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {"export": {}, "latency": {}, "onnx_recipes": {}}


def _save(results: dict) -> None:
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                          "updated": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    RESULTS.with_suffix(".md").write_text(render(results))


def _store(results: dict, section: str, model: str, target: str | None, rows: dict) -> None:
    """Write one row over what the file holds now (another run may have written it since this one
    read it), and keep ``results`` equal to the file."""
    fresh = _load()
    if target is None:
        fresh.setdefault(section, {})[model] = rows
    else:
        fresh.setdefault(section, {}).setdefault(model, {})[target] = rows
    results.clear()
    results.update(fresh)
    _save(results)


def _calibration(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _weights import photo_crops  # the speed table's calibration: crops of the installed photos

    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        photo_crops(folder)
    return folder


# ------------------------------------------------------------------------------------------------
# export time: one process per export


def _one_export(args: argparse.Namespace) -> None:
    """(child process) one int8 export; prints a JSON line."""
    t0 = time.perf_counter()
    import importlib

    import edgevit.converters  # noqa: F401  (imports timed with the export, as a user's command)
    from edgevit.converters import export

    if args.uncached:
        importlib.import_module(f"edgevit.converters.{args.target}")._CALIBRATION_CACHE = False
    r = export(args.model, args.target, "int8", out=Path(args.out), force=True, weights=args.weights,
               calibration=args.calibration, options={"speed_check": False})
    q = r.details["quantization"]
    s = q.get("search", {})
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"wall_seconds": round(time.perf_counter() - t0, 1), "export_seconds": round(r.seconds, 1),
                                  "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                                  "search_seconds": s.get("seconds"), "evaluations": s.get("evaluations"),
                                  "kept": s.get("kept"), "final": s.get("final"), "met": s.get("met"),
                                  "verification": r.verification.summary() if r.verification else None}))


def bench_export(models, targets, results: dict, repeats: int, modes=("cached", "uncached")) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _weights import bench_weights

    with tempfile.TemporaryDirectory() as tmp:
        calib = _calibration(Path(tmp) / "calibration")
        for model in models:
            weights = bench_weights(model, Path(tmp))
            for target in targets:
                rows: dict = {"cached": [], "uncached": []}
                for i in range(repeats):
                    for mode in modes if i % 2 == 0 else modes[::-1]:
                        cmd = [sys.executable, __file__, "_one", "--model", model, "--target", target,
                               "--weights", str(weights), "--calibration", str(calib), "--out", str(Path(tmp) / mode)]
                        cmd += ["--uncached"] if mode == "uncached" else []
                        print(f"[int8_speed] {model} {target} {mode} ...", file=sys.stderr, flush=True)
                        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
                        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
                        rows[mode].append(json.loads(line[7:]) if line else {"error": done.stderr.strip()[-600:]})
                        print(f"[int8_speed]   {json.dumps(rows[mode][-1])}", file=sys.stderr, flush=True)
                rows["load_average_after"] = os.getloadavg()
                previous = _load()["export"].get(model, {}).get(target, {})
                for mode in ("cached", "uncached"):  # a mode not run now keeps its earlier figures
                    if not rows[mode] and previous.get(mode):
                        rows[mode] = previous[mode]
                _store(results, "export", model, target, rows)


# ------------------------------------------------------------------------------------------------
# latency against the fp32 twin


def bench_latency(models, targets, results: dict, runs: int) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _weights import bench_weights

    from edgevit.converters import export
    from edgevit.converters.quantize import compare_latency
    from edgevit.runtimes import load

    with tempfile.TemporaryDirectory() as tmp:
        calib = _calibration(Path(tmp) / "calibration")
        for model in models:
            weights = bench_weights(model, Path(tmp))
            for target in targets:
                paths, rows = {}, {}
                for precision in ("fp32", *PRECISIONS[target]):
                    print(f"[int8_speed] {model} {target} {precision} ...", file=sys.stderr, flush=True)
                    try:
                        r = export(model, target, precision, out=Path(tmp) / f"{model}-{target}-{precision}", force=True,
                                   weights=weights, calibration=calib if precision == "int8" else None, verify=False,
                                   options=None if precision == "fp32" else {"compare_fp32": False})
                    except Exception as exc:  # record and go on
                        rows[precision] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                        continue
                    paths[precision] = r.path
                    rows[precision] = {"bytes": r.bytes, "speed_check": r.details.get("speed_check"),
                                       "op_types": r.details.get("op_types")}
                x = np.zeros(load(paths["fp32"]).metadata.input_shape(1), np.float32)
                before = os.getloadavg()
                latency = compare_latency(paths, target, x, runs=runs, warmup=5, threads=THREADS)
                for precision, ms in latency.items():
                    rows[precision]["latency_ms"] = round(ms, 2)
                    rows[precision]["speedup_vs_fp32"] = round(latency["fp32"] / ms, 2)
                rows["_timing"] = {"runs": runs, "threads": THREADS, "load_average_before": before,
                                   "load_average_after": os.getloadavg()}
                _store(results, "latency", model, target, rows)


# ------------------------------------------------------------------------------------------------
# ONNX Runtime int8 choices


def bench_onnx_recipes(models, results: dict, runs: int) -> None:
    from collections import Counter

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    sys.path.insert(0, str(REPO / "benchmarks"))
    from _weights import bench_weights

    from edgevit.converters import export
    from edgevit.data.calibration import load_calibration
    from edgevit.runtimes import load

    lin, all5 = ["Conv", "MatMul", "Gemm"], ["Conv", "MatMul", "Gemm", "Add", "Mul"]
    qdq, qop, s8, u8 = QuantFormat.QDQ, QuantFormat.QOperator, QuantType.QInt8, QuantType.QUInt8
    choices = {  # name: (op types, format, activation type, attention matmuls in int8)
        "QDQ s8 act, linears+Add+Mul, attention float (the recipe before)": (all5, qdq, s8, False),
        "QDQ u8 act, linears+Add+Mul, attention float": (all5, qdq, u8, False),
        "QDQ u8 act, linears, attention float": (lin, qdq, u8, False),
        "QOperator u8 act, linears, attention float": (lin, qop, u8, False),
        "QOperator u8 act, linears+Add+Mul, attention float": (all5, qop, u8, False),
        "QDQ u8 act, linears, attention int8": (lin, qdq, u8, True),
        "QOperator u8 act, linears, attention int8": (lin, qop, u8, True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        calib_dir = _calibration(Path(tmp) / "calibration")
        for model in models:
            out = Path(tmp) / model
            out.mkdir()
            fp32 = export(model, "onnx", "fp32", out=out / "fp32.onnx", weights=bench_weights(model, Path(tmp)), verify=False).path
            cal = load_calibration(calib_dir, load(fp32).metadata, 48).inputs
            proto = onnx.load(str(fp32))
            del proto.metadata_props[:]
            src = out / "float.onnx"
            onnx.save(proto, str(src))
            consts = {t.name for t in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
            attention = [n.name for n in proto.graph.node if n.op_type == "MatMul" and sum(i not in consts for i in n.input[:2]) == 2]

            class Reader:
                def __init__(self):
                    self.i = 0

                def get_next(self):
                    if self.i >= 32:
                        return None
                    self.i += 16
                    return {"input": cal[self.i - 16 : self.i]}

            files = {"fp32": src}
            for name, (ops, fmt, act, attn) in choices.items():
                files[name] = out / f"{len(files)}.onnx"
                quantize_static(src, files[name], Reader(), quant_format=fmt, per_channel=True, activation_type=act,
                                weight_type=s8, op_types_to_quantize=ops, calibrate_method=CalibrationMethod.MinMax,
                                nodes_to_exclude=[] if attn else attention,
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                                calibration_cache_path=out / f"ranges-{len(ops)}.json")
            files["dynamic MatMul/Gemm (u8 act, per-call ranges)"] = out / "dynamic.onnx"
            quantize_dynamic(src, files["dynamic MatMul/Gemm (u8 act, per-call ranges)"], per_channel=True,
                             weight_type=s8, op_types_to_quantize=["MatMul", "Gemm"])
            chosen = "QDQ u8 act, linears+Add+Mul, attention float"  # edgevit's recipe before its search
            levels = {f"{chosen}, graph optimization {lv}": getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{lv}")
                      for lv in ("BASIC", "EXTENDED")}
            for name in levels:
                files[name] = files[chosen]
            sessions = {}
            for name, path in files.items():
                o = ort.SessionOptions()
                o.intra_op_num_threads, o.inter_op_num_threads = THREADS, 1
                o.log_severity_level = 3
                o.graph_optimization_level = levels.get(name, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
                o.optimized_model_filepath = str(out / f"{len(sessions)}.opt.onnx")
                sessions[name] = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
            held_out = cal[32:48]
            ref = np.concatenate([sessions["fp32"].run(None, {"input": x[None]})[0] for x in held_out])
            rows = {}
            times: dict = {n: [] for n in sessions}
            names = list(sessions)
            for i in range(runs + 3):
                for n in names if i % 2 == 0 else names[::-1]:
                    t = time.perf_counter()
                    sessions[n].run(None, {"input": cal[:1]})
                    if i >= 3:
                        times[n].append((time.perf_counter() - t) * 1000)
            base = float(np.median(times["fp32"]))
            for k, (n, path) in enumerate(files.items()):
                y = np.concatenate([sessions[n].run(None, {"input": x[None]})[0] for x in held_out])
                cos = (ref * y).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(y, axis=1)
                ops = Counter(nd.op_type for nd in onnx.load(str(out / f"{k}.opt.onnx")).graph.node)
                ms = float(np.median(times[n]))
                rows[n] = {"latency_ms": round(ms, 2), "speedup_vs_fp32": round(base / ms, 2), "cosine_mean": round(float(cos.mean()), 5),
                           "bytes": path.stat().st_size, "optimized_op_types": dict(ops.most_common(10))}
            rows["_timing"] = {"runs": runs, "threads": THREADS, "load_average_after": os.getloadavg(),
                               "cosine_on": f"{len(held_out)} held-out photo crops"}
            _store(results, "onnx_recipes", model, None, rows)


# ------------------------------------------------------------------------------------------------


def _med(rows: list, key: str):
    values = [r[key] for r in rows if key in r]
    return float(np.median(values)) if values else None


def render(results: dict) -> str:
    m = results.get("machine", {})
    lines = ["# int8 speed: never slower than fp32, exported in about a minute", "",
             "Reproduce: `python benchmarks/int8_speed.py all` (or one table: `export`, `latency`, `onnx-recipes`).", "",
             f"Machine: {m.get('platform')}, {m.get('cpus')} CPUs (load average {m.get('load_average')} at the last update, "
             f"{m.get('updated')}). Figures from a shared machine are only good as ratios within one run.", ""]
    if results.get("export"):
        lines += ["## int8 export time: one calibration pass vs one per search candidate", "",
                  "Fresh process per export (imports included), modes alternating; median seconds of the runs. "
                  "Same kept groups and fidelity expected in both columns.", "",
                  "| model | target | one pass (s) | per candidate (s) | speed-up | CPU s (one pass / per candidate) | evaluations | kept out of int8 (one pass / per candidate) | cosine (one pass / per candidate) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for model, per in results["export"].items():
            for target, rows in per.items():
                a, b = _med(rows["cached"], "wall_seconds"), _med(rows["uncached"], "wall_seconds")
                ka = rows["cached"][0].get("kept") if rows["cached"] else None
                kb = rows["uncached"][0].get("kept") if rows["uncached"] else None
                ca = (rows["cached"][0].get("final") or {}).get("cosine_mean") if rows["cached"] else None
                cb = (rows["uncached"][0].get("final") or {}).get("cosine_mean") if rows["uncached"] else None
                ev = rows["cached"][0].get("evaluations") if rows["cached"] else None
                cpu = f"{_med(rows['cached'], 'cpu_seconds')} / {_med(rows['uncached'], 'cpu_seconds')}"
                lines.append(f"| {model} | {target} | {a} | {b} | {f'{b / a:.2f}x' if a and b else '-'} | {cpu} | {ev} | {ka} / {kb} | {ca} / {cb} |")
        lines.append("")
    if results.get("latency"):
        lines += ["## Optimized artifacts against their fp32 twin", "",
                  "One interleaved loop per model x target (batch 1, 2 threads); `speed check` is the export's own 2-second check.", "",
                  "| model | target | precision | latency ms | vs fp32 | export's speed check | slower? |", "|---|---|---|---|---|---|---|"]
        for model, per in results["latency"].items():
            for target, rows in per.items():
                for precision, row in rows.items():
                    if precision.startswith("_"):
                        continue
                    sc = row.get("speed_check") or {}
                    check = f"{sc['speedup']:.2f}x" if sc else "-"
                    lines.append(f"| {model} | {target} | {precision} | {row.get('latency_ms', row.get('error', '-'))} | "
                                 f"{row.get('speedup_vs_fp32', '-')}x | {check} | {'yes' if sc.get('slower') else 'no' if sc else '-'} |")
        lines.append("")
    if results.get("onnx_recipes"):
        lines += ["## ONNX Runtime int8 choices on this CPU", "",
                  "Same float graph (edgevit's rewrites) and calibration; per-channel s8 weights throughout.", "",
                  "| model | choice | latency ms | vs fp32 | cosine | size MiB | optimized graph (top ops) |", "|---|---|---|---|---|---|---|"]
        for model, rows in results["onnx_recipes"].items():
            for name, row in rows.items():
                if name.startswith("_"):
                    continue
                ops = ", ".join(f"{k} {v}" for k, v in list(row["optimized_op_types"].items())[:6])
                lines.append(f"| {model} | {name} | {row['latency_ms']} | {row['speedup_vs_fp32']}x | {row['cosine_mean']} | "
                             f"{row['bytes'] / 2**20:.2f} | {ops} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", choices=("all", "export", "latency", "onnx-recipes", "render", "_one"))
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--targets", nargs="+", default=list(TARGETS))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=1, help="exports per mode (export table)")
    p.add_argument("--modes", nargs="+", default=["cached", "uncached"], choices=("cached", "uncached"),
                   help="export table: one calibration pass (cached, now) and/or one per candidate (uncached, before)")
    # _one (child process)
    p.add_argument("--model"), p.add_argument("--target"), p.add_argument("--weights"), p.add_argument("--calibration")
    p.add_argument("--out"), p.add_argument("--uncached", action="store_true")
    args = p.parse_args(argv)
    if args.table == "_one":
        _one_export(args)
        return 0
    results = _load()
    if args.table in ("export", "all"):
        bench_export(args.models or MODELS[:1], args.targets, results, args.repeats, tuple(args.modes))
    if args.table in ("latency", "all"):
        bench_latency(args.models or MODELS, args.targets, results, args.runs)
    if args.table in ("onnx-recipes", "all"):
        bench_onnx_recipes(args.models or MODELS, results, args.runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".md").write_text(render(_load()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
