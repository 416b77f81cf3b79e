"""``edgevit predict``: classify images with an artifact (torch-free)."""

from __future__ import annotations

import argparse

COMMAND = "predict"
HELP = "classify images with an exported artifact (no torch needed)"
EXAMPLES = [
    "edgevit predict out/mobilevit_xxs_tflite_fp32.tflite cat.jpg dog.jpg --top-k 5",
    "edgevit predict model.onnx photos/*.jpg --json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help=".tflite, .pte, .onnx or .mlpackage exported by edgevit")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", "-k", type=int, default=5, help="how many labels per image (default 5)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads")


def run(args: argparse.Namespace) -> int:
    from edgevit._text import safe_text
    from edgevit.cli import emit_json
    from edgevit.errors import ConfigError
    from edgevit.runtimes import Classifier
    from edgevit.runtimes.base import describe_integrity

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    clf = Classifier.load(args.artifact, threads=args.threads)
    integrity = clf.runtime.integrity
    for n, image in enumerate(args.images):
        preds = clf.predict(image, top_k=args.top_k)
        if args.json:
            emit_json({"image": image, "integrity": integrity, "top_k": [p.to_dict() for p in preds]})
            continue
        if n == 0:  # after the first image, so a bad first image leaves stdout empty
            print(f"{safe_text(args.artifact)}: {safe_text(clf.metadata.model)}, integrity {describe_integrity(integrity)}")
        print(safe_text(image))
        for p in preds:
            print(f"  {p.score:7.2%}  {safe_text(p.label)}  ({p.index})")
    return 0
