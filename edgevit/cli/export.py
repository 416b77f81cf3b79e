"""``edgevit export``: any model source (catalog, timm:, hf:, folder) -> verified device artifact."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

COMMAND = "export"
HELP = "export a model (catalog, timm:, hf:, your checkpoint) to tflite | executorch | coreml | onnx and verify it"
DESCRIPTION = (
    "Export a model to a device artifact and verify it against the float model on real photos (the bundled "
    "ones, or yours with --verify-images DIR). The model is a catalog name, timm:NAME (any timm architecture), "
    "hf:ORG/NAME (a Hugging Face image classifier) or a folder written by save_pretrained. "
    "--labels FILE and --num-classes N set your classes; a checkpoint with another head size sets them too. "
    "--weights FILE exports your own checkpoint (safetensors, or a torch file read with weights_only=True): "
    "one written by `edgevit train`/`distill`, or a pruned model written by `edgevit prune` (its pruning "
    "plan, in the file or the .json beside it, is applied so the pruned shapes are built; pass the base "
    "model's name). Without --weights the model's trained weights are used (shipped with edgevit, or the "
    "hub's when online); --random-init exports random ones, for size and speed tests only. The artifact's "
    "metadata records the weights."
)
EXAMPLES = [
    "edgevit export mobilevit_xxs --target tflite --out out/",
    "edgevit export vit_fmnist_tiny --target onnx --out out/ --json     # its shipped trained weights",
    "edgevit export vit_tiny_performer --random-init --target tflite   # no trained weights: speed tests",
    "edgevit export deit_tiny_patch16_224 --target executorch --weights deit.safetensors --force",
    "edgevit export vit_fmnist_tiny --weights runs/prune/vit_fmnist_tiny_pruned.safetensors --target tflite",
    "edgevit export timm:vit_small_patch16_224 --target tflite     # the hub's weights (online)",
    "edgevit export timm:deit_tiny_patch16_224 --weights my_5class.safetensors --labels classes.txt --verify-images photos/",
    "edgevit export ./my-hf-vit --target onnx          # a folder written by save_pretrained",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgevit.cli._common import MODEL_SOURCE_HELP, add_class_arguments, add_weights_arguments

    p.add_argument("model", help=MODEL_SOURCE_HELP)
    p.add_argument("--target", "-t", default="tflite", help="tflite (default), executorch, coreml or onnx")
    p.add_argument("--precision", "-p", default=None,
                   help="fp32 | fp16 | int8-dynamic | int8 (default fp32; fp16 for coreml)")
    p.add_argument("--out", "-o", default="edgevit-out", help="output folder or file path (default: edgevit-out/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact")
    add_weights_arguments(p, random_init=True)
    add_class_arguments(p)
    p.add_argument("--verify-images", metavar="DIR|GLOB",
                   help="verify on your own photos (a folder, class subfolders included, or a glob) with the "
                        "artifact's own preprocessing; default: the bundled real photos")
    p.add_argument("--calibration", metavar="DIR|DATASET",
                   help="calibration images for int8: an image folder, class folders or a dataset name; "
                        "SOURCE:SPLIT[START:STOP] picks a split and slice, e.g. fashion-mnist:train[50000:] "
                        "for images the model was not trained on")
    p.add_argument("--fused-input", action="store_true",
                   help="fold normalisation into the model: it takes uint8 HxWx3 frames directly")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="target-specific option (repeatable)")
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="int8 fidelity target: top-1 drop vs float on labelled calibration images (default 1.0; "
                        "same as --option max_drop=POINTS)")
    p.add_argument("--min-agreement", type=float, metavar="FRACTION",
                   help="int8 fidelity target with labels: share of images keeping the float model's top-1 "
                        "(default 0.98, 0 turns it off; same as --option min_agreement=FRACTION)")
    p.add_argument("--no-verify", action="store_true", help="skip verification against the float model")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true", help="do not store the result in the database")


# ----------------------------------------------------------------------------------------------
# --weights FILE: which model the checkpoint belongs to


def _safetensors_metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # unreadable files are reported by the weights loader, with its own message
        return {}


def _pruning_record(path: Path) -> Path | None:
    """The ``.json`` that `edgevit prune` writes beside its checkpoint, when it holds a plan."""
    record = path.with_suffix(".json")
    if record == path or not record.is_file():
        return None
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(doc, dict) and isinstance(doc.get("plan"), dict) else None


def resolve_weights_model(model: str, weights: str | os.PathLike | None) -> str:
    """The catalog name to build for ``model`` with checkpoint ``weights``.

    A checkpoint written by `edgevit prune` carries its pruning plan (safetensors metadata, or the
    ``.json`` beside it); it is registered (:func:`edgevit.compress.prune.register_pruned`) and the pruned
    entry's name is returned, so the pruned shapes are built. ``model`` must then be the plan's
    base model (or the pruned name itself). Any other checkpoint leaves ``model`` as it is.
    """
    from edgevit.errors import ConfigError, ModelError

    if weights is None:
        return model
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    from edgevit.compress.structured import METADATA_PLAN_KEY, read_plan, register_pruned

    # The plan travels in the safetensors metadata; the prune record (.json) beside the file
    # holds it too, for weights saved in another form.
    source = path if METADATA_PLAN_KEY in _safetensors_metadata(path) else _pruning_record(path)
    if source is None:
        return model
    plan, saved_name = read_plan(source)
    if model not in (plan.base, saved_name):
        raise ConfigError(
            f"{path} is a pruned {plan.base} (written by `edgevit prune`, plan inside); export it with "
            f"`edgevit export {plan.base} --weights {path}`"
        )
    # The registered entry builds the pruned shapes; export() loads the weights from ``path``.
    return register_pruned(source, name=saved_name)


def not_fitting_hint(model: str, weights: str | os.PathLike) -> str:
    """A suggestion for a checkpoint whose tensors do not fit ``model``."""
    meta = _safetensors_metadata(Path(weights))
    saved = meta.get("model")
    if saved and saved != model:
        from edgevit.models import list_models

        if saved in list_models():
            return f"; it was saved from {saved}: `edgevit export {saved} --weights {weights}`"
        if meta.get("base"):
            return f"; it was saved from {saved} (pruned from {meta['base']})"
    return (f". Pass the catalog model the checkpoint was trained as (`edgevit list`; a trained file's "
            f".json names it), or, for a pruned model, the .safetensors written by `edgevit prune` "
            f"(it carries the pruning plan) with its base model's name")


def _options(args: argparse.Namespace) -> dict:
    """``--option`` pairs plus the fidelity-target shortcuts (which must not contradict them)."""
    from edgevit.cli._common import parse_options
    from edgevit.errors import ConfigError

    options = parse_options(args.option)
    for key in ("max_drop", "min_agreement"):
        value = getattr(args, key)
        if value is None:
            continue
        if key in options and options[key] != value:
            raise ConfigError(f"--{key.replace('_', '-')} {value:g} contradicts --option {key}={options[key]}; pass one")
        options[key] = value
    return options


def _record(result, args: argparse.Namespace) -> None:
    """Store the export in the results database. Recording is secondary: the artifact is written
    and verified, so a database that fails now costs a warning, not the result."""
    import sqlite3
    import sys

    from edgevit.errors import EdgeVitError
    from edgevit.measure.results import record_export

    try:
        record_export(result, db=args.db)
    except (EdgeVitError, sqlite3.Error, OSError) as exc:
        note = f"this export was not recorded in the results database: {exc}"
        result.warnings.append(note)
        if args.json:  # the human summary lists the warnings itself
            print(f"Warning: {note}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json, json_stdout_guard
    from edgevit.cli._common import print_export_result, trained_by_default
    from edgevit.converters import export
    from edgevit.errors import ModelError

    precision = args.precision or ("fp16" if args.target == "coreml" else "fp32")
    if not args.no_record:
        from edgevit.measure.results import DB_ENV, check_database

        if args.db or os.environ.get(DB_ENV):
            check_database(args.db)  # a database the user named must work before the export starts
    from edgevit.cli._common import quiet_converters

    if not args.json and sys.stderr.isatty():
        print(f"Exporting {args.model} to {args.target} {precision} and verifying it ...", file=sys.stderr, flush=True)
    with json_stdout_guard(True), quiet_converters(args) as log:
        model = resolve_weights_model(args.model, args.weights)
        pretrained = trained_by_default(args, model)
        try:
            result = export(
                model,
                target=args.target,
                precision=precision,
                out=args.out,
                force=args.force,
                pretrained=pretrained,
                weights=args.weights,
                labels=args.labels,
                num_classes=args.num_classes,
                calibration=args.calibration,
                fused_input=args.fused_input,
                verify=not args.no_verify,
                verify_images=args.verify_images,
                options=_options(args),
            )
        except ModelError as exc:
            if pretrained and not args.pretrained and "hub" in str(exc):
                # The trained weights were chosen by default and are out of reach.
                raise ModelError(f"{exc} Or pass --random-init for random weights (size and speed tests "
                                 "only).") from exc
            if args.weights is None or "does not fit this model" not in str(exc):
                raise
            raise ModelError(f"{exc}{not_fitting_hint(model, args.weights)}") from exc
    if getattr(args, "debug", False) and log.text:
        log_path = Path(f"{result.path}.log")
        log_path.write_text(log.text)
        result.details["converter_log"] = str(log_path)
    if not args.no_record:
        _record(result, args)
    if args.json:
        emit_json(result.to_dict())
    else:
        print_export_result(result)
    hint = faster_variant_hint(args, result)
    if hint:  # the speed check found the artifact slower than its fp32 twin here
        print(hint, file=sys.stderr if args.json else sys.stdout)
    return 0


def faster_variant_hint(args: argparse.Namespace, result) -> str | None:
    """The command that exports the faster variant, when the speed check found the optimized
    artifact slower than its fp32 twin on this host (``details["speed_check"]``)."""
    import shlex

    check = result.details.get("speed_check") or {}
    if not check.get("slower"):
        return None
    faster = check.get("faster", "fp32")
    cmd = ["edgevit", "export", args.model, "--target", args.target, "--precision", faster, "--out", args.out]
    for flag, value in (("--weights", args.weights), ("--labels", args.labels), ("--num-classes", args.num_classes)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += [flag for flag, on in (("--pretrained", args.pretrained), ("--random-init", getattr(args, "random_init", False)),
                                  ("--fused-input", args.fused_input)) if on]
    return (f"{result.precision} is slower than fp32 here ({check['optimized_ms']:.2f} vs {check['fp32_ms']:.2f} ms); "
            f"the faster variant: {shlex.join(cmd)}")
