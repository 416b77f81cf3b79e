"""Rewritten vs plain exports of ViTs from outside the catalog: fp32 latency, side by side.

Each source is exported twice per target: with edgevit's edge rewrites (the default) and as the
plain conversion (``--option rewrite=false``), both verified on the bundled photos. The artifacts
are then timed by :func:`edgevit.measure.bench.bench` (each in a fresh process), all of them in one run,
repeated for ``--rounds`` rounds so that load changes hit every artifact alike; the table gives the
median over rounds and the speed-up of the rewritten artifact over its plain twin (same target).

    python benchmarks/sources_speed.py                         # the default three sources
    python benchmarks/sources_speed.py --sources timm:pit_ti_224 --targets tflite --reuse

Run it on a quiet machine (nothing else running): ratios from a shared machine are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "sources_speed.json"
DEFAULT_SOURCES = ("timm:vit_small_patch16_224", "timm:cait_xxs24_224", "hf-config:swin-tiny")


def _hf_swin_tiny(folder: Path) -> str:
    """A transformers Swin-T (its default config: 28M parameters, 224 px), random init, saved as a
    ``save_pretrained`` folder: stands in for a Hugging Face checkpoint offline."""
    if not (folder / "config.json").is_file():
        import edgevit.converters  # noqa: F401  (torchvision compatibility step before transformers)
        import transformers

        model = transformers.SwinForImageClassification(transformers.SwinConfig(num_labels=10)).eval()
        model.save_pretrained(folder)
        transformers.ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return str(folder)


def _export(source: str, target: str, rewrite: bool, out: Path, reuse: bool) -> dict:
    from edgevit.converters import export

    folder = out / ("edgevit" if rewrite else "plain")
    existing = sorted(folder.glob(f"*_{target}_fp32.*")) if reuse and folder.is_dir() else []
    name = source.rstrip("/").rsplit("/", 1)[-1].removeprefix("timm:")
    existing = [p for p in existing if p.name.startswith(name + "_")]
    if existing:
        return {"path": str(existing[0]), "reused": True}
    result = export(source, target=target, out=folder, force=True, options={"rewrite": rewrite})
    d = result.to_dict()
    return {"path": d["path"], "seconds": d["seconds"], "bytes": d["bytes"],
            "verification": (d["verification"] or {}).get("passed"),
            "cosine_min": (d["verification"] or {}).get("cosine_min"),
            "delegated_share": (d["delegation"] or {}).get("share"),
            "partitions": (d["delegation"] or {}).get("partitions"),
            "rewrites": d["details"].get("rewrites")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES))
    p.add_argument("--targets", nargs="+", default=["tflite", "executorch"])
    p.add_argument("--out", default="/tmp/edgevit-sources-speed")
    p.add_argument("--reuse", action="store_true", help="time artifacts already in --out")
    p.add_argument("--export-only", action="store_true", help="export and stop (time later on a quiet machine)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = Path(args.out)
    sources = [_hf_swin_tiny(out / "hf-swin-tiny") if s == "hf-config:swin-tiny" else s for s in args.sources]

    exports: dict[str, dict] = {}
    for source in sources:
        for target in args.targets:
            for rewrite in (True, False):
                key = f"{source}|{target}|{'edgevit' if rewrite else 'plain'}"
                print(f"export {key}", file=sys.stderr, flush=True)
                exports[key] = _export(source, target, rewrite, out, args.reuse)
    if args.export_only:
        print(json.dumps(exports, indent=1))
        return 0

    from edgevit.measure.bench import bench

    paths = [e["path"] for e in exports.values()]
    medians: dict[str, list[float]] = {path: [] for path in paths}
    loads = []
    for r in range(args.rounds):
        order = paths if r % 2 == 0 else paths[::-1]  # alternate the order: no artifact always runs first
        report = bench(order, threads=args.threads, runs=args.runs, memory_baseline=False, gemm=False)
        loads.append(report.machine.get("load_avg"))
        for row in report.rows:
            medians[row["artifact"]].append(row["median_ms"])
    rows = []
    for key, info in exports.items():
        source, target, kind = key.split("|")
        rows.append({"source": source, "target": target, "kind": kind, **info,
                     "median_ms": statistics.median(medians[info["path"]]), "rounds_ms": medians[info["path"]]})
    for row in rows:
        if row["kind"] == "edgevit":
            twin = next(r for r in rows if r["source"] == row["source"] and r["target"] == row["target"]
                        and r["kind"] == "plain")
            row["speedup_vs_plain"] = twin["median_ms"] / row["median_ms"]
    doc = {"rows": rows, "settings": {"rounds": args.rounds, "runs": args.runs, "threads": args.threads},
           "load_average": loads}
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["| source | target | plain ms | edgevit ms | speed-up | delegated (plain -> edgevit) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row["kind"] != "edgevit":
            continue
        twin = next(r for r in rows if r["source"] == row["source"] and r["target"] == row["target"]
                    and r["kind"] == "plain")
        share = lambda r: f"{r['delegated_share']:.1%}" if r.get("delegated_share") is not None else "-"  # noqa: E731
        lines.append(f"| {Path(row['source']).name if '/' in row['source'] else row['source']} | {row['target']} | "
                     f"{twin['median_ms']:.2f} | {row['median_ms']:.2f} | {row['speedup_vs_plain']:.2f}x | "
                     f"{share(twin)} -> {share(row)} |")
    table = "\n".join(lines)
    (RESULTS.with_suffix(".md")).write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
