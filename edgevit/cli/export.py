"""``edgevit export``: catalog model -> verified device artifact."""

from __future__ import annotations

import argparse

COMMAND = "export"
HELP = "export a catalog model to tflite | executorch | coreml | onnx and verify it on real photos"
EXAMPLES = [
    "edgevit export mobilevit_xxs --target tflite --out out/",
    "edgevit export vit_fmnist_tiny --pretrained --target onnx --out out/ --json",
    "edgevit export deit_tiny_patch16_224 --target executorch --weights deit.safetensors --force",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgevit.cli._common import add_weights_arguments

    p.add_argument("model", help="catalog model name (see `edgevit list`)")
    p.add_argument("--target", "-t", default="tflite", help="tflite (default), executorch, coreml or onnx")
    p.add_argument("--precision", "-p", default=None,
                   help="fp32 | fp16 | int8-dynamic | int8 (default fp32; fp16 for coreml)")
    p.add_argument("--out", "-o", default="edgevit-out", help="output folder or file path (default: edgevit-out/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact")
    add_weights_arguments(p)
    p.add_argument("--calibration", metavar="DIR|DATASET", help="calibration images for int8")
    p.add_argument("--fused-input", action="store_true",
                   help="fold normalisation into the model: it takes uint8 HxWx3 frames directly")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="target-specific option (repeatable)")
    p.add_argument("--no-verify", action="store_true", help="skip verification against the float model")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true", help="do not store the result in the database")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json, json_stdout_guard
    from edgevit.cli._common import parse_options, print_export_result
    from edgevit.converters import export

    precision = args.precision or ("fp16" if args.target == "coreml" else "fp32")
    # Converter chatter goes to stderr; stdout carries only edgevit's own output.
    with json_stdout_guard(True):
        result = export(
            args.model,
            target=args.target,
            precision=precision,
            out=args.out,
            force=args.force,
            pretrained=args.pretrained,
            weights=args.weights,
            calibration=args.calibration,
            fused_input=args.fused_input,
            verify=not args.no_verify,
            options=parse_options(args.option),
        )
    if not args.no_record:
        from edgevit.results import record_export

        record_export(result, db=args.db)
    if args.json:
        emit_json(result.to_dict())
    else:
        print_export_result(result)
    return 0

