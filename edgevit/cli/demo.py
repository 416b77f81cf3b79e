"""``edgevit demo``: the Raspberry Pi camera app (apps/raspberry_pi) on any machine.

The app is an optional dependency, imported by name (``import edgevit_pi``): from an edgevit
checkout, ``pip install ./apps/raspberry_pi`` installs it. Without it the command says so.

With no ``--source`` it plays a short looping "video" (an animated GIF) made from edgevit's real
sample photos (Fashion-MNIST test images for Fashion-MNIST models, then natural photos), so the
live browser view works anywhere without a camera or OpenCV.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from types import ModuleType

from edgevit._text import safe_text
from edgevit.cli import emit_json, json_stdout_guard, print_table
from edgevit.errors import ConfigError

COMMAND = "demo"
HELP = "run the camera classifier app with a live browser view (video, image folder or webcam)"
DESCRIPTION = (
    "Classify frames from a video, GIF, image folder or camera with an exported artifact, drawing the\n"
    "top-k labels, scores and FPS over each frame; shown in a window when a display and OpenCV are\n"
    "present, and always as a live MJPEG view in the browser with a JSON API (/api/latest).\n"
    "Without --source a short video made from real sample photos is played."
)
EXAMPLES = [
    "edgevit demo out/vit_fmnist_tiny_tflite_fp32.tflite",
    "edgevit demo model.tflite --source camera:0 --top-k 5",
    "edgevit demo model.tflite --source clip.gif --no-window --frames 200 --json",
]

INSTALL_HINT = "from an edgevit checkout run `pip install ./apps/raspberry_pi`"


def _app_cli() -> ModuleType | None:
    """``edgevit_pi.cli`` when the camera app is installed, else None."""
    try:
        return importlib.import_module("edgevit_pi.cli")
    except ImportError:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="an exported model (.tflite, .pte, .onnx)")
    app_cli = _app_cli()
    if app_cli is not None:
        app_cli.add_app_arguments(parser, default_source=None)
        parser.add_argument("--demo-media", choices=["gif", "folder"], default="gif",
                            help="what to build from the sample photos when there is no --source (default gif)")


def run(args: argparse.Namespace) -> int:
    app_cli = _app_cli()
    if app_cli is None:
        raise ConfigError(f"the camera app (apps/raspberry_pi/edgevit_pi) is not installed; {INSTALL_HINT}")
    from edgevit_pi.media import build_demo_media

    app_cli.setup_logging("INFO")
    with json_stdout_guard(args.json), tempfile.TemporaryDirectory(prefix="edgevit-demo-") as tmp:
        app_cli.config_from_args(args)  # bad options and sources fail before the model loads
        source = app_cli.make_source(args.source, args) if args.source is not None else None
        classifier = app_cli.load_classifier(args.artifact, args.threads)
        if source is None:
            media = build_demo_media(classifier.metadata, tmp, kind=args.demo_media)
            print(f"Playing {safe_text(media.name)}: a demo made from real sample photos (--source picks a camera or file)",
                  file=sys.stderr)
            source = app_cli.make_source(str(media), args)
        app = app_cli.build_app(classifier, source, args)
        code = app.run()
        status, latest = app.status_json(), app.latest_json()
    if args.json:
        emit_json({"status": status, "latest": latest})
    else:
        lat = status["latency_ms"]
        rows = [
            ["frames captured", status["frames_captured"]],
            ["frames classified", status["frames_inferred"]],
            ["frames dropped (model busy)", status["frames_dropped"]],
            ["source errors / reconnects", f"{status['source_errors']} / {status['reconnects']}"],
            ["latency ms (mean / p50 / p90)", f"{lat['mean']} / {lat['p50']} / {lat['p90']}"],
            ["last top-1", f"{safe_text(latest['label'])} ({latest['score']:.3f})" if latest["ready"] else "-"],
        ]
        print_table(rows, ["metric", "value"])
    return code
