"""edgevit bench: every artifact (and torch eager) in one table, in every format; GEMM peak and
efficiency; the memory and cold-start targets; early errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from edgevit.measure.bench import BenchReport, _stats, format_bench
from edgevit.errors import ArtifactError, ConfigError
from edgevit.models import get_spec


def shared_artifact(tmp_path_factory, target: str) -> Path:
    """vit_fmnist_tiny exported once per test session (shared with test_eval through basetemp)."""
    from edgevit.converters import export

    folder = tmp_path_factory.getbasetemp() / "edgevit-shared-artifacts"
    folder.mkdir(exist_ok=True)
    from edgevit.converters.base import get_converter

    path = folder / f"vit_fmnist_tiny_{target}_fp32{get_converter(target).suffix}"
    if not path.exists():
        weights = Path(__file__).resolve().parents[2] / "models" / "weights" / "vit_fmnist_tiny.safetensors"
        export("vit_fmnist_tiny", target, out=path, pretrained=weights.is_file(), verify=False)
    return path


def test_stats_median_and_p90():
    s = _stats([0.010, 0.002, 0.003, 0.001, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009])
    assert s["median_ms"] == pytest.approx(5.5)
    # numpy's percentile (linear interpolation), the one definition bench, the Pi app and the
    # benchmarks share: 9.0 + 0.1 * (10.0 - 9.0)
    assert s["p90_ms"] == pytest.approx(9.1)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(10.0)
    assert s["throughput"] == pytest.approx(1 / 0.0055)


def test_errors_before_any_work(tmp_path):
    from edgevit.measure.bench import bench

    bad = tmp_path / "model.xyz"
    bad.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="no runtime loads"):
        bench([bad])
    with pytest.raises(ArtifactError, match="no such artifact"):
        bench([tmp_path / "missing.tflite"])
    with pytest.raises(ConfigError):
        bench([])
    with pytest.raises(ConfigError):
        bench([bad], threads=0)


@pytest.mark.slow
def test_bench_every_artifact_torch_gemm_and_targets(tmp_path_factory, tmp_path, capsys):
    from edgevit.cli import main
    from edgevit.converters.base import available_targets
    from edgevit.measure.results import ResultsStore

    artifacts = [shared_artifact(tmp_path_factory, "tflite")]
    if "onnx" in available_targets():  # a second runtime, when its helper has landed
        try:
            artifacts.append(shared_artifact(tmp_path_factory, "onnx"))
        except Exception as exc:  # noqa: BLE001 - another helper's converter; bench is what is tested
            print(f"onnx export unavailable: {exc}")
    db = tmp_path / "results.sqlite"
    capsys.readouterr()  # the exports' converter chatter
    rc = main(["bench", *map(str, artifacts), "--torch", "vit_fmnist_tiny", "--torch-pretrained", "--threads", "2",
               "--warmup", "1", "--runs", "5", "--db", str(db), "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["torch_pretrained"] is True
    names = [r["name"] for r in data["rows"]]
    assert names == [a.name for a in artifacts] + ["torch:vit_fmnist_tiny"]
    for row in data["rows"]:
        assert 0 < row["median_ms"] <= row["p90_ms"] <= row["max_ms"]
        assert row["throughput"] > 0 and row["load_ms"] > 0 and row["cold_start_ms"] > row["load_ms"]
        assert row["peak_rss_mb"] > row["rss_start_mb"] > 0
        assert row["size_bytes"] > 100_000
        assert row["gmacs"] == pytest.approx(get_spec("vit_fmnist_tiny").gmacs, rel=0.01)
        assert 0 < row["efficiency_pct"]
        assert row["model"] == "vit_fmnist_tiny"
    gemm = data["machine"]["gemm"]
    assert gemm["peak_gflops"] >= gemm["numpy_gflops"] > 1.0  # any real CPU does > 1 GFLOP/s
    tfl = data["rows"][0]
    assert tfl["runtime"] == "tflite" and tfl["bare_peak_rss_mb"] > 10 and tfl["memory_ratio"] > 0.5
    kinds = {(t["artifact"], t["target"]) for t in data["targets"]}
    assert kinds == {(artifacts[0].name, "memory"), (artifacts[0].name, "cold start")}
    with ResultsStore(db) as store:
        assert [r.data["name"] for r in store.runs("bench")] == names
    # The human formats carry every artifact too.
    report = BenchReport(**data)
    table = format_bench(report, "table")
    md = format_bench(report, "md")
    rows = list(csv.DictReader(io.StringIO(format_bench(report, "csv"))))
    for name in names:
        assert name in table and f"| {name} |" in md
    assert [r["name"] for r in rows] == names
    assert "GEMM peak" in table and "target memory" in table and "target cold start" in md


def test_format_rejects_unknown():
    report = BenchReport(rows=[], machine={}, settings={"threads": 1, "warmup": 0, "runs": 1, "image": "x"})
    with pytest.raises(ConfigError):
        format_bench(report, "xml")


def _row(name: str, artifact: str | None, **extra) -> dict:
    row = {"name": name, "artifact": artifact, "runtime": "tflite", "precision": "int8", "size_mb": 12.34,
           "load_ms": 20.0, "cold_start_ms": 300.0, "median_ms": 4.2, "p90_ms": 5.1, "throughput": 238.1,
           "peak_rss_mb": 80.0, "rss_delta_mb": 30.0, "gmacs": 1.25, "efficiency_pct": 55.0,
           "top1_label": "Egyptian cat, a very long label indeed"}
    return {**row, **extra}


def test_default_table_fits_120_columns_and_wide_shows_everything():
    long = "deit_tiny_distilled_patch16_224_tflite_int8_with_a_long_suffix.tflite"
    rows = [_row(long, f"out/{long}"), _row("torch:deit_tiny_patch16_224", None, speedup_vs_torch=None)]
    report = BenchReport(rows=rows, machine={"cpu": "x", "cores": 2},
                         settings={"threads": 2, "warmup": 1, "runs": 2, "image": "chelsea.png"})
    table = format_bench(report, "table")
    assert max(len(line) for line in table.splitlines()) <= 120, table
    header = table.splitlines()[0].split()
    assert "top-1" in header and "cold" not in header and "GMACs" not in header
    assert "vs" not in header  # no row has a speed-up: the column is left out
    assert "deit_tiny_disti" in table and "~" in table  # shortened in the middle, still recognisable
    wide = format_bench(report, "table", wide=True)
    assert "cold start ms" in wide and "GMACs" in wide and long in wide
    assert "cold_start_ms" in format_bench(report, "csv").splitlines()[0]


def test_two_artifacts_of_one_name_stay_two_rows():
    from edgevit._text import distinct_names

    assert distinct_names(["a/x/m.onnx", "b/x/m.onnx", "c/n.onnx"]) == ["a/x/m.onnx", "b/x/m.onnx", "n.onnx"]
    assert distinct_names(["out/m.tflite", "rnd/m.tflite"]) == ["out/m.tflite", "rnd/m.tflite"]
    assert distinct_names(["m.tflite"]) == ["m.tflite"]
