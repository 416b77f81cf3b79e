"""Command line of the camera app (``python -m edgevit_pi``), shared with ``edgevit demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from edgevit.errors import EdgeVitError

__all__ = ["add_app_arguments", "build_app", "config_from_args", "load_classifier", "main", "make_source", "setup_logging"]

EXAMPLES = [
    "python -m edgevit_pi model.tflite --source picamera --host 0.0.0.0 --port 8080",
    "python -m edgevit_pi model.tflite --source camera:0 --top-k 5",
    "python -m edgevit_pi model.tflite --source clip.gif --no-window --frames 100",
]


def add_app_arguments(parser: argparse.ArgumentParser, default_source: str | None = "picamera") -> None:
    """The options the app and ``edgevit demo`` share (the artifact is added by the caller)."""
    src_help = "picamera[:N], camera:N (USB), rtsp://..., a video file, a GIF/WebP/PNG animation, or an image folder"
    if default_source:
        src_help += f" (default: {default_source})"
    parser.add_argument("--source", default=default_source, metavar="SRC", help=src_help)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address of the browser view (default 127.0.0.1, this machine only; 0.0.0.0 for the LAN)")
    parser.add_argument("--port", type=int, default=8080, help="port of the browser view (default 8080; 0 picks one)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a further name the browser view answers to, e.g. camera.lan (repeatable; always "
                             "answered: IP addresses, localhost, this machine's hostname and HOSTNAME.local; "
                             "other names get 421 so that DNS-rebinding web pages cannot read the camera)")
    parser.add_argument("--top-k", type=int, default=3, help="labels shown per frame (default 3)")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--window", dest="window", action="store_true", default=None,
                        help="require an OpenCV window (default: one when a display and OpenCV's GUI exist)")
    window.add_argument("--no-window", dest="window", action="store_false", help="browser view only")
    parser.add_argument("--frames", type=int, default=None, metavar="N", help="stop after N frames")
    parser.add_argument("--fps", type=float, default=None,
                        help="pace file sources at this rate (default: the file's own; folders 2; 0: as fast as possible)")
    parser.add_argument("--no-loop", action="store_true", help="play a file or folder once instead of looping")
    parser.add_argument("--width", type=int, default=None, help="camera capture width (Pi camera default 640)")
    parser.add_argument("--height", type=int, default=None, help="camera capture height (Pi camera default 480)")
    parser.add_argument("--swap-rb", action="store_true", help="swap red and blue of the Pi camera's frames")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    parser.add_argument("--max-clients", type=int, default=8, help="most simultaneous stream viewers (default 8)")
    parser.add_argument("--jpeg-quality", type=int, default=80, help="JPEG quality of the stream (default 80)")
    parser.add_argument("--display-width", type=int, default=960, help="largest width of the shown frames (default 960)")
    parser.add_argument("--write-timeout", type=float, default=5.0,
                        help="seconds a stream viewer may stall before it is dropped (default 5)")


def config_from_args(args: argparse.Namespace) -> Any:
    from .app import AppConfig

    return AppConfig(
        top_k=args.top_k,
        host=args.host,
        port=args.port,
        window=args.window,
        max_frames=args.frames,
        fps=args.fps,
        max_stream_clients=args.max_clients,
        max_connections=max(64, args.max_clients + 16),
        write_timeout=args.write_timeout,
        allowed_hosts=tuple(args.allowed_host),
        jpeg_quality=args.jpeg_quality,
        display_width=args.display_width,
    )


def load_classifier(artifact: str, threads: int | None = None) -> Any:
    from edgevit.runtimes import Classifier

    classifier = Classifier.load(artifact, threads=threads)
    if classifier.metadata.weights_notice:
        print(classifier.metadata.weights_notice, file=sys.stderr)
    return classifier


def make_source(spec: str, args: argparse.Namespace) -> Any:
    """The frame source ``spec`` names (checked now, opened when the app starts)."""
    from .sources import open_source

    return open_source(spec, width=args.width, height=args.height, loop=not args.no_loop, swap_rb=args.swap_rb)


def build_app(classifier: Any, source: Any, args: argparse.Namespace) -> Any:
    """The app for ``classifier`` and a source (a spec string or a :class:`FrameSource`)."""
    from .app import CameraApp

    if isinstance(source, str):
        source = make_source(source, args)
    return CameraApp(classifier, source, config_from_args(args))


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgevit_pi",
        description="Classify camera frames with an edgevit artifact; live view in the browser.",
        epilog="Examples:\n  " + "\n  ".join(EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("artifact", help="an exported model (.tflite, .pte, .onnx)")
    add_app_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--summary-json", action="store_true", help="print the final counters as JSON on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config_from_args(args)  # bad options and sources fail before the model loads
        source = make_source(args.source, args)
        app = build_app(load_classifier(args.artifact, args.threads), source, args)
        code = app.run()
    except EdgeVitError as exc:
        if args.debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the model loads, before the app's own handler is set
        print("Interrupted.", file=sys.stderr)
        return 130
    if args.summary_json:
        print(json.dumps({"status": app.status_json(), "latest": app.latest_json()}))
    return code
