"""``edgevit eval``: top-1/top-5 on a labelled set, float vs exported."""

from __future__ import annotations

import argparse

COMMAND = "eval"
HELP = "top-1/top-5 accuracy of artifacts (and the float model) on a labelled dataset or image folder"
DESCRIPTION = (
    "Evaluate exported artifacts, and optionally the float torch model (--float MODEL), on labelled\n"
    "images: a known dataset (fashion-mnist, digits), a folder of IDX files, or an image folder\n"
    "(DIR/<class>/<image>, or DIR/test/<class>/...). Each artifact uses its own preprocessing.\n"
    "With --float, each artifact's top-1 agreement with the float model is shown too."
)
EXAMPLES = [
    "edgevit eval out/vit_fmnist_tiny_tflite_fp32.tflite --data fashion-mnist --float vit_fmnist_tiny --pretrained",
    "edgevit eval out/model_int8.tflite out/model_fp32.onnx --data photos/ --limit 500",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgevit.cli._common import add_weights_arguments

    p.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help="exported artifacts to evaluate")
    p.add_argument("--data", required=True, metavar="DIR|DATASET",
                   help="fashion-mnist, digits, a folder of IDX files or an image folder")
    p.add_argument("--split", choices=["test", "train", "all"], default="test",
                   help="which split (default test: held-out images; an image folder without train/ and test/ "
                        "holds out the same images `edgevit train` does)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    p.add_argument("--float", dest="float_model", metavar="MODEL", help="also evaluate this model in torch (catalog name, timm:NAME, hf:ORG/NAME or a folder)")
    add_weights_arguments(p)
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true", help="do not store the results in the database")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json, json_stdout_guard, print_table
    from edgevit.cli._common import image_progress
    from edgevit.measure.evaluate import evaluate

    progress = image_progress(args)
    with json_stdout_guard(args.json):
        report = evaluate(
            args.artifacts,
            args.data,
            split=args.split,
            limit=args.limit,
            float_model=args.float_model,
            pretrained=args.pretrained,
            weights=args.weights,
            threads=args.threads,
            progress=progress,
        )
    if not args.no_record:
        from edgevit.measure.results import record_eval

        record_eval(report.rows, db=args.db)
    if args.json:
        emit_json(report.to_dict())
        return 0
    d = report.dataset
    print(f"dataset {d['name']} ({d['split']} split, {d['n']} images, {len(d['classes'])} classes)")
    if d.get("split_note"):
        print(f"  {d['split']} split: {d['split_note']}")
    rows = []
    for r in report.rows:
        agree = r.get("agreement_top1")
        rows.append([
            r["name"], r["model"], f"{r['target']}/{r['precision']}", f"{100 * r['top1']:.2f}",
            f"{100 * r['top5']:.2f}", "-" if agree is None else f"{100 * agree:.2f}",
            f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-", r["weights"] or "-",
        ])
    print_table(rows, ["evaluated", "model", "target/precision", "top-1 %", "top-5 %", "agree w/ float %", "img/s",
                       "weights"])
    for note in sorted({r["note"] for r in report.rows if r.get("note")}):
        print(f"note: {note}")
    return 0
