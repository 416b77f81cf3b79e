"""ExecuTorch end to end: export one model of each attention kind through the XNNPACK partitioner,
verify on real photos through the ExecuTorch runtime, delegation report, metadata round trip,
integrity checks on broken artifacts, and the process-wide thread pool guard."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("executorch", reason="ExecuTorch is not installed (pip install 'edgevit[executorch]')")

from edgevit.converters import export  # noqa: E402
from edgevit.errors import ArtifactError, ConfigError  # noqa: E402
from edgevit.runtimes import Classifier, load  # noqa: E402

# One model per attention kind (timm and edgevit implementations).
KINDS = {
    "global": "vit_fmnist_tiny",
    "conv-hybrid": "mobilevit_xxs",
    "linear": "efficientvit_b0",
    "windowed": "vit_tiny_window",
    "cnn": "mobilenetv3_small_100",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, has_fmnist_weights):
    out = tmp_path_factory.mktemp("executorch")
    results = {}
    for kind, name in KINDS.items():
        pretrained = name == "vit_fmnist_tiny" and has_fmnist_weights
        results[kind] = export(name, "executorch", out=out, pretrained=pretrained)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_fp32_parity_on_real_photos(exported, kind):
    r = exported[kind]
    v = r.verification
    assert r.path.suffix == ".pte" and r.path.is_file() and r.bytes == r.path.stat().st_size > 0
    assert v.ran and v.passed, v.summary()
    assert v.n_images >= 7
    assert v.top1_agreement == 1.0 or v.ties  # only numerical ties may flip
    assert v.cosine_min >= 0.9999
    assert v.max_abs_diff <= 1e-3 * max(1.0, v.max_abs_logit)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_delegation_report_is_sane_and_xnnpack_was_used(exported, kind):
    from executorch.exir._serialize._program import deserialize_pte_binary

    d = exported[kind].delegation
    assert d is not None and d.delegate == "XnnpackBackend"
    assert 0 < d.share <= 1
    assert d.partitions >= 1
    assert 0 < d.delegated_nodes <= d.total_nodes
    assert d.total_nodes == d.delegated_nodes + sum(d.outside_ops.values())
    assert all(n > 0 for n in d.outside_ops.values())
    # The written program really calls XNNPACK, once per partition the report counted.
    program = deserialize_pte_binary(exported[kind].path.read_bytes()).program
    forward = next(p for p in program.execution_plan if p.name == "forward")
    assert {b.id for b in forward.delegates} == {"XnnpackBackend"}
    assert len(forward.delegates) == d.partitions
    if kind == "cnn":
        # A plain CNN lowers as one XNNPACK piece; what stays outside are dtype copies of scalar
        # constants (from the hard-sigmoid decomposition), 18 of 201 nodes today.
        assert d.partitions == 1 and d.share >= 0.9, d.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_metadata_round_trips(exported, kind):
    from edgevit.models import get_spec

    r = exported[kind]
    spec = get_spec(r.model)
    rt = load(r.path)
    meta = rt.metadata
    assert type(rt).__name__ == "ExecuTorchRuntime"
    assert meta.model == spec.name and meta.target == "executorch" and meta.precision == "fp32"
    assert meta.labels == spec.label_names()
    assert meta.mean == pytest.approx(spec.mean) and meta.std == pytest.approx(spec.std)
    assert meta.input_size == spec.input_size and meta.color_mode == spec.color_mode
    assert meta.attention == kind and meta.weights == r.weights
    assert meta.edgevit_version


@pytest.mark.slow
def test_classifier_batches_match_single_runs(exported, photos):
    clf = Classifier.load(exported["conv-hybrid"].path)
    preds = clf.predict(photos[0][1], top_k=5)
    assert len(preds) == 5 and all(p.label == clf.labels[p.index] for p in preds)
    batch = np.concatenate([clf.preprocess(photos[i][1]) for i in range(3)])
    single = np.stack([clf.runtime.run(batch[i : i + 1])[0] for i in range(3)])
    assert np.allclose(clf.runtime.run(batch), single, atol=1e-5)  # the program has batch 1: chunked
    with pytest.raises(ArtifactError, match="takes input of shape"):
        clf.runtime.run(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.slow
def test_truncated_and_bitflipped_artifacts_are_rejected(exported, tmp_path):
    data = exported["global"].path.read_bytes()
    cases = {
        "truncated-half": data[: len(data) // 2],
        "truncated-1": data[:-1],
        "random": np.random.default_rng(1).bytes(len(data)),
    }
    rng = np.random.default_rng(0)
    # Bit flips anywhere (header, program tables, metadata, weights, XNNPACK blobs) must be caught:
    # the file carries a SHA-256 that is checked before ExecuTorch parses it.
    for pos in [*rng.integers(0, 4096, size=6), *rng.integers(4096, len(data), size=6)]:
        flipped = bytearray(data)
        flipped[int(pos)] ^= 1 << int(rng.integers(0, 8))
        cases[f"flip@{pos}"] = bytes(flipped)
    for name, content in cases.items():
        p = tmp_path / f"{name}.pte"
        p.write_bytes(content)
        with pytest.raises(ArtifactError, match="truncated|corrupt|not an ExecuTorch program|damaged"):
            load(p)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"x" * 3, "not an ExecuTorch program"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not an ExecuTorch program"),
        (b"\x1c\0\0\0TFL3" + b"\0" * 120, "not an ExecuTorch program"),
    ],
)
def test_broken_artifacts(tmp_path, content, match):
    p = tmp_path / "m.pte"
    p.write_bytes(content)
    with pytest.raises(ArtifactError, match=match):
        load(p)


@pytest.mark.slow
def test_foreign_program_without_edgevit_digest_is_rejected(tmp_path):
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    program = to_edge_transform_and_lower(
        torch.export.export(model, (torch.randn(1, 3, 2, 2),)), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    p = tmp_path / "foreign.pte"
    p.write_bytes(program.buffer)
    with pytest.raises(ArtifactError, match="not exported by edgevit"):
        load(p)


def test_unsupported_precisions_are_refused_before_work():
    from edgevit.converters import get_converter

    conv = get_converter("executorch")
    assert conv.suffix == ".pte" and conv.runtime == "executorch"
    unsupported = [p for p in ("fp32", "fp16", "int8-dynamic", "int8") if p not in conv.precisions]
    assert unsupported, "every precision supported: nothing to refuse"
    with pytest.raises(ConfigError, match="does not support precision"):
        conv.make_config(unsupported[0])
    with pytest.raises(ConfigError, match="calibration"):
        conv.make_config("int8")  # static int8 needs calibration images


def test_runtime_module_imports_without_torch():
    code = textwrap.dedent(
        """
        import sys
        import edgevit.runtimes.executorch as et
        from edgevit.runtimes import get_runtime
        assert get_runtime("executorch") is et.ExecuTorchRuntime
        assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'executorch')]
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow
def test_threads_resize_the_process_wide_pool_only_when_safe(exported):
    path = str(exported["global"].path)
    code = textwrap.dedent(
        f"""
        import gc
        from edgevit.errors import ConfigError
        from edgevit.runtimes import load
        a = load({path!r}, threads=1)
        assert a.thread_count == 1, a.thread_count
        b = load({path!r}, threads=1)          # same size: fine
        try:
            load({path!r}, threads=2)          # would resize the pool under a and b
        except ConfigError as exc:
            assert "process-wide" in str(exc)
        else:
            raise AssertionError("resizing under a loaded program was allowed")
        del a, b
        gc.collect()
        c = load({path!r}, threads=2)          # nothing loaded any more: resizing is safe
        assert c.thread_count == 2, c.thread_count
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    gc.collect()


def test_artifact_that_misses_the_target_its_simulation_met_is_reported(monkeypatch, tmp_path):
    """The ExecuTorch search judges PT2E's simulation; the lowered program is judged again on the
    same held-out images, and a miss there is a warning and ``met: false``, not silence."""
    from types import SimpleNamespace

    import edgevit.runtimes
    from edgevit.converters import executorch as et_conv
    from edgevit.converters import quantize as qz

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(100, 10)).astype(np.float32)
    labels = reference.argmax(1)
    flipped = reference.copy()
    flipped[:3] = -flipped[:3]  # 3 of 100 images change class: 97% agreement

    class FakeRuntime:
        def run(self, x):
            return flipped[int(x[0, 0])][None]

    monkeypatch.setattr(edgevit.runtimes, "load", lambda path, runtime=None: FakeRuntime())
    search = SimpleNamespace(inputs=np.arange(100, dtype=np.float32)[:, None])
    target = qz.FidelityTarget(max_drop=5.0, min_agreement=0.98)
    section = {"search": {"met": True, "final": {"top1_agreement": 1.0}}}
    warning = et_conv._judge_artifact(tmp_path / "m.pte", "executorch", section, search, reference, labels, target)
    assert section["search"]["met"] is False and section["search"]["simulated_final"] == {"top1_agreement": 1.0}
    assert section["search"]["final"]["top1_agreement"] == pytest.approx(0.97)
    assert "misses the fidelity target" in warning and "97.0%" in warning
    section = {"search": {"met": True, "final": {}}}
    flipped[:] = reference
    assert et_conv._judge_artifact(tmp_path / "m.pte", "executorch", section, search, reference, labels, target) is None
    assert section["search"]["met"] is True
