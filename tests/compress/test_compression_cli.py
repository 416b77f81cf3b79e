"""The compression commands end to end: `edgevit qat` (float / PTQ / QAT int8 on real Fashion-MNIST),
`edgevit export --weights` with a checkpoint written by `edgevit prune` (pruned shapes rebuilt from
the plan it carries) or one that does not fit, and `--grad-checkpointing` in train and distill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgevit.cli import main
from edgevit.data import FASHION_MNIST_DIR
from edgevit.errors import ConfigError

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "weights" / "vit_fmnist_tiny.safetensors"
PRUNED_NAME = "vit_fmnist_tiny_pruned"

needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
needs_shipped = pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped vit_fmnist_tiny weights are missing")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevit", *args], capture_output=True, text=True, timeout=timeout)


def _error_line(err: str) -> str:
    """The one `Error:` line of a failed command; no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def forget_pruned():
    """Each test registers the pruned model itself (as a fresh `edgevit` process would)."""
    from edgevit.models import list_models, unregister_model

    def drop() -> None:
        if PRUNED_NAME in list_models():
            unregister_model(PRUNED_NAME)

    drop()
    yield
    drop()


@pytest.fixture
def pruned_file(tmp_path, forget_pruned) -> Path:
    """A pruned vit_fmnist_tiny checkpoint as `edgevit prune` writes it (random weights: shapes only)."""
    from edgevit.models import create_model
    from edgevit.compress.prune import prune_model, save_pruned

    torch.manual_seed(0)
    model, plan = prune_model(create_model("vit_fmnist_tiny"), heads=0.5, mlp=0.5)
    path, _ = save_pruned(model, plan, tmp_path / "pruned" / f"{PRUNED_NAME}.safetensors")
    return path


# --- edgevit qat ----------------------------------------------------------------------------------


@pytest.mark.slow
@needs_fashion
@needs_shipped
def test_qat_command_exports_an_accurate_int8_tflite(tmp_path, capsys):
    pytest.importorskip("litert_torch")
    from edgevit.measure.results import ResultsStore
    from edgevit.runtimes import load

    db = tmp_path / "results.sqlite"
    rc = main(["qat", "vit_fmnist_tiny", "--pretrained", "--target", "tflite", "--data", "fashion-mnist",
               "--train-limit", "320", "--test-limit", "300", "--calibration-images", "64", "--batch-size", "32",
               "--threads", "2", "--out", str(tmp_path / "qat"), "--db", str(db), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)  # --json: one document on stdout, converter chatter elsewhere
    assert doc["test_images"] == 300 and doc["train_images"] == 320
    arts = {(a["target"], a["method"]): a for a in doc["artifacts"]}
    assert set(arts) == {("tflite", "qat"), ("tflite", "ptq")}
    q, p = arts[("tflite", "qat")], arts[("tflite", "ptq")]
    # Chance is 10%; the shipped weights score ~90% on these 300 real test images in float. One short
    # QAT epoch must keep int8 far above chance and within 3 points of float (measured: equal to PTQ).
    assert doc["float_top1"] > 0.8
    assert q["top1"] > 0.6 and q["top1"] >= doc["float_top1"] - 0.03, (q["top1"], doc["float_top1"])
    assert p["top1"] > 0.6
    path = Path(q["path"])
    assert path.is_file() and path.stat().st_size == q["bytes"]
    runtime = load(path)
    assert runtime.metadata.precision == "int8" and runtime.metadata.extra["quantization"]["method"] == "qat"
    assert runtime.metadata.weights == "vit_fmnist_tiny.safetensors"
    # The artifact runs through edgevit's runtime and predicts like the reported top-1 on a few images.
    from edgevit.data import load_dataset
    from edgevit.models import get_spec
    from edgevit.compress.qat import evaluate_artifact
    from edgevit.compress.training import to_model_input

    ds = load_dataset("fashion-mnist").subset(None, 100)
    x = to_model_input(torch.from_numpy(ds.test_images.copy()), get_spec("vit_fmnist_tiny")).numpy()
    assert evaluate_artifact(path, x, ds.test_labels) > 0.6
    with ResultsStore(db) as store:
        evals = {(r.target, r.data.get("method")): r.data["top1"] for r in store.runs("eval")}
        exports = [r for r in store.runs("export") if r.data.get("method") == "qat"]
    assert evals[("tflite", "qat")] == q["top1"] and evals[("torch", None)] == doc["float_top1"]
    assert len(exports) == 1 and exports[0].artifact == q["path"]


def test_qat_table_compares_float_ptq_and_qat(tmp_path, capsys, monkeypatch):
    """The human output: one row each for float, PTQ and QAT with top-1, size and artifact (the
    training itself is replaced by a stub; the test above runs the real thing)."""
    import edgevit.compress.qat as qat_module
    from edgevit.data import Dataset

    np = pytest.importorskip("numpy")
    calls = {}

    def fake_qat(model, data, **kw):
        calls.update(kw, model=model, data=data)
        arts = (qat_module.QATArtifact("tflite", "ptq", str(tmp_path / "p.tflite"), 150_000, 0.80, 1.0),
                qat_module.QATArtifact("tflite", "qat", str(tmp_path / "q.tflite"), 151_000, 0.84, 2.0))
        return qat_module.QATResult(model, data.name, 0.85, arts, {"tflite": []}, 3.0)

    monkeypatch.setattr(qat_module, "qat", fake_qat)
    rng = np.random.default_rng(0)
    ds = Dataset("toy", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10,
                 rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10, tuple("abcdefghij"))
    monkeypatch.setattr("edgevit.data.load_dataset", lambda *a, **k: ds)
    rc = main(["qat", "vit_fmnist_tiny", "--pretrained", "--data", "toy", "--out", str(tmp_path), "--no-record",
               "--teacher", "none", "--epochs", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert calls["targets"] == ("tflite",) and calls["teacher"] is None and calls["epochs"] == 2
    assert calls["pretrained"] is True and calls["compare_ptq"] is True
    lines = out.splitlines()
    row = {ln.split("  ")[0]: ln for ln in lines}
    assert "85.00%" in row["float (torch fp32)"]
    assert "80.00%" in row["PTQ int8"] and "-5.00" in row["PTQ int8"] and "p.tflite" in row["PTQ int8"]
    assert "84.00%" in row["QAT int8"] and "q.tflite" in row["QAT int8"] and "151.0 KB" in row["QAT int8"]  # decimal KB
    assert "QAT int8 is at least as accurate as PTQ int8 (+4.00 points)" in out


def test_qat_onnx_is_a_clean_error():
    proc = _cli("qat", "vit_fmnist_tiny", "--pretrained", "--target", "onnx", "--data", "fashion-mnist")
    assert proc.returncode != 0
    line = _error_line(proc.stderr)
    assert "onnx has no quantization-aware training path" in line and "tflite, executorch" in line
    assert "--precision int8" in line  # points at the post-training route
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "args,match",
    [
        (["qat", "vit_fmnist_tinyy", "--pretrained"], "unknown model 'vit_fmnist_tinyy'; did you mean 'vit_fmnist_tiny'"),
        (["qat", "vit_fmnist_tiny", "--pretrained", "--target", "coreml"], "coreml has no quantization-aware"),
        (["qat", "vit_fmnist_tiny", "--pretrained", "--target", "tflit"], "unknown target 'tflit'; did you mean 'tflite'"),
        (["qat", "vit_fmnist_tiny", "--pretrained", "--data", "/nonexistent/photos"],
         "'/nonexistent/photos' is neither a known dataset"),
        (["qat", "vit_fmnist_tiny", "--data", "digits"], "randomly initialised vit_fmnist_tiny is meaningless"),
        (["qat", "vit_fmnist_tiny", "--pretrained", "--freeze-observers", "2"], "--freeze-observers must be"),
        (["qat", "vit_fmnist_tiny", "--weights", "/nonexistent/w.safetensors"], "no such weights file"),
    ],
)
def test_qat_user_errors_are_one_line(args, match, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "qat")]) == 1
    assert match in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "qat").exists()  # failed before any work


# --- edgevit export --weights ---------------------------------------------------------------------


@pytest.mark.slow
@needs_shipped
def test_prune_then_export_the_pruned_checkpoint(tmp_path, capsys, forget_pruned):
    from edgevit.models import list_models
    from edgevit.runtimes import load

    assert main(["prune", "vit_fmnist_tiny", "--pretrained", "--heads", "0.5", "--mlp", "0.5",
                 "--out", str(tmp_path / "prune"), "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    weights = pruned["weights"]
    assert pruned["params_after"] < 0.6 * pruned["params_before"]
    # A fresh process knows nothing of the pruned model: export must find the plan in the file.
    from edgevit.models import unregister_model

    unregister_model(PRUNED_NAME)
    assert PRUNED_NAME not in list_models()
    assert main(["export", "vit_fmnist_tiny", "--weights", weights, "--target", "onnx",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert main(["export", "vit_fmnist_tiny", "--pretrained", "--target", "onnx",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert small["model"] == PRUNED_NAME and Path(small["path"]).name == f"{PRUNED_NAME}_onnx_fp32.onnx"
    assert small["verification"]["passed"] is True and small["verification"]["ran"] is True
    # 43.5% fewer parameters: the artifact is smaller by well over a quarter.
    assert small["bytes"] < 0.75 * full["bytes"], (small["bytes"], full["bytes"])
    runtime = load(small["path"])
    assert runtime.metadata.weights == weights  # the metadata records the weights source
    assert runtime.metadata.source == "pruned:vit_fmnist_tiny"
    assert runtime.metadata.model == PRUNED_NAME


@needs_shipped
def test_export_weights_that_do_not_fit_name_the_tensor_and_the_model(tmp_path, capsys):
    assert main(["export", "vit_fmnist_full", "--weights", str(SHIPPED), "--target", "onnx",
                 "--out", str(tmp_path)]) == 1
    line = _error_line(capsys.readouterr().err)
    assert "does not fit this model" in line and "blocks.0.attn" in line and "file (" in line
    assert f"`edgevit export vit_fmnist_tiny --weights {SHIPPED}`" in line  # the model it was saved from
    assert not any(tmp_path.iterdir())


def test_export_pruned_weights_without_their_plan(tmp_path, capsys, pruned_file):
    """A pruned checkpoint that lost its plan (re-saved without metadata): the shapes do not fit the
    base model; the error names the tensor and points at `edgevit prune`'s file."""
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(pruned_file)), str(bare))
    assert main(["export", "vit_fmnist_tiny", "--weights", str(bare), "--target", "onnx",
                 "--out", str(tmp_path / "out")]) == 1
    line = _error_line(capsys.readouterr().err)
    assert "blocks.0.attn.qkv.weight: file (96, 64) vs model (192, 64)" in line
    assert "written by `edgevit prune`" in line


def test_export_pruned_weights_with_another_model(tmp_path, capsys, pruned_file):
    assert main(["export", "deit_tiny_patch16_224", "--weights", str(pruned_file), "--target", "onnx",
                 "--out", str(tmp_path)]) == 1
    line = _error_line(capsys.readouterr().err)
    assert "is a pruned vit_fmnist_tiny" in line and f"edgevit export vit_fmnist_tiny --weights {pruned_file}" in line


def test_pruned_plan_is_found_beside_a_torch_file(tmp_path, pruned_file):
    """Weights re-saved as a torch file next to the prune record (.json): the record's plan builds
    the pruned shapes and the torch file's weights load into them."""
    from edgevit.cli.export import resolve_weights_model
    from edgevit.models import create_model
    from safetensors.torch import load_file

    state = load_file(str(pruned_file))
    pt = pruned_file.with_suffix(".pt")
    torch.save({"state_dict": state}, pt)
    name = resolve_weights_model("vit_fmnist_tiny", pt)
    assert name == PRUNED_NAME
    model = create_model(name, weights=pt)
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert resolve_weights_model("vit_fmnist_tiny", SHIPPED) == "vit_fmnist_tiny"  # an ordinary checkpoint


# --- gradient checkpointing -----------------------------------------------------------------------


def _count_block_calls(monkeypatch) -> dict[str, int]:
    """Count forward calls of every model's first block built through the catalog from now on:
    with activation checkpointing each training step runs it twice (forward, recompute). A
    pre-hook, because the recompute stops early once it has the tensors backward needs."""
    import edgevit.models as catalog

    counts = {"calls": 0}
    real = catalog.create_model

    def create(*a, **k):
        model = real(*a, **k)
        model.blocks[0].register_forward_pre_hook(lambda *_: counts.__setitem__("calls", counts["calls"] + 1))
        return model

    monkeypatch.setattr(catalog, "create_model", create)
    return counts


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize(("model", "steps", "batch"), [("vit_fmnist_tiny", 4, 16), ("deit_tiny_patch16_224", 2, 4)])
def test_grad_checkpointing_trains_to_the_same_losses(model, steps, batch, tmp_path, capsys, monkeypatch):
    """EdgeViT's and timm's ``set_grad_checkpointing``: the same seed gives the same losses and
    weights with and without it, and the blocks really are recomputed."""
    from safetensors.torch import load_file

    runs = {}
    for gc in (False, True):
        counts = _count_block_calls(monkeypatch)
        out = tmp_path / f"gc{int(gc)}"
        argv = ["train", model, "--data", "fashion-mnist", "--epochs", "1", "--batch-size", str(batch),
                "--train-limit", str(steps * batch), "--test-limit", str(batch), "--augment", "none",
                "--threads", "2", "--seed", "3", "--out", str(out), "--json"]
        assert main(argv + (["--grad-checkpointing"] if gc else [])) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["config"]["grad_checkpointing"] is gc
        runs[gc] = (doc, counts["calls"], load_file(str(out / f"{model}.safetensors")))
    (plain, plain_calls, w0), (ckpt, ckpt_calls, w1) = runs[False], runs[True]
    assert ckpt_calls == plain_calls + steps  # one recomputation per training step
    # Recomputation repeats the same float operations: losses agree to float32 rounding (1e-6 relative).
    for key in ("train_loss", "test_loss"):
        a, b = plain["history"][0][key], ckpt["history"][0][key]
        assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (key, a, b)
    assert max(float((w0[k] - w1[k]).abs().max()) for k in w0) <= 1e-5


def test_grad_checkpointing_needs_a_model_that_supports_it():
    from edgevit.compress.training import TrainConfig, enable_grad_checkpointing

    with pytest.raises(ConfigError, match="does not support gradient checkpointing"):
        enable_grad_checkpointing(torch.nn.Linear(2, 2), "my_linear")
    with pytest.raises(ConfigError, match="grad_checkpointing must be True or False"):
        TrainConfig(model="vit_fmnist_tiny", data="x", grad_checkpointing="yes")  # type: ignore[arg-type]
    from edgevit.models import create_model

    model = create_model("vit_fmnist_tiny")
    enable_grad_checkpointing(model, "vit_fmnist_tiny")
    assert model.grad_checkpointing is True


@pytest.mark.slow
@needs_fashion
@needs_shipped
def test_distill_accepts_grad_checkpointing(tmp_path, capsys):
    runs = {}
    for gc in (False, True):
        argv = ["distill", "--teacher", "vit_fmnist_tiny", "--teacher-pretrained", "--student", "vit_fmnist_tiny",
                "--data", "fashion-mnist", "--epochs", "1", "--batch-size", "16", "--train-limit", "48",
                "--test-limit", "16", "--augment", "none", "--threads", "2", "--out", str(tmp_path / f"d{gc}"),
                "--json"]
        assert main(argv + (["--grad-checkpointing"] if gc else [])) == 0
        runs[gc] = json.loads(capsys.readouterr().out)
    assert runs[True]["config"]["grad_checkpointing"] is True
    a, b = runs[False]["history"][0]["train_loss"], runs[True]["history"][0]["train_loss"]
    assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (a, b)  # float32 rounding
