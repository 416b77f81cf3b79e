"""The compression pipeline on real Fashion-MNIST, one table: train a teacher, distil a student,
prune it, quantization-aware-train it, export int8 -- params, MACs, size, latency and top-1 after
each step, all measured in this run.

    python benchmarks/pipeline.py --out runs/pipeline                       # full data (hours on 2 cores)
    python benchmarks/pipeline.py --out runs/pipeline --train-limit 10000 --test-limit 2000 \\
        --teacher-epochs 5 --student-epochs 4 --finetune-epochs 2 --qat-epochs 1   # reduced scale

Steps (each writes into ``--out``; ``--reuse`` skips a training step whose output is there):

1. ``teacher``: ``edgevit.compress.training.train(TEACHER)`` (default ``vit_fmnist_full``, 0.31 M params),
   or ``--teacher-weights FILE``: a teacher trained elsewhere (e.g. the shipped ``vit_fmnist_tiny``
   weights, trained by ``edgevit train`` on all 60,000 images);
2. ``student alone``: ``train(STUDENT)`` (default ``vit_fmnist_tiny``) -- the baseline with the
   same budget (epochs, data, recipe, seed) as the distilled student;
3. ``student distilled``: ``edgevit.compress.distill.distill(teacher -> STUDENT)``;
4. ``pruned``: ``edgevit.compress.prune.prune`` of the distilled student (``--heads``/``--mlp``), then
   fine-tuned ``--finetune-epochs`` with the teacher (distillation); a control gets the same
   fine-tuning unpruned, so the pruning cost is not confused with the extra epochs;
5. ``int8``: ``edgevit.compress.qat.qat`` on the pruned model for TFLite and ExecuTorch, beside PT2E
   post-training quantization of the same model (same quantizer and lowering), and the project's
   own PTQ (``edgevit export --precision int8 --calibration DATASET``) for reference.

Float models are exported to TFLite fp32 for their size and latency (``edgevit.converters.export``,
verified). Latency: every artifact loaded through edgevit's runtimes with ``--threads`` threads,
batch 1, timed *interleaved*: each of ``--rounds`` rounds runs every artifact for 10 back-to-back
calls (their median counts), so load from other processes falls on all of them alike; the median
over rounds is reported. MACs: ``edgevit.measure.profile`` (one
multiply-accumulate per multiply in matmuls/convolutions; int8 rows: the same graph). Top-1 on the
test split: of the torch model and of the artifact (through its runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _trained(out: Path, name: str, reuse: bool):
    path = out / f"{name}.safetensors"
    record = out / f"{name}.json"
    if reuse and path.is_file() and record.is_file():
        return str(path), json.loads(record.read_text())
    return None


def _export_fp32(name: str, out: Path, weights: str | None, pretrained: bool = False, reuse: bool = False) -> str:
    from edgevit.converters import export
    from edgevit.converters.export import default_artifact_name

    path = out / default_artifact_name(name, "tflite", "fp32", ".tflite")
    if reuse and path.is_file():
        return str(path)
    res = export(name, "tflite", "fp32", out=out, weights=weights, pretrained=pretrained, force=True)
    return str(res.path)


def _interleaved_latency(examples: dict, threads: int, warmup: int = 20, rounds: int = 60,
                         block: int = 10) -> dict[str, float]:
    """Median ms per call of each artifact (``{path: one input}``). Each round runs every artifact
    for a block of ``block`` back-to-back calls (the block's median counts), artifacts in turn, so
    load from other processes falls on all of them alike; the result is the median over rounds."""
    import numpy as np

    from edgevit.runtimes import load

    runtimes = {p: load(p, threads=threads) for p in examples}
    for _ in range(warmup):
        for p, rt in runtimes.items():
            rt.run(examples[p])
    samples: dict[str, list[float]] = {p: [] for p in runtimes}
    for r in range(rounds):
        order = list(runtimes) if r % 2 == 0 else list(runtimes)[::-1]
        for p in order:
            rt, x, times = runtimes[p], examples[p], []
            for _ in range(block):
                t0 = time.perf_counter()
                rt.run(x)
                times.append((time.perf_counter() - t0) * 1e3)
            samples[p].append(float(np.median(times)))
    return {p: float(np.median(v)) for p, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pipeline")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--teacher", default="vit_fmnist_full")
    p.add_argument("--student", default="vit_fmnist_tiny")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--teacher-weights", default=None, metavar="FILE",
                   help="use this trained teacher instead of training one (step 1)")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student-epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--heads", type=float, default=0.3)
    p.add_argument("--mlp", type=float, default=0.3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=60, help="latency rounds (each: 10 calls per artifact)")
    p.add_argument("--reuse", action="store_true", help="reuse training outputs already in --out")
    p.add_argument("--skip-export-ptq", action="store_true", help="skip the `edgevit export --precision int8` rows")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from edgevit.data import load_dataset
    from edgevit.compress.distill import distill
    from edgevit.models import get_spec
    from edgevit.measure.profile import profile_model
    from edgevit.compress.prune import prune, register_pruned
    from edgevit.compress.qat import evaluate_artifact, qat
    from edgevit.compress.training import to_model_input, train

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ds = load_dataset(args.data)
    if args.train_limit or args.test_limit:
        ds = ds.subset(args.train_limit, args.test_limit)
    _log(f"{ds.name}: {len(ds.train_labels)} train / {len(ds.test_labels)} test images")
    common = dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads, progress=False)
    seconds: dict[str, float] = {}

    def step(label: str, folder: str, name: str, fn):
        done = _trained(out / folder, name, args.reuse)
        if done:
            _log(f"{label}: reusing {done[0]}")
            return done
        _log(f"{label} ...")
        t0 = time.perf_counter()
        r = fn()
        seconds[label] = time.perf_counter() - t0
        _log(f"{label}: test top-1 {r.test_top1:.4f} ({seconds[label] / 60:.1f} min)")
        return r.weights, json.loads(Path(r.record).read_text())

    if args.teacher_weights:  # a teacher trained elsewhere (e.g. `edgevit train` on the full data)
        from edgevit.models import create_model
        from edgevit.compress.training import evaluate

        teacher_w = args.teacher_weights
        top1, _ = evaluate(create_model(args.teacher, weights=teacher_w), ds.test_images, ds.test_labels)
        teacher_rec = {"test_top1": top1, "weights": teacher_w}
        _log(f"teacher: {teacher_w}, test top-1 {top1:.4f}")
    else:
        teacher_w, teacher_rec = step("teacher", "teacher", args.teacher, lambda: train(
            args.teacher, ds, epochs=args.teacher_epochs, out=out / "teacher", force=True, **common))
    alone_w, alone_rec = step("student alone", "student", args.student, lambda: train(
        args.student, ds, epochs=args.student_epochs, out=out / "student", force=True, **common))
    distilled_w, distilled_rec = step("student distilled", "distill", args.student, lambda: distill(
        teacher_w, args.student, ds, temperature=args.temperature, alpha=args.alpha, epochs=args.student_epochs,
        out=out / "distill", force=True, **common))

    pruned_name = f"{args.student}_pruned"
    pruned_file = out / "prune" / f"{pruned_name}.safetensors"
    if args.reuse and pruned_file.is_file():
        _log(f"pruned: reusing {pruned_file}")
        register_pruned(pruned_file)
        prune_doc = json.loads(pruned_file.with_suffix(".json").read_text())
    else:
        _log("pruning + fine-tuning ...")
        t0 = time.perf_counter()
        pr = prune(args.student, distilled_w, heads=args.heads, mlp=args.mlp, data=ds,
                   finetune_epochs=args.finetune_epochs, teacher=teacher_w, temperature=args.temperature,
                   alpha=args.alpha, batch_size=args.batch_size, seed=args.seed, out=out / "prune", force=True,
                   threads=args.threads)
        seconds["prune + fine-tune"] = time.perf_counter() - t0
        prune_doc = json.loads(Path(pr.record).read_text())
    _log(f"pruned: top-1 {prune_doc['top1_pruned']:.4f} right after pruning, {prune_doc['top1_finetuned']} "
         "after fine-tuning")

    # Control: the same fine-tuning without pruning, so the pruning cost is not confused with the
    # effect of extra training epochs.
    control_name = f"{args.student}_finetuned_control"
    control_file = out / "control" / f"{control_name}.safetensors"
    if args.reuse and control_file.is_file():
        control_doc = json.loads(control_file.with_suffix(".json").read_text())
        register_pruned(control_file)
    else:
        _log("control: the same fine-tuning, nothing pruned ...")
        t0 = time.perf_counter()
        cr = prune(args.student, distilled_w, heads=0.0, mlp=0.0, data=ds, finetune_epochs=args.finetune_epochs,
                   teacher=teacher_w, temperature=args.temperature, alpha=args.alpha, batch_size=args.batch_size,
                   seed=args.seed, out=out / "control", name=control_name, force=True, threads=args.threads)
        seconds["control fine-tune"] = time.perf_counter() - t0
        control_doc = json.loads(Path(cr.record).read_text())
    _log(f"control (unpruned, same fine-tuning): top-1 {control_doc['top1_finetuned']:.4f}")

    qat_json = out / "int8" / "qat.json"
    if args.reuse and qat_json.is_file():
        _log(f"int8: reusing {qat_json}")
        qat_doc = json.loads(qat_json.read_text())
    else:
        _log("QAT + PTQ (tflite, executorch) ...")
        t0 = time.perf_counter()
        q = qat(pruned_name, ds, pretrained=True, targets=("tflite", "executorch"), epochs=args.qat_epochs,
                out=out / "int8", force=True, threads=args.threads, seed=args.seed)
        seconds["QAT + PTQ"] = time.perf_counter() - t0
        qat_doc = q.to_dict()
        qat_json.write_text(json.dumps(qat_doc, indent=1, default=str) + "\n")
    int8 = {(a["target"], a["method"]): a for a in qat_doc["artifacts"]}

    # PTQ through `edgevit export` (the project's int8 path: ai-edge-quantizer on TFLite, PT2E with
    # the ViT-aware mixed-precision search on ExecuTorch), for reference.
    export_ptq = {}
    if not args.skip_export_ptq:
        from edgevit.converters import export
        from edgevit.converters.export import default_artifact_name

        for target, suffix in (("tflite", ".tflite"), ("executorch", ".pte")):
            path = out / "int8-export" / default_artifact_name(pruned_name, target, "int8", suffix)
            if args.reuse and path.is_file():
                export_ptq[target] = str(path)
                continue
            _log(f"edgevit export {target} int8 (PTQ) ...")
            try:
                export_ptq[target] = str(export(pruned_name, target, "int8", out=path.parent, pretrained=True,
                                                calibration=args.data, force=True).path)
            except Exception as exc:  # reported in the table, not fatal for the benchmark
                _log(f"edgevit export {target} int8 failed: {type(exc).__name__}: {str(exc)[:200]}")

    _log("exporting float models to TFLite fp32 ...")
    fp32 = {
        "teacher": _export_fp32(args.teacher, out / "fp32" / "teacher", teacher_w, reuse=args.reuse),
        "student alone": _export_fp32(args.student, out / "fp32" / "alone", alone_w, reuse=args.reuse),
        "student distilled": _export_fp32(args.student, out / "fp32" / "distilled", distilled_w, reuse=args.reuse),
        "pruned + fine-tuned": _export_fp32(pruned_name, out / "fp32" / "pruned", None, pretrained=True,
                                            reuse=args.reuse),
    }

    test_x = {}

    def inputs(name: str):
        spec = get_spec(name)
        key = (tuple(spec.input_size), spec.color_mode, spec.mean, spec.std)
        if key not in test_x:
            test_x[key] = to_model_input(torch.from_numpy(np.array(ds.test_images, copy=True)), spec).numpy()
        return test_x[key]

    labels = np.asarray(ds.test_labels, dtype=np.int64)
    figures = {n: profile_model(n) for n in {args.teacher, args.student, pruned_name, control_name}}
    rows = [
        ("1 teacher" + (" (given)" if args.teacher_weights else " (trained)"), args.teacher, fp32["teacher"], teacher_rec["test_top1"], "tflite fp32"),
        ("2 student alone (same budget)", args.student, fp32["student alone"], alone_rec["test_top1"], "tflite fp32"),
        ("3 student distilled", args.student, fp32["student distilled"], distilled_rec["test_top1"], "tflite fp32"),
        ("4a pruned, no fine-tuning", pruned_name, None, prune_doc["top1_pruned"], "-"),
        ("4b pruned + fine-tuned", pruned_name, fp32["pruned + fine-tuned"], prune_doc["top1_finetuned"], "tflite fp32"),
        ("4c control: unpruned, same fine-tuning", control_name, None, control_doc["top1_finetuned"], "-"),
    ]
    for target in ("tflite", "executorch"):
        for method in ("ptq", "qat"):
            a = int8[(target, method)]
            rows.append((f"5 int8 {method.upper()} (PT2E)", pruned_name, a["path"], None, f"{target} int8"))
        if target in export_ptq:
            rows.append(("5 int8 PTQ (edgevit export)", pruned_name, export_ptq[target], None, f"{target} int8"))
    artifact_top1 = {}
    for _, name, path, _, _ in rows:
        if path and path not in artifact_top1:
            artifact_top1[path] = evaluate_artifact(path, inputs(name), labels, threads=args.threads)

    _log(f"latency: {args.rounds} interleaved rounds of 10 calls, {args.threads} threads ...")
    examples = {path: inputs(name)[:1] for _, name, path, _, _ in rows if path}
    latency = _interleaved_latency(examples, args.threads, rounds=args.rounds)

    table = []
    for label, name, path, top1, runtime in rows:
        f = figures[name]
        table.append({
            "step": label, "model": name, "params": f.params, "mmacs": f.macs / 1e6,
            "size_kb": Path(path).stat().st_size / 1024 if path else None,
            "runtime": runtime, "latency_ms": latency.get(path) if path else None,
            "top1_torch": top1, "top1_artifact": artifact_top1.get(path) if path else None,
        })
    headers = ["step", "model", "params", "MMACs", "size KB", "runtime", "latency ms", "top-1 torch", "top-1 artifact"]

    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [[r["step"], r["model"], f"{r['params']:,}", cell(r["mmacs"], ".2f"), cell(r["size_kb"], ".0f"),
              r["runtime"], cell(r["latency_ms"], ".3f"),
              cell(None if r["top1_torch"] is None else 100 * r["top1_torch"], ".2f"),
              cell(None if r["top1_artifact"] is None else 100 * r["top1_artifact"], ".2f")] for r in table]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *lines)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |")
    summary = {
        "dataset": ds.summary(),
        "settings": vars(args),
        "rows": table,
        "qat": qat_doc,
        "prune": prune_doc,
        "control": control_doc,
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(time.perf_counter() - t_start, 1)},
        "load_avg": list(os.getloadavg()),
        "torch_threads": args.threads,
    }
    (out / "pipeline.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\n{len(ds.train_labels)} train / {len(ds.test_labels)} test images of {ds.name}; "
          f"distillation gain over the student alone: {100 * (distilled_rec['test_top1'] - alone_rec['test_top1']):+.2f} "
          f"points; pruning cost after fine-tuning: "
          f"{100 * (prune_doc['top1_finetuned'] - control_doc['top1_finetuned']):+.2f} points vs the same fine-tuning "
          f"unpruned ({100 * (prune_doc['top1_finetuned'] - distilled_rec['test_top1']):+.2f} vs the distilled student); "
          f"total {summary['seconds']['total'] / 60:.1f} min; details in {out / 'pipeline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
