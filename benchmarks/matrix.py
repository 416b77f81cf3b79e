"""The full support matrix: every catalog model x every target at fp32, exported and verified.

A thin call to ``edgevit sweep`` (:func:`edgevit.sweep.sweep`): every cell an export in
its own process (isolation from converter crashes, a time limit each), in parallel locally or as
tasks of a Ray cluster (``--ray auto``). Results go to ``models/support.json`` (read by
``edgevit list --targets`` and the README's support table: ``python -m edgevit.measure.support
--write-readme``) and to the results database; a rerun skips the cells already verified, so an
interrupted run resumes (``--redo`` runs them again).

    python benchmarks/matrix.py                                   # everything, local processes
    python benchmarks/matrix.py --models 'vit_tiny_*' --ray auto  # on a Ray cluster
    python benchmarks/matrix.py --models 'mobilevit*' --targets tflite onnx
    python benchmarks/matrix.py --dry-run                          # print the plan

Random-init models whose timm initialisation zeroes a scale (LeViT, SwinV2, MobileViT: a residual
branch that starts as the identity) are exported from non-degenerate seeded weights
(``benchmarks/_weights.py``, made here and shipped to the workers with the cell), so that
verification covers every block: a converter folds a zero-scaled branch away, and the check would
pass on a graph without it. The row records it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "models" / "support.json"
SEEDED = "seeded, zero-initialised scales made non-zero (benchmarks/_weights.py)"


def _record(path: Path, model: str, target: str, result: dict) -> None:
    """Merge one result into ``path`` (re-read each time: other runs may be updating it too)."""
    data = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    data.setdefault("results", {}).setdefault(model, {})[target] = result
    data["generated_by"] = "python benchmarks/matrix.py"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def support_entry(row: dict, seeded: bool) -> dict:
    """A sweep row as a ``models/support.json`` cell."""
    status = row["status"] if row["status"] in ("verified", "structural") else "failed"
    entry = {"status": status, "date": dt.date.today().isoformat()}
    if status == "failed":
        entry.update(op=row.get("op"), error=(row.get("error") or row["status"])[:400])
    else:
        entry.update(seconds=row.get("export_s"), bytes=row.get("bytes"), cosine_min=row.get("cosine_min"),
                     max_abs_diff=row.get("max_abs_diff"), top1_agreement=row.get("top1_agreement"),
                     delegated_share=row.get("delegated_share"), partitions=row.get("partitions"), warnings=row.get("warnings") or [],
                     weights=SEEDED if seeded else None)
    return entry


def main() -> int:
    from edgevit.models import list_models

    from edgevit.sweep import sweep

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="*", help="comma-separated globs on model names")
    ap.add_argument("--targets", nargs="*", default=None, help="targets (default: all)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per export")
    ap.add_argument("--jobs", type=int, default=None, help="cells at once locally (default: from the cores)")
    ap.add_argument("--ray", metavar="ADDRESS", help="run the cells on this Ray cluster (or 'auto')")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "edgevit" / "matrix",
                    help="artifacts folder (kept: a rerun skips cells whose artifact is there)")
    ap.add_argument("--db", help="results database (default: edgevit's)")
    ap.add_argument("--redo", action="store_true", help="run verified cells again")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not update models/support.json")
    ap.add_argument("--support", type=Path, default=SUPPORT, help="results file to update (default models/support.json)")
    args = ap.parse_args()

    models = [m for m in list_models(builtin_only=True) if any(fnmatch.fnmatch(m, g) for g in args.models.split(","))]
    if args.dry_run:
        from edgevit.sweep import plan

        cells, unsupported, _ = plan(models, args.targets, ["fp32"])
        print(f"{len(models)} models, {len(cells)} cells ({len(unsupported)} unsupported): {models}")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _weights import bench_weights, zero_scales

    weights_dir = args.out / "_weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    weights = {m: bench_weights(m, weights_dir) for m in models if zero_scales(m)}

    def line(info: dict) -> None:
        r = info["row"]
        extra = r.get("error", "") if r["status"] not in ("verified", "structural") else (
            f"{r.get('export_s') or 0:.1f} s, {(r.get('bytes') or 0) / 1e6:.2f} MB, cos {r.get('cosine_min')}, "
            f"maxdiff {r.get('max_abs_diff')}, delegated {r.get('delegated_share')}")
        print(f"[{info['done']}/{info['total']} ETA {info['eta_s'] / 60:.0f} min] {r['source']:34s} {r['target']:11s} "
              f"{r['status']:10s} {str(extra).splitlines()[0][:200] if extra else ''}", flush=True)

    report = sweep(models, args.targets, ["fp32"], out=args.out, db=args.db, jobs=args.jobs, ray=args.ray,
                   redo=args.redo, weights=weights, timeout=args.timeout, progress=line)
    if not args.no_write:
        for row in report.rows:
            if row["status"] in ("skipped", "unsupported"):
                continue  # a skipped cell keeps its entry from the run that verified it
            _record(args.support, row["source"], row["target"], support_entry(row, row["source"] in weights))
    print(f"{len(report.rows)} cells: {report.counts()}; {report.wall_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
