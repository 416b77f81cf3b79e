"""Shared helpers for the reliability, fuzz and concurrency tests (tests/runtimes/test_reliability.py,
tests/test_fuzz.py, tests/runtimes/test_concurrency.py) and the standalone fuzz scripts in this folder.

* :func:`exported_artifacts` exports the small ``vit_fmnist_tiny`` once per process to every
  registered target (fp32, no verification: the target tests verify) and hands back the paths.
* :func:`mutations` / :func:`truncations` make broken copies of a real artifact.
* :func:`run_loader_cases` loads files in a child process (``loader_worker.py``) so a native
  crash is counted instead of killing the test run.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORKER = HERE / "loader_worker.py"
MODEL = "vit_fmnist_tiny"

_LOCK = threading.Lock()
_ARTIFACTS: dict[str, Path] = {}
_ROOT: Path | None = None


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="edgevit-reliability-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def exported_artifacts(targets: tuple[str, ...] | None = None) -> dict[str, Path]:
    """``{target: artifact path}`` of ``vit_fmnist_tiny`` exported once per process.

    Uses the trained weights when they are shipped (real predictions), else random init.
    Targets whose converter is missing here are left out; a target whose export fails is left
    out too, with the error kept in :data:`EXPORT_ERRORS` (the tests that need it fail with it).
    """
    from edgevit.converters import export
    from edgevit.converters.base import available_targets
    from edgevit.errors import EdgeVitError, MissingDependencyError

    wanted = targets or tuple(sorted(available_targets()))
    reuse = os.environ.get("EDGEVIT_RELIABILITY_ARTIFACTS")  # a folder of earlier exports (development)
    if reuse:
        for target in wanted:
            cls = available_targets().get(target)
            found = Path(reuse) / f"{MODEL}_{target}_fp32{cls.suffix}" if cls else None
            if found is not None and found.exists():
                _ARTIFACTS.setdefault(target, found)
    pretrained = (REPO / "models" / "weights" / f"{MODEL}.safetensors").is_file()
    with _LOCK:
        for target in wanted:
            if target in _ARTIFACTS or target in EXPORT_ERRORS or target in MISSING:
                continue
            try:
                result = export(MODEL, target, out=_root() / target, pretrained=pretrained, verify=False)
            except MissingDependencyError as exc:
                MISSING[target] = str(exc)
                continue
            except EdgeVitError as exc:
                EXPORT_ERRORS[target] = f"{type(exc).__name__}: {exc}"
                continue
            _ARTIFACTS[target] = result.path
        return {t: _ARTIFACTS[t] for t in wanted if t in _ARTIFACTS}


EXPORT_ERRORS: dict[str, str] = {}
MISSING: dict[str, str] = {}  # targets whose extra is not installed here


def artifact_for(runtime: str) -> Path:
    """The artifact for ``runtime``; skips the calling test where the engine's extra is not
    installed, fails it where the export itself failed."""
    import pytest
    from edgevit.converters.base import available_targets

    arts = runtime_artifacts()
    if runtime in arts:
        return arts[runtime]
    targets = [t for t, c in available_targets().items() if c.runtime == runtime]
    missing = [MISSING[t] for t in targets if t in MISSING]
    if missing:
        pytest.skip(missing[0])
    errors = [f"{t}: {EXPORT_ERRORS[t]}" for t in targets if t in EXPORT_ERRORS]
    pytest.fail(f"no {runtime} artifact could be exported here ({'; '.join(errors) or 'no target feeds it'})")


def runtime_artifacts() -> dict[str, Path]:
    """``{runtime name: artifact}`` for every registered runtime that a registered target feeds."""
    from edgevit.converters.base import available_targets
    from edgevit.runtimes import available_runtimes

    runtimes = available_runtimes()
    by_target = {t: c.runtime for t, c in available_targets().items() if c.runtime in runtimes}
    arts = exported_artifacts(tuple(sorted(by_target)))
    return {by_target[t]: p for t, p in arts.items()}


def sha256(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# broken copies


def truncation_points(n: int) -> list[int]:
    """Cut points across a file of ``n`` bytes: inside the header, the tables, the middle,
    and a byte or a few short of the end."""
    points = {1, 4, 8, 16, 64, 256, 1024, n // 100, n // 4, n // 2, (3 * n) // 4, n - 4096, n - 100, n - 1}
    return sorted(p for p in points if 0 < p < n)


def mutations(data: bytes, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` damaged copies of ``data``: random bit flips anywhere, flips concentrated in the
    first and last 4 KiB (headers, tables, metadata), and runs of 0x00 / 0xFF overwrites."""
    rng = np.random.default_rng(seed)
    n = len(data)
    out = []
    for k in range(count):
        buf = bytearray(data)
        style = k % 4
        if style == 0:  # a few random bit flips anywhere
            for pos in rng.integers(0, n, size=int(rng.integers(1, 9))):
                buf[int(pos)] ^= 1 << int(rng.integers(0, 8))
            name = "flips-anywhere"
        elif style == 1:  # many flips in the header / tables
            for pos in rng.integers(0, min(n, 4096), size=int(rng.integers(1, 33))):
                buf[int(pos)] ^= 1 << int(rng.integers(0, 8))
            name = "flips-head"
        elif style == 2:  # flips in the tail (metadata, digests, trailing tables)
            for pos in rng.integers(max(0, n - 4096), n, size=int(rng.integers(1, 17))):
                buf[int(pos)] ^= 1 << int(rng.integers(0, 8))
            name = "flips-tail"
        else:  # a run of 0x00 or 0xFF bytes
            start = int(rng.integers(0, n))
            length = int(rng.integers(1, 65))
            fill = b"\xff" if rng.integers(0, 2) else b"\x00"
            buf[start : start + length] = fill * len(buf[start : start + length])
            name = "overwrite"
        out.append((f"{name}-{k}", bytes(buf)))
    return out


def restamp(data: bytes) -> bytes:
    """``data`` with its edgevit integrity digest recomputed, as a crafted file would carry it (so
    the bytes get past the digest check to the engine); unchanged unless it holds exactly one
    digest slot."""
    from edgevit.runtimes.integrity import seal

    try:
        return seal(data)
    except ValueError:
        return data


def strip_tflite_weights(data: bytes) -> bytes:
    """The same TFLite flatbuffer with every weight buffer emptied (the metadata buffers kept,
    the digest recomputed): small, still a valid model file, and it fails inside the interpreter
    when run."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    keep = {m.buffer for m in (model.metadata or [])}
    for i, buf in enumerate(model.buffers):
        if i not in keep and buf.data is not None and len(buf.data) > 64:
            buf.data = None
    return restamp(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


# --------------------------------------------------------------------------------------------
# child-process loading


@dataclass
class CaseResult:
    name: str
    stage: str  # load | run | crash
    outcome: str  # ok | edgevit | other | crash
    type: str = ""
    msg: str = ""


@dataclass
class LoaderReport:
    results: list[CaseResult] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(r.outcome for r in self.results)

    def of(self, outcome: str) -> list[CaseResult]:
        return [r for r in self.results if r.outcome == outcome]

    def summary(self) -> str:
        c = self.counts
        lines = [f"{len(self.results)} cases: {dict(c)}"]
        for r in self.results:
            if r.outcome in ("other", "crash"):
                lines.append(f"  {r.name}: {r.stage} {r.outcome} {r.type}: {r.msg[:200]}")
        return "\n".join(lines)


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def run_loader_cases(cases: list[tuple[str, Path]], runtime: str | None = None, timeout: float = 300.0,
                     env: dict[str, str] | None = None) -> LoaderReport:
    """Load (and, if that works, run once) every ``(name, path)`` in a child process.

    A child that dies mid-case (a native crash) is recorded as outcome ``crash`` with its
    signal, and a fresh child carries on with the next case.
    """
    report = LoaderReport()
    if not cases:
        return report
    manifest = Path(tempfile.mkstemp(prefix="edgevit-cases-", suffix=".txt")[1])
    try:
        manifest.write_text("".join(f"{p}\n" for _, p in cases), encoding="utf-8")
        child_env = {**os.environ, "PYTHONFAULTHANDLER": "0", **(env or {})}
        first = 0
        while first < len(cases):
            proc = subprocess.run(
                [sys.executable, str(WORKER), str(manifest), runtime or "", str(first)],
                capture_output=True, text=True, timeout=timeout, env=child_env, cwd=str(REPO),
            )
            started = None
            for line in proc.stdout.splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if "start" in rec:
                    started = rec["start"]
                    continue
                i = rec["i"]
                report.results.append(CaseResult(cases[i][0], rec["stage"], rec["outcome"], rec["type"], rec["msg"]))
                started = None
            if started is not None:  # died inside this case
                tail = proc.stderr.strip().splitlines()[-3:]
                report.results.append(
                    CaseResult(cases[started][0], "crash", "crash", _signal_name(proc.returncode), " | ".join(tail))
                )
                first = started + 1
            elif proc.returncode != 0:
                raise RuntimeError(f"loader worker failed outside a case ({proc.returncode}): {proc.stderr[-2000:]}")
            else:
                break
    finally:
        manifest.unlink(missing_ok=True)
    return report


def record(section: str, name: str, **counts: object) -> None:
    """Append one line of figures to the file named by ``EDGEVIT_RELIABILITY_STATS`` (if set),
    for the summary table of a reliability run; a no-op otherwise."""
    target = os.environ.get("EDGEVIT_RELIABILITY_STATS")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps({"section": section, "name": name, **counts}, default=str) + "\n")


def without_permission_override() -> list[str] | None:
    """A command prefix under which file permissions apply, or ``None`` if there is none.

    Root ignores permission bits, so as root the command runs with the capabilities that
    override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped, through util-linux's
    ``setpriv``; as any other user no prefix is needed.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]
