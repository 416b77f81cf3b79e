"""The ``edgevit`` command line.

Each sub-command is one module in this package exposing ``COMMAND`` (its name), ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import their heavy
dependencies inside ``run`` so ``edgevit predict`` never imports torch.

Conventions: ``--json`` prints one JSON document (or JSON lines) on stdout and nothing else
there; errors print ``Error: message`` on stderr and exit 1, with the traceback only under
``--debug``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from edgevit._version import __version__
from edgevit.errors import EdgeVitError

__all__ = ["emit_json", "json_stdout_guard", "main", "print_table"]

_ORDER = ["list", "info", "export", "predict", "verify", "bench", "profile", "eval", "quantize", "sweep", "train",
          "distill", "prune", "qat", "report", "demo", "quickstart"]


def _commands() -> list[Any]:
    import edgevit.cli as package

    modules = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(mod, "COMMAND"):
            modules.append(mod)
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(modules, key=lambda m: (rank.get(m.COMMAND, 99), m.COMMAND))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgevit",
        description="Export efficient Vision Transformers to edge runtimes and prove they still match.",
        formatter_class=_Formatter,
        epilog="Example:\n  edgevit export mobilevit_xxs --target tflite --out out/\n"
        "  edgevit predict out/mobilevit_xxs_tflite_fp32.tflite cat.jpg --top-k 5",
    )
    parser.add_argument("--version", action="version", version=f"edgevit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--verbose", action="store_true",
                        help="show the converters' and runtimes' own logs (captured by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _commands():
        p = sub.add_parser(
            mod.COMMAND,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            epilog="Example:\n  " + "\n  ".join(getattr(mod, "EXAMPLES", [])),
            formatter_class=_Formatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show the converters' and runtimes' own logs")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


@contextlib.contextmanager
def json_stdout_guard(enabled: bool) -> Iterator[None]:
    """While ``enabled``, anything written to stdout (by converters, at the file-descriptor level
    too) goes to stderr, so ``--json`` output stays one clean document."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: Sequence[str] | None = None) -> int:
    # On shared or small CPUs OpenMP threads that spin while waiting make torch 3-4x slower;
    # must be set before torch is imported (the user's own setting wins).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unknown_arguments(parser, args, extras)  # exits 2, naming the closest options
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # Pillow's decompression-bomb warning becomes the one clean `Error:` of edgevit.preprocess
    # (matched by its text: importing Pillow here would slow every command).
    import warnings

    warnings.filterwarnings("error", message=r"Image size \(\d+ pixels\) exceeds limit", category=RuntimeWarning)
    if not getattr(args, "verbose", False):
        # Other libraries' deprecation notices (torch's pytree, timm, transformers) are not
        # edgevit's output; --verbose shows them.
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None or args.debug:
            raise
        print(f"Error: `edgevit {args.command}` needs {exc.name.split('.')[0]}, which is not installed here (a device "
              f"install has only the runtimes); install it with: pip install 'edgevit[{extra}]'", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `edgevit list | head`: the reader left; stop quietly, as command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE
    except EdgeVitError as exc:
        if args.debug:
            raise
        from edgevit._text import safe_text

        print(f"Error: {safe_text(str(exc))}", file=sys.stderr)  # messages may quote an artifact's strings
        return 1
    except KeyboardInterrupt as exc:
        import signal

        # Ctrl-C -> 130; an export cancelled by SIGTERM/SIGHUP (ExportTerminated("SIGTERM")) -> 128 + signal
        name = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
        signum = getattr(signal, name, None) if name.startswith("SIG") else None
        print("Terminated." if signum else "Interrupted.", file=sys.stderr)
        return 128 + int(signum) if signum else 130


# A package a command needs -> the extra that installs it (a device install lacks the host side).
_EXTRA_OF = {
    **dict.fromkeys(("torch", "torchvision", "timm", "transformers", "safetensors", "litert_torch", "ai_edge_torch",
                     "ai_edge_quantizer", "coremltools", "onnx", "onnxscript", "torchao", "matplotlib", "tqdm",
                     "huggingface_hub"), "export"),
    **dict.fromkeys(("skimage", "sklearn"), "samples"),
    "ai_edge_litert": "tflite",
    "tflite_runtime": "tflite",
    "onnxruntime": "onnx",
    "executorch": "executorch",
    "ray": "cluster",
}


def _unknown_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """argparse's "unrecognized arguments", with the closest options of the command suggested."""
    import difflib

    sub = None
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction) and getattr(args, "command", None):  # noqa: SLF001
            sub = action.choices.get(args.command)
    target = sub or parser
    options = [o for a in target._actions for o in a.option_strings]  # noqa: SLF001
    hints = []
    for extra in extras:
        if extra.startswith("-"):
            close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1, cutoff=0.6)
            if close:
                hints.append(f"{extra} -> {close[0]}?")
    message = f"unrecognized arguments: {' '.join(extras)}"
    if hints:
        message += f" (did you mean: {'; '.join(hints)})"
    target.error(message)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
