"""edgevit.measure.quantization: precision variants side by side (size, interleaved speed, photos,
top-1 on a labelled split), the relaxed fidelity search, the ExecuTorch kernel classes."""

from __future__ import annotations

import json
import math

import pytest

from edgevit.data import FASHION_MNIST_APT, FASHION_MNIST_DIR
from edgevit.errors import ConfigError, ConversionError, DataError
from edgevit.measure import quantization as qz

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} ({FASHION_MNIST_APT})",
)


def test_variants_follow_each_converters_precisions():
    from edgevit.converters.base import get_converter

    for target in ("tflite", "onnx", "executorch", "coreml"):
        variants = qz.target_variants(target)
        precisions = get_converter(target).precisions
        assert [qz.split_variant(v)[0] for v in variants if v != "int8-naive"] == [
            p for p in qz.VARIANTS if p in precisions]
        assert ("int8-naive" in variants) == ("int8" in precisions)
    assert "fp16" not in qz.target_variants("executorch")
    assert qz.split_variant("int8-naive") == ("int8", {"recipe": "naive"})
    assert qz.split_variant("int8") == ("int8", {})


def test_kernel_classes():
    assert qz.kernel_class("Fully Connected (NC, QS8, QC8W)") == "int8"
    assert qz.kernel_class("Batch Matrix Multiply (NC, F32)") == "fp32"
    assert qz.kernel_class("Convert (NC, F32, QS8)") == "convert"
    assert qz.kernel_class("Add (ND)") == "elementwise"
    assert qz.kernel_class("Method::execute") == "total"
    assert set(qz.KERNEL_CLASSES) == {"int8", "fp32", "elementwise", "convert", "total"}


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"target": "executorch", "precisions": ["fp16"]}, ConfigError, "executorch has no precision 'fp16'"),
    ({"target": "tflite", "precisions": ["int9"]}, ConfigError, "did you mean int8"),
    ({"target": "tflite", "precisions": ["int8"]}, ConfigError, "needs calibration images"),
    ({"target": "tflite", "options": {"recipe": "naive"}}, ConfigError, "int8-naive"),
    ({"target": "tflite", "options": {"max_dorp": 1}}, ConfigError, "did you mean max_drop"),
    ({"target": "coreml"}, ConfigError, "cannot run on this machine"),
    ({"target": "tflite", "data": "no-such-dataset"}, DataError, "neither a known dataset"),
    ({"target": "tflite", "runs": -1}, ConfigError, "runs"),
])
def test_bad_input_fails_before_any_export(tmp_path, kwargs, error, words):
    out = tmp_path / "out"
    with pytest.raises(error, match=words):
        qz.compare_precisions("vit_fmnist_tiny", pretrained=True, out=out, **kwargs)
    assert not out.exists()


def test_default_variants_without_calibration_leave_int8_out():
    variants, notes = qz._choose_variants("onnx", None, calibrated=False)  # noqa: SLF001 - the module's own helper
    assert variants == ["fp32", "fp16", "int8-dynamic"] and "calibration" in notes[0]
    variants, notes = qz._choose_variants("onnx", "int8,fp16", calibrated=True)  # noqa: SLF001
    assert variants == ["fp32", "int8", "fp16"] and not notes


def _check_rows(table: qz.PrecisionTable) -> None:
    """Every row's derived fields agree with the measured ones."""
    fp32 = table.row("fp32")
    assert table.rows[0] is fp32 and fp32.ok
    assert fp32.size_vs_fp32 == 1.0 and fp32.speedup_vs_fp32 == 1.0
    assert fp32.photos["passed"] and fp32.photos["top1_agreement"] == 1.0 and fp32.photos["cosine_min"] > 0.9999
    for r in table.rows:
        assert r.ok, r.error
        assert r.bytes > 0 and r.size_vs_fp32 == pytest.approx(r.bytes / fp32.bytes)
        assert r.latency_ms > 0 and r.speedup_vs_fp32 == pytest.approx(fp32.latency_ms / r.latency_ms)
        assert r.drop_points == pytest.approx(100 * (table.float_top1 - r.top1))
        assert 0.0 <= r.top1 <= 1.0 and 0.0 <= r.test_agreement <= 1.0
        assert r.photos["images"] >= 20
    assert table.timing["runs"] == 20 and table.timing["interleaved"] == sorted(r.variant for r in table.rows)


@pytest.fixture(scope="module")
def onnx_table(tmp_path_factory):
    """vit_fmnist_tiny (shipped weights) on ONNX: fp32 and int8-dynamic, 200 test images."""
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} ({FASHION_MNIST_APT})")
    out = tmp_path_factory.mktemp("quantize") / "out"
    table = qz.compare_precisions("vit_fmnist_tiny", "onnx", ["int8-dynamic"], pretrained=True, data="fashion-mnist",
                                  limit=200, out=out, runs=20)
    return table, out


@needs_fmnist
@pytest.mark.slow
def test_onnx_fp32_and_int8_dynamic_on_fashion_mnist(onnx_table):
    table, out = onnx_table
    assert [r.variant for r in table.rows] == ["fp32", "int8-dynamic"]
    _check_rows(table)
    assert table.dataset["n"] == 200 and table.dataset["split"] == "test"
    # The float model is trained (about 90% on the test split); the fp32 artifact matches it.
    assert table.float_top1 > 0.8
    assert table.row("fp32").test_agreement >= 0.995
    # Dynamic int8 stores the MatMul/Gemm weights in int8 (a quarter of their fp32 bytes); the rest
    # of this 0.6 MB model (position embeddings, norms, biases, the graph itself) stays as it was.
    assert 0.25 < table.row("int8-dynamic").size_vs_fp32 < 0.75
    assert abs(table.row("int8-dynamic").drop_points) < 3.0
    # The artifacts are kept under out, named by variant, and the eval rows point at them.
    assert sorted(p.name for p in out.iterdir()) == ["vit_fmnist_tiny_onnx_fp32.onnx",
                                                      "vit_fmnist_tiny_onnx_int8-dynamic.onnx"]
    assert {e["artifact"] for e in table.evaluation[1:]} == {r.path for r in table.rows}
    d = json.loads(json.dumps(table.to_dict()))
    assert d["rows"][1]["variant"] == "int8-dynamic" and d["float_top1"] == table.float_top1
    md = qz.precision_table_markdown(table)
    assert "| int8-dynamic |" in md and "interleaved" in md and "200 images" in md
    headers, rows = qz.format_precision_table(table)
    assert len(rows) == 2 and all(len(r) == len(headers) for r in rows)
    assert rows[0][headers.index("speed-up")] == "1.00x"


@needs_fmnist
@pytest.mark.slow
def test_existing_artifact_stops_the_run_and_nothing_new_is_left(onnx_table, tmp_path):
    """The second variant's artifact is in the way: the run fails and removes the fp32 one it wrote."""
    table, _ = onnx_table
    out = tmp_path / "out"
    out.mkdir()
    blocker = out / "vit_fmnist_tiny_onnx_int8-dynamic.onnx"
    blocker.write_bytes(b"mine")
    from edgevit.errors import OutputExistsError

    with pytest.raises(OutputExistsError):
        qz.compare_precisions("vit_fmnist_tiny", "onnx", ["int8-dynamic"], pretrained=True, out=out, runs=0)
    assert sorted(p.name for p in out.iterdir()) == [blocker.name] and blocker.read_bytes() == b"mine"


@needs_fmnist
@pytest.mark.slow
def test_relax_records_the_missed_target(monkeypatch, tmp_path):
    """ViT-aware int8 on TFLite; the converter is made to miss max_drop < 1: without relax the run
    fails (nothing left under out), with relax the 1-point mix is measured and the miss recorded."""
    import importlib

    export_module = importlib.import_module("edgevit.converters.export")  # the module (the package exports the function)
    real_export = export_module.export
    asked = []

    def strict_export(model, target, precision, *args, options=None, **kwargs):
        asked.append((precision, dict(options or {})))
        if precision == "int8" and (options or {}).get("recipe") != "naive" and options["max_drop"] < 1.0:
            raise ConversionError(f"int8 could not meet the fidelity target (top-1 drop <= {options['max_drop']})")
        return real_export(model, target, precision, *args, options=options, **kwargs)

    monkeypatch.setattr(export_module, "export", strict_export)
    kwargs = dict(pretrained=True, calibration="fashion-mnist", options={"max_drop": 0.5, "search_images": 64},
                  runs=0, threads=1)
    out = tmp_path / "strict"
    with pytest.raises(ConversionError, match="could not meet"):
        qz.compare_precisions("vit_fmnist_tiny", "tflite", ["int8"], out=out, **kwargs)
    assert not out.exists()

    table = qz.compare_precisions("vit_fmnist_tiny", "tflite", ["int8"], relax=True, data="fashion-mnist", limit=100,
                                  **kwargs)
    row = table.row("int8")
    assert row.ok and row.max_drop_used == 1.0 and row.min_agreement_used == 0.98
    assert [m["max_drop"] for m in row.missed] == [0.5] and "could not meet" in row.missed[0]["error"]
    assert row.kept_out_of_int8 is not None and row.float_by_design and row.search["met"] in (True, False)
    assert row.size_vs_fp32 < 0.5 and not math.isnan(row.drop_points)
    assert table.fidelity_target == {"max_drop": 0.5, "min_agreement": 0.98}
    assert not [o for p, o in asked if p == "fp32" and set(o) & {"max_drop", "search_images"}]
    assert all(o.get("compare_fp32") is False and o.get("speed_check") is False for p, o in asked if p != "fp32")
    assert any("max_drop=0.5" in n and "not met" in n for n in qz.describe_lines(table)[1])


@pytest.mark.slow
def test_executorch_kernel_profile_of_the_fp32_program():
    pytest.importorskip("executorch.devtools")
    profiles = qz.profile_precisions("vit_fmnist_tiny", ("fp32",), pretrained=True, runs=5)
    assert list(profiles) == ["fp32"]
    p = profiles["fp32"]
    assert p.runs == 5 and p.threads == 1 and p.artifact.endswith(".pte")
    # Every kernel event falls in one class and the classes add up to the events.
    assert sum(p.by_class_ms.values()) == pytest.approx(sum(p.kernels_ms.values()))
    assert set(p.by_class_ms) <= set(qz.KERNEL_CLASSES) and "int8" not in p.by_class_ms and "convert" not in p.by_class_ms
    assert p.by_class_ms["fp32"] > 0 and p.program_ms == pytest.approx(p.by_class_ms["fp32"] + p.by_class_ms.get("elementwise", 0))
    assert list(p.kernels_ms.values()) == sorted(p.kernels_ms.values(), reverse=True)
    assert any("F32" in k for k in p.kernels_ms)
