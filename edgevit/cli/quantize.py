"""``edgevit quantize``: one model at every precision of a target, side by side."""

from __future__ import annotations

import argparse

COMMAND = "quantize"
HELP = "compare a model's precisions on one target: size, speed vs fp32, and top-1 drop on a labelled set"
DESCRIPTION = (
    "Export MODEL to --target at each precision (fp32, fp16, int8-dynamic, ViT-aware int8, naive int8:\n"
    "whatever the target has; fp32 is always the reference) and compare them: size and speed-up vs fp32\n"
    "(all artifacts timed interleaved in one loop, batch 1), top-1 agreement and logit cosine with the\n"
    "float model on the bundled real photos, and with --data, top-1 on its test split, the drop vs the\n"
    "float model in points and the agreement with it. int8 needs --calibration (with --data fashion-mnist\n"
    "or digits, that dataset's train split calibrates). --relax: when ViT-aware int8 cannot meet\n"
    "--max-drop, measure the mix found with looser targets (1, then 2 points) and report the miss.\n"
    "Mistakes (a precision the target lacks, a missing dataset) and failed conversions print an Error:\n"
    "line and exit 1, as every edgevit command does. Artifacts are kept only with --out, and only when\n"
    "the whole run succeeds.\n"
    "Weights: the model's trained ones (as `edgevit export`), --weights FILE, or --random-init (size and speed only)."
)
EXAMPLES = [
    "edgevit quantize vit_fmnist_tiny --target tflite --data fashion-mnist --limit 2000",
    ("edgevit quantize vit_fmnist_tiny --target onnx --precision int8 int8-naive "
     "--calibration fashion-mnist --max-drop 0.5 --relax --out out/"),
    "edgevit quantize deit_tiny_patch16_224 --target executorch --random-init --calibration photos/ --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgevit.cli._common import MODEL_SOURCE_HELP, add_weights_arguments

    p.add_argument("model", metavar="MODEL", help=MODEL_SOURCE_HELP)
    p.add_argument("--target", "-t", required=True, metavar="T", help="export target: tflite, executorch, onnx")
    p.add_argument("--precision", nargs="+", metavar="P",
                   help="variants to compare: fp32 fp16 int8-dynamic int8 int8-naive (default: all the target "
                        "has; the int8 ones only with calibration). fp32 is always measured")
    p.add_argument("--data", metavar="DIR|DATASET",
                   help="score top-1 on a labelled set: fashion-mnist, digits, a folder of IDX files or an image folder")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split --data scores (default test)")
    p.add_argument("--limit", type=int, metavar="N", help="score the first N images only")
    add_weights_arguments(p, random_init=True)
    p.add_argument("--calibration", metavar="SRC",
                   help="int8 calibration images: a dataset (SRC:train[START:STOP] for a slice), a class folder or "
                        "a flat image folder")
    p.add_argument("--max-drop", type=float, metavar="P", help="ViT-aware int8 target: top-1 drop in points")
    p.add_argument("--min-agreement", type=float, metavar="A",
                   help="ViT-aware int8 target: top-1 agreement with float on the search images (0 turns it off)")
    p.add_argument("--relax", action="store_true",
                   help="if the int8 target is out of reach, retry looser ones and report the miss")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="converter option for every export")
    p.add_argument("--out", metavar="DIR", help="keep the artifacts in DIR (<model>_<target>_<precision>.<ext>)")
    p.add_argument("--force", action="store_true", help="replace artifacts already in --out")
    p.add_argument("--runs", type=int, default=20, help="timed runs per artifact (default 20; 0 skips timing)")
    p.add_argument("--threads", type=int, default=2, help="runtime threads for timing and scoring (default 2)")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true", help="do not store the scores in the database")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json, json_stdout_guard, print_table
    from edgevit.cli._common import image_progress, parse_options, quiet_converters, trained_by_default
    from edgevit.cli.export import resolve_weights_model
    from edgevit.measure.quantization import compare_precisions, describe_lines, format_precision_table

    progress = image_progress(args)
    options = parse_options(args.option)
    for key, value in (("max_drop", args.max_drop), ("min_agreement", args.min_agreement)):
        if value is not None:
            options[key] = value
    with json_stdout_guard(args.json), quiet_converters(args):
        # The model's trained weights unless --weights or --random-init, as `edgevit export` does.
        model = resolve_weights_model(args.model, args.weights)
        pretrained = trained_by_default(args, model)
        table = compare_precisions(
            model, args.target, args.precision, weights=args.weights, pretrained=pretrained,
            data=args.data, split=args.split, limit=args.limit, calibration=args.calibration, options=options,
            relax=args.relax, out=args.out, force=args.force, runs=args.runs, threads=args.threads,
            progress=progress,
        )
    if table.evaluation and not args.no_record:
        from edgevit.measure.results import record_eval

        record_eval(table.evaluation, db=args.db)
    if args.json:
        emit_json(table.to_dict())
        return 0
    head, notes = describe_lines(table)
    for line in head:
        print(line)
    headers, rows = format_precision_table(table)
    print_table(rows, headers)
    for note in notes:
        print(f"note: {note}")
    if args.out:
        print(f"artifacts in {args.out}")
    return 0
