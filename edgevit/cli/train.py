"""``edgevit train``: train or fine-tune a catalog model on a dataset or an image folder."""

from __future__ import annotations

import argparse

COMMAND = "train"
HELP = "train a catalog model on fashion-mnist, digits or an image folder (checkpoints, resume)"
DESCRIPTION = (
    "Train a catalog model on a labelled dataset: 'fashion-mnist' (apt-get install "
    "dataset-fashion-mnist), 'digits' (scikit-learn: pip install 'edgevit[samples]'), a folder of IDX files, or an image folder with "
    "one sub-folder per class (optionally split into train/ and test/). Prints the held-out top-1 "
    "after each epoch, checkpoints into --out after each epoch (--resume continues), and writes "
    "OUT/MODEL.safetensors (use it with --weights in export/predict/eval) and OUT/MODEL.json."
)
EXAMPLES = [
    "edgevit train vit_fmnist_tiny --data fashion-mnist --epochs 8 --batch-size 64 --lr 3e-3 "
    "--label-smoothing 0.1 --augment flip --out runs/fmnist   # the shipped weights' recipe",
    "edgevit train vit_fmnist_tiny --data fashion-mnist --epochs 8 --batch-size 64 --lr 3e-3 "
    "--label-smoothing 0.1 --augment flip --out runs/fmnist --resume",
    "edgevit train mobilevit_xxs --data photos/ --epochs 20 --batch-size 32 --lr 5e-4 --out runs/photos",
    "edgevit train vit_fmnist_tiny --data digits --epochs 3 --out runs/digits --json",
    "edgevit train deit_small_patch16_224 --data photos/ --batch-size 64 --grad-checkpointing --out runs/deit",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model source: a catalog name (`edgevit list`), timm:NAME, hf:ORG/NAME or a save_pretrained folder")
    p.add_argument("--data", "-d", default="fashion-mnist", metavar="DIR|DATASET",
                   help="fashion-mnist (default), digits, an IDX folder or an image folder")
    p.add_argument("--epochs", "-e", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", "-b", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up before the cosine decay (default 1; at most a fifth of the run)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default 0)")
    p.add_argument("--augment", default="auto", choices=["auto", "none", "flip", "crop", "crop+flip"],
                   help="random crop (zero-padded) and/or horizontal flip; auto (default): both under "
                        "10,000 training images, flip only above")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", "-o", default="edgevit-train", help="output folder (default: edgevit-train/)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--force", action="store_true", help="start over even if --out holds a checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", metavar="FILE", help="initialise from a checkpoint (fine-tuning)")
    g.add_argument("--pretrained", action="store_true", help="initialise from the catalog's pretrained weights")
    p.add_argument("--train-limit", type=int, default=None, metavar="N", help="use the first N training images")
    p.add_argument("--test-limit", type=int, default=None, metavar="N", help="use the first N test images")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute block activations in the backward pass: less memory for larger models or "
                        "batches, about a third more compute, the same losses")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    if "torch" not in sys.modules:
        # On a shared CPU, OpenMP threads that spin while waiting cost 2-4x in training time;
        # the variable is read once, when torch's OpenMP runtime starts.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from edgevit.cli import emit_json, json_stdout_guard
    from edgevit.cli._common import progress_enabled
    from edgevit.compress.training import train

    def report(rec) -> None:
        if not args.json:
            print(
                f"epoch {rec.epoch:3d}/{args.epochs}  train loss {rec.train_loss:.4f}  "
                f"train top-1 {rec.train_top1:.4f}  test top-1 {rec.test_top1:.4f}  ({rec.seconds:.0f} s)",
                flush=True,
            )

    shown: list[str] = []

    def describe(lines: list[str], warnings: list[str]) -> None:
        if args.json:
            return
        for line in lines:
            print(line)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        shown.extend(warnings)
        sys.stdout.flush()

    with json_stdout_guard(args.json):
        result = train(
            args.model,
            args.data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            label_smoothing=args.label_smoothing,
            augment=args.augment,
            seed=args.seed,
            out=args.out,
            resume=args.resume,
            force=args.force,
            weights=args.weights,
            pretrained=args.pretrained,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            threads=args.threads,
            device=args.device,
            grad_checkpointing=args.grad_checkpointing,
            progress=progress_enabled(args),
            on_epoch_end=report,
            on_data=describe,
        )
    if args.json:
        emit_json(result.to_dict())
    else:
        print(f"Trained {result.model} on {result.dataset}: test top-1 {result.test_top1:.4f} "
              f"after {len(result.history)} epochs, {result.seconds / 60:.1f} min on {result.device} "
              f"({result.threads} threads)")
        print(f"  weights {result.weights}")
        print(f"  record  {result.record}")
        for w in result.warnings:
            if w not in shown:
                print(f"  warning: {w}")
    return 0
