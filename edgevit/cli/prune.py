"""``edgevit prune``: structured pruning of attention heads and MLP units (a genuinely smaller model)."""

from __future__ import annotations

import argparse

COMMAND = "prune"
HELP = "remove attention heads and MLP units by importance; optional fine-tuning and export"
DESCRIPTION = (
    "Structured pruning: remove a fraction of each block's attention heads (--heads) and MLP hidden "
    "units (--mlp), lowest importance first, by cutting the qkv/proj/fc1/fc2 layers down (fewer "
    "parameters and MACs, smaller and faster artifacts). Importance (l1): a head scores "
    "||W_proj[:, head]||_1 * ||W_v[head]||_1, an MLP unit ||fc1 row||_1 * ||fc2 column||_1. "
    "--scope layer (default) prunes every block by the ratio; global ranks all blocks together. "
    "--finetune-epochs N --data DATASET fine-tunes afterwards (--teacher: with distillation). "
    "Writes OUT/NAME.safetensors (weights, plan in its metadata) and OUT/NAME.json; the model is "
    "exported with --export or `edgevit.compress.prune.register_pruned(FILE)` + `edgevit.converters.export`. "
    "Supports edgevit's EdgeViT and timm's ViT/DeiT."
)
EXAMPLES = [
    "edgevit prune vit_fmnist_tiny --weights runs/distill/vit_fmnist_tiny.safetensors --heads 0.3 --mlp 0.3 "
    "--finetune-epochs 2 --data fashion-mnist --out runs/prune",
    "edgevit prune vit_fmnist_tiny --pretrained --heads 0.25 --mlp 0.5 --export tflite --out runs/prune",
    "edgevit prune deit_tiny_patch16_224 --weights deit.safetensors --heads 0.3 --mlp 0.3 --scope global --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalog name, timm:NAME, hf:ORG/NAME, a save_pretrained folder, or a checkpoint written by edgevit")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", metavar="FILE", help="the model's trained weights")
    g.add_argument("--pretrained", action="store_true", help="use the catalog's pretrained weights")
    p.add_argument("--heads", type=float, default=0.3, metavar="R", help="fraction of heads to remove (default 0.3)")
    p.add_argument("--mlp", type=float, default=0.3, metavar="R", help="fraction of MLP hidden units to remove (default 0.3)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="layer: the ratio in every block (default); global: ranked across blocks")
    p.add_argument("--importance", choices=["l1"], default="l1", help="importance score (default l1)")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="N", help="fine-tune N epochs after pruning")
    p.add_argument("--data", "-d", default=None, metavar="DIR|DATASET",
                   help="dataset for evaluation and fine-tuning (fashion-mnist, digits, a folder)")
    p.add_argument("--teacher", metavar="MODEL|CHECKPOINT", help="distil from this teacher while fine-tuning")
    p.add_argument("--teacher-weights", metavar="FILE", help="the teacher's weights")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    p.add_argument("--alpha", type=float, default=0.7, help="distillation weight (default 0.7)")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning peak learning rate (default 5e-4)")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train-limit", type=int, default=None, metavar="N", help="use the first N training images")
    p.add_argument("--test-limit", type=int, default=None, metavar="N", help="use the first N test images")
    p.add_argument("--name", default=None, help="name of the pruned model (default MODEL_pruned)")
    p.add_argument("--export", default="", metavar="TARGET[,TARGET]",
                   help="export the pruned model (fp32) to these targets, e.g. tflite,onnx")
    p.add_argument("--out", "-o", default="edgevit-prune", help="output folder (default: edgevit-prune/)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from edgevit.cli import emit_json, json_stdout_guard, print_table
    from edgevit.cli._common import progress_enabled
    from edgevit.compress.prune import prune

    targets = [t.strip() for t in args.export.split(",") if t.strip()]
    with json_stdout_guard(args.json):
        result = prune(
            args.model, args.weights, heads=args.heads, mlp=args.mlp, importance=args.importance, scope=args.scope,
            pretrained=args.pretrained, data=args.data, finetune_epochs=args.finetune_epochs, teacher=args.teacher,
            teacher_weights=args.teacher_weights, temperature=args.temperature, alpha=args.alpha, lr=args.lr,
            batch_size=args.batch_size, seed=args.seed, train_limit=args.train_limit, test_limit=args.test_limit,
            out=args.out, name=args.name, force=args.force, export_targets=targets, threads=args.threads,
            progress=progress_enabled(args),
        )
    if args.json:
        emit_json(result.to_dict())
        return 0
    plan = result.plan

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    print(f"Pruned {result.base} -> {result.name}: {plan.heads_total - plan.heads_kept}/{plan.heads_total} heads, "
          f"{plan.units_total - plan.units_kept}/{plan.units_total} MLP units removed ({plan.importance}, {plan.scope})")
    print_table(
        [["params", f"{result.params_before:,}", f"{result.params_after:,}",
          f"-{100 * (1 - result.params_after / result.params_before):.1f}%"],
         ["MACs", f"{result.macs_before:,}", f"{result.macs_after:,}",
          f"-{100 * (1 - result.macs_after / result.macs_before):.1f}%"],
         ["top-1", pct(result.top1_before), pct(result.top1_finetuned if result.top1_finetuned is not None
                                               else result.top1_pruned), ""]],
        ["", "before", "after" + (" fine-tuning" if result.top1_finetuned is not None else ""), "change"],
    )
    if result.top1_finetuned is not None:
        print(f"  top-1 right after pruning (before fine-tuning): {pct(result.top1_pruned)}")
    print(f"  weights {result.weights}")
    print(f"  record  {result.record}")
    for e in result.exports:
        print(f"  exported {e['target']}: {e['path']} ({e['bytes']:,} bytes; {e['verification']})")
    for w in result.warnings:
        print(f"  warning: {w}")
    return 0
