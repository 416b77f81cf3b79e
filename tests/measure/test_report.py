"""The results store and the HTML report, opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgevit.errors import ConfigError
from edgevit.measure.report import render_report, write_report
from edgevit.measure.results import ResultsStore, default_db_path, record_bench, record_eval, record_export, record_profile

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def bench_row(model: str, target: str, precision: str, median: float, **extra) -> dict:
    return {
        "name": f"{model}_{target}_{precision}.{target}", "artifact": f"/x/{model}_{target}_{precision}.{target}",
        "model": model,
        "target": target, "precision": precision, "runtime": target, "resolution": 224, "threads": 2,
        "size_mb": 5.1, "load_ms": 30.0, "cold_start_ms": 310.0, "median_ms": median, "p90_ms": median * 1.2,
        "throughput": 1000 / median, "peak_rss_mb": 52.0, "gmacs": 0.4, "efficiency_pct": 12.5, **extra,
    }


class _DomTables(HTMLParser):
    """Rows (as lists of cell texts) of every <table id=...> in the DOM, plus element attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self.svg_text: list[str] = []
        self._table = self._row = self._cell = None
        self._in_svg = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.attrs[a["id"]] = a
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "svg":
            self._in_svg += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "svg":
            self._in_svg -= 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_svg:
            self.svg_text.append(data)


@pytest.fixture
def filled_db(tmp_path):
    from edgevit.measure.profile import profile_model

    db = tmp_path / "results.sqlite"
    profiles = [profile_model(m, r) for m in ("efficientvit_b0", "vit_tiny_window") for r in (224, 448)]
    record_profile(profiles, db=db)
    record_bench(
        [
            bench_row("mobilevit_xxs", "tflite", "fp32", 18.0, memory_ratio=1.1, bare_peak_rss_mb=47.0),
            bench_row("mobilevit_xxs", "onnx", "fp32", 21.0),
            bench_row("deit_tiny_patch16_224", "tflite", "int8", 12.0, memory_ratio=1.4),
        ],
        {"gemm_peak_gflops": 150.0, "cpu": "test cpu"},
        db=db,
    )
    record_eval(
        [{"name": "vit_fmnist_tiny_tflite_fp32.tflite", "model": "vit_fmnist_tiny", "target": "tflite",
          "precision": "fp32", "runtime": "tflite", "dataset": "fashion-mnist", "split": "test", "n": 100,
          "top1": 0.86, "top5": 0.99, "weights": "vit_fmnist_tiny.safetensors"}],
        db=db,
    )
    record_export(
        {"path": "/x/mobilevit_xxs_tflite_fp32.tflite", "model": "mobilevit_xxs", "target": "tflite",
         "precision": "fp32", "bytes": 5_100_000, "seconds": 41.0, "verification": {"passed": True,
         "summary": "PASS on 7 real images"}, "delegation": None, "fallbacks": []},
        db=db,
    )
    return db


def test_store_round_trip_and_errors(tmp_path, monkeypatch):
    db = tmp_path / "a" / "r.sqlite"
    with ResultsStore(db) as store:
        rid = store.add("bench", {"median_ms": 1.5, "nested": {"x": [1, 2]}}, model="m", target="tflite")
        (run,) = store.runs("bench")
        assert run.id == rid and run.model == "m"
        assert run.data == {"median_ms": 1.5, "nested": {"x": [1, 2]}, "recorded_in": os.getcwd()}
        assert run.folder == os.getcwd()
        assert store.runs("eval") == [] and store.count() == 1
        with pytest.raises(ConfigError):
            store.add("nonsense", {})
        with pytest.raises(ConfigError):
            store.add("bench", {}, colour="red")
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="not an edgevit results database"):
        ResultsStore(bad)
    with pytest.raises(ConfigError, match="no results database"):
        ResultsStore(tmp_path / "missing.sqlite", create=False)
    monkeypatch.setenv("EDGEVIT_RESULTS_DB", str(tmp_path / "env.sqlite"))
    assert default_db_path() == tmp_path / "env.sqlite"
    monkeypatch.delenv("EDGEVIT_RESULTS_DB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_db_path() == tmp_path / "cache" / "edgevit" / "results.sqlite"
    # A database written by a newer edgevit is refused, not misread.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE edgevit_meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(ConfigError, match="newer edgevit"):
        ResultsStore(db)


def test_report_is_self_contained_and_escaped(filled_db):
    record_bench([bench_row("<script>alert(1)</script>", "tflite", "fp32", 5.0)], db=filled_db)
    page = render_report(filled_db)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Nothing to fetch: no external scripts, stylesheets, images or fonts.
    for needle in ('src="http', "src='http", 'href="http', "@import", "url(", "<link"):
        assert needle not in page
    assert page.count("<svg") >= 3  # latency bars, MACs and memory vs resolution


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_in_headless_chromium(filled_db, tmp_path, capsys):
    from edgevit.cli import main

    out = tmp_path / "report.html"
    assert main(["report", "--db", str(filled_db), "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["runs"] == {"profile": 4, "bench": 3, "eval": 1, "export": 1}
    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _DomTables()
    dom.feed(proc.stdout)
    # The inline script ran in the browser: every table became sortable and the status line changed.
    assert dom.attrs["rendered"].get("data-tables") == str(len(dom.tables)) == "5"
    assert all(dom.attrs[t].get("data-sortable") == "ready" for t in dom.tables)

    def rows(table: str) -> list[list[str]]:
        return dom.tables[table][1:]  # without the header row

    # One row per artifact: the bench and export runs of one file meet in one row.
    overview = {(r[1], r[2], r[3]) for r in rows("overview")}
    assert overview == {
        ("deit_tiny_patch16_224", "tflite", "int8"),
        ("mobilevit_xxs", "onnx", "fp32"),
        ("mobilevit_xxs", "tflite", "fp32"),
        ("vit_fmnist_tiny", "tflite", "fp32"),
    }
    by_key = {(r[1], r[2], r[3]): r for r in rows("overview")}
    assert by_key[("mobilevit_xxs", "tflite", "fp32")][0] == "mobilevit_xxs_tflite_fp32.tflite"
    assert by_key[("mobilevit_xxs", "tflite", "fp32")][6] == "18.00"  # median ms
    assert by_key[("mobilevit_xxs", "tflite", "fp32")][-1] == "pass"  # export verification
    assert by_key[("vit_fmnist_tiny", "tflite", "fp32")][9] == "86.00"  # top-1 %
    assert by_key[("vit_fmnist_tiny", "tflite", "fp32")][4] == "vit_fmnist_tiny.safetensors"  # weights
    assert sorted(r[2] for r in rows("bench")) == ["deit_tiny_patch16_224", "mobilevit_xxs", "mobilevit_xxs"]
    assert {(r[0], r[2]) for r in rows("profile")} == {
        ("efficientvit_b0", "224"), ("efficientvit_b0", "448"), ("vit_tiny_window", "224"), ("vit_tiny_window", "448"),
    }
    assert [r[2] for r in rows("eval")] == ["vit_fmnist_tiny"]
    assert [r[1] for r in rows("exports")] == ["mobilevit_xxs"]
    svg = " ".join(dom.svg_text)
    assert "efficientvit_b0 (linear)" in svg and "mobilevit_xxs_onnx_fp32.onnx (onnx)" in svg
    text = proc.stdout
    assert "memory 1.100x" in text and "memory 1.400x" in text and "FAIL" in text


def test_write_report_cli_without_db_is_an_error(tmp_path):
    from edgevit.cli import main

    assert main(["report", "--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "r.html")]) == 1
    assert not (tmp_path / "r.html").exists()
    path = write_report(tmp_path / "sub" / "r.html", ResultsStore(tmp_path / "empty.sqlite"))
    assert "no runs recorded" in Path(path).read_text()


def test_report_says_what_the_database_holds_and_here_keeps_this_folder(tmp_path, monkeypatch, capsys):
    """The default database collects every folder's runs: the report says so, --here keeps one."""
    from edgevit.cli import main

    db = tmp_path / "shared.sqlite"
    for project, model in (("project-a", "mobilevit_xxs"), ("project-b", "deit_tiny_patch16_224")):
        (tmp_path / project).mkdir()
        monkeypatch.chdir(tmp_path / project)
        record_bench([bench_row(model, "tflite", "fp32", 10.0)], {}, db=db)
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "all.html")]) == 0
    out = capsys.readouterr().out
    assert f"database {db}: 2 runs (2 bench)" in out and "recorded from 2 folders" in out
    assert "mixes runs from 2 working folders; --here keeps this folder's" in out
    page = (tmp_path / "all.html").read_text()
    assert "mobilevit_xxs" in page and "deit_tiny_patch16_224" in page and "mixes runs from 2 working folders" in page
    assert main(["report", "--db", str(db), "--here", "--out", str(tmp_path / "b.html")]) == 0
    out = capsys.readouterr().out
    assert f"shown: 1 runs (1 bench)" in out and str(tmp_path / "project-b") in out
    page = (tmp_path / "b.html").read_text()
    assert "deit_tiny_patch16_224" in page and "mobilevit_xxs" not in page and "mixes runs" not in page
