"""The speed check: every fp16 / int8-dynamic / int8 export times itself against its fp32 twin with
the target's runtime and records both figures in the export result and in the artifact's metadata;
a slower artifact is a warning naming the cause, and `edgevit export` prints the faster variant's
command. Timings are never asserted (a shared machine decides them): the slower case is forced by
replacing the measured medians."""

from __future__ import annotations

import json

import pytest

from edgevit.converters import _speed
from edgevit.errors import ConfigError
from edgevit.metadata import ArtifactMetadata

MODEL = "vit_fmnist_tiny"


def _check(fp32=10.0, optimized=12.0, **kw) -> _speed.SpeedCheck:
    return _speed.SpeedCheck("int8", "onnx", fp32, optimized, runs=20, threads=2, host="cpu", **kw)


def test_slower_is_beyond_the_noise_margin_and_names_the_faster_variant():
    assert _check(10.0, 12.0).slower and _check(10.0, 12.0).faster_precision == "fp32"
    level = _check(10.0, 10.0 * (1 + _speed.NOISE / 2))
    assert not level.slower and level.faster_precision == "int8"
    d = _check(10.0, 12.0, cause="why").to_dict()
    assert d["fp32_ms"] == 10.0 and d["optimized_ms"] == 12.0 and d["speedup"] == pytest.approx(0.833, abs=1e-3)
    assert d["slower"] is True and d["faster"] == "fp32" and d["cause"] == "why"
    warning = _check(10.0, 12.0, cause="the cause").warning()
    assert "slower than its fp32 twin" in warning and "the cause" in warning and "--precision fp32" in warning


def test_option_is_validated_before_any_work():
    from edgevit.converters import get_converter

    assert _speed.check_option({"speed_check": False}) is False
    for target in ("onnx", "tflite", "executorch"):
        with pytest.raises(ConfigError, match="speed_check must be true or false"):
            get_converter(target).make_config("int8-dynamic", {"speed_check": "maybe"})


def test_onnx_cause_counts_the_requantization_nodes():
    cause = _speed.slower_cause("onnx", "int8", {"op_types": {"QuantizeLinear": 30, "DequantizeLinear": 50, "com.microsoft.QGemm": 12}})
    assert "80 quantize/dequantize nodes" in cause and "12 quantized ops" in cause
    assert "Cast" in _speed.slower_cause("onnx", "fp16", {"op_types": {"Cast": 4}})


def test_metadata_field_is_backward_compatible():
    meta = ArtifactMetadata(model="m", target="onnx", precision="int8", input_size=(28, 28), mean=(0.5,), std=(0.5,),
                            labels=("a", "b"), color_mode="L")
    assert "speed_check" not in json.loads(meta.to_json())  # unmeasured artifacts: the JSON of before
    timed = meta.replace(speed_check=_check().to_dict())
    back = ArtifactMetadata.from_json(timed.to_json())
    assert back.speed_check["fp32_ms"] == 10.0 and back.speed_check["slower"] is True
    with pytest.raises(Exception, match="speed_check"):
        ArtifactMetadata.from_dict({**json.loads(meta.to_json()), "speed_check": [1]})


# ------------------------------------------------------------------------------------------------
# real exports (tiny model, int8-dynamic: no calibration needed)


def _export(target, tmp_path, **options):
    from edgevit.converters import export

    return export(MODEL, target, "int8-dynamic", out=tmp_path, options={"compare_fp32": False, **options})


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "tflite", "executorch"])
def test_export_records_both_figures_in_result_and_metadata(tmp_path, target):
    from edgevit.converters import get_converter
    from edgevit.runtimes import load

    for module in get_converter(target).requires:
        pytest.importorskip(module)
    r = _export(target, tmp_path)
    assert r.verification.passed, r.verification.summary()
    check = r.details["speed_check"]
    assert check["fp32_ms"] > 0 and check["optimized_ms"] > 0 and check["runs"] >= 5
    assert check["runtime"] == target and check["precision"] == "int8-dynamic"
    assert r.details["quantization"]["latency_ms"]["fp32"] == check["fp32_ms"]
    assert load(r.path).metadata.speed_check == check  # travels inside the artifact
    assert [p.name for p in tmp_path.iterdir()] == [r.path.name]  # the fp32 twin is gone


@pytest.mark.slow
def test_slower_artifact_warns_and_the_cli_prints_the_faster_command(tmp_path, monkeypatch, capsys):
    from edgevit.cli import main
    from edgevit.runtimes import load

    pytest.importorskip("onnxruntime")
    # Force the verdict: the optimized artifact measures twice as slow as its twin.
    monkeypatch.setattr(_speed, "_medians", lambda a, b, x, budget, lo, hi: (5.0, 10.0, lo))
    assert main(["export", MODEL, "--target", "onnx", "--precision", "int8-dynamic", "--out", str(tmp_path),
                 "--option", "compare_fp32=false", "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "slower than its fp32 twin" in out and "quantize/dequantize nodes" in out  # the cause, named
    assert f"edgevit export {MODEL} --target onnx --precision fp32 --out {tmp_path}" in out
    meta = load(next(tmp_path.glob("*.onnx"))).metadata
    assert meta.speed_check["slower"] is True and meta.speed_check["faster"] == "fp32"
    assert "quantize/dequantize" in meta.speed_check["cause"]


@pytest.mark.slow
def test_speed_check_can_be_turned_off(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")

    def never(*a, **k):
        raise AssertionError("timed although speed_check=false")

    monkeypatch.setattr(_speed, "_medians", never)
    r = _export("onnx", tmp_path, speed_check=False)
    assert "speed_check" not in r.details
    from edgevit.runtimes import load

    assert load(r.path).metadata.speed_check == {}
