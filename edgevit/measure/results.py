"""The local results store: profile, bench, eval and export runs appended to one SQLite file.

The default file is ``~/.cache/edgevit/results.sqlite`` (``$XDG_CACHE_HOME`` is honoured); the
``EDGEVIT_RESULTS_DB`` environment variable or an explicit ``db=`` path (``--db`` on the command
line, which wins) chooses another. Each run records the folder it was run from
(``recorded_in``), so that a report can say when runs of several projects share one file and
keep one project's (``edgevit report --here``). Each run is one row: a few indexed columns (kind, model,
target, precision, runtime, artifact, resolution) and the full result as JSON, so new fields
need no migration. ``edgevit report`` renders the store as a self-contained HTML page.

>>> from edgevit.measure.results import ResultsStore
>>> with ResultsStore("/tmp/r.sqlite") as store:            # doctest: +SKIP
...     store.add("bench", {"median_ms": 12.3}, model="mobilevit_xxs", target="tflite")
...     [run.model for run in store.runs("bench")]
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevit._version import __version__
from edgevit.errors import ConfigError

__all__ = [
    "KINDS",
    "ResultsStore",
    "Run",
    "check_database",
    "default_db_path",
    "describe_store",
    "host_info",
    "record_bench",
    "record_eval",
    "record_export",
    "record_profile",
]

KINDS = ("profile", "bench", "eval", "export")
SCHEMA_VERSION = 1
DB_ENV = "EDGEVIT_RESULTS_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS edgevit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    created TEXT NOT NULL,
    model TEXT,
    target TEXT,
    precision TEXT,
    runtime TEXT,
    artifact TEXT,
    resolution INTEGER,
    host TEXT,
    edgevit_version TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_kind_model ON runs (kind, model);
"""

_COLUMNS = ("model", "target", "precision", "runtime", "artifact", "resolution")


def default_db_path() -> Path:
    """``$EDGEVIT_RESULTS_DB``, else ``$XDG_CACHE_HOME/edgevit/results.sqlite`` (``~/.cache``)."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "edgevit" / "results.sqlite"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    """What machine a run happened on (name, OS, CPU, cores, Python)."""
    return {
        "host": platform.node(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class Run:
    """One stored run."""

    id: int
    kind: str
    created: str
    model: str | None
    target: str | None
    precision: str | None
    runtime: str | None
    artifact: str | None
    resolution: int | None
    host: str | None
    edgevit_version: str | None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "created": self.created,
            "model": self.model,
            "target": self.target,
            "precision": self.precision,
            "runtime": self.runtime,
            "artifact": self.artifact,
            "resolution": self.resolution,
            "host": self.host,
            "edgevit_version": self.edgevit_version,
            "data": dict(self.data),
        }

    @property
    def folder(self) -> str | None:
        """The working folder the run was recorded from (None for runs stored before edgevit 0.x
        recorded it)."""
        value = self.data.get("recorded_in")
        return str(value) if value else None


class ResultsStore:
    """An append-only SQLite file of runs. Use as a context manager (or call :meth:`close`)."""

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        if not create and not self.path.exists():
            raise ConfigError(f"no results database at {self.path}; run profile/bench/eval/export first or pass --db")
        if self.path.is_dir():
            raise ConfigError(f"{self.path} is a folder; --db needs a file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=30)
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM edgevit_meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO edgevit_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._conn.commit()
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} was written by a newer edgevit (schema {row[0]} > {SCHEMA_VERSION}); upgrade edgevit"
                )
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path} is not an edgevit results database ({exc}); pass another --db") from None
        except OSError as exc:
            raise ConfigError(f"cannot open results database {self.path}: {exc.strerror or exc}") from None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def add(self, kind: str, data: Mapping[str, Any], **columns: Any) -> int:
        """Append one run of ``kind`` with its full ``data``; ``columns`` fill the indexed fields."""
        return self.add_many(kind, [(data, columns)])[0]

    def add_many(self, kind: str, items: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[int]:
        """Append several runs of ``kind`` in one transaction: ``(data, columns)`` pairs."""
        if kind not in KINDS:
            raise ConfigError(f"unknown result kind {kind!r}; one of {', '.join(KINDS)}")
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        host = platform.node()
        try:
            with self._conn:
                return [self._insert(kind, created, host, data, columns) for data, columns in items]
        except sqlite3.Error as exc:  # full disk, locked past the timeout, read-only, damaged
            raise ConfigError(f"cannot write to results database {self.path}: {exc}") from None

    def _insert(self, kind: str, created: str, host: str, data: Mapping[str, Any], columns: Mapping[str, Any]) -> int:
        unknown = set(columns) - set(_COLUMNS)
        if unknown:
            raise ConfigError(f"unknown result column(s) {sorted(unknown)}; columns: {', '.join(_COLUMNS)}")
        values = [columns.get(c) for c in _COLUMNS]
        if values[4] is not None:
            values[4] = str(values[4])
        cur = self._conn.execute(
            "INSERT INTO runs (kind, created, model, target, precision, runtime, artifact, resolution,"
            " host, edgevit_version, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, created, *values, host, __version__,
             json.dumps({"recorded_in": _cwd(), **dict(data)}, default=str)),
        )
        return int(cur.lastrowid)

    def runs(self, kind: str | None = None, model: str | None = None, folder: str | os.PathLike | None = None) -> list[Run]:
        """Stored runs, oldest first, optionally of one ``kind``, ``model`` and/or working ``folder``."""
        sql = "SELECT id, kind, created, model, target, precision, runtime, artifact, resolution, host, edgevit_version, data FROM runs"
        where, params = [], []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        out = []
        for row in self._conn.execute(sql, params):
            try:
                data = json.loads(row[11])
            except ValueError:
                data = {"unreadable": row[11][:200]}
            out.append(Run(*row[:11], data=data))
        if folder is not None:
            wanted = os.path.realpath(os.fspath(folder))
            out = [r for r in out if r.folder and os.path.realpath(r.folder) == wanted]
        return out

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the folder was deleted under us
        return None


def describe_store(runs: Sequence[Run]) -> str:
    """What a set of runs holds, in one line: counts by kind, dates, hosts and working folders."""
    if not runs:
        return "no runs"
    counts = ", ".join(f"{sum(r.kind == k for r in runs)} {k}" for k in KINDS if any(r.kind == k for r in runs))
    first, last = min(r.created for r in runs)[:10], max(r.created for r in runs)[:10]
    hosts = sorted({r.host for r in runs if r.host})
    folders = sorted({r.folder for r in runs if r.folder})
    when = first if first == last else f"{first} to {last}"
    where = f"{len(hosts)} host(s)" if len(hosts) != 1 else f"host {hosts[0]}"
    text = f"{len(runs)} runs ({counts}), {when}, {where}"
    if len(folders) > 1:
        text += f", recorded from {len(folders)} folders"
    elif folders:
        text += f", recorded in {folders[0]}"
    return text


def check_database(path: str | os.PathLike | None = None) -> Path:
    """Raise :class:`ConfigError` unless the results database at ``path`` (default:
    :func:`default_db_path`) can be opened and written. A missing file is not created; its
    folder (or the nearest existing one) must be writable. Commands call this before any work
    when the user named a database, so a typo does not cost a finished run its record."""
    p = Path(path).expanduser() if path is not None else default_db_path()
    if p.exists():
        with ResultsStore(p) as store:
            try:
                store._conn.execute("BEGIN IMMEDIATE")  # takes the write lock, writes nothing
                store._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise ConfigError(f"results database {p} cannot be written ({exc}); pass another --db, "
                                  f"or --no-record") from None
        return p
    existing = next(d for d in (p.parent, *p.parent.parents) if d.exists())
    if not existing.is_dir():
        raise ConfigError(f"cannot create results database {p}: {existing} is a file, not a folder; "
                          f"pass another --db, or --no-record")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create results database {p}: folder {existing} is not writable; "
                          f"pass another --db, or --no-record")
    return p


def _store(db: str | os.PathLike | ResultsStore | None) -> tuple[ResultsStore, bool]:
    if isinstance(db, ResultsStore):
        return db, False
    return ResultsStore(db), True


def _record(kind: str, items: list[tuple[Mapping[str, Any], Mapping[str, Any]]], db: Any) -> list[int]:
    store, owned = _store(db)
    try:
        return store.add_many(kind, items)
    finally:
        if owned:
            store.close()


def record_profile(results: Sequence[Any], db: str | os.PathLike | ResultsStore | None = None) -> list[int]:
    """Store :class:`edgevit.measure.profile.ProfileResult` s (one run each)."""
    items = []
    for r in results:
        d = r.to_dict()
        items.append((d, {"model": r.model, "resolution": int(r.resolution[0])}))
    return _record("profile", items, db)


def record_bench(
    rows: Sequence[Mapping[str, Any]],
    machine: Mapping[str, Any] | None = None,
    db: str | os.PathLike | ResultsStore | None = None,
) -> list[int]:
    """Store bench rows (dicts as :func:`edgevit.measure.bench.bench` returns them) with the machine facts."""
    items = []
    for row in rows:
        d = {**row, "machine": dict(machine or {})}
        items.append(
            (
                d,
                {
                    "model": row.get("model"),
                    "target": row.get("target"),
                    "precision": row.get("precision"),
                    "runtime": row.get("runtime"),
                    "artifact": row.get("artifact"),
                    "resolution": row.get("resolution"),
                },
            )
        )
    return _record("bench", items, db)


def record_eval(rows: Sequence[Mapping[str, Any]], db: str | os.PathLike | ResultsStore | None = None) -> list[int]:
    """Store eval rows (dicts as :func:`edgevit.measure.evaluate.evaluate` returns them)."""
    items = [
        (
            dict(row),
            {
                "model": row.get("model"),
                "target": row.get("target"),
                "precision": row.get("precision"),
                "runtime": row.get("runtime"),
                "artifact": row.get("artifact"),
                "resolution": row.get("resolution"),
            },
        )
        for row in rows
    ]
    return _record("eval", items, db)


def record_export(result: Any, db: str | os.PathLike | ResultsStore | None = None) -> int:
    """Store an :class:`edgevit.converters.export.ExportResult` (or its ``to_dict()``)."""
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return _record(
        "export",
        [(d, {"model": d.get("model"), "target": d.get("target"), "precision": d.get("precision"), "artifact": d.get("path")})],
        db,
    )[0]
