"""``edgevit predict``: classify images with an artifact (torch-free)."""

from __future__ import annotations

import argparse

COMMAND = "predict"
HELP = "classify images with an exported artifact (no torch needed)"
EXAMPLES = [
    "edgevit predict out/mobilevit_xxs_tflite_fp32.tflite cat.jpg dog.jpg --top-k 5",
    "edgevit predict model.onnx photos/ 'more/**/*.jpg' --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help=".tflite, .pte, .onnx or .mlpackage exported by edgevit")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (every image under them) or glob patterns; an image that cannot "
                        "be read is reported as its own error and the others are still classified")
    p.add_argument("--top-k", "-k", type=int, default=5, help="how many labels per image (default 5)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads")


def run(args: argparse.Namespace) -> int:
    import sys

    from edgevit._text import safe_text
    from edgevit.cli import emit_json
    from edgevit.cli._common import expand_images
    from edgevit.errors import ConfigError, ImageError
    from edgevit.runtimes import Classifier
    from edgevit.runtimes.base import describe_integrity

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    clf = Classifier.load(args.artifact, threads=args.threads)
    integrity = clf.runtime.integrity
    notice = clf.metadata.weights_notice
    if notice:
        print(notice, file=sys.stderr)
    done = failed = 0
    for image, problem in expand_images(args.images):
        try:
            if problem:
                raise ImageError(problem)
            preds = clf.predict(image, top_k=args.top_k)
        except ImageError as exc:
            # One bad file is its own error; the rest of the batch still runs.
            failed += 1
            if args.json:
                emit_json({"image": image, "error": str(exc)})
            sys.stdout.flush()
            print(f"Error: {safe_text(str(exc))}", file=sys.stderr)
            continue
        if args.json:
            emit_json({"image": image, "integrity": integrity, "top_k": [p.to_dict() for p in preds]})
        else:
            if done == 0:  # after the first good image, so a bad batch leaves stdout empty
                print(f"{safe_text(args.artifact)}: {safe_text(clf.metadata.model)}, "
                      f"integrity {describe_integrity(integrity)}")
            print(safe_text(image))
            for p in preds:
                print(f"  {p.score:7.2%}  {safe_text(p.label)}  ({p.index})")
        done += 1
    if failed:
        if failed + done > 1:  # one image: its own Error: line says it all
            sys.stdout.flush()
            print(f"Error: {failed} of {failed + done} images could not be classified (see above)", file=sys.stderr)
        return 1
    return 0
