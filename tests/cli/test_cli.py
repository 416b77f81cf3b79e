"""The CLI: tables, --json documents, `Error:` messages without tracebacks, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgevit.cli import main


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevit", *args], capture_output=True, text=True, timeout=timeout)


def test_list_table_and_json(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mobilevit_xxs" in out and "attention" in out and "GMACs" in out
    # which trained weights work offline and which need the network
    weights = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith(("vit_", "mobilevit_xxs "))}
    assert weights["vit_fmnist_tiny"] == "shipped" and weights["mobilevit_xxs"] == "hub"
    assert weights["vit_tiny_performer"] == "none" and "needs the network once" in out
    assert main(["list", "--json", "--attention", "windowed"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data and all(d["attention"] == "windowed" for d in data)


def test_list_attention_without_kind_lists_the_zoo(capsys):
    from edgevit.models.attention import attention_names

    assert main(["list", "--attention", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in rows) == sorted(attention_names())
    by_name = {r["name"]: r for r in rows}
    assert "vit_tiny_linformer" in by_name["linformer"]["models"]
    assert "vit_tiny_relu_linear" not in by_name["linear"]["models"]
    assert by_name["reformer"]["static_indices"] is False


def test_info_json(capsys):
    assert main(["info", "deit_tiny_patch16_224", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["name"] == "deit_tiny_patch16_224" and d["num_classes"] == 1000 and d["attention"] == "global"


from edgevit.cli import _commands  # noqa: E402

COMMANDS = [m.COMMAND for m in _commands()]


def test_core_commands_exist():
    assert {"list", "info", "export", "predict", "verify", "quickstart"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "Example" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,match",
    [
        (["export", "mobilevit_xxxs"], "did you mean 'mobilevit_xxs'"),
        (["export", "mobilevit_xxs", "--target", "tflit"], "unknown target 'tflit'"),
        (["predict", "missing.tflite", "x.jpg"], "no such artifact"),
        (["info", "nope"], "unknown model"),
        (["export", "vit_fmnist_tiny", "--precision", "int8", "--calibration", "fashion-mnist", "--max-drop", "0.5",
          "--option", "max_drop=2"], "--max-drop 0.5 contradicts --option max_drop=2"),
        (["export", "vit_fmnist_tiny", "--precision", "int8", "--calibration", "fashion-mnist",
          "--min-agreement", "98"], "min_agreement is a fraction of images, 0..1"),
    ],
)
def test_user_errors_print_error_without_traceback(args, match):
    proc = _cli(*args)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ") and match in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback():
    proc = _cli("--debug", "info", "nope")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_export_json_then_predict_json(tmp_path):
    proc = _cli("export", "vit_fmnist_tiny", "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # one clean JSON document despite converter chatter
    assert result["verification"]["passed"] and result["bytes"] > 0
    assert result["target"] == "tflite" and result["precision"] == "fp32"
    img = tmp_path / "x.png"
    from edgevit.data.samples import natural_photos

    natural_photos(1)[0][1].save(img)
    proc = _cli("predict", result["path"], str(img), str(img), "--json", "-k", "2")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and all(len(r["top_k"]) == 2 for r in rows)
    # Exporting again without --force refuses and keeps the file.
    proc = _cli("export", "vit_fmnist_tiny", "--out", str(tmp_path))
    assert proc.returncode == 1 and "--force" in proc.stderr


@pytest.mark.slow
def test_quickstart_offline(tmp_path, has_fmnist_weights):
    if not has_fmnist_weights:
        pytest.skip("the shipped Fashion-MNIST weights are not trained yet")
    proc = _cli("quickstart", "--offline", "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["model"] == "vit_fmnist_tiny" and doc["online"] is False
    assert doc["export"]["verification"]["passed"]
    assert doc["labelled_total"] >= 10
    assert doc["labelled_correct"] / doc["labelled_total"] >= 0.8  # "mostly right"
    # Second run reuses the artifact and re-verifies it instead of overwriting it.
    proc = _cli("quickstart", "--offline", "--out", str(tmp_path), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["export"]["reused"] is True
