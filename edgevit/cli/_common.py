"""Shared CLI helpers."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["MODEL_SOURCE_HELP", "add_class_arguments", "add_weights_arguments", "expand_images", "format_bytes",
           "image_progress", "parse_options", "print_export_result", "progress_enabled", "quiet_converters",
           "trained_by_default"]


def add_weights_arguments(p: argparse.ArgumentParser, random_init: bool = False) -> None:
    """``--pretrained`` / ``--weights FILE``; with ``random_init`` the model's trained weights are
    the default and ``--random-init`` asks for random ones (see :func:`trained_by_default`)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true",
                   help="load pretrained weights (shipped with edgevit, or from the hub when online)"
                        + ("; the default when the model has them" if random_init else ""))
    g.add_argument("--weights", metavar="FILE",
                   help="load a local checkpoint (safetensors, or a torch file read with weights_only=True)")
    if random_init:
        g.add_argument("--random-init", action="store_true",
                       help="random weights instead of the trained ones (for size and speed tests only: "
                            "the labels it predicts mean nothing)")


def trained_by_default(args: argparse.Namespace, model: Any) -> bool:
    """Whether to load the model's pretrained weights: yes when asked (``--pretrained``), no with
    ``--weights`` or ``--random-init``, and otherwise yes whenever the model has trained weights.
    A model without any asks the user to choose, rather than exporting random weights silently."""
    from edgevit.errors import ModelError
    from edgevit.models import get_spec

    if args.pretrained or args.weights or getattr(args, "random_init", False) or not isinstance(model, str):
        return bool(args.pretrained)
    spec = get_spec(model)
    if spec.default_weights:  # a save_pretrained folder brings its own weights
        return False
    if spec.embedded_weights or spec.hub_id:
        return True
    raise ModelError(f"{model} has no trained weights that edgevit knows of; pass --weights FILE (your "
                     "checkpoint), or --random-init for random weights (size and speed tests only)")


MODEL_SOURCE_HELP = ("model source: a catalog name (`edgevit list`), timm:NAME (any timm architecture), "
                     "hf:ORG/NAME (a Hugging Face image classifier, online) or a folder written by save_pretrained")


def add_class_arguments(p: argparse.ArgumentParser) -> None:
    """``--labels FILE`` and ``--num-classes N``: the user's own classes."""
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one a line (or a JSON list); their number must equal the model's outputs")
    p.add_argument("--num-classes", type=int, metavar="N",
                   help="build the classifier head with N outputs (default: from --labels or the checkpoint's head)")


@contextlib.contextmanager
def quiet_converters(args: argparse.Namespace) -> Iterator[Any]:
    """Capture the converters' own output (Python and C++, at the descriptor level) unless
    ``--verbose``; when the work fails with a conversion or verification error (or a bug), print
    the last lines of that log before the error. Yields the :class:`~edgevit._quiet.Captured`."""
    from edgevit._quiet import capture_output
    from edgevit._text import safe_text
    from edgevit.errors import ConversionError, EdgeVitError, VerificationError

    log = None
    try:
        with capture_output(enabled=not getattr(args, "verbose", False)) as log:
            yield log
    except Exception as exc:
        user_mistake = isinstance(exc, EdgeVitError) and not isinstance(exc, (ConversionError, VerificationError))
        if log is not None and log.text.strip() and not user_mistake:
            print("converter log, last lines (--verbose shows all of it):", file=sys.stderr)
            for line in log.tail(25).splitlines():
                print(f"  | {safe_text(line)}", file=sys.stderr)
        raise


def expand_images(items: list[str]) -> list[tuple[str, str | None]]:
    """The images a batch command was given, as ``(path, problem)`` in argument order: files as
    given; a folder as the image files under it (recursively, sorted, hidden ones skipped); a glob
    pattern (``photos/*.jpg``, ``**`` too) as its matches, for shells that pass it unexpanded. An
    argument that matches nothing comes back with ``problem`` set, to be reported in its place; a
    missing file comes back as a path, and loading it reports the problem."""
    import glob
    from pathlib import Path

    from PIL import Image

    suffixes = {ext.lower() for ext in Image.registered_extensions()}
    out: list[tuple[str, str | None]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*")
                           if f.is_file() and f.suffix.lower() in suffixes
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            if not found:
                out.append((item, f"{item}: the folder holds no image files ({', '.join(_COMMON_SUFFIXES)}, ...)"))
            out.extend((f, None) for f in found)
        elif not path.exists() and glob.has_magic(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                out.append((item, f"{item}: no file matches this pattern"))
            out.extend((f, None) for f in found)
        else:
            out.append((item, None))
    return out


_COMMON_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """Parse repeated ``--option key=value`` into a dict (ints, floats, booleans understood)."""
    from edgevit.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--option expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        v: Any = value
        if value.lower() in ("true", "false"):
            v = value.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    v = cast(value)
                    break
                except ValueError:
                    pass
        out[key.strip()] = v
    return out


def format_bytes(n: int) -> str:
    """Decimal units, as everywhere in edgevit: 1 KB = 10^3 bytes, 1 MB = 10^6."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def image_progress(args: argparse.Namespace) -> Any:
    """A ``progress(iterable, desc, total)`` wrapper drawing a tqdm bar of images, or None when
    bars are off (not a terminal, ``--json``) or tqdm is missing."""
    if not progress_enabled(args):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def progress(it, desc, total):
        return tqdm(it, desc=desc, total=total, unit="img", leave=False)

    return progress


def progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "json", False) and sys.stderr.isatty()


def print_export_result(result) -> None:
    print(f"Exported {result.model} -> {result.path}")
    print(f"  target {result.target}, precision {result.precision}, weights {result.weights}")
    print(f"  size {format_bytes(result.bytes)}, conversion {result.seconds:.1f} s")
    if result.delegation is not None:
        d = result.delegation
        print(f"  delegated to {d.delegate}: {d.share:.1%} of nodes ({d.delegated_nodes}/{d.total_nodes}), "
              f"{d.partitions} partition(s)")
        if d.outside_ops:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(d.outside_ops.items(), key=lambda kv: -kv[1]))
            print(f"  outside the delegate: {ops}")
    rewrites = result.details.get("rewrites")
    if rewrites:
        done = ", ".join(f"{k} x{v}" for k, v in rewrites.get("replaced", {}).items()) or "none applied"
        print(f"  edge rewrites: {done}")
    if result.verification is not None:
        print(f"  verification: {result.verification.summary()}")
    for fb in result.fallbacks:
        print(f"  fallback: {fb}")
    for w in result.warnings:
        print(f"  warning: {w}")
