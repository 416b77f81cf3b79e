"""One model at every precision a target has, side by side: size, speed (timed interleaved) and
accuracy of fp32, fp16, int8-dynamic, ViT-aware int8 and naive int8 against fp32 and the float
model (what ``edgevit quantize`` prints), and where an ExecuTorch program's time goes, kernel by kernel.

>>> table = compare_precisions("vit_fmnist_tiny", "tflite", ["int8-dynamic", "int8"], pretrained=True,
...                            data="fashion-mnist", limit=1000, calibration="fashion-mnist")  # doctest: +SKIP
>>> print(precision_table_markdown(table))  # doctest: +SKIP

Every artifact is exported with :func:`edgevit.converters.export` (into ``out``, or a temporary
folder), checked against the float model on the bundled real photos
(:func:`edgevit.converters.verify.verify_runtime`: top-1 agreement and logit cosine, recorded,
never hidden), timed in one interleaved loop so machine load hits every variant alike
(:func:`edgevit.converters.quantize.compare_latency`), and, with ``data``, scored on a labelled
split by :func:`edgevit.measure.evaluate.evaluate` beside the float model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import ConfigError, ConversionError

__all__ = [
    "KERNEL_CLASSES",
    "KernelProfile",
    "PrecisionRow",
    "PrecisionTable",
    "VARIANTS",
    "VARIANT_NAMES",
    "compare_precisions",
    "describe_lines",
    "format_precision_table",
    "kernel_class",
    "measure_latency",
    "precision_table_markdown",
    "profile_kernels",
    "profile_precisions",
    "split_variant",
    "target_variants",
]

# Precision variants in table order: an export precision, or ``int8-naive`` (int8, recipe naive).
VARIANTS = ("fp32", "fp16", "int8-dynamic", "int8", "int8-naive")
VARIANT_NAMES = {"int8": "int8 (ViT-aware)", "int8-naive": "int8 (naive)"}
# What an ExecuTorch/XNNPACK kernel event is (see :func:`kernel_class`).
KERNEL_CLASSES = ("int8", "fp32", "elementwise", "convert", "total")
_FIDELITY_MISS = "could not meet the fidelity target"  # the converters' ConversionError for a missed target


def split_variant(variant: str) -> tuple[str, dict[str, Any]]:
    """``int8-naive`` -> ``("int8", {"recipe": "naive"})``; any other variant is its own precision."""
    if variant == "int8-naive":
        return "int8", {"recipe": "naive"}
    return variant, {}


def target_variants(target: str) -> tuple[str, ...]:
    """The precision variants ``target`` can export, in table order (``int8-naive`` where the
    target has int8 with a choice of recipe)."""
    from edgevit.converters.base import get_converter

    converter = get_converter(target)
    out = []
    for v in VARIANTS:
        precision, extra = split_variant(v)
        if precision in converter.precisions and all(k in converter.options for k in extra):
            out.append(v)
    return tuple(out)


@dataclass
class PrecisionRow:
    """One precision variant of the model. Ratios are against the fp32 row of the same table;
    ``drop_points`` is the float model's top-1 minus this artifact's, in points (negative = gained)."""

    variant: str
    precision: str
    path: str | None = None  # where the artifact was written (None when it was not kept)
    bytes: int | None = None
    size_vs_fp32: float | None = None
    latency_ms: float | None = None
    speedup_vs_fp32: float | None = None
    export_seconds: float | None = None
    photos: dict[str, Any] | None = None  # images, top1_agreement, cosine_min, cosine_mean, passed, flipped
    top1: float | None = None
    drop_points: float | None = None
    test_agreement: float | None = None  # top-1 agreement with the float model on the data split
    kept_out_of_int8: list[str] | None = None  # groups the search kept in float (None: no search)
    float_by_design: list[str] | None = None
    search: dict[str, Any] | None = None  # met, evaluations, seconds
    search_final: dict[str, Any] | None = None  # the chosen mix's fidelity on the search images
    max_drop_used: float | None = None
    min_agreement_used: float | None = None
    missed: list[dict[str, Any]] | None = None  # fidelity targets tried and missed (relax=True)
    delegated_share: float | None = None
    warnings: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PrecisionTable:
    """The rows of :func:`compare_precisions`, fp32 first, plus how they were measured."""

    model: str
    target: str
    weights: str
    rows: list[PrecisionRow]
    calibration: str | None = None
    fidelity_target: dict[str, Any] = field(default_factory=dict)  # max_drop, min_agreement asked
    dataset: dict[str, Any] | None = None  # name, split, n, classes, source
    float_top1: float | None = None
    timing: dict[str, Any] | None = None  # runs, warmup, threads, batch, interleaved, load averages
    notes: list[str] = field(default_factory=list)
    evaluation: list[dict[str, Any]] = field(default_factory=list, repr=False)  # edgevit.measure.evaluate rows

    def row(self, variant: str) -> PrecisionRow:
        for r in self.rows:
            if r.variant == variant:
                return r
        raise KeyError(f"no {variant!r} row; rows: {', '.join(r.variant for r in self.rows)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "target": self.target, "weights": self.weights, "calibration": self.calibration,
            "fidelity_target": dict(self.fidelity_target), "dataset": self.dataset, "float_top1": self.float_top1,
            "timing": self.timing, "notes": list(self.notes), "rows": [r.to_dict() for r in self.rows],
        }


# ------------------------------------------------------------------------------------------------
# the comparison


def _loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _choose_variants(target: str, precisions: Sequence[str] | str | None, calibrated: bool) -> tuple[list[str], list[str]]:
    available = target_variants(target)
    notes: list[str] = []
    if precisions is None:
        chosen = list(available)
        if not calibrated:
            needs = [v for v in chosen if split_variant(v)[0] == "int8"]
            chosen = [v for v in chosen if v not in needs]
            if needs:
                notes.append(f"{' and '.join(needs)} left out: they need calibration images (pass calibration= / "
                             "--calibration, or data= a packaged dataset)")
    else:
        asked = [p.strip() for p in ([precisions] if isinstance(precisions, str) else precisions) for p in p.split(",")]
        chosen = []
        for p in asked:
            if p not in available:
                close = difflib.get_close_matches(p, available, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"target {target} has no precision {p!r}{hint}; its precisions: "
                                  f"{', '.join(available)}")
            if p not in chosen:
                chosen.append(p)
    # fp32 is the reference of every ratio: always measured, always first.
    return ["fp32"] + [v for v in chosen if v != "fp32"], notes


def _options_for(variant: str, options: Mapping[str, Any], converter: Any) -> dict[str, Any]:
    from edgevit.converters.quantize import QUANT_OPTIONS

    precision, extra = split_variant(variant)
    if precision == "fp32":
        return {k: v for k, v in options.items() if k not in QUANT_OPTIONS}
    out = dict(options)
    for own_fp32_twin in ("compare_fp32", "speed_check"):  # the fp32 row of this table is the comparison
        if own_fp32_twin in converter.options:
            out.setdefault(own_fp32_twin, False)
    return {**out, **extra}


def _tries(variant: str, options: Mapping[str, Any], converter: Any, relax: bool) -> list[tuple[float | None, float | None]]:
    """(max_drop, min_agreement) targets to try, the asked one first; with ``relax``, 1 then 2 points,
    then 2 points without the agreement target (ViT-aware int8 only)."""
    if variant != "int8" or "max_drop" not in converter.options:
        return [(None, None)]
    drop = float(options.get("max_drop", converter.options["max_drop"]))
    agreement = float(options.get("min_agreement", converter.options["min_agreement"]))
    tries = [(drop, agreement)]
    if relax:
        tries += [(d, agreement) for d in sorted({max(drop, 1.0), max(drop, 2.0)}) if d != drop]
        tries.append((max(drop, 2.0), 0.0))
    return tries


def _float_margins(float_model: Any, metadata: Any, photos: Sequence[tuple[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """``{photo: float top-1 minus top-2 probability, in points}`` for the photos whose class an
    artifact changed: a small margin is a near-tie in the float model itself."""
    import torch

    from edgevit.converters.verify import reference_logits

    out = {}
    wanted = [(n, img) for n, img in photos if n in set(names)]
    if not wanted:
        return out
    logits = reference_logits(float_model, [img for _, img in wanted], metadata)
    for (name, _), row in zip(wanted, logits):
        p = torch.softmax(torch.from_numpy(row), 0)
        top2 = torch.topk(p, min(2, len(p))).values
        out[name] = round(100 * float(top2[0] - top2[-1]), 1)
    return out


def _row_from_export(variant: str, result: Any, fp32_bytes: int | None) -> PrecisionRow:
    q = result.details.get("quantization", {})
    kept = None
    if "mix" in q:
        kept_key = next((k for k in q["mix"] if k != "int8"), None)
        kept = [g["group"] for g in q["mix"].get(kept_key, [])] if kept_key else []
    search = q.get("search")
    return PrecisionRow(
        variant=variant, precision=result.precision, path=str(result.path), bytes=result.bytes,
        size_vs_fp32=result.bytes / fp32_bytes if fp32_bytes else None, export_seconds=result.seconds,
        kept_out_of_int8=kept, float_by_design=q.get("float_by_design"),
        search={k: search[k] for k in ("met", "evaluations", "seconds") if k in search} if search else None,
        search_final=search.get("final") if search else None,
        delegated_share=result.delegation.share if result.delegation else None,
        warnings=list(result.warnings), fallbacks=list(result.fallbacks),
    )


def _artifact_path(out: Path, slug: str, target: str, variant: str, suffix: str) -> Path:
    from edgevit.converters.export import default_artifact_name

    return out / default_artifact_name(slug, target, variant, suffix)


@contextlib.contextmanager
def _output_folder(out: str | os.PathLike | None) -> Iterator[tuple[Path, list[Path], bool]]:
    """``(folder, written, keep)``: ``out`` (created if needed) or a temporary folder. On failure
    every artifact in ``written`` is removed, and ``out`` too if this run created it and it is empty."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="edgevit-quantize-") as tmp:
            yield Path(tmp), [], False
        return
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; pass a folder for the artifacts")
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    written: list[Path] = []
    try:
        yield folder, written, True
    except BaseException:
        for path in written:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for d in created:  # innermost first; only folders this run made, only when empty
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _resolve(model: str, weights: str | os.PathLike | None, pretrained: bool) -> Any:
    """The float model; neither weights nor pretrained: one seeded random initialisation, shared
    by every export and the reference (speed and size do not depend on the values)."""
    import torch

    from edgevit.models.sources import load_model

    if weights is None and not pretrained:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return load_model(model)
    return load_model(model, pretrained=pretrained, weights=weights)


def compare_precisions(
    model: str,
    target: str,
    precisions: Sequence[str] | str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    data: str | os.PathLike | None = None,
    split: str = "test",
    limit: int | None = None,
    calibration: Any = None,
    options: Mapping[str, Any] | None = None,
    relax: bool = False,
    out: str | os.PathLike | None = None,
    force: bool = False,
    runs: int = 20,
    warmup: int = 5,
    threads: int = 2,
    photos: Sequence[tuple[str, Any]] | None = None,
    keep_going: bool = False,
    on_step: Callable[[str], Any] | None = None,
    progress: Callable | None = None,
) -> PrecisionTable:
    """Export ``model`` to ``target`` at each precision variant and compare them in one table.

    ``precisions``: variants from :func:`target_variants` (``fp32``, ``fp16``, ``int8-dynamic``,
    ``int8`` = the ViT-aware recipe, ``int8-naive``); default all the target has (the int8 ones only
    with calibration). fp32 is always measured: it is the reference of every size and speed ratio.
    ``calibration`` is any ``--calibration`` source; with ``data`` a packaged dataset and no
    calibration, its **train** split calibrates (the scored split stays untouched). ``options`` go
    to every export (quantization options to the quantized ones), e.g. ``{"max_drop": 0.5}``.

    ``data`` (a dataset name, IDX folder or image folder) adds top-1 on its ``split`` (first
    ``limit`` images), drop vs the float model and agreement with it, via
    :func:`edgevit.measure.evaluate.evaluate`. ``runs`` > 0 times all artifacts interleaved
    (``warmup`` rounds, batch 1, ``threads``). ``relax``: when the ViT-aware int8 search misses the
    asked fidelity target, retry looser ones (1, then 2 points, then without the agreement target)
    and record the miss in ``missed`` (the row never counts as meeting the asked target).

    Artifacts go to ``out`` (named ``<model>_<target>_<variant><suffix>``; ``force`` replaces earlier
    ones), or a temporary folder removed at the end. A failed run removes what it wrote, unless
    ``keep_going``: then a variant that fails to export is recorded with its ``error`` and the
    others go on. ``on_step(message)`` is called before each step; ``progress`` wraps the scored
    images as in :func:`~edgevit.measure.evaluate.evaluate`.
    """
    from edgevit.converters.base import get_converter

    if weights is not None and pretrained:
        raise ConfigError("pass either weights or pretrained, not both")
    if runs < 0 or warmup < 0:
        raise ConfigError(f"runs and warmup must be >= 0, got runs={runs}, warmup={warmup}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    converter = get_converter(target)
    if not converter.runs_here:
        raise ConfigError(f"{target} artifacts cannot run on this machine, so their speed and accuracy cannot be "
                          "measured here; use `edgevit export` for their size and structural check")
    options = dict(options or {})
    if "recipe" in options:
        raise ConfigError("choose the int8 recipe with the precision: int8 (ViT-aware) or int8-naive, not options")
    evalset = None
    if data is not None:
        from edgevit.data.eval_sets import load_eval_set

        evalset = load_eval_set(data, split, limit)  # a missing or empty dataset fails here, before any export
    if calibration is None and data is not None:
        from edgevit.data import DATASETS

        if str(data).lower() in DATASETS:
            calibration = str(data)  # load_calibration takes a dataset's train split
    variants, notes = _choose_variants(target, precisions, calibration is not None)
    for v in variants:  # options, precisions and calibration checked before any work
        precision = split_variant(v)[0]
        converter.make_config(precision, _options_for(v, options, converter), calibration if precision != "fp32" else None)
    converter.check_available()

    step = on_step or (lambda message: None)
    step(f"{model}: float model")
    resolved = _resolve(model, weights, pretrained)
    spec = resolved.spec
    photos = list(photos) if photos is not None else _photos(spec.labels)
    table = PrecisionTable(model=spec.name, target=target, weights=resolved.weights, rows=[],
                           calibration=str(calibration) if calibration is not None else None, notes=notes)
    if "max_drop" in converter.options:
        table.fidelity_target = {k: options.get(k, converter.options[k]) for k in ("max_drop", "min_agreement")}

    with _output_folder(out) as (folder, written, keep):
        fp32_bytes = None
        for variant in variants:
            row = _export_variant(resolved, converter, target, variant, folder, options, calibration, relax, force,
                                  keep_going, fp32_bytes, step)
            if row.path is not None:
                written.append(Path(row.path))
                _check_photos(row, resolved.module, photos, converter.runtime, threads)
                if variant == "fp32":
                    fp32_bytes = row.bytes
            table.rows.append(row)
        if runs > 0:
            step(f"{model} {target}: latency ({sum(r.ok for r in table.rows)} artifacts interleaved, {runs} runs)")
            measure_latency(table, runs=runs, warmup=warmup, threads=threads)
        if evalset is not None:
            step(f"{model} {target}: top-1 on {evalset.name} {evalset.split} ({len(evalset)} images)")
            _score(table, model, data, split, limit, weights, pretrained, resolved, folder, threads, progress)
        if not keep:  # the temporary folder goes: no row points into it
            for r in table.rows:
                r.path = None
            for e in table.evaluation:
                e["artifact"] = None
    fp32 = table.rows[0]
    if fp32.photos and not fp32.photos.get("passed", True):
        table.notes.append(f"the fp32 artifact does not match the float model on the photos: "
                           f"{fp32.photos.get('summary', '')}")
    return table


def _photos(labels: str) -> list[tuple[str, Any]]:
    from edgevit.data.samples import sample_images

    return sample_images(labels)


def _export_variant(resolved, converter, target, variant, folder, options, calibration, relax, force, keep_going,
                    fp32_bytes, step) -> PrecisionRow:
    from edgevit.converters.export import export

    precision, _ = split_variant(variant)
    opts = _options_for(variant, options, converter)
    dest = _artifact_path(folder, resolved.spec.slug, target, variant, converter.suffix)
    missed: list[dict[str, Any]] = []
    tries = _tries(variant, opts, converter, relax)
    for drop, agreement in tries:
        if drop is not None:
            opts.update(max_drop=drop, min_agreement=agreement)
        label = "" if drop is None else f" (max_drop={drop:g}, min_agreement={agreement:g})"
        step(f"{resolved.spec.name} {target} {variant}{label}")
        try:
            result = export(resolved, target, precision, out=dest, force=force, verify=False,
                            calibration=calibration if precision != "fp32" else None, options=opts)
        except ConversionError as exc:
            if _FIDELITY_MISS in str(exc) and relax:
                # The asked target is out of reach: record why and measure what the next looser one gives.
                missed.append({"max_drop": drop, "min_agreement": agreement, "error": str(exc)})
                continue
            if not keep_going:
                raise
            return PrecisionRow(variant, precision, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            if not keep_going:
                raise
            return PrecisionRow(variant, precision, error=f"{type(exc).__name__}: {exc}")
        row = _row_from_export(variant, result, result.bytes if variant == "fp32" else fp32_bytes)
        if drop is not None:
            row.max_drop_used, row.min_agreement_used = drop, agreement
        row.missed = missed or None
        return row
    tried = ", ".join(f"max_drop={m['max_drop']:g} min_agreement={m['min_agreement']:g}" for m in missed)
    return PrecisionRow(variant, precision, missed=missed,
                        error=f"the fidelity target was missed at every target tried ({tried})")


def _check_photos(row: PrecisionRow, float_model: Any, photos, runtime: str, threads: int | None) -> None:
    from edgevit.converters.verify import verify_runtime
    from edgevit.runtimes import load

    rt = load(row.path, runtime=runtime, threads=threads)
    v = verify_runtime(rt, float_model, photos, row.precision)
    row.photos = {"images": v.n_images, "top1_agreement": v.top1_agreement, "cosine_min": v.cosine_min,
                  "cosine_mean": v.cosine_mean, "passed": v.passed, "tolerance": v.tolerance.describe(),
                  "flipped": _float_margins(float_model, rt.metadata, photos, v.disagreements),
                  "summary": v.summary()}


def measure_latency(table: PrecisionTable, *, runs: int = 20, warmup: int = 5, threads: int | None = 2) -> None:
    """Time every artifact of ``table`` (its rows' ``path``) interleaved in one loop (batch 1,
    median of ``runs`` after ``warmup`` rounds) and fill ``latency_ms`` and ``speedup_vs_fp32``;
    ``table.timing`` records the conditions, the load average before and after included."""
    from edgevit.converters.base import get_converter
    from edgevit.converters.quantize import compare_latency
    from edgevit.runtimes import load

    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    paths = {r.variant: r.path for r in table.rows if r.ok and r.path}
    if not paths:
        return
    runtime = get_converter(table.target).runtime
    meta = load(next(iter(paths.values())), runtime=runtime, threads=threads).metadata
    x = np.zeros(meta.input_shape(1), np.dtype(meta.input_dtype))
    before = _loadavg()
    latency = compare_latency(paths, runtime, x, runs=runs, warmup=warmup, threads=threads)
    table.timing = {"runs": runs, "warmup": warmup, "threads": threads, "batch": 1, "interleaved": sorted(paths),
                    "load_average_before": before, "load_average_after": _loadavg(), "measured": _now()}
    fp32 = latency.get("fp32")
    for r in table.rows:
        if r.variant in latency:
            r.latency_ms = latency[r.variant]
            r.speedup_vs_fp32 = fp32 / latency[r.variant] if fp32 and latency[r.variant] > 0 else None


def _score(table, model, data, split, limit, weights, pretrained, resolved, folder, threads, progress) -> None:
    from edgevit.measure.evaluate import evaluate

    if weights is None and not pretrained:
        from edgevit.models.weights import save_weights

        weights = folder / f".{resolved.spec.slug}.random-init.safetensors"  # the seeded float model, for evaluate
        save_weights(resolved.module, weights)
    from edgevit.converters.quantize import torch_threads

    try:
        # The float model on one torch thread (on a busy machine OpenMP's spinning threads make these
        # small batch-1 forwards several times slower); the artifacts on their runtimes' own threads.
        with torch_threads(1):
            report = evaluate([r.path for r in table.rows if r.ok], data, split=split, limit=limit, float_model=model,
                              pretrained=pretrained, weights=weights, threads=None, progress=progress)
    finally:
        if weights is not None and Path(weights).name.endswith(".random-init.safetensors"):
            with contextlib.suppress(FileNotFoundError):
                Path(weights).unlink()
    table.evaluation = report.rows
    table.dataset = report.dataset
    float_row = report.rows[0]
    table.float_top1 = float_row["top1"]
    by_path = {row["artifact"]: row for row in report.rows[1:]}
    for r in table.rows:
        e = by_path.get(r.path)
        if e is not None:
            r.top1 = e["top1"]
            r.drop_points = 100 * (table.float_top1 - e["top1"])
            r.test_agreement = e.get("agreement_top1")
    table.notes += sorted({row["note"] for row in report.rows if row.get("note")})


# ------------------------------------------------------------------------------------------------
# rendering


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _size(b: int | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.0f} KiB"


def format_precision_table(table: PrecisionTable) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)`` of ``table`` as text cells (the accuracy columns only when it was scored)."""
    scored = table.float_top1 is not None
    headers = ["precision", "size", "% of fp32", "latency ms", "speed-up", "photos: agree / cos min"]
    if scored:
        headers += ["top-1", "drop pts", "agree w/ float"]
    headers += ["kept out of int8"]
    rows = []
    for r in table.rows:
        name = VARIANT_NAMES.get(r.variant, r.variant)
        if not r.ok:
            rows.append([name, f"failed: {r.error.splitlines()[0][:100]}"] + [""] * (len(headers) - 2))
            continue
        ph = r.photos or {}
        cells = [
            name, _size(r.bytes), _pct(r.size_vs_fp32),
            "-" if r.latency_ms is None else f"{r.latency_ms:.2f}",
            "-" if r.speedup_vs_fp32 is None else f"{r.speedup_vs_fp32:.2f}x",
            f"{_pct(ph.get('top1_agreement'))} / {ph['cosine_min']:.4f}" if ph else "-",
        ]
        if scored:
            cells += [_pct(r.top1, 2), "-" if r.drop_points is None else f"{r.drop_points:+.2f}",
                      _pct(r.test_agreement, 2)]
        if r.kept_out_of_int8 is None:
            kept = "-"
        else:
            kept = ", ".join(r.kept_out_of_int8) or ("nothing (all int8)" if r.variant == "int8-naive"
                                                     else "by-design float ops only")
        if r.missed:
            kept += f" (target missed; searched with max_drop={r.max_drop_used:g})"
        rows.append(cells + [kept])
    return headers, rows


def _describe(table: PrecisionTable) -> list[str]:
    lines = [f"{table.model} -> {table.target}, weights {table.weights}"
             + (f", calibration {table.calibration}" if table.calibration else "")]
    if table.fidelity_target and any(r.variant == "int8" for r in table.rows):
        t = table.fidelity_target
        lines.append(f"ViT-aware int8 target: top-1 drop <= {t['max_drop']:g} pts, agreement >= {t['min_agreement']:.1%} "
                     "on held-out calibration images")
    if table.timing:
        t = table.timing
        lines.append(f"latency: batch {t['batch']}, {t['threads']} threads, median of {t['runs']} runs after "
                     f"{t['warmup']} warm-up, all variants interleaved in one loop (load average "
                     f"{t['load_average_before']} before, {t['load_average_after']} after)")
    if table.dataset:
        d = table.dataset
        lines.append(f"top-1 on {d['name']} ({d['split']} split, {d['n']} images); float model {_pct(table.float_top1, 2)}")
    return lines


def _footnotes(table: PrecisionTable) -> list[str]:
    notes = list(table.notes)
    for r in table.rows:
        for m in r.missed or []:
            notes.append(f"{r.variant}: max_drop={m['max_drop']:g}, min_agreement={m['min_agreement']:g} not met: "
                         f"{m['error'].splitlines()[0][:300]}")
        if r.ok and r.photos and not r.photos.get("passed", True):
            notes.append(f"{r.variant}: outside its verification tolerance on the photos ({r.photos['tolerance']})")
        notes += [f"{r.variant}: fallback: {f}" for f in r.fallbacks]
    warnings = [w for r in table.rows for w in r.warnings]
    notes += [w for i, w in enumerate(warnings) if w not in warnings[:i]]  # each export's warnings, once
    return notes


def precision_table_markdown(table: PrecisionTable) -> str:
    """``table`` as a Markdown section: what was measured and how, the table, then the notes."""
    headers, rows = format_precision_table(table)
    lines = [f"### {table.model} on {table.target}", ""] + [f"{x}  " for x in _describe(table)] + [""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    notes = _footnotes(table)
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def describe_lines(table: PrecisionTable) -> tuple[list[str], list[str]]:
    """``(header lines, note lines)`` printed around the text table (by ``edgevit quantize``)."""
    return _describe(table), _footnotes(table)


# ------------------------------------------------------------------------------------------------
# where an ExecuTorch program's time goes: its per-kernel profile (ETDump)


@dataclass
class KernelProfile:
    """Median milliseconds per XNNPACK kernel type of one ``.pte`` (summed over its instances), and
    per :func:`kernel_class`."""

    artifact: str
    runs: int
    threads: int
    kernels_ms: dict[str, float]
    by_class_ms: dict[str, float]

    @property
    def program_ms(self) -> float:
        """The kernels' time (the ``total`` events around them left out)."""
        return sum(v for k, v in self.by_class_ms.items() if k != "total")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kernel_class(kind: str) -> str:
    """What an XNNPACK kernel event is: an ``int8`` kernel, an ``fp32`` one, an ``elementwise``
    add/multiply/subtract (XNNPACK's event name does not give their type), a ``convert``
    (quantize/dequantize), or ``total`` (the events around the kernels)."""
    if kind in ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL", "Method::init", "Program::load_method"):
        return "total"
    if kind.startswith("Convert"):
        return "convert"
    if "QS8" in kind or "X8)" in kind or "QC8)" in kind:
        return "int8"
    if kind.startswith(("Multiply", "Add", "Subtract")):
        return "elementwise"
    return "fp32"


def profile_kernels(artifact: str | os.PathLike, runs: int = 20, threads: int = 1) -> KernelProfile:
    """Profile an ExecuTorch ``.pte`` kernel by kernel with ExecuTorch's event tracer (ETDump):
    ``runs`` forwards (after 3 warm-up) of a zero input on ``threads`` threads, the median per
    kernel event, summed per kernel type."""
    import re

    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from edgevit.runtimes import load

    path = Path(artifact)
    if path.suffix != ".pte":
        raise ConfigError(f"{path}: kernel profiles are of ExecuTorch programs (.pte)")
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    shape = load(path, runtime="executorch").metadata.input_shape(1)
    portable_lib._unsafe_reset_threadpool(threads)  # ExecuTorch's only threadpool switch
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    x = torch.zeros(shape)
    for _ in range(runs + 3):
        module.forward([x])
    with tempfile.TemporaryDirectory(prefix="edgevit-etdump-") as tmp:
        dump = Path(tmp) / "profile.etdp"
        module.write_etdump_result_to_file(str(dump))
        frame = Inspector(etdump_path=str(dump)).to_dataframe()
    frame = frame[frame.event_block_name == "Execute"]
    kernels: dict[str, float] = {}
    for name, ms in zip(frame.event_name, frame["p50 (ms)"]):
        kind = re.sub(r" #\d+$", "", str(name))
        kernels[kind] = kernels.get(kind, 0.0) + float(ms)
    by_class: dict[str, float] = {}
    for kind, ms in kernels.items():
        by_class[kernel_class(kind)] = by_class.get(kernel_class(kind), 0.0) + ms
    ordered = dict(sorted(kernels.items(), key=lambda kv: -kv[1]))
    return KernelProfile(str(path), runs, threads, ordered, by_class)


def profile_precisions(
    model: str,
    precisions: Sequence[str] = ("fp32", "int8"),
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    calibration: Any = None,
    options: Mapping[str, Any] | None = None,
    runs: int = 20,
    threads: int = 1,
    on_step: Callable[[str], Any] | None = None,
) -> dict[str, KernelProfile]:
    """Export ``model`` to ExecuTorch at each of ``precisions`` (fp32 always) and profile every
    program kernel by kernel (:func:`profile_kernels`): how much of the int8 program's time is
    still spent in fp32 kernels (XNNPACK's ExecuTorch partitioner takes batch matmul, softmax and
    sigmoid in fp32 only) and in int8<->fp32 conversions."""
    with tempfile.TemporaryDirectory(prefix="edgevit-profile-") as tmp:
        table = compare_precisions(model, "executorch", list(precisions), weights=weights, pretrained=pretrained,
                                   calibration=calibration, options=options, out=tmp, runs=0, threads=threads,
                                   on_step=on_step)
        out = {}
        for r in table.rows:
            if on_step:
                on_step(f"{table.model} executorch {r.variant}: kernel profile ({runs} runs)")
            out[r.variant] = profile_kernels(r.path, runs=runs, threads=threads)
        return out
