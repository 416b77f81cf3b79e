"""MobileViT v1/v2 with and without the unfold/fold rewrite (converters/rewrites_mobilevit.py):
fp32 and int8 on TFLite and ExecuTorch, delegation and latency side by side.

"before" is edgevit's edge form as it was without the MobileViT rules (attention, LayerNorm and
v2's linear-attention rules still applied: the blocks are marked so that only the
``mobilevit_block`` / ``mobilevit_v2_block`` rules skip them); "after" is the default export.
Every artifact comes from one seeded initialisation (1-D parameters moved off their init so no
branch folds away), is verified against the float model (fp32) and reports its delegation
(operators outside XNNPACK, partitions). Then the artifacts of one model x target are timed
interleaved in one loop (batch 1, 2 threads): on a busy machine compare ratios, not milliseconds.

One command (writes ``benchmarks/results/mobilevit_rewrite.{json,md}``)::

    python benchmarks/mobilevit_rewrite.py                    # both models, both targets, fp32 + int8
    python benchmarks/mobilevit_rewrite.py --models mobilevit_xxs --targets tflite --precisions fp32
    python benchmarks/mobilevit_rewrite.py --recipe vit-aware # int8 with the ViT-aware search (slower)
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "mobilevit_rewrite.json"
MODELS = ("mobilevit_xxs", "mobilevitv2_050")


def seeded(name: str):
    """timm's model (random init, seed 0) with every 1-D parameter moved by N(0, 0.2) (seed 1)."""
    import torch

    import edgevit.converters  # noqa: F401  (torchvision compatibility before timm)
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def without_mobilevit_rules(model):
    """The model with its MobileViT blocks re-typed as trivial subclasses: the rewrite rules match
    exact types, so only the MobileViT rules pass these blocks by (the math is timm's)."""
    from timm.models.mobilevit import MobileVitBlock, MobileVitV2Block

    kinds = {MobileVitBlock: type("PlainMobileVitBlock", (MobileVitBlock,), {}),
             MobileVitV2Block: type("PlainMobileVitV2Block", (MobileVitV2Block,), {})}
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) in kinds:
            m.__class__ = kinds[type(m)]
    return model


def run(models, targets, precisions, recipe: str, runs: int, threads: int) -> dict:
    from edgevit.converters import export
    from edgevit.converters.base import get_converter
    from edgevit.converters.quantize import compare_latency
    from edgevit.models import get_spec
    from edgevit.runtimes import load

    import numpy as np

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        from _weights import photo_crops  # benchmarks/_weights.py (this folder is on sys.path)

        calib = photo_crops(Path(tmp) / "calibration", count=64)
        for name in models:
            spec = get_spec(name)
            after = seeded(name)
            before = without_mobilevit_rules(after)
            for target in targets:
                paths = {}
                for precision in precisions:
                    for variant, module in (("before", before), ("after", after)):
                        t0 = time.perf_counter()
                        row = {"model": name, "target": target, "precision": precision, "variant": variant}
                        try:
                            r = export(copy.deepcopy(module), target, precision, out=Path(tmp) / f"{name}-{variant}-{target}-{precision}",
                                       input_size=spec.input_size, mean=spec.mean, std=spec.std, name=name,
                                       calibration=calib if precision == "int8" else None,
                                       options={"recipe": recipe, "min_cosine": 0.5, "speed_check": False}
                                       if precision == "int8" else None,
                                       verify=precision == "fp32")
                        except Exception as exc:  # one failing cell must not stop the table
                            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                            rows.append(row)
                            print(f"{name} {target} {precision} {variant}: {row['error']}", file=sys.stderr)
                            continue
                        d = r.delegation
                        row.update(bytes=r.bytes, export_seconds=round(time.perf_counter() - t0, 1),
                                   rewrites=(r.details.get("rewrites") or {}).get("replaced"),
                                   delegation=d.to_dict() if d else None,
                                   verification=r.verification.summary() if r.verification else None)
                        rows.append(row)
                        paths[f"{variant}/{precision}"] = r.path
                        print(f"{name} {target} {precision} {variant}: exported in {row['export_seconds']} s, "
                              f"delegated {d.share if d else None}", file=sys.stderr)
                if not paths:
                    continue
                runtime = get_converter(target).runtime
                meta = load(next(iter(paths.values())), runtime=runtime, threads=threads).metadata
                x = np.zeros(meta.input_shape(1), np.dtype(meta.input_dtype))
                load_before = os.getloadavg()
                latency = compare_latency(paths, runtime, x, runs=runs, warmup=5, threads=threads)
                for row in rows:
                    key = f"{row['variant']}/{row['precision']}"
                    if row["model"] == name and row["target"] == target and key in latency:
                        row["latency_ms"] = round(latency[key], 3)
                        row["load_average"] = [round(v, 2) for v in (*load_before, *os.getloadavg())]
    return {"measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "runs": runs,
            "threads": threads, "int8_recipe": recipe, "cpu_count": os.cpu_count(), "rows": rows}


def render(result: dict) -> str:
    lines = [f"# MobileViT unfold/fold rewrite: before vs after ({result['measured']}, {result['runs']} interleaved "
             f"runs, {result['threads']} threads, int8 recipe {result['int8_recipe']})", "",
             "| model | target | precision | before ms | after ms | after/before | before: ops outside XNNPACK, partitions "
             "| after: ops outside, partitions |", "|---|---|---|---|---|---|---|---|"]
    cells = {(r["model"], r["target"], r["precision"], r["variant"]): r for r in result["rows"]}
    for (model, target, precision, variant), b in cells.items():
        if variant != "before":
            continue
        a = cells.get((model, target, precision, "after"), {})

        def deleg(r):
            d = r.get("delegation")
            return f"{sum(d['outside_ops'].values())} {dict(d['outside_ops']) or ''}, {d['partitions']}" if d else r.get("error", "-")[:60]

        ratio = f"{a['latency_ms'] / b['latency_ms']:.3f}" if a.get("latency_ms") and b.get("latency_ms") else "-"
        lines.append(f"| {model} | {target} | {precision} | {b.get('latency_ms', '-')} | {a.get('latency_ms', '-')} | "
                     f"{ratio} | {deleg(b)} | {deleg(a)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--targets", nargs="+", default=["tflite", "executorch"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--recipe", default="vit-aware", choices=["naive", "vit-aware"])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = run(args.models, args.targets, args.precisions, args.recipe, args.runs, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
