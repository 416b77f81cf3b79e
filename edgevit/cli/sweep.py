"""``edgevit sweep``: models x targets x precisions x options, each an export verified on real photos,
in parallel local processes or on a Ray cluster."""

from __future__ import annotations

import argparse
import sys
from typing import Any

COMMAND = "sweep"
HELP = "export + verify many models x targets x precisions at once (local processes, or a Ray cluster with --ray)"
DESCRIPTION = (
    "Export and verify every cell of MODELS x --targets x --precisions x --option values. MODELS are catalog\n"
    "names, glob patterns over the catalog ('vit_fmnist_*') or timm:NAME / timm:PATTERN. Locally, --jobs cells\n"
    "run at once, each in its own process. With --ray ADDRESS (or auto) every cell is a task of that Ray\n"
    "cluster, asking for --threads CPUs and its memory estimate; artifacts and logs come back through\n"
    "Ray's object store (no shared file system) and only this process writes --out and the results\n"
    "database. A rerun skips cells already verified (--redo to force), so an interrupted sweep resumes.\n"
    "A cell whose converter crashes is marked failed with its log tail and run once more; it never\n"
    "stops the sweep. --option KEY=V1,V2 makes an axis of the values."
)
EXAMPLES = [
    "edgevit sweep 'vit_fmnist_*' --targets tflite onnx --precisions fp32 fp16 --out zoo/",
    "edgevit sweep mobilevit_xxs deit_tiny_patch16_224 --targets tflite --option rewrite=true,false --jobs 2",
    "edgevit sweep '*' --ray auto --out zoo/ --json > sweep.json     # the whole catalog on a Ray cluster",
    "edgevit sweep vit_fmnist_tiny --targets tflite --bench --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="catalog names, glob patterns over them (quote them), timm:NAME or timm:PATTERN")
    p.add_argument("--targets", "-t", nargs="+", metavar="TARGET", help="targets (default: every target)")
    p.add_argument("--precisions", "-p", nargs="+", default=["fp32"], metavar="PRECISION",
                   help="fp32 | fp16 | int8-dynamic | int8 (default fp32); unsupported pairs are listed, not run")
    p.add_argument("--option", action="append", metavar="KEY=VALUE[,VALUE...]",
                   help="converter option for every cell (repeatable); several values make an axis")
    p.add_argument("--out", "-o", default="sweep-out", help="folder for the artifacts (default: sweep-out/)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true", help="the models' trained weights (default: random init)")
    g.add_argument("--weights", metavar="FILE", help="one checkpoint for every model (its digest keys the cells)")
    p.add_argument("--calibration", metavar="DIR|DATASET", help="calibration images for int8 cells")
    p.add_argument("--jobs", "-j", type=int, metavar="N",
                   help="cells at once locally (default: one per --threads cores, memory permitting)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per cell (default 1)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run every cell as a task of the Ray cluster at HOST:PORT, or 'auto' "
                        "(RAY_ADDRESS or the local cluster); needs pip install 'edgevit[cluster]'")
    p.add_argument("--memory-gb", type=float, metavar="GB",
                   help="memory each Ray task asks for (default: 1.5 GB + 0.15 GB per million parameters)")
    p.add_argument("--timeout", type=float, default=1800, metavar="S", help="seconds per cell (default 1800)")
    p.add_argument("--redo", action="store_true", help="run cells again even when already verified")
    p.add_argument("--bench", action="store_true", help="also benchmark each artifact where it was exported")
    p.add_argument("--on", metavar="RESOURCE",
                   help="with --ray: afterwards benchmark the sweep's artifacts on the node carrying RESOURCE "
                        "(e.g. device:rpi5), recording the device's facts")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true",
                   help="do not record the cells (then nothing is skipped on a rerun)")


def _options(items: list[str] | None) -> dict[str, Any]:
    from edgevit.cli._common import parse_options

    axes: dict[str, Any] = {}
    for item in items or []:
        key, _, values = item.partition("=")
        parsed = [parse_options([f"{key}={v}"])[key.strip()] for v in values.split(",")] if values else []
        if not parsed:
            parse_options([item])  # the usual error for a malformed option
        axes[key.strip()] = parsed if len(parsed) > 1 else parsed[0]
    return axes


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _weights_line(args: argparse.Namespace) -> str:
    """Which weights the cells export: a sweep checks conversions, so random init unless told."""
    if args.weights:
        return f"{args.weights} for every model (--weights)"
    if args.pretrained:
        return "each model's trained weights (--pretrained; a model without any fails its cells)"
    return ("random init (a sweep checks the conversions; --pretrained for the trained weights, "
            "which int8 fidelity figures need to mean much)")


def run(args: argparse.Namespace) -> int:
    from edgevit._text import safe_text
    from edgevit.cli import emit_json, json_stdout_guard, print_table
    from edgevit.sweep import plan, sweep

    options = _options(args.option)
    if not args.json:
        print(f"Weights: {_weights_line(args)}", file=sys.stderr)
    if args.dry_run:
        cells, unsupported, _ = plan(args.models, args.targets, args.precisions, options,
                                     pretrained=args.pretrained, weights=args.weights, calibration=args.calibration)
        doc = {"cells": [c.label for c in cells], "unsupported": [{"cell": c.label, "why": w} for c, w in unsupported]}
        if args.json:
            emit_json(doc)
        else:
            for c in cells:
                print(c.label)
            for c, why in unsupported:
                print(f"{c.label}: not supported ({safe_text(why)})")
            print(f"{len(cells)} cell(s) to run, {len(unsupported)} unsupported")
        return 0
    tty = sys.stderr.isatty()

    def progress(info: dict[str, Any]) -> None:  # on stderr: with --json too when it is a terminal
        if args.json and not tty:
            return
        row = info["row"]
        line = (f"{_bar(info['done'], info['total'])} {info['done']}/{info['total']}  ETA {_duration(info['eta_s'])}  "
                f"{safe_text(row['source'])} {row['target']} {row['precision']}: {row['status']}")
        if tty:
            print("\r\033[K" + line, end="" if info["done"] < info["total"] else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    with json_stdout_guard(args.json):  # nothing but the JSON document on stdout
        report = sweep(args.models, args.targets, args.precisions, options, out=args.out, db=args.db,
                       record=not args.no_record, jobs=args.jobs, ray=args.ray, redo=args.redo,
                       pretrained=args.pretrained, weights=args.weights, calibration=args.calibration,
                       bench=args.bench, bench_on=args.on, threads=args.threads, memory_gb=args.memory_gb,
                       timeout=args.timeout, verbose=getattr(args, "verbose", False), progress=progress)
    if args.json:
        emit_json(report.to_dict())
    else:
        rows = []
        for r in report.rows:
            detail = r.get("error") or (f"cos {r['cosine_min']:.6f}" if r.get("cosine_min") is not None else "")
            if r["status"] == "skipped":
                detail = f"{r.get('previous')} before"
            if r.get("device_bench"):
                detail = f"{detail}; on {r['device_bench']['on']}: median {r['device_bench']['median_ms']:.2f} ms"
            rows.append([safe_text(r["source"]), r["target"], r["precision"],
                         ",".join(f"{k}={v}" for k, v in r["options"].items()) or "-", r["status"],
                         f"{r['wall_s']:.1f}" if r.get("wall_s") else "-", safe_text(str(detail).splitlines()[0][:90])
                         if detail else ""])
        print_table(rows, ["model", "target", "precision", "options", "status", "s", "detail"])
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
        where = f"Ray cluster ({report.workers} CPU slots)" if report.mode == "ray" else f"{report.workers} local job(s)"
        print(f"{len(report.rows)} cell(s): {counts}; {report.wall_s:.1f} s on {where}; artifacts in {report.out}")
        for r in report.rows:
            if r.get("log_tail") and r["status"] not in ("verified", "structural"):
                print(f"log tail of {safe_text(r['source'])} {r['target']} {r['precision']}:", file=sys.stderr)
                for line in r["log_tail"].splitlines()[-10:]:
                    print(f"  | {safe_text(line)}", file=sys.stderr)
    failed = [r for r in report.rows if r["status"] in ("failed", "crashed", "timeout")]
    return 1 if failed else 0
