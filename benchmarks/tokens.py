"""Token reduction that survives export: accuracy and speed of a plain ViT with fewer tokens.

The judged model is a plain ViT on the real Fashion-MNIST at 56 x 56 with a stride-4 conv stem
(a 14 x 14 grid: 196 tokens; width 64, depth 4, 4 heads, token average): edgevit's shipped 28 px
``vit_fmnist_tiny`` warm-started at 56 px (position embedding resized) and trained one epoch on
3,000 real training images (cached in ``--work``). For each reduction (method x layers):

* top-1 on the first ``--test-images`` of the test split: before reduction, after reduction (no
  training), after a recovery fine-tune by distillation from the unreduced model (the compression
  loop, :func:`edgevit.compress.tokens.recover`; training images the model has not seen);
* for the unreduced model and the reductions in ``--exported``: TFLite fp32 and int8 artifacts,
  their delegation report, their top-1 through the runtime, and (stage ``time``) their latency
  timed interleaved in one loop (batch 1, 2 threads): on a busy machine compare ratios only;
* DeiT-Tiny (random weights: speed and delegation only) with and without token pooling.

Commands (write ``benchmarks/results/tokens.{json,md}``)::

    nice -n 10 python benchmarks/tokens.py all          # train (cached) + fmnist + time + deit
    python benchmarks/tokens.py train | fmnist | time | deit | render
    python benchmarks/tokens.py fmnist --reductions pool:2   # one reduction (rows merge into the JSON)
    python benchmarks/tokens.py fmnist --test-images 10000 --recipe vit-aware   # quiet machine: whole split
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "tokens.json"
LOCK = Path("/tmp") / "edgevit-tokens-results.lock"  # merges from parallel runs take turns
WORK = Path(os.environ.get("EDGEVIT_TOKENS_WORK", Path.home() / ".cache" / "edgevit" / "tokens"))


def base_spec():
    from edgevit.models._registry import ModelSpec
    from edgevit.models.labels import FASHION_DATA

    return ModelSpec(name="vit_fmnist56_p4", family="edgevit-vit", attention="global", builder=build_base,
                     input_size=(56, 56), **FASHION_DATA, source="edgevit",
                     description="plain ViT, 56 px Fashion-MNIST, patch 4: 196 tokens + class token")


def build_base(num_classes: int | None = None, pretrained: bool = False):
    """edgevit's shipped Fashion-MNIST ViT (conv stem, width 64, depth 4, 4 heads, token average)
    at 56 px: a 14 x 14 grid, 196 tokens."""
    from edgevit.models.vit import EdgeViT

    return EdgeViT(img_size=56, patch_size=4, in_chans=1, num_classes=10 if num_classes is None else num_classes,
                   embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, attention="full", global_pool="avg", stem="conv")


def train_base(work: Path, epochs: int, train_images: int | None) -> Path:
    """The 196-token model (cached: an existing file is reused): warm-started from the shipped
    28 px ``vit_fmnist_tiny`` (its position embedding resized 7 x 7 -> 14 x 14, bicubic), then
    trained at 56 px on real Fashion-MNIST images."""
    import torch
    import torch.nn.functional as F

    from edgevit.compress.loop import LoopConfig, fit
    from edgevit.data.datasets import load_dataset
    from edgevit.models._registry import WEIGHTS_DIR
    from edgevit.models.weights import save_weights

    path = work / "vit_fmnist56_p4.safetensors"
    if path.exists():
        return path
    work.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = build_base()
    state = load_file(str(WEIGHTS_DIR / "vit_fmnist_tiny.safetensors"))
    pos = state["pos_embed"].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    state["pos_embed"] = F.interpolate(pos, size=(14, 14), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    model.load_state_dict(state)
    data = load_dataset("fashion-mnist").subset(train=train_images, test=2000)  # per-epoch check on 2,000
    t0 = time.perf_counter()
    history = fit(model, data, LoopConfig(epochs=epochs, batch_size=64, lr=5e-4, warmup_epochs=0.1, threads=2,
                                          deterministic=False), spec=base_spec())
    save_weights(model, path)
    (work / "train.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "epochs": epochs,
                                                 "warm_start": "vit_fmnist_tiny (28 px), pos_embed resized to 14 x 14",
                                                 "train_images": len(data.train_labels),
                                                 "history": [h.to_dict() for h in history]}, indent=1))
    return path


# The reductions compared: pool, merge and top-k at about the same remaining token-blocks (~0.63 of
# the unreduced model's), and a stronger pool.
REDUCTIONS = ("pool:2", "merge:1,2,3:49", "topk:2:0.25", "pool:1")  # topk needs a class token: refused here
DEIT_REDUCTIONS = ("pool:6", "pool:4")


def _say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _test_inputs(limit: int):
    import torch

    from edgevit.compress.loop import to_model_input
    from edgevit.data.datasets import load_dataset

    data = load_dataset("fashion-mnist")
    images = torch.from_numpy(data.test_images[:limit].copy())
    labels = data.test_labels[:limit]
    return to_model_input(images, base_spec()), labels


def _top1_torch(model, x, labels) -> float:
    import numpy as np
    import torch

    with torch.no_grad():
        preds = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()
    return float(np.mean(preds == labels))


def _top1_artifact(path, x, labels) -> float:
    import numpy as np

    from edgevit.runtimes import load

    rt = load(path, threads=2)
    preds = np.concatenate([rt.run(x[i : i + 1].numpy()).argmax(1) for i in range(len(x))])
    return float(np.mean(preds == labels))


def _export(module, target: str, precision: str, folder: Path, spec=None, calibration=None, recipe="naive"):
    from edgevit.converters import export
    from edgevit.models.labels import FASHION_MNIST_LABELS

    spec = spec or base_spec()
    labels = list(FASHION_MNIST_LABELS) if spec.name == base_spec().name else None
    options = {"recipe": recipe, "speed_check": False} if precision == "int8" else None
    kw = dict(input_size=spec.input_size, mean=spec.mean, std=spec.std, name=spec.name, labels=labels) if labels else {}
    return export(module, target, precision, out=folder, force=True, calibration=calibration, options=options,
                  verify=precision == "fp32", **kw)


def _deleg(r) -> dict | None:
    return r.delegation.to_dict() if r.delegation else None


def bench_fmnist(work: Path, reductions, test_images: int, finetune_images: int, finetune_epochs: int,
                 recipe: str, exported=REDUCTIONS) -> list[dict]:
    """Accuracy of the 196-token model and each reduction: torch float before reduction, after it,
    after a recovery fine-tune; for those in ``exported`` (and the unreduced model, ``none``), the
    TFLite fp32 and int8 artifacts (kept in ``work/artifacts`` for the ``time`` stage), their
    delegation and their top-1 through the runtime. One row per reduction."""
    import copy

    from edgevit.compress.loop import LoopConfig
    from edgevit.compress.tokens import recover, reduce_tokens, speedup_estimate, token_counts
    from edgevit.data.datasets import Dataset, load_dataset
    from edgevit.errors import ConfigError
    from edgevit.models.weights import load_weights

    teacher = build_base().eval()
    load_weights(teacher, train_base(work, 1, 3000))
    x, labels = _test_inputs(test_images)
    data = load_dataset("fashion-mnist")
    # fine-tune on training images the base model was not trained on (it saw the first 3,000)
    tune = Dataset(name=data.name, train_images=data.train_images[30000 : 30000 + finetune_images],
                   train_labels=data.train_labels[30000 : 30000 + finetune_images],
                   test_images=data.test_images[:test_images], test_labels=data.test_labels[:test_images],
                   classes=data.classes, flip_ok=data.flip_ok, source=data.source)
    base_top1 = _top1_torch(teacher, x, labels)
    rows = []
    for spelling in reductions:
        n0 = teacher.grid[0] * teacher.grid[1] + teacher.num_prefix
        if spelling == "none":
            row, model = {"reduction": "none", "tokens": [n0], "token_blocks": 1.0, "top1_float": base_top1}, teacher
        else:
            try:  # "none+ft": the control, the same fine-tune without reduction
                model = copy.deepcopy(teacher) if spelling == "none+ft" else reduce_tokens(copy.deepcopy(teacher), spelling)
            except ConfigError as exc:  # e.g. top-k on a model without a class token
                rows.append({"reduction": spelling, "error": str(exc)})
                _say(spelling, exc)
                continue
            row = {"reduction": spelling, "tokens": token_counts(model) or [n0], "top1_float": base_top1,
                   "token_blocks": model.edgevit_tokens["token_blocks"] if spelling != "none+ft" else 1.0,
                   "block_speedup_estimate": speedup_estimate(model) or 1.0, "top1_reduced": _top1_torch(model, x, labels)}
            t0 = time.perf_counter()
            recover(model, teacher, tune, LoopConfig(epochs=finetune_epochs, batch_size=64, lr=5e-4, warmup_epochs=0.2,
                                                     threads=2, deterministic=False), spec=base_spec())
            model.eval()
            row.update(finetune_seconds=round(time.perf_counter() - t0, 1), finetune_images=finetune_images,
                       finetune_epochs=finetune_epochs, top1_finetuned=_top1_torch(model, x, labels))
        _say(json.dumps(row))
        if spelling == "none" or spelling in exported:
            _export_artifacts(row, model, work, data, x, labels, recipe)
        rows.append(row)
    return rows


def _export_artifacts(row: dict, model, work: Path, data, x, labels, recipe: str) -> None:
    import copy
    import shutil

    from PIL import Image

    calib = work / "calibration"
    if not calib.is_dir():  # 64 training images the model was not trained on
        calib.mkdir(parents=True)
        for i in range(64):
            name = data.classes[data.train_labels[20000 + i]].replace("/", "-")
            Image.fromarray(data.train_images[20000 + i]).save(calib / f"{i:02d}_{name}.png")
    folder = work / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    for precision in ("fp32", "int8"):
        key = f"{row['reduction']}/{precision}"
        try:
            r = _export(copy.deepcopy(model), "tflite", precision, folder / "tmp", calibration=calib if precision == "int8" else None,
                        recipe=recipe)
        except Exception as exc:
            row[f"tflite_{precision}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            _say(key, row[f"tflite_{precision}_error"])
            continue
        final = folder / (key.replace("/", "__").replace(":", "_").replace(",", "-") + ".tflite")
        shutil.move(r.path, final)
        row[f"tflite_{precision}"] = {"artifact": final.name, "delegation": _deleg(r), "bytes": r.bytes,
                                      "top1": _top1_artifact(final, x, labels)}
        _say(key, json.dumps(row[f"tflite_{precision}"]))


def time_fmnist(work: Path, runs: int) -> dict[str, float]:
    """Every artifact in ``work/artifacts`` timed interleaved in one loop: label -> median ms."""
    paths = {p.stem.replace("__", "/"): p for p in sorted((work / "artifacts").glob("*.tflite"))}
    return _time(paths, runs)


def _merge_fmnist(rows: list[dict] | None = None, latency: dict[str, float] | None = None, **facts) -> dict:
    """Merge rows (by reduction) or latencies into results['fmnist'] under a file lock."""
    import fcntl

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        part = data.setdefault("fmnist", {"model": base_spec().name, "rows": []})
        part.update(facts)
        by_name = {r["reduction"]: r for r in part["rows"]}
        for row in rows or []:
            by_name[row["reduction"]] = row
        order = ["none", "none+ft", *REDUCTIONS]
        part["rows"] = sorted(by_name.values(), key=lambda r: order.index(r["reduction"]) if r["reduction"] in order else 99)
        if latency:
            base = latency.get("none/fp32")
            for row in part["rows"]:
                for precision in ("fp32", "int8"):
                    cell = row.get(f"tflite_{precision}")
                    stem = f"{row['reduction']}/{precision}".replace(":", "_").replace(",", "-")
                    if cell and stem in latency:
                        cell["latency_ms"] = round(latency[stem], 3)
                        if base:
                            cell["speedup_vs_unreduced_fp32"] = round(base / latency[stem], 3)
            part["timing"] = {"load_average_after": list(os.getloadavg())}
        import datetime as dt

        part["measured"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        RESULTS.write_text(json.dumps(data, indent=1) + "\n")
        RESULTS.with_suffix(".md").write_text(render(data))
    return data


def _time(paths: dict, runs: int) -> dict:
    import numpy as np

    from edgevit.converters.quantize import compare_latency
    from edgevit.runtimes import load

    if not paths:
        return {}
    meta = load(next(iter(paths.values())), runtime="tflite", threads=2).metadata
    example = np.zeros(meta.input_shape(1), np.dtype(meta.input_dtype))
    return compare_latency(paths, "tflite", example, runs=runs, warmup=5, threads=2)


def bench_deit(reductions, runs: int, recipe: str) -> dict:
    """DeiT-Tiny (seeded random weights: speed and delegation only) with and without token pooling,
    TFLite fp32 and int8, timed interleaved."""
    import copy
    import tempfile

    import torch

    from edgevit.compress.tokens import reduce_tokens, speedup_estimate, token_counts
    from edgevit.models import create_model, get_spec

    spec = get_spec("deit_tiny_patch16_224")
    torch.manual_seed(0)
    base = create_model("deit_tiny_patch16_224").eval()
    rows, paths = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _weights import photo_crops

        calib = photo_crops(Path(tmp) / "calibration")
        for spelling in ("none", *reductions):
            model = base if spelling == "none" else reduce_tokens(copy.deepcopy(base), spelling)
            row = {"reduction": spelling, "tokens": token_counts(model) or [197],
                   "block_speedup_estimate": speedup_estimate(model) or 1.0}
            for precision in ("fp32", "int8"):
                try:
                    from edgevit.converters import export

                    r = export(copy.deepcopy(model), "tflite", precision, out=Path(tmp) / f"{spelling}-{precision}".replace(":", "_"),
                               input_size=spec.input_size, mean=spec.mean, std=spec.std, name=spec.name,
                               calibration=calib if precision == "int8" else None,
                               options={"recipe": recipe, "speed_check": False, "min_cosine": 0.5}
                               if precision == "int8" else None, verify=precision == "fp32")
                except Exception as exc:
                    row[f"tflite_{precision}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    _say("deit", spelling, precision, row[f"tflite_{precision}_error"])
                    continue
                row[f"tflite_{precision}"] = {"delegation": _deleg(r), "bytes": r.bytes}
                paths[f"{spelling}/{precision}"] = r.path
                _say("deit", spelling, precision, json.dumps(row[f"tflite_{precision}"]))
            rows.append(row)
        latency = _time(paths, runs)
    base_ms = latency.get("none/fp32")
    for row in rows:
        for precision in ("fp32", "int8"):
            key = f"{row['reduction']}/{precision}"
            if key in latency and f"tflite_{precision}" in row:
                row[f"tflite_{precision}"]["latency_ms"] = round(latency[key], 3)
                if base_ms:
                    row[f"tflite_{precision}"]["speedup_vs_unreduced_fp32"] = round(base_ms / latency[key], 3)
    return {"model": "deit_tiny_patch16_224", "weights": "seeded random (speed only)", "int8_recipe": recipe,
            "rows": rows, "load_average_after": list(os.getloadavg())}


def _merge(part: str, result: dict) -> dict:
    import datetime as dt

    import fcntl

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        result["measured"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        data[part] = result
        RESULTS.write_text(json.dumps(data, indent=1) + "\n")
        RESULTS.with_suffix(".md").write_text(render(data))
    return data


def render(data: dict) -> str:
    out = ["# Token reduction: accuracy and TFLite speed", ""]
    f = data.get("fmnist")
    if f:
        out += [f"## {f['model']} (Fashion-MNIST, 56 px, stride-4 conv stem: 196 tokens, token average); test top-1 on the first "
                f"{f.get('test_images')} test images; int8 recipe {f.get('int8_recipe')}; {f.get('measured')}", "",
                "| reduction | tokens | token-blocks | top-1 float | after reduction | after fine-tune | TFLite fp32 top-1 | "
                "TFLite int8 top-1 | fp32 ms | int8 ms | fp32 speed-up | int8 speed-up | ops outside XNNPACK (fp32) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in f["rows"]:
            if "error" in r:
                out.append(f"| {r['reduction']} | refused: {r['error']} |" + " |" * 11)
                continue
            a, b = r.get("tflite_fp32", {}), r.get("tflite_int8", {})
            d = a.get("delegation") or {}
            out.append(f"| {r['reduction']} | {r['tokens']} | {r['token_blocks']} | {r.get('top1_float', '')} | "
                       f"{r.get('top1_reduced', '')} | {r.get('top1_finetuned', '')} | {a.get('top1', '')} | {b.get('top1', '')} | "
                       f"{a.get('latency_ms', '')} | {b.get('latency_ms', '')} | {a.get('speedup_vs_unreduced_fp32', '')} | "
                       f"{b.get('speedup_vs_unreduced_fp32', '')} | {d.get('outside_ops', '')} ({d.get('partitions', '')} partitions) |")
        out.append("")
    dt_ = data.get("deit")
    if dt_:
        out += [f"## DeiT-Tiny ({dt_['weights']}), TFLite, int8 recipe {dt_['int8_recipe']}; {dt_['measured']}", "",
                "| reduction | tokens | estimate | fp32 ms | int8 ms | fp32 speed-up | int8 speed-up | outside XNNPACK (fp32 / int8) |",
                "|---|---|---|---|---|---|---|---|"]
        for r in dt_["rows"]:
            a, b = r.get("tflite_fp32", {}), r.get("tflite_int8", {})
            out.append(f"| {r['reduction']} | {r['tokens']} | {r['block_speedup_estimate']} | {a.get('latency_ms', '')} | "
                       f"{b.get('latency_ms', '')} | {a.get('speedup_vs_unreduced_fp32', '')} | "
                       f"{b.get('speedup_vs_unreduced_fp32', '')} | {(a.get('delegation') or {}).get('outside_ops', '')} / "
                       f"{(b.get('delegation') or {}).get('outside_ops', '')} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["all", "train", "fmnist", "time", "deit", "render"])
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--reductions", nargs="+", default=["none", *REDUCTIONS])
    p.add_argument("--deit-reductions", nargs="+", default=list(DEIT_REDUCTIONS))
    p.add_argument("--exported", nargs="+", default=list(REDUCTIONS), help="reductions also exported and timed")
    p.add_argument("--test-images", type=int, default=2000, help="first N test images (10000: the whole split)")
    p.add_argument("--finetune-images", type=int, default=3000)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--recipe", default="vit-aware", choices=["naive", "vit-aware"],
                   help="int8 recipe (naive int8 leaves LayerNorm, softmax, GELU and attention matmuls outside XNNPACK)")
    args = p.parse_args(argv)
    import edgevit.converters  # noqa: F401  (torchvision compatibility before timm)

    if args.stage in ("all", "train"):
        print(train_base(args.work, args.epochs, args.train_images))
    if args.stage in ("all", "fmnist"):
        rows = bench_fmnist(args.work, args.reductions, args.test_images, args.finetune_images, args.finetune_epochs,
                            args.recipe, args.exported)
        _merge_fmnist(rows, test_images=args.test_images, int8_recipe=args.recipe)
    if args.stage in ("all", "time"):
        _merge_fmnist(latency=time_fmnist(args.work, args.runs))
    if args.stage in ("all", "deit"):
        _merge("deit", bench_deit(args.deit_reductions, args.runs, args.recipe))
    if args.stage == "render":
        RESULTS.with_suffix(".md").write_text(render(json.loads(RESULTS.read_text())))
    print(RESULTS.with_suffix(".md").read_text() if RESULTS.with_suffix(".md").exists() else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
