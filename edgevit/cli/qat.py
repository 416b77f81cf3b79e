"""``edgevit qat``: quantization-aware fine-tuning, then an int8 artifact that beats (or ties) PTQ."""

from __future__ import annotations

import argparse
from typing import Any

COMMAND = "qat"
HELP = "quantization-aware fine-tuning to int8 for tflite | executorch, compared with float and PTQ int8"
DESCRIPTION = (
    "Quantization-aware training (PyTorch 2 Export QAT): the model as export() deploys it gets the "
    "target's fake-quantizers (per-channel int8 weights, per-tensor int8 activations), is fine-tuned on the "
    "training split with the float model as teacher (--teacher float, the default; 'none': labels only), and "
    "is exported as a static int8 artifact (tflite: litert-torch, int8 input/output; executorch: XNNPACK). "
    "For comparison the same float model is post-training quantized with the same quantizer (PTQ, "
    "--calibration-images training images; --no-ptq skips it); float, PTQ and QAT top-1 on the held-out "
    "split are printed side by side. --weights takes a checkpoint from `edgevit train`/`distill`/`prune` "
    "(a pruned one is rebuilt from the plan it carries). onnx and coreml have no QAT path: use "
    "`edgevit export --precision int8` (post-training) there. Writes "
    "OUT/MODEL_TARGET_int8_qat.EXT (and ..._int8_ptq.EXT)."
)
EXAMPLES = [
    "edgevit qat vit_fmnist_tiny --pretrained --target tflite --data fashion-mnist --epochs 1 --out runs/qat",
    "edgevit qat vit_fmnist_tiny --weights runs/prune/vit_fmnist_tiny_pruned.safetensors "
    "--target tflite,executorch --data fashion-mnist --out runs/qat --json",
    "edgevit qat mobilevit_xxs --weights photos.safetensors --target executorch --data photos/ --epochs 2 --lr 5e-5",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgevit.cli._common import add_weights_arguments

    p.add_argument("model", help="model source: a catalog name (`edgevit list`), timm:NAME, hf:ORG/NAME or a save_pretrained folder")
    p.add_argument("--target", "-t", action="append", metavar="TARGET[,TARGET]",
                   help="tflite (default) and/or executorch; repeat or separate with commas")
    p.add_argument("--data", "-d", default="fashion-mnist", metavar="DIR|DATASET",
                   help="fashion-mnist (default), digits, an IDX folder or an image folder (one sub-folder per class)")
    add_weights_arguments(p)
    p.add_argument("--epochs", "-e", type=int, default=1, help="QAT epochs (default 1)")
    p.add_argument("--batch-size", "-b", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    p.add_argument("--freeze-observers", type=float, default=0.6, metavar="F",
                   help="freeze the activation ranges after this fraction of the steps (default 0.6)")
    p.add_argument("--teacher", default="float", metavar="float|none|MODEL|CHECKPOINT",
                   help="soft targets during QAT: the float model (default), none (labels only), or a teacher")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher term (default 0.5)")
    p.add_argument("--no-ptq", action="store_true", help="skip the post-training-quantization baseline")
    p.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="training images that calibrate the PTQ baseline (default 256)")
    p.add_argument("--no-rewrite", action="store_true", help="quantize the model without the target's edge rewrites")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train-limit", type=int, default=None, metavar="N", help="use the first N training images")
    p.add_argument("--test-limit", type=int, default=None, metavar="N", help="use the first N test images")
    p.add_argument("--out", "-o", default="edgevit-qat", help="output folder (default: edgevit-qat/)")
    p.add_argument("--force", action="store_true", help="overwrite existing artifacts")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true", help="do not store the results in the database")


def parse_targets(values: list[str] | None) -> tuple[str, ...]:
    """``--target`` values (repeated and/or comma-separated) -> QAT targets, checked by name."""
    from edgevit.errors import ConfigError, UnknownTargetError
    from edgevit.compress.qat import QAT_TARGETS

    names = [t.strip() for v in (values or ["tflite"]) for t in v.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--target needs a target: {', '.join(QAT_TARGETS)}")
    other_targets = ("onnx", "coreml")
    for t in names:
        if t in QAT_TARGETS:
            continue
        if t in other_targets:
            raise ConfigError(
                f"{t} has no quantization-aware training path (QAT targets: {', '.join(QAT_TARGETS)}); for an int8 "
                f"{t} artifact use post-training quantization: `edgevit export MODEL --target {t} --precision int8 "
                f"--calibration DATA`"
            )
        raise UnknownTargetError(t, QAT_TARGETS)
    return tuple(dict.fromkeys(names))


def _check_numbers(args: argparse.Namespace) -> None:
    from edgevit.errors import ConfigError

    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (0 <= args.freeze_observers <= 1, f"--freeze-observers must be a fraction in [0, 1], got {args.freeze_observers}"),
        (args.temperature > 0, f"--temperature must be > 0, got {args.temperature}"),
        (0 <= args.alpha <= 1, f"--alpha must be in [0, 1], got {args.alpha}"),
        (args.calibration_images >= 1, f"--calibration-images must be >= 1, got {args.calibration_images}"),
        (args.train_limit is None or args.train_limit >= 1, f"--train-limit must be >= 1, got {args.train_limit}"),
        (args.test_limit is None or args.test_limit >= 1, f"--test-limit must be >= 1, got {args.test_limit}"),
        (args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if args.weights is None and not args.pretrained:
        raise ConfigError(f"quantization-aware training of a randomly initialised {args.model} is meaningless; "
                          f"pass --weights FILE (from `edgevit train`/`distill`/`prune`) or --pretrained")


def _record(result: Any, ds_name: str, n_test: int, weights: str, db: Any) -> None:
    """Each artifact as an export run and, with the float model, as eval rows (top-1 on the test split)."""
    from edgevit.measure.results import ResultsStore

    evals = [({"model": result.model, "target": "torch", "precision": "fp32", "dataset": ds_name, "split": "test",
               "n": n_test, "top1": result.float_top1, "weights": weights},
              {"model": result.model, "target": "torch", "precision": "fp32"})]
    exports = []
    for a in result.artifacts:
        cols = {"model": result.model, "target": a.target, "precision": "int8", "artifact": a.path}
        exports.append(({"path": a.path, "model": result.model, "target": a.target, "precision": "int8",
                         "method": a.method, "bytes": a.bytes, "seconds": a.seconds, "weights": weights,
                         "delegation": a.details.get("delegation"), "details": a.details}, cols))
        evals.append(({"model": result.model, "target": a.target, "precision": "int8", "method": a.method,
                       "artifact": a.path, "dataset": ds_name, "split": "test", "n": n_test, "top1": a.top1,
                       "float_top1": result.float_top1, "weights": weights}, cols))
    with ResultsStore(db) as store:
        store.add_many("export", exports)
        store.add_many("eval", evals)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see `edgevit train`

    from edgevit.cli import emit_json, json_stdout_guard, print_table
    from edgevit.cli._common import format_bytes, progress_enabled
    from edgevit.cli.export import not_fitting_hint, resolve_weights_model
    from edgevit.errors import ModelError
    from edgevit.models import get_spec

    # Everything a user can get wrong is checked before any training starts.
    targets = parse_targets(args.target)
    _check_numbers(args)
    teacher = {"float": "float", "none": None}.get(args.teacher, args.teacher)

    def report(rec) -> None:
        if not args.json:  # beside the converters' progress output, on stderr
            print(f"QAT epoch {rec.epoch}/{args.epochs}  train loss {rec.train_loss:.4f}  fake-quantized test top-1 "
                  f"{rec.test_top1:.4f}  ({rec.seconds:.0f} s)", file=sys.stderr, flush=True)

    # Converter chatter (litert-torch, ExecuTorch) goes to stderr; stdout carries only edgevit's output.
    with json_stdout_guard(True):
        model = resolve_weights_model(args.model, args.weights)  # a pruned checkpoint: its pruned entry
        spec = get_spec(model)  # an unknown model name fails here
        from edgevit.data import load_dataset

        ds = load_dataset(args.data, image_size=spec.input_size, color_mode=spec.color_mode)
        if args.train_limit or args.test_limit:
            ds = ds.subset(args.train_limit, args.test_limit)
        from edgevit.compress.qat import qat

        try:
            result = qat(
                model, ds, weights=args.weights, pretrained=args.pretrained, targets=targets, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, freeze_observers=args.freeze_observers, teacher=teacher,
                temperature=args.temperature, alpha=args.alpha, compare_ptq=not args.no_ptq,
                calibration_images=args.calibration_images, rewrite=not args.no_rewrite, seed=args.seed,
                out=args.out, force=args.force, threads=args.threads, progress=progress_enabled(args),
                on_epoch_end=report,
            )
        except ModelError as exc:
            if args.weights is None or "does not fit this model" not in str(exc):
                raise
            raise ModelError(f"{exc}{not_fitting_hint(model, args.weights)}") from exc
    n_test, n_train = len(ds.test_labels), len(ds.train_labels)
    weights = str(args.weights) if args.weights else (spec.embedded_weights or "catalog") if args.pretrained \
        else "random-init"
    if not args.no_record:
        _record(result, ds.name, n_test, weights, args.db)
    if args.json:
        emit_json({**result.to_dict(), "test_images": n_test, "train_images": n_train, "weights": weights})
        return 0

    print(f"QAT int8 {result.model} on {result.dataset}: top-1 on {n_test:,} held-out images "
          f"({n_train:,} training images, {args.epochs} epoch(s), {result.seconds / 60:.1f} min)")
    rows = [["float (torch fp32)", "-", f"{100 * result.float_top1:.2f}%", "", "-", "-"]]
    order = {"ptq": 0, "qat": 1}
    for a in sorted(result.artifacts, key=lambda a: (a.target, order.get(a.method, 2))):
        rows.append([f"{a.method.upper()} int8", a.target, f"{100 * a.top1:.2f}%",
                     f"{100 * (a.top1 - result.float_top1):+.2f}", format_bytes(a.bytes), a.path])
    print_table(rows, ["model", "target", "top-1", "vs float", "size", "artifact"])
    for t in targets:
        try:
            q, p = result.artifact(t, "qat"), result.artifact(t, "ptq")
        except KeyError:
            continue
        verdict = "at least as accurate as" if q.top1 >= p.top1 else "less accurate than"
        print(f"  {t}: QAT int8 is {verdict} PTQ int8 ({100 * (q.top1 - p.top1):+.2f} points)")
    for w in result.warnings:
        print(f"  warning: {w}")
    return 0
