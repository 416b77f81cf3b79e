"""``edgevit bench``: latency, load time, memory and efficiency of artifacts side by side."""

from __future__ import annotations

import argparse
from typing import Any

COMMAND = "bench"
HELP = "latency (median/p90), throughput, load time, peak memory, size and efficiency, side by side"
DESCRIPTION = (
    "Benchmark artifacts of any runtime (and torch eager with --torch) in one run, each in a fresh\n"
    "process so memory does not leak between them. Also measures this machine's practical GEMM peak\n"
    "with the same threads, and each model's efficiency: 2 x MACs / median latency as a share of it.\n"
    "For .tflite artifacts it checks the memory target (edgevit runtime + one photo vs the bare\n"
    "ai-edge-litert interpreter running the same file) and the cold-start target (import + load +\n"
    "first prediction in a fresh process)."
)
EXAMPLES = [
    "edgevit bench out/mobilevit_xxs_tflite_fp32.tflite out/mobilevit_xxs_onnx_fp32.onnx --torch mobilevit_xxs",
    "edgevit bench out/*.tflite --threads 4 --runs 50 --format md --out bench.md",
    "edgevit bench out/model.tflite --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help="exported artifacts (.tflite, .onnx, .pte, ...)")
    p.add_argument("--torch", action="append", default=[], metavar="MODEL",
                   help="also time this model in torch eager (repeatable): a catalog name, timm:NAME, hf:ORG/NAME or a folder")
    p.add_argument("--torch-pretrained", "--pretrained", dest="torch_pretrained", action="store_true",
                   help="build the --torch models with their catalog weights (their top-1 then matches "
                        "artifacts exported with --pretrained; latency does not depend on it)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every runtime and the GEMM (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing (default 5)")
    p.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    p.add_argument("--image", metavar="FILE", help="photo to classify (default: a bundled real photo)")
    p.add_argument("--format", choices=["table", "json", "csv", "md"], default="table",
                   help="output format (default table; --json is the same as --format json)")
    p.add_argument("--wide", action="store_true",
                   help="every column (load, cold start, RSS delta, bare interpreter, GMACs, ...); the default "
                        "table fits 120 characters; CSV and JSON always carry everything")
    p.add_argument("--out", metavar="FILE", help="also write the output to FILE in --format")
    p.add_argument("--no-memory-baseline", action="store_true",
                   help="skip the bare ai-edge-litert interpreter run of .tflite artifacts")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM peak (no efficiency column)")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true", help="do not store the results in the database")
    p.add_argument("--on", metavar="RESOURCE",
                   help="run on the Ray cluster node carrying RESOURCE (e.g. device:rpi5; cluster from RAY_ADDRESS, "
                        "else the local one): the artifacts are shipped there, the device's facts come back")


def run(args: argparse.Namespace) -> int:
    import sys

    from edgevit._text import safe_text
    from edgevit.measure.bench import bench, format_bench
    from edgevit.cli import json_stdout_guard
    from edgevit.cli._common import progress_enabled

    def note(msg: str) -> None:
        if progress_enabled(args):
            print(f"  running {msg} ...", file=sys.stderr, flush=True)

    if args.on:  # on a device of the Ray cluster (edgevit.sweep)
        import functools

        from edgevit.sweep import bench_on

        bench = functools.partial(bench_on, on=args.on)
    with json_stdout_guard(args.json):
        report = bench(
            args.artifacts,
            torch_models=args.torch,
            torch_pretrained=args.torch_pretrained,
            threads=args.threads,
            warmup=args.warmup,
            runs=args.runs,
            image=args.image,
            memory_baseline=not args.no_memory_baseline,
            gemm=not args.no_gemm,
            progress=note,
        )
    if not args.no_record:
        from edgevit.measure.results import record_bench

        record_bench(report.rows, {**report.machine, "settings": report.settings}, db=args.db)
    fmt = "json" if args.json else args.format
    # Model names and paths come from the artifacts: no terminal control in a human table.
    text = format_bench(report if fmt == "json" else _escaped(report), fmt, wide=args.wide)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    if args.out and not args.json and fmt != "json":
        print(f"written: {safe_text(args.out)}")
    return 0


def _escaped(value: Any) -> Any:
    """``value`` (a BenchReport, or what it holds) with every string passed through ``safe_text``."""
    import dataclasses

    from edgevit._text import safe_text

    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _escaped(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value
