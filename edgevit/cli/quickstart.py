"""``edgevit quickstart``: the main job end to end.

Export the default catalog model to TFLite (verified against the float model on real images),
then classify real images with the exported artifact through the torch-free runtime.
Online, the default is MobileViT-XXS with its ImageNet weights from the hub; offline it is the
Fashion-MNIST ViT whose weights ship with edgevit. The output says which one ran.
"""

from __future__ import annotations

import argparse

COMMAND = "quickstart"
HELP = "export the default model to TFLite and classify real images with the artifact"
DESCRIPTION = __doc__
EXAMPLES = ["edgevit quickstart", "edgevit quickstart --offline --out edgevit-out", "edgevit quickstart --json"]

ONLINE_MODEL = "mobilevit_xxs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", default="edgevit-out", help="output folder (default edgevit-out/)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--offline", action="store_true", help="use the shipped Fashion-MNIST model, never the hub")
    g.add_argument("--online", action="store_true", help="require the hub's ImageNet weights (fail if unreachable)")
    p.add_argument("--target", default="tflite", help="export target (default tflite)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--force", action="store_true", help="re-export even if the artifact exists")


def run(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from edgevit.cli import emit_json, json_stdout_guard
    from edgevit.cli._common import format_bytes
    from edgevit.errors import ModelError
    from edgevit.models import DEFAULT_MODEL, get_spec

    say = (lambda *a, **k: None) if args.json else print
    if args.offline:
        online, why = False, "--offline"
    else:
        from edgevit.models.hub import hub_reachable

        online = hub_reachable()
        why = "the Hugging Face hub is reachable" if online else "the Hugging Face hub is not reachable (offline)"
        if args.online and not online:
            raise ModelError("--online: the Hugging Face hub is not reachable; drop --online to use the shipped model")
    model = ONLINE_MODEL if online else DEFAULT_MODEL
    spec = get_spec(model)
    weights_desc = f"ImageNet weights from the hub ({spec.hub_id})" if online else (
        f"weights shipped with edgevit ({spec.embedded_weights}, trained on Fashion-MNIST)")
    say(f"[1/2] {why}: using {model} with {weights_desc}")

    from edgevit.converters import export, get_converter
    from edgevit.converters.export import default_artifact_name

    conv = get_converter(args.target)
    path = Path(args.out) / default_artifact_name(model, args.target, "fp32", conv.suffix)
    from edgevit.cli._common import quiet_converters

    # Converter chatter is captured (shown on failure or with --verbose); stdout carries only edgevit's.
    with json_stdout_guard(True), quiet_converters(args):
        if path.exists() and not args.force:
            note = f"      {path} exists (pass --force to re-export); verified it again instead"
            from edgevit.converters.verify import verify_runtime
            from edgevit.models import create_model
            from edgevit.runtimes import load
            from edgevit.data.samples import sample_images

            float_model = create_model(model, pretrained=True)
            report = verify_runtime(load(path), float_model, sample_images(spec.labels), "fp32")
            result_info = {"path": str(path), "reused": True, "verification": report.to_dict()}
        else:
            result = export(model, target=args.target, out=args.out, pretrained=True, force=args.force)
            report = result.verification
            result_info = result.to_dict()
            note = f"      exported {path} ({format_bytes(result.bytes)}) in {result.seconds:.1f} s"
    say(note)  # printed after the captured block (inside it, it would be captured too)
    say(f"      parity with the float model: {report.summary()}")

    # Classify real images with the artifact through the torch-free runtime.
    from edgevit.runtimes import Classifier
    from edgevit.data.samples import FASHION_SAMPLES_DIR, natural_photos

    with quiet_converters(args):
        clf = Classifier.load(path)
    if spec.labels == "fashion-mnist":
        images = [(f.name, str(f)) for f in sorted(FASHION_SAMPLES_DIR.glob("*.png"))]
    else:
        images = [(name, img) for name, img in natural_photos()]
    say(f"[2/2] classifying {len(images)} real images with {path.name} (runtime: {clf.runtime.name}, no torch)")
    rows = []
    correct = 0
    for name, img in images:
        preds = clf.predict(img, top_k=args.top_k)
        truth = None
        m = re.match(r"\d+_(.+)\.png$", name)
        if m:
            truth = m.group(1).replace("_", " ").lower()
            hit = preds[0].label.lower().replace("/", " ").replace("-", " ") == truth.replace("-", " ")
            correct += hit
        rows.append({"image": name, "truth": truth, "top_k": [p.to_dict() for p in preds]})
        if not args.json:
            head = f"  {name}" + (f"  (true: {truth})" if truth else "")
            print(head)
            print("      " + " | ".join(f"{p.label} {p.score:.1%}" for p in preds))
    labelled = sum(r["truth"] is not None for r in rows)
    if labelled:
        say(f"top-1 correct on the labelled real images: {correct}/{labelled}")
    if args.json:
        emit_json({"model": model, "online": online, "export": result_info, "predictions": rows,
                   "labelled_correct": correct, "labelled_total": labelled})
    return 0
