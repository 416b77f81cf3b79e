"""Quantization-aware training: BatchNorm folding, quantizer choice, and a QAT int8 TFLite artifact
that exports, carries its metadata, and is at least as accurate on real test images as PT2E
post-training quantization of the same model (minus a stated margin)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgevit.errors import ConfigError  # noqa: E402
from edgevit.compress.qat import fold_batchnorm, make_quantizer, qat  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_fold_batchnorm_keeps_the_function():
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_fmnist_tiny")  # conv stem: Conv2d + BatchNorm2d pairs
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(x), expected, atol=1e-5)  # fp32 rounding of the folded weights


def test_quantizers():
    with pytest.raises(ConfigError, match="QAT targets"):
        make_quantizer("coreml", qat=True)
    pytest.importorskip("litert_torch")
    q = make_quantizer("tflite", qat=True)
    assert q.global_config.is_qat and q.STATIC_QAT_ONLY_OPS == []


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_qat_tflite_int8_is_as_accurate_as_ptq(tmp_path, trained_tiny):
    pytest.importorskip("litert_torch")
    from edgevit.models import create_model
    from edgevit.runtimes import load

    weights = trained_tiny
    result = qat("vit_fmnist_tiny", "fashion-mnist", weights=weights, targets=("tflite",), epochs=1,
                 train_limit=1500, test_limit=1000, calibration_images=256, out=tmp_path, threads=2)
    q, p = result.artifact("tflite", "qat"), result.artifact("tflite", "ptq")
    # The margin: QAT may trail PTQ by at most 1 point on these 1,000 real test images (one short
    # QAT epoch; measured: QAT equal to or above PTQ).
    assert q.top1 >= p.top1 - 0.01, (q.top1, p.top1)
    assert q.top1 >= result.float_top1 - 0.03  # int8 stays close to the float model
    assert q.top1 > 0.6  # and far above chance (10%)
    runtime = load(q.path)
    assert runtime.metadata.precision == "int8"
    assert runtime.metadata.extra["quantization"]["method"] == "qat"
    assert runtime._input["dtype"].__name__ == "int8"  # a real int8 graph, not float with fake quant
    params = sum(t.numel() for t in create_model("vit_fmnist_tiny").parameters())
    assert q.bytes < 0.6 * 4 * params  # int8 weights: well under the fp32 weights' bytes
