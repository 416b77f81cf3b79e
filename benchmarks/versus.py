"""edgevit against the plain conversions and OpenVINO: one table, generated (issue #17, item 5).

For each model: the plain conversions (the official converters with ``--option rewrite=false``),
edgevit's fp32 artifacts (rewrites on) and its int8 artifacts (ViT-aware, calibrated on crops of the
installed real photos) on TFLite, ExecuTorch and ONNX; OpenVINO compiling the same ONNX files when
``openvino`` is installed (``pip install -e .[bench-peers]``); torch eager. Everything is timed
*interleaved in fresh processes*: each round runs every artifact once, in order that alternates
between rounds, each in a process of its own (load, warm up, ``--runs`` timed batch-1 runs on
``--threads`` threads, median); the table gives the median over ``--rounds`` rounds, so machine
load and cache state hit every entry alike. Weights: seeded, non-degenerate (``_weights.py``).

    python benchmarks/versus.py                                   # the four models of the issue
    python benchmarks/versus.py --models deit_tiny_patch16_224 --rounds 3 --runs 30
    python benchmarks/versus.py --phase export                    # exports only (resumable, any machine)
    python benchmarks/versus.py --phase time --readme             # then time them on a quiet machine
    python benchmarks/versus.py --render                          # re-render from the .json
    python benchmarks/versus.py --readme                          # ... and write the README table

Writes ``benchmarks/results/versus.{json,md}``; ``--readme`` replaces the README's table between
``<!-- versus:start -->`` and ``<!-- versus:end -->``. Run it on a quiet machine: the figures of a
busy one are only good as ratios within one run.
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
RESULTS = REPO / "benchmarks" / "results" / "versus.json"
README = REPO / "README.md"
MODELS = ("deit_tiny_patch16_224", "mobilevit_xxs", "efficientvit_b0", "swin_tiny_patch4_window7_224")
TARGETS = ("tflite", "executorch", "onnx")
START, END = "<!-- versus:start -->", "<!-- versus:end -->"
TOKENS = "pool:6"  # 2x2 pooling of the patch grid before block 6 of 12 (196 -> 49 tokens; benchmarks/tokens.py)
TOKENS_LABEL = f"+tokens {TOKENS}"
ARTIFACTS = Path.home() / ".cache" / "edgevit" / "versus"


def _log(msg: str) -> None:
    print(f"[versus] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# exports


def export_all(model: str, out: Path, calibration: Path, weights: Path) -> dict[str, dict]:
    """Every artifact of ``model``: {label: {"kind", "path", "target", "precision", ...}}."""
    from edgevit.converters import export

    plan = []
    for target in TARGETS:
        plan.append((f"plain {target} fp32", target, "fp32", {"rewrite": False}))
        plan.append((f"edgevit {target} fp32", target, "fp32", None))
        plan.append((f"edgevit {target} int8", target, "int8", {"speed_check": False}))
    # token reduction (issue #17, item 1): plain ViTs only; export refuses the others (recorded, a "-" cell)
    plan.append((f"edgevit tflite int8 {TOKENS_LABEL}", "tflite", "int8", {"speed_check": False, "tokens": TOKENS}))
    manifest = out / "entries.json"
    entries: dict[str, dict] = json.loads(manifest.read_text()) if manifest.is_file() else {}
    for label, target, precision, options in plan:
        if Path(entries.get(label, {}).get("path", "/nonexistent")).exists():
            _log(f"{model}: {label} already exported ({entries[label]['export_seconds']} s), kept")
            continue
        _log(f"{model}: export {label}")
        t = time.perf_counter()
        try:
            r = export(model, target, precision, out=out / label.replace(" ", "_"), force=True, weights=weights,
                       calibration=calibration if precision == "int8" else None, options=options)
        except Exception as exc:  # record and go on: one failure must not end the run
            entries[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        entries[label] = {"kind": "edgevit", "path": str(r.path), "target": target, "precision": precision,
                          "bytes": r.bytes, "export_seconds": round(time.perf_counter() - t, 1),
                          "load_average": os.getloadavg()[0],
                          "verified": bool(r.verification and r.verification.passed),
                          "kept_out_of_int8": (r.details.get("quantization", {}).get("search") or {}).get("kept"),
                          "tokens": (r.details.get("tokens") or {}).get("tokens")}
        out.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(entries, indent=1))  # after each export: a stopped run resumes here
    return entries


def with_peers(model: str, entries: dict[str, dict], weights: Path) -> dict[str, dict]:
    """``entries`` plus the peers timed beside them: OpenVINO on both ONNX files, torch eager."""
    entries = dict(entries)
    if _has_openvino():
        # OpenVINO computes in bf16 by default on a CPU with bf16 instructions (this one has AVX512-BF16):
        # f32 is the same-precision peer; its default is timed too, as what a user of it gets.
        for source in ("plain onnx fp32", "edgevit onnx fp32"):
            if "path" in entries.get(source, {}):
                entries[f"OpenVINO f32 ({source.split()[0]} ONNX)"] = {"kind": "openvino", "path": entries[source]["path"],
                                                                      "precision": "f32"}
        if "path" in entries.get("plain onnx fp32", {}):
            entries["OpenVINO default (plain ONNX)"] = {"kind": "openvino", "path": entries["plain onnx fp32"]["path"],
                                                        "precision": None}
    else:
        _log("openvino is not installed (pip install -e .[bench-peers]): no OpenVINO column")
    entries["torch eager"] = {"kind": "torch", "model": model, "weights": str(weights)}
    return entries


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


# ------------------------------------------------------------------------------------------------
# timing: one fresh process per measurement


def _time_child(args: argparse.Namespace) -> None:
    """(child process) load one entry, warm up, time ``runs`` batch-1 runs; print the median ms."""
    entry = json.loads(args.entry)
    threads, runs = args.threads, args.runs
    if entry["kind"] == "edgevit":
        from edgevit.runtimes import load

        rt = load(entry["path"], threads=threads)
        x = np.zeros(rt.metadata.input_shape(1), np.uint8 if rt.metadata.input_dtype == "uint8" else np.float32)
        run = lambda: rt.run(x)  # noqa: E731
    elif entry["kind"] == "openvino":
        import openvino as ov

        from edgevit.runtimes import load

        meta = load(entry["path"]).metadata
        x = np.zeros(meta.input_shape(1), np.float32)
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if entry.get("precision"):
            config["INFERENCE_PRECISION_HINT"] = entry["precision"]
        compiled = ov.Core().compile_model(entry["path"], "CPU", config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        print("OPENVINO_PRECISION " + (hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)))
        request = compiled.create_infer_request()
        run = lambda: request.infer({0: x})  # noqa: E731
    else:
        import torch

        import edgevit.converters  # noqa: F401  (timm's import needs edgevit's compatibility step first)
        from edgevit.models import create_model, get_spec
        from edgevit.models.weights import load_weights

        torch.set_num_threads(threads)
        net = create_model(entry["model"]).eval()
        load_weights(net, entry["weights"])
        size = get_spec(entry["model"]).input_size
        x = torch.zeros(1, 3, *size)

        def run():
            with torch.inference_mode():
                net(x)
    for _ in range(5):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    print("RESULT " + json.dumps({"median_ms": float(np.median(times)), "min_ms": float(np.min(times))}))


def time_all(entries: dict[str, dict], rounds: int, runs: int, threads: int) -> dict[str, list[float]]:
    labels = [k for k, v in entries.items() if "kind" in v]
    figures: dict[str, list[float]] = {k: [] for k in labels}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    for i in range(rounds):
        for label in labels if i % 2 == 0 else labels[::-1]:
            cmd = [sys.executable, __file__, "_time", "--entry", json.dumps(entries[label]), "--runs", str(runs),
                   "--threads", str(threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            ov = next((ln.split(" ", 1)[1] for ln in done.stdout.splitlines() if ln.startswith("OPENVINO_PRECISION ")), None)
            if ov:
                entries[label]["computes_in"] = ov
            if line:
                figures[label].append(json.loads(line[7:])["median_ms"])
            else:
                entries[label].setdefault("timing_errors", []).append(done.stderr.strip()[-300:])
            _log(f"round {i + 1}/{rounds} {label}: {figures[label][-1] if line else 'failed'}")
    return figures


# ------------------------------------------------------------------------------------------------
# the table


def _best(row: dict, prefix: str, precision: str) -> tuple[str, float] | None:
    cands = [(label, ms) for label, ms in row["median_ms"].items()
             if label.startswith(prefix) and label.endswith(precision) and ms is not None]
    return min(cands, key=lambda lm: lm[1]) if cands else None


def render(results: dict) -> str:
    m = results.get("machine", {})
    lines = ["| model | best plain fp32 | OpenVINO f32 (same ONNX) | edgevit fp32 best | edgevit int8 TFLite | int8 ExecuTorch "
             f"| int8 ONNX | int8 TFLite {TOKENS_LABEL} | OpenVINO default | torch eager |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    slower, exports = [], []
    for model, row in results.get("models", {}).items():
        ms = row["median_ms"]
        plain = _best(row, "plain", "fp32")
        base = plain[1] if plain else None

        def cell(value, name=""):
            if value is None:
                return "-"
            up = f" ({base / value:.2f}x)" if base else ""
            return f"{name}{value:.2f}{up}"

        ov = min((v for k, v in ms.items() if k.startswith("OpenVINO f32") and v is not None), default=None)
        ov_default = ms.get("OpenVINO default (plain ONNX)")
        ov_type = (row.get("entries", {}).get("OpenVINO default (plain ONNX)") or {}).get("computes_in")
        fp32 = _best(row, "edgevit", "fp32")
        lines.append("| " + " | ".join([
            model,
            f"{plain[0].split()[1]} {plain[1]:.2f}" if plain else "-",
            cell(ov),
            cell(fp32[1], f"{fp32[0].split()[1]} ") if fp32 else "-",
            cell(ms.get("edgevit tflite int8")), cell(ms.get("edgevit executorch int8")), cell(ms.get("edgevit onnx int8")),
            cell(ms.get(f"edgevit tflite int8 {TOKENS_LABEL}")),
            cell(ov_default) + (f" {ov_type}" if ov_type and ov_default is not None else ""),
            f"{ms['torch eager']:.1f}" if ms.get("torch eager") is not None else "-",
        ]) + " |")
        for target in TARGETS:  # the rule: no edgevit artifact slower than its fp32 twin
            q, f = ms.get(f"edgevit {target} int8"), ms.get(f"edgevit {target} fp32")
            if q is not None and f is not None and q > f:
                slower.append(f"{model} {target} int8 {q:.2f} ms vs fp32 {f:.2f} ms")
        entries = row.get("entries", {})
        secs = [f"{e['target']} {e['export_seconds']:.0f} s" for label, e in entries.items()
                if label.startswith("edgevit") and label.endswith("int8") and e.get("export_seconds") is not None]
        if secs:
            exports.append(f"{model}: " + ", ".join(secs))
    note = (f"Median ms, batch 1, {results.get('threads', 2)} threads, median of {results.get('rounds')} interleaved rounds of "
            f"fresh processes ({results.get('runs')} runs each); speed-up over the best plain fp32 conversion (the official "
            f"converter with `--option rewrite=false`). Seeded non-degenerate weights; int8 calibrated on crops of the "
            f"installed photos. `{TOKENS_LABEL}`: 2 x 2 pooling of the patch grid before block 6 (196 -> 49 tokens), a "
            f"changed model that needs a recovery fine-tune (`benchmarks/tokens.py` measures its accuracy); plain ViTs only. "
            f"OpenVINO default: no precision hint, which on a CPU with bf16 instructions computes in bf16 (not the "
            f"precision of the other columns). Machine: {m.get('platform')}, {m.get('cpus')} CPUs, load average {m.get('load_average')} "
            f"({m.get('updated')}). Reproduce: `python benchmarks/versus.py --readme`.")
    twin = ("int8 slower than its edgevit fp32 twin: " + ("; ".join(slower) if slower else "none") + ".")
    times = ("int8 export wall time (ViT-aware search included; the exports need not run on a quiet machine, so these are "
             "as measured): " + "; ".join(exports) + ".") if exports else ""
    return "\n".join(lines) + "\n\n" + note + "\n\n" + twin + ("\n\n" + times if times else "") + "\n"


def write_readme(table: str) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table}{END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", default="run", choices=("run", "_time"))
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--phase", choices=("all", "export", "time"), default="all",
                   help="export only (any machine; resumable), time only (a quiet machine), or both")
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS, help=f"where the exports are kept (default {ARTIFACTS})")
    p.add_argument("--render", action="store_true", help="only re-render from the saved results")
    p.add_argument("--readme", action="store_true", help="write the table into README.md between the versus markers")
    p.add_argument("--entry", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.command == "_time":
        _time_child(args)
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"models": {}}
    if not args.render:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _weights import bench_weights
        from _weights import photo_crops

        calibration = args.artifacts / "calibration"
        if not calibration.is_dir():
            args.artifacts.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=args.artifacts, prefix=".calibration-"))
            photo_crops(tmp)
            os.replace(tmp, calibration)
        for model in args.models:  # exports first (no timing: a busy machine does not matter here)
            if args.phase in ("all", "export"):
                export_all(model, args.artifacts / model, calibration, bench_weights(model, args.artifacts))
        for model in args.models:  # then the timing, all of it after the exports: run it on a quiet machine
            if args.phase == "export":
                break
            manifest = args.artifacts / model / "entries.json"
            if not manifest.is_file():
                _log(f"no exports of {model} under {args.artifacts} (run --phase export first): not timed")
                continue
            entries = with_peers(model, json.loads(manifest.read_text()), bench_weights(model, args.artifacts))
            figures = time_all(entries, args.rounds, args.runs, args.threads)
            results["models"][model] = {
                "median_ms": {k: (float(np.median(v)) if v else None) for k, v in figures.items()},
                "rounds_ms": figures,
                "entries": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in entries.items()},
            }
            results.update(rounds=args.rounds, runs=args.runs, threads=args.threads, machine={
                "platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                "updated": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()})
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    table = render(results)
    RESULTS.with_suffix(".md").write_text("# edgevit vs the plain conversions and OpenVINO\n\n" + table)
    if args.readme:
        write_readme(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
