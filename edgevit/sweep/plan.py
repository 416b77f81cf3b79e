"""The cells of a sweep: model sources x targets x precisions x options, each keyed by what it
produces (source, weights digest, target, precision, options, edgevit version)."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgevit._version import __version__
from edgevit.errors import ConfigError

__all__ = ["Cell", "expand_sources", "plan"]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One export of a sweep: a model source at a target, precision and options, with weights."""

    source: str
    target: str
    precision: str
    options: tuple[tuple[str, Any], ...] = ()
    weights: str = "random-init"  # the weights digest: random-init, sha256:<hex>, hub:<id>

    @property
    def key(self) -> str:
        """Stable id of what the cell produces; changes with any input or the edgevit version."""
        doc = [self.source, self.weights, self.target, self.precision, [list(o) for o in self.options], __version__]
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.source} {self.target} {self.precision}" + (f" [{opts}]" if opts else "")

    def artifact_name(self, produced: str) -> str:
        """The name under ``out``: the export's own file name, plus an options tag when options are set."""
        if not self.options:
            return produced
        p = Path(produced)
        tag = hashlib.sha256(json.dumps(self.options, default=str).encode()).hexdigest()[:8]
        return f"{p.stem}_opt{tag}{p.suffix}"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _weights_for(source: str, pretrained: bool, weights: str | os.PathLike | None) -> tuple[str, Path | None]:
    """(digest tag, file to ship) for a source's weights."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights file {path} does not exist; pass an existing checkpoint")
        return _file_digest(path), path
    if not pretrained:
        return "random-init", None
    from edgevit.models import get_spec
    from edgevit.models._registry import WEIGHTS_DIR

    spec = get_spec(source)
    if not spec.has_pretrained:
        raise ConfigError(f"{source} has no pretrained weights; drop --pretrained (random init), pass --weights FILE, "
                          f"or leave it out of this sweep")
    if spec.embedded_weights:
        return _file_digest(WEIGHTS_DIR / spec.embedded_weights), None
    return f"hub:{spec.hub_id or spec.default_weights or source}", None


def expand_sources(patterns: Sequence[str]) -> list[str]:
    """Catalog names, glob patterns over catalog names, and ``timm:`` names or patterns, in order."""
    from edgevit.models import list_models

    catalog = list_models()
    out: list[str] = []
    for pat in patterns:
        if pat.startswith("timm:") and any(c in pat for c in "*?["):
            from edgevit.models._timm import import_timm

            found = [f"timm:{n}" for n in import_timm().list_models(pat[5:])]
        elif any(c in pat for c in "*?["):
            found = [n for n in catalog if fnmatch.fnmatchcase(n, pat)]
        else:
            found = [pat]
        if not found:
            raise ConfigError(f"model pattern {pat!r} matches nothing; `edgevit list` shows the catalog, "
                              f"timm:PATTERN matches timm's architectures")
        out += [f for f in found if f not in out]
    return out


def _option_axes(options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[tuple[tuple[str, Any], ...]]:
    """``{"rewrite": [True, False]}`` -> one option set per combination (a list value is an axis)."""
    if not options:
        return [()]
    if not isinstance(options, Mapping):
        return [tuple(sorted(dict(o).items())) for o in options]
    keys = sorted(options)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in (options[k] for k in keys)]
    return [tuple(zip(keys, combo)) for combo in itertools.product(*values)]


def plan(
    models: Sequence[str],
    targets: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    calibration: str | None = None,
) -> tuple[list[Cell], list[tuple[Cell, str]], dict[str, Path]]:
    """The cells of a sweep: (cells to run, (cell, reason) the converters do not support, weights
    files to ship by digest). Unknown targets and sources fail here, before any work."""
    from edgevit.converters import available_targets, get_converter
    from edgevit.models import get_spec

    known = list(available_targets())
    targets = list(targets or known)
    bad = [t for t in targets if t not in known]
    if bad:
        raise ConfigError(f"unknown target(s) {', '.join(bad)}; one of {', '.join(known)}")
    sources = expand_sources(models)
    files: dict[str, Path] = {}
    cells, unsupported = [], []
    for source in sources:
        get_spec(source)  # an unknown source fails now, with the catalog's hint
        w = weights.get(source) if isinstance(weights, Mapping) else weights
        digest, path = _weights_for(source, pretrained, w)
        if path is not None:
            files[digest] = path
        for target, precision, opts in itertools.product(targets, precisions, _option_axes(options)):
            cell = Cell(source, target, precision, opts, digest)
            if precision == "int8" and calibration is None and "int8" in get_converter(target).precisions:
                raise ConfigError("int8 cells calibrate on images: pass --calibration DIR|DATASET (calibration=...), "
                                  "or use int8-dynamic")
            try:
                get_converter(target).make_config(precision, dict(opts), calibration, False)
            except ConfigError as exc:
                unsupported.append((cell, str(exc)))
                continue
            cells.append(cell)
    return cells, unsupported, files
