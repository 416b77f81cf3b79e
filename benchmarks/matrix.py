"""The full matrix: every catalog model x every target at fp32, exported and verified.

Each export runs in its own subprocess (isolation from converter crashes, a time limit each).
Results go to ``models/support.json`` (read by ``edgevit list --targets`` and the README's
support table) and a Markdown table on stdout.

    python benchmarks/matrix.py                       # everything (about an hour on 2 cores)
    python benchmarks/matrix.py --models 'mobilevit*' --targets tflite onnx
    python benchmarks/matrix.py --dry-run              # print the plan

Random-init models whose timm initialisation zeroes a scale (LeViT, SwinV2, MobileViT: a residual
branch that starts as the identity) are exported from non-degenerate seeded weights
(``benchmarks/_weights.py``), so that verification covers every block: a converter folds a
zero-scaled branch away, and the check would pass on a graph without it. The row records it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "models" / "support.json"

_CHILD = r"""
import json, sys, traceback
from edgevit.converters import export
from edgevit.errors import EdgeVitError
model, target, out, bench = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
try:
    weights = None
    if bench:
        sys.path.insert(0, bench)
        from _weights import bench_weights, zero_scales
        if zero_scales(model):
            weights = bench_weights(model, out)
    r = export(model, target, out=out, force=True, weights=weights)
    d = r.to_dict()
    v = d["verification"] or {}
    status = "verified" if v.get("ran") and v.get("passed") else ("structural" if not v.get("ran") else "failed")
    print("@@RESULT@@" + json.dumps({"status": status, "seconds": d["seconds"], "bytes": d["bytes"],
        "cosine_min": v.get("cosine_min"), "max_abs_diff": v.get("max_abs_diff"),
        "top1_agreement": v.get("top1_agreement"),
        "delegated_share": (d["delegation"] or {}).get("share"),
        "partitions": (d["delegation"] or {}).get("partitions"),
        "warnings": d["warnings"][:3],
        "weights": "seeded, zero-initialised scales made non-zero (benchmarks/_weights.py)" if weights else None}))
except EdgeVitError as e:
    print("@@RESULT@@" + json.dumps({"status": "failed", "op": getattr(e, "op", None), "error": str(e)[:400]}))
"""


def run_one(model: str, target: str, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, model, target, out, str(Path(__file__).resolve().parent)],
                                  capture_output=True,
                                  text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "op": None, "error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "failed", "op": None, "error": f"exit {proc.returncode}: {' | '.join(tail)[:400]}"}


def _record(path: Path, model: str, target: str, result: dict) -> None:
    """Merge one result into ``path`` (re-read each time: other runs may be updating it too)."""
    data = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    data.setdefault("results", {}).setdefault(model, {})[target] = result
    data["generated_by"] = "python benchmarks/matrix.py"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main() -> int:
    from edgevit.converters import available_targets
    from edgevit.models import list_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="*", help="comma-separated globs on model names")
    ap.add_argument("--targets", nargs="*", default=None, help="targets (default: all)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per export")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not update models/support.json")
    ap.add_argument("--support", type=Path, default=SUPPORT, help="results file to update (default models/support.json)")
    args = ap.parse_args()

    models = [m for m in list_models(builtin_only=True) if any(fnmatch.fnmatch(m, g) for g in args.models.split(","))]
    targets = args.targets or list(available_targets())
    if args.dry_run:
        print(f"{len(models)} models x {len(targets)} targets: {models} {targets}")
        return 0
    for model in models:
        for target in targets:
            r = run_one(model, target, args.timeout)
            r["date"] = dt.date.today().isoformat()
            extra = r.get("error", "") if r["status"] == "failed" else (
                f"{r['seconds']:.1f} s, {r['bytes'] / 1e6:.2f} MB, cos {r.get('cosine_min')}, "
                f"maxdiff {r.get('max_abs_diff')}, delegated {r.get('delegated_share')}")
            print(f"{model:34s} {target:11s} {r['status']:10s} {extra}", flush=True)
            if not args.no_write:
                _record(args.support, model, target, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
