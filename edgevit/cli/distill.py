"""``edgevit distill``: knowledge distillation from a teacher into a smaller catalog student."""

from __future__ import annotations

import argparse

COMMAND = "distill"
HELP = "distil a teacher (catalog model + checkpoint) into a student: soft targets, temperature, alpha"
DESCRIPTION = (
    "Train a student model (any source) from a teacher's soft targets and the labels: "
    "L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y). "
    "The teacher is a catalog name with --teacher-weights FILE (or --teacher-pretrained), or a "
    "checkpoint written by `edgevit train`/`distill`/`prune` (its model name is read from the file). "
    "Students with DeiT's distillation token (deit_*_distilled_*) learn the teacher on their "
    "distillation head (--distill-token hard|soft). Same recipe, checkpoints and --resume as "
    "`edgevit train`; writes OUT/STUDENT.safetensors and OUT/STUDENT.json."
)
EXAMPLES = [
    "edgevit distill --teacher runs/teacher/vit_fmnist_full.safetensors --student vit_fmnist_tiny "
    "--data fashion-mnist --epochs 8 --out runs/distill",
    "edgevit distill --teacher vit_fmnist_full --teacher-weights teacher.safetensors --student vit_fmnist_tiny "
    "--temperature 4 --alpha 0.7 --out runs/distill",
    "edgevit distill --teacher vit_fmnist_tiny --teacher-pretrained --student vit_fmnist_tiny --epochs 2 --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", "-t", required=True, metavar="MODEL|CHECKPOINT",
                   help="teacher: a catalog name or timm:NAME (with --teacher-weights or --teacher-pretrained), "
                        "hf:ORG/NAME or a save_pretrained folder, or a checkpoint written by edgevit")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--teacher-weights", metavar="FILE", help="the teacher's weights (safetensors or torch file)")
    g.add_argument("--teacher-pretrained", action="store_true", help="use the teacher's catalog weights")
    p.add_argument("--student", "-s", required=True, metavar="MODEL", help="student model source: a catalog name, timm:NAME, hf:ORG/NAME or a save_pretrained folder")
    p.add_argument("--student-weights", metavar="FILE", help="initialise the student from a checkpoint")
    p.add_argument("--data", "-d", default="fashion-mnist", metavar="DIR|DATASET",
                   help="fashion-mnist (default), digits, an IDX folder or an image folder")
    p.add_argument("--temperature", "-T", type=float, default=4.0, help="softmax temperature T (default 4)")
    p.add_argument("--alpha", "-a", type=float, default=0.7,
                   help="weight of the soft (teacher) term; 1 - alpha weighs the labels (default 0.7)")
    p.add_argument("--distill-token", choices=["hard", "soft"], default="hard",
                   help="DeiT distillation-token students: hard (teacher argmax, DeiT default) or soft targets")
    p.add_argument("--epochs", "-e", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", "-b", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up (default 1)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the CE term (default 0)")
    p.add_argument("--augment", default="auto", choices=["auto", "none", "flip", "crop", "crop+flip"],
                   help="augmentation, as in `edgevit train` (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", "-o", default="edgevit-distill", help="output folder (default: edgevit-distill/)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--force", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--train-limit", type=int, default=None, metavar="N", help="use the first N training images")
    p.add_argument("--test-limit", type=int, default=None, metavar="N", help="use the first N test images")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the student's block activations in the backward pass (less memory, more compute)")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see `edgevit train`

    from edgevit.cli import emit_json, json_stdout_guard
    from edgevit.cli._common import progress_enabled
    from edgevit.compress.distill import distill

    def report(rec) -> None:
        if not args.json:
            print(f"epoch {rec.epoch:3d}/{args.epochs}  train loss {rec.train_loss:.4f}  "
                  f"train top-1 {rec.train_top1:.4f}  test top-1 {rec.test_top1:.4f}  ({rec.seconds:.0f} s)", flush=True)

    with json_stdout_guard(args.json):
        result = distill(
            args.teacher, args.student, args.data,
            teacher_weights=args.teacher_weights, teacher_pretrained=args.teacher_pretrained,
            student_weights=args.student_weights, temperature=args.temperature, alpha=args.alpha,
            distill_token=args.distill_token, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
            augment=args.augment, seed=args.seed, out=args.out, resume=args.resume, force=args.force,
            train_limit=args.train_limit, test_limit=args.test_limit, threads=args.threads, device=args.device,
            grad_checkpointing=args.grad_checkpointing, progress=progress_enabled(args), on_epoch_end=report,
        )
    if args.json:
        emit_json(result.to_dict())
        return 0
    token = f", distillation token ({result.distill_token})" if result.distill_token else ""
    print(f"Distilled {result.teacher} (test top-1 {result.teacher_top1:.4f}) into {result.student}: test top-1 "
          f"{result.test_top1:.4f} after {len(result.history)} epochs (T={result.temperature}, alpha={result.alpha}"
          f"{token}), {result.seconds / 60:.1f} min")
    print(f"  weights {result.weights}")
    print(f"  record  {result.record}")
    for w in result.warnings:
        print(f"  warning: {w}")
    return 0
