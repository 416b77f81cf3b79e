"""``export()``: the one door from a catalog model to a verified device artifact."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit._version import __version__
from edgevit.converters import _output
from edgevit.converters.base import ConvertOutput, Converter, DelegationReport, ExportConfig, get_converter
from edgevit.converters.verify import VerificationReport
from edgevit.errors import ConfigError, ConversionError, EdgeVitError, VerificationError
from edgevit.metadata import ArtifactMetadata

if TYPE_CHECKING:
    from torch import nn

    from edgevit.models.sources import ResolvedModel

__all__ = ["ExportResult", "build_metadata", "default_artifact_name", "export"]


@dataclass
class ExportResult:
    """What an export produced and how well it matches the float model."""

    path: Path
    model: str
    target: str
    precision: str
    bytes: int
    seconds: float
    weights: str
    verification: VerificationReport | None
    delegation: DelegationReport | None = None
    warnings: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    fused_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "model": self.model,
            "target": self.target,
            "precision": self.precision,
            "fused_input": self.fused_input,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "weights": self.weights,
            "verification": self.verification.to_dict() if self.verification else None,
            "delegation": self.delegation.to_dict() if self.delegation else None,
            "warnings": list(self.warnings),
            "fallbacks": list(self.fallbacks),
            "details": dict(self.details),
        }


def _path_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    """Best-effort removal of a temporary artifact (file or package folder) after a failure."""
    try:
        _output.remove_entry(path)
    except OSError:
        pass


def default_artifact_name(model: str, target: str, precision: str, suffix: str) -> str:
    return f"{model}_{target}_{precision}{suffix}"


def build_metadata(spec, target: str, precision: str, labels: Sequence[str], weights: str,
                   fused_input: bool = False, extra: Mapping[str, Any] | None = None) -> ArtifactMetadata:
    """The metadata an artifact of ``spec`` carries. A fused-input artifact takes uint8 NHWC RGB
    frames; for a grayscale model the luma conversion is folded in too, so its metadata says RGB
    (mean/std repeated per channel, for information: the runtime does not apply them)."""
    extra = dict(extra or {})
    mean, std, color_mode = tuple(spec.mean), tuple(spec.std), spec.color_mode
    if fused_input and color_mode == "L":
        extra["model_color_mode"] = "L"
        mean, std, color_mode = mean * 3, std * 3, "RGB"
    return ArtifactMetadata(
        model=spec.name,
        target=target,
        precision=precision,
        input_size=tuple(spec.input_size),
        mean=mean,
        std=std,
        labels=tuple(labels),
        layout="NHWC" if fused_input else "NCHW",
        color_mode=color_mode,
        input_dtype="uint8" if fused_input else "float32",
        interpolation=spec.interpolation,
        crop_pct=spec.crop_pct,
        fused_input=fused_input,
        family=spec.family,
        attention=spec.attention,
        source=spec.source,
        weights=weights,
        edgevit_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        extra=extra,
    )


def _resolve_out(out: str | os.PathLike | None, name: str) -> Path:
    if out is None:
        return Path.cwd() / name
    p = Path(out)
    # A path with the artifact's suffix is the file itself; anything else is a folder.
    if p.suffix and p.suffix == Path(name).suffix:
        return p
    return p / name


def export(
    model: str | nn.Module | ResolvedModel,
    target: str = "tflite",
    precision: str = "fp32",
    out: str | os.PathLike | None = None,
    *,
    force: bool = False,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    labels: Sequence[str] | str | os.PathLike | None = None,
    num_classes: int | None = None,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str | None = None,
    calibration: Any = None,
    fused_input: bool = False,
    verify: bool = True,
    verify_images: str | os.PathLike | Sequence[Any] | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> ExportResult:
    """Export ``model`` to ``target`` at ``precision`` and verify it against the float model.

    ``model`` is any model source: a catalog name, ``timm:NAME``, ``hf:ORG/NAME``, a folder
    written by ``save_pretrained``, or an ``nn.Module`` with the facts a module cannot tell
    (``input_size``, ``mean``, ``std``, ``labels``; ``name`` names it in the artifact).
    ``labels`` (names, or a file: one a line or a JSON list) and ``num_classes`` set your classes;
    a ``weights`` checkpoint with another head size or stored class names sets them too. The
    number of labels must equal the number of outputs.

    ``verify_images`` (a folder, a glob, image files, or ``(name, image)`` pairs) replaces the
    bundled photos in the parity check. ``out`` is a folder (the file is named
    ``<model>_<target>_<precision><suffix>``) or a full file path. The artifact is written under a
    temporary name and moved into place only after it converted and passed verification, with
    an atomic no-replace move: an existing artifact is kept unless ``force`` (which replaces only
    what was there when the export started, never a folder that is not an edgevit package), and a
    file that appears during the run is never overwritten. fp32 exports that break parity raise
    :class:`VerificationError` and leave nothing behind.
    """
    from edgevit.models import get_spec
    from edgevit.models.sources import ResolvedModel, module_spec, read_labels

    converter: Converter = get_converter(target)
    config: ExportConfig = converter.make_config(precision, options, calibration, fused_input)
    converter.check_available()
    facts = {k: v for k, v in dict(input_size=input_size, mean=mean, std=std, name=name).items() if v is not None}
    given_labels = read_labels(labels) if labels is not None else None
    named_images = _images_for_verification(verify_images) if verify_images is not None else None
    if isinstance(model, ResolvedModel):
        spec = model.spec
    elif isinstance(model, str):
        if facts:
            raise ConfigError(f"{', '.join(sorted(facts))} only describe an nn.Module passed in; {model} brings "
                              "its own input size, normalisation and name")
        spec = get_spec(model)
    else:
        try:
            from torch import nn as _nn
        except ImportError:
            _nn = None
        if _nn is None or not isinstance(model, _nn.Module):
            raise ConfigError(f"model must be a catalog name, timm:NAME, hf:ORG/NAME, a save_pretrained folder or an "
                              f"nn.Module, not {type(model).__name__}")
        spec = module_spec(model, labels=given_labels, **facts)
    final = _resolve_out(out, default_artifact_name(spec.slug, target, precision, converter.suffix))
    _output.remove_stale_temps(final.parent)  # left by exports killed with SIGKILL (dead pids only)
    existing = _output.check_destination(final, force=force)  # a dangling link counts; never a folder
    created = [d for d in (final.parent, *final.parent.parents) if not d.exists()]  # innermost first
    if created:
        try:
            final.parent.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output folder {final.parent}: {exc.strerror}") from None
    if not final.parent.is_dir():
        raise ConfigError(f"output folder {final.parent} is not a folder (a file is in the way); choose another with --out")
    if not os.access(final.parent, os.W_OK):
        raise ConfigError(f"output folder {final.parent} is not writable; choose another with --out")

    try:
        from edgevit._quiet import stdout_to_stderr

        # Converter chatter never lands on the caller's stdout (litert-torch prints its progress there).
        with _CancelOnInterrupt(replacing=existing) as cancel, stdout_to_stderr():
            if isinstance(model, ResolvedModel):
                resolved = model
            else:
                from edgevit.models.sources import load_model

                resolved = load_model(model, pretrained=pretrained, weights=weights, num_classes=num_classes,
                                      labels=given_labels, **facts)
            return _export(resolved, target, precision, converter, config, final, cancel, force=force,
                           verify=verify, verify_images=named_images)
    except BaseException:
        for folder in created:  # a failed export leaves no folder it made behind (only if still empty)
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _export(resolved: ResolvedModel, target, precision, converter, config, final, cancel, *, force,
            verify, verify_images) -> ExportResult:
    spec, float_model, labels, weights_tag = resolved.spec, resolved.module, resolved.labels, resolved.weights
    model = spec.name
    tokens = _reduce_tokens(float_model, config.options.get("tokens"))
    float_model = tokens.pop("model", float_model)
    metadata = build_metadata(spec, target, precision, labels, weights_tag, config.fused_input)
    cancel.check()

    start = time.perf_counter()
    tmp = _output.temp_path(final)  # names this process: a later export removes it if we are killed
    try:
        import torch

        import copy

        from edgevit.converters.rewrites import fuse_input_stage, reparameterize

        edge_model = reparameterize(copy.deepcopy(float_model))
        if config.fused_input:
            edge_model = fuse_input_stage(edge_model, spec.mean, spec.std, spec.input_size, spec.color_mode)
        prepared = converter.prepare(edge_model, config)
        rewrites = getattr(prepared, "edgevit_rewrites", None)
        cancel.check()
        example = torch.from_numpy(_example_input(metadata))
        try:
            output: ConvertOutput = converter.convert(prepared, example, tmp, metadata, config)
        except EdgeVitError:
            raise
        except Exception as exc:  # the converter stacks raise many types; name the failure
            raise ConversionError(
                f"{target} conversion of {model} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:500] if str(exc) else ''}"
            ) from exc
        if not tmp.exists():
            raise ConversionError(f"{target} converter reported success but wrote no file")
        if precision != "fp32" and not converter.runs_here and "speed_check" not in output.details:
            # the speed check (converters/_speed.py) needs the artifact to run here: say why it did not
            output.details["speed_check"] = {"ran": False, "reason": f"{target} artifacts cannot run on this OS"}
        cancel.check()
        seconds = time.perf_counter() - start
        report = None
        if verify:
            reference = build_metadata(spec, target, precision, labels, weights_tag)
            report = _verify(converter, tmp, float_model, spec, precision, verify_images, reference)
            if report.ran and not report.passed:
                raise VerificationError(
                    f"{target} {precision} artifact of {model} does not match the float model: {report.summary()}",
                    report,
                )
        cancel.check()
        _output.publish(tmp, final, force=force, expected=cancel.replacing)
    except BaseException:
        _remove(tmp)
        raise
    return ExportResult(
        path=final,
        model=spec.name,
        target=target,
        precision=precision,
        bytes=_path_size(final),
        seconds=seconds,
        weights=weights_tag,
        verification=report,
        delegation=output.delegation,
        warnings=(list(resolved.notes) + _degenerate_init_warnings(float_model, weights_tag)
                  + _rewrite_warnings(rewrites) + tokens.pop("warnings", []) + list(output.warnings)),
        fallbacks=list(metadata.fallbacks),
        details={**({"rewrites": rewrites} if rewrites is not None else {}), **tokens, **output.details},
        fused_input=config.fused_input,
    )


def _reduce_tokens(float_model, spelling: str | None) -> dict[str, Any]:
    """``--option tokens=...``: the float model with its tokens reduced (a copy; the artifact is
    verified against it), the facts for the result's details and a warning that says so."""
    if not spelling:
        return {}
    import copy

    from edgevit.compress.tokens import reduce_tokens

    reduced = reduce_tokens(copy.deepcopy(float_model), spelling)
    facts = dict(reduced.edgevit_tokens)
    warning = (f"token reduction {facts['reduction']} changes the model ({facts['tokens'][0]} -> {facts['tokens'][-1]} "
               "tokens): the artifact is verified against the reduced float model, not the original; "
               "recover accuracy by fine-tuning (edgevit.compress.tokens.recover)")
    return {"model": reduced, "tokens": facts, "warnings": [warning]}


def _rewrite_warnings(rewrites: Mapping[str, Any] | None) -> list[str]:
    """Attention modules no edge rewrite recognised are exported as they are: say which."""
    unknown = dict((rewrites or {}).get("unrecognised") or {})
    if not unknown:
        return []
    kinds = sorted(set(unknown.values()))
    return [f"{len(unknown)} attention module(s) not recognised by the edge rewrites were exported with their own math "
            f"({', '.join(kinds[:4])}{', ...' if len(kinds) > 4 else ''}; e.g. {next(iter(unknown))})"]


def _degenerate_init_warnings(model, weights_tag: str) -> list[str]:
    """A random-init model whose initialisation zeroes a scale (timm: LeViT's residual
    BatchNorms, SwinV2's res-post-norms, some MobileViT blocks) has residual branches that are
    the identity; converters fold them away, so the artifact's size and speed are not a trained
    model's and verification covered only what is left. Say so."""
    if weights_tag != "random-init":
        return []
    zero = [n for n, p in model.named_parameters() if p.dim() == 1 and not n.endswith("bias") and not p.any()]
    if not zero:
        return []
    return [f"random-init weights: {len(zero)} scale parameter(s) are all zero at initialisation (e.g. {zero[0]}), "
            "so those residual branches are the identity and a converter may fold them away; size, speed and "
            "verification are then not those of the trained model. Export with --pretrained or --weights FILE"]


class ExportTerminated(KeyboardInterrupt):
    """An export cancelled by SIGTERM or SIGHUP (a KeyboardInterrupt, so it unwinds like Ctrl-C)."""


class _CancelOnInterrupt:
    """Ctrl-C during an export cancels it at the next safe point instead of raising inside the
    converter stack: a KeyboardInterrupt raised there can be swallowed ("Exception ignored in
    _xla_gc_callback", after which the export finished and wrote its artifact) or crash the process
    (raised while jax/jaxlib import inside litert-torch: SIGSEGV / SIGABRT seen). A second Ctrl-C
    interrupts at once.

    SIGTERM and SIGHUP (``timeout``, ``systemctl stop``, a CI cancel, ``kill``, a closed terminal)
    are handled the same way, raising :class:`ExportTerminated`, so the temporary artifact is
    removed before the process exits. One that arrives after the last safe point lets the export
    finish (its artifact is complete) and then terminates the process as it asked.

    Handlers are installed only in the main thread and only where the signal has Python's default
    handling (an app with its own handler keeps it); the previous ones are restored on exit.
    ``replacing`` is the entry at the output path when the export started: what ``force`` may
    replace (see :func:`edgevit.converters._output.publish`).
    """

    def __init__(self, replacing: _output.Entry | None = None) -> None:
        self.replacing = replacing
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _CancelOnInterrupt:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        defaults = {signal.SIGINT: signal.default_int_handler}
        for name in ("SIGTERM", "SIGHUP"):
            if hasattr(signal, name):
                defaults[getattr(signal, name)] = signal.SIG_DFL
        for signum, default in defaults.items():
            if signal.getsignal(signum) == default:
                signal.signal(signum, self._handle)
                self._previous[signum] = default
        return self

    def _interrupt(self) -> KeyboardInterrupt:
        import signal

        return KeyboardInterrupt() if self.signum == signal.SIGINT else ExportTerminated(signal.Signals(self.signum).name)

    def _handle(self, signum, frame) -> None:
        import signal
        import sys

        if self.requested:
            raise self._interrupt()
        self.requested, self.signum = True, signum
        if signum == signal.SIGINT:
            message = "Cancelling the export at the next step (Ctrl-C again to stop at once)..."
        else:
            message = (f"{signal.Signals(signum).name} received: cancelling the export at the next step "
                       "(send it again to stop at once)...")
        from edgevit._quiet import say

        say(message)  # reaches the terminal even while the CLI captures the converters' output

    def check(self) -> None:
        if self.requested:
            raise self._interrupt()

    def __exit__(self, exc_type, *exc) -> None:
        import signal

        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self.requested and self.signum != signal.SIGINT and exc_type is None:
            # Asked to terminate after the last safe point: the artifact is complete; now comply.
            os.kill(os.getpid(), self.signum)


def _example_input(metadata: ArtifactMetadata):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = metadata.input_shape(1)
    if metadata.fused_input:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def _verify(converter: Converter, path: Path, model, spec, precision: str, images,
            reference: ArtifactMetadata) -> VerificationReport:
    from edgevit.converters.verify import verify_runtime
    from edgevit.runtimes import load
    from edgevit.data.samples import sample_images

    if not converter.runs_here:
        return VerificationReport.not_run(
            precision, f"{converter.name} artifacts cannot run on this OS; structural checks only"
        )
    named = list(images) if images is not None else sample_images(spec.labels)
    runtime = load(path, runtime=converter.runtime)
    return verify_runtime(runtime, model, named, precision, reference)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_VERIFY_IMAGES = 256


def _images_for_verification(images: str | os.PathLike | Sequence[Any]) -> list[tuple[str, Any]]:
    """``(name, image)`` pairs from a folder (its images, class subfolders included), a glob,
    image files, or pairs as they are. Every image is decoded now: a bad one is an
    :class:`~edgevit.errors.ImageError` before any conversion work."""
    import glob

    from edgevit.errors import ImageError
    from edgevit.preprocess import load_image

    def expand(item: str | os.PathLike) -> list[Path]:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise ImageError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of photos")
            return found
        if any(ch in str(item) for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
            if not found:
                raise ImageError(f"no image matches {item}")
            return found
        return [p]

    if isinstance(images, (str, os.PathLike)):
        items: list[Any] = list(expand(images))
    else:
        items = []
        for item in images:
            items.extend(expand(item) if isinstance(item, (str, os.PathLike)) else [item])
    if not items:
        raise ImageError("no verification images were given")
    if len(items) > MAX_VERIFY_IMAGES:
        raise ImageError(f"{len(items)} verification images; pass at most {MAX_VERIFY_IMAGES} (a sample of your photos)")
    named = []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            named.append((str(item[0]), item[1]))
        else:
            # Decoded once, now: a bad file fails before the conversion, and verification reuses it.
            named.append((Path(item).name if isinstance(item, (str, os.PathLike)) else "<image>", load_image(item)))
    return named
