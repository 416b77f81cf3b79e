"""``edgevit verify``: check an existing artifact against the float model on real images."""

from __future__ import annotations

import argparse

COMMAND = "verify"
HELP = "compare an artifact with the float torch model on real images (top-1, cosine, max abs diff)"
EXAMPLES = [
    "edgevit verify out/mobilevit_xxs_tflite_fp32.tflite",
    "edgevit verify out/vit_fmnist_tiny_onnx_fp32.onnx --pretrained my_photos/*.png --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgevit.cli._common import add_weights_arguments

    p.add_argument("artifact", help="artifact exported by edgevit")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, folders or glob patterns (default: edgevit's real sample photos); an image "
                        "that cannot be read is reported as its own error and the others are still compared")
    p.add_argument("--model", help="model source: a catalog name, timm:NAME, hf:ORG/NAME or a save_pretrained folder "
                                   "(default: the one named in the artifact's metadata)")
    add_weights_arguments(p)
    p.add_argument("--threads", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgevit.cli import emit_json, json_stdout_guard
    from edgevit.converters.verify import verify_runtime
    from edgevit.errors import ImageError, VerificationError
    from edgevit.models import get_spec
    from edgevit.runtimes import load
    from edgevit.data.samples import sample_images

    if Path(args.artifact).suffix.lower() in (".mlpackage", ".mlmodel"):
        structural = _coreml_structural(args)
        if structural is not None:
            return structural
    with json_stdout_guard(args.json):
        runtime = load(args.artifact, threads=args.threads)
        meta = runtime.metadata
        name = args.model or meta.model
        spec = get_spec(name)
        weights = args.weights
        pretrained = args.pretrained
        if not weights and not pretrained and meta.weights not in ("", "random-init"):
            # Use the weights the artifact was exported from when they are reachable here.
            if Path(meta.weights).is_file():
                weights = meta.weights
            elif meta.weights in (spec.embedded_weights, spec.hub_id):
                pretrained = True
        from edgevit.models.sources import load_model

        # The artifact's own class names fix the head size (a checkpoint fine-tuned on other classes).
        model = load_model(name, pretrained=pretrained, weights=weights,
                           labels=list(meta.labels) if len(meta.labels) != len(spec.label_names()) else None).module
        unreadable: list[tuple[str, str]] = []
        if args.images:
            named, unreadable = _read_images(args.images, meta.color_mode)
        else:
            named = sample_images(spec.labels)
        report = verify_runtime(runtime, model, named, meta.precision) if named else None
    if args.json:
        for path, message in unreadable:
            emit_json({"image": path, "error": message})
    if report is None:
        raise ImageError(f"none of the {len(unreadable)} images given could be read (see above)")
    if args.json:
        emit_json({"artifact": args.artifact, "model": name, "weights": model.edgevit_weights,
                   "integrity": runtime.integrity, **report.to_dict()})
    else:
        from edgevit._text import safe_text
        from edgevit.runtimes.base import describe_integrity

        print(safe_text(f"{args.artifact} vs float {name} ({model.edgevit_weights}): {report.summary()}"))
        print(f"  integrity: {describe_integrity(runtime.integrity)}")
        if report.disagreements:
            print(f"  top-1 disagrees on: {safe_text(', '.join(report.disagreements))}")
    if not report.passed:
        raise VerificationError(f"{args.artifact} does not match the float model within tolerance", report)
    if unreadable:
        import sys

        print(f"Error: {len(unreadable)} of {len(unreadable) + len(named)} images could not be read (see above); the comparison "
              "covers the others", file=sys.stderr)
        return 1
    return 0


def _read_images(items: list[str], mode: str) -> tuple[list, list[tuple[str, str]]]:
    """The readable images among ``items`` (files, folders, globs) as (name, image), and the
    unreadable ones as (path, reason), each reported on stderr as its own ``Error:`` line."""
    import sys

    from edgevit._text import safe_text
    from edgevit.cli._common import expand_images
    from edgevit.errors import ImageError
    from edgevit.preprocess import load_image

    named, unreadable = [], []
    for path, problem in expand_images(items):
        try:
            if problem:
                raise ImageError(problem)
            named.append((path, load_image(path, mode)))
        except ImageError as exc:
            unreadable.append((path, str(exc)))
            print(f"Error: {safe_text(str(exc))}", file=sys.stderr)
    return named, unreadable


def _coreml_structural(args: argparse.Namespace) -> int | None:
    """Off macOS a CoreML artifact cannot run: check its structure against its own metadata."""
    from edgevit.cli import emit_json, json_stdout_guard
    from edgevit.errors import VerificationError
    from edgevit.runtimes.coreml import UnsupportedPlatformError

    try:
        from edgevit.runtimes import load

        load(args.artifact)
        return None  # on macOS: verify numerically like every other artifact
    except UnsupportedPlatformError:
        pass
    from edgevit.converters.coreml import check_package

    with json_stdout_guard(args.json):
        result = check_package(args.artifact)
    if args.json:
        emit_json({"artifact": args.artifact, "ran": False, "structural": True, "passed": result["passed"],
                   "integrity": "unchecked", "problems": result["problems"], "structure": result["structure"]})
    else:
        from edgevit._text import safe_text
        from edgevit.runtimes.base import describe_integrity

        status = "PASS" if result["passed"] else "FAIL"
        print(f"{safe_text(args.artifact)}: structural check {status} (CoreML prediction needs macOS; numeric parity not run)")
        print(f"  integrity: {describe_integrity('unchecked')}")
        for problem in result["problems"]:
            print(f"  problem: {safe_text(problem)}")
    if not result["passed"]:
        raise VerificationError(f"{args.artifact} failed structural checks: {'; '.join(result['problems'])}")
    return 0
