"""edgevit sweep without a cluster: planning, cell keys, local parallel runs, resume, failures that
stay in their cell. The exports are replaced by a small fake child process (the real one is
exercised by the slow test at the end and by tests/sweep/test_cluster.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgevit.sweep as sw
import edgevit.sweep.cell as sweep_cell
from edgevit.errors import ConfigError
from edgevit.measure.results import ResultsStore

# A stand-in for `python -m edgevit.measure.sweep --cell SPEC`: writes a small artifact and a
# result, or crashes (SIGSEGV) / fails / hangs, as the target asks; prints like a converter does.
FAKE_CHILD = textwrap.dedent(r"""
    import json, os, signal, sys, time
    from pathlib import Path
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(f"converter chatter for {spec['source']} {spec['target']}", flush=True)
    target, marker = spec["target"], os.environ.get("FAKE_CRASH_ONCE")
    if target == "coreml" or (target == "executorch" and marker and not Path(marker).exists()):
        if marker:
            Path(marker).write_text("crashed once")
        print("about to segfault in op aten::crash", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    out = Path(spec["out"]); out.mkdir(parents=True)
    art = out / f"{spec['source']}_{target}_{spec['precision']}.bin"
    art.write_bytes(b"artifact:" + json.dumps(spec["options"], sort_keys=True).encode())
    if target == "tflite" and spec["precision"] == "fp16":
        result = {"status": "failed", "op": "aten::fake", "error": "ConversionError: no fake op"}
    else:
        result = {"status": "verified", "export": {"path": str(art), "model": spec["source"], "bytes": art.stat().st_size,
                  "verification": {"ran": True, "passed": True, "cosine_min": 0.99999}}}
    Path(spec["result"]).write_text(json.dumps(result))
""")


@pytest.fixture
def fake_child(tmp_path, monkeypatch):
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    monkeypatch.setattr(sweep_cell, "child_command", lambda spec_file: [sys.executable, str(script), str(spec_file)])
    return script


def _sweep(tmp_path, **kw):
    kw.setdefault("out", tmp_path / "out")
    kw.setdefault("db", tmp_path / "r.sqlite")
    kw.setdefault("jobs", 2)
    return sw.sweep(**kw)


def test_plan_expands_patterns_and_lists_unsupported_pairs():
    cells, unsupported, files = sw.plan(["vit_fmnist_tin?", "mobilevit_xxs"], ["onnx", "executorch"], ["fp32", "fp16"])
    assert [c.label for c in cells] == [
        "vit_fmnist_tiny onnx fp32", "vit_fmnist_tiny onnx fp16", "vit_fmnist_tiny executorch fp32",
        "mobilevit_xxs onnx fp32", "mobilevit_xxs onnx fp16", "mobilevit_xxs executorch fp32"]
    assert [(c.label, "fp16" in why) for c, why in unsupported] == [
        ("vit_fmnist_tiny executorch fp16", True), ("mobilevit_xxs executorch fp16", True)]
    assert files == {}


def test_timm_patterns_expand_over_timms_architectures():
    cells, _, _ = sw.plan(["timm:test_vit*", "vit_fmnist_tiny"], ["onnx"])
    sources = [c.source for c in cells]
    assert "timm:test_vit" in sources and sources[-1] == "vit_fmnist_tiny"
    assert all(s.startswith("timm:test_vit") for s in sources[:-1]) and len(sources) >= 3


def test_plan_refuses_unknown_targets_and_patterns_that_match_nothing():
    with pytest.raises(ConfigError, match="unknown target.*tflit"):
        sw.plan(["vit_fmnist_tiny"], ["tflit"])
    with pytest.raises(ConfigError, match="matches nothing"):
        sw.plan(["no_such_model_*"], ["onnx"])


def test_option_values_make_axes():
    cells, _, _ = sw.plan(["vit_fmnist_tiny"], ["onnx"], ["fp32"], {"rewrite": [True, False], "opset": 18})
    assert [dict(c.options) for c in cells] == [{"opset": 18, "rewrite": True}, {"opset": 18, "rewrite": False}]
    assert len({c.artifact_name("m.onnx") for c in cells}) == 2  # option variants never share a file


def test_cell_key_changes_with_every_input_and_only_then(tmp_path):
    base = sw.Cell("vit_fmnist_tiny", "onnx", "fp32")
    assert base.key == sw.Cell("vit_fmnist_tiny", "onnx", "fp32").key
    variants = [sw.Cell("vit_fmnist_full", "onnx", "fp32"), sw.Cell("vit_fmnist_tiny", "tflite", "fp32"),
                sw.Cell("vit_fmnist_tiny", "onnx", "fp16"), sw.Cell("vit_fmnist_tiny", "onnx", "fp32", (("rewrite", False),)),
                sw.Cell("vit_fmnist_tiny", "onnx", "fp32", weights="sha256:00")]
    assert len({base.key, *(v.key for v in variants)}) == 6
    # the weights digest is the file's content, not its name
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"same"), b.write_bytes(b"same")
    assert sw.plan(["vit_fmnist_tiny"], ["onnx"], weights=a)[0][0].key == sw.plan(["vit_fmnist_tiny"], ["onnx"], weights=b)[0][0].key
    b.write_bytes(b"other")
    assert sw.plan(["vit_fmnist_tiny"], ["onnx"], weights=a)[0][0].key != sw.plan(["vit_fmnist_tiny"], ["onnx"], weights=b)[0][0].key
    # shipped trained weights are keyed by their file's digest; a model without any is refused up front
    assert sw.plan(["vit_fmnist_tiny"], ["onnx"], pretrained=True)[0][0].weights.startswith("sha256:")
    with pytest.raises(ConfigError, match="vit_fmnist_full has no pretrained weights"):
        sw.plan(["vit_fmnist_full"], ["onnx"], pretrained=True)


def test_local_sweep_publishes_records_and_resumes(tmp_path, fake_child):
    progress = []
    r = _sweep(tmp_path, models=["vit_fmnist_tiny", "vit_fmnist_full"], targets=["onnx", "tflite"],
               progress=progress.append)
    assert r.counts() == {"verified": 4} and r.mode == "local"
    assert [p["done"] for p in progress] == [1, 2, 3, 4] and progress[-1]["eta_s"] == 0
    arts = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert arts == ["vit_fmnist_full_onnx_fp32.bin", "vit_fmnist_full_tflite_fp32.bin",
                    "vit_fmnist_tiny_onnx_fp32.bin", "vit_fmnist_tiny_tflite_fp32.bin"]  # no temporaries left
    with ResultsStore(tmp_path / "r.sqlite") as store:
        runs = store.runs("export")
    assert len(runs) == 4 and {x.data["sweep"]["status"] for x in runs} == {"verified"}
    assert all(Path(x.artifact).parent == tmp_path / "out" for x in runs)

    again = _sweep(tmp_path, models=["vit_fmnist_tiny", "vit_fmnist_full"], targets=["onnx", "tflite"])
    assert again.counts() == {"skipped": 4}
    (tmp_path / "out" / "vit_fmnist_tiny_onnx_fp32.bin").unlink()  # a lost artifact is made again
    third = _sweep(tmp_path, models=["vit_fmnist_tiny", "vit_fmnist_full"], targets=["onnx", "tflite"])
    assert third.counts() == {"skipped": 3, "verified": 1}
    redo = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["onnx"], redo=True)
    assert redo.counts() == {"verified": 1}


def test_failures_stay_in_their_cell_with_log_tail_and_op(tmp_path, fake_child):
    r = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["tflite", "coreml", "onnx"], precisions=["fp32", "fp16"])
    by = {(x["target"], x["precision"]): x for x in r.rows}
    assert by[("onnx", "fp32")]["status"] == "verified" and by[("onnx", "fp16")]["status"] == "verified"
    failed = by[("tflite", "fp16")]
    assert failed["status"] == "failed" and failed["op"] == "aten::fake" and failed["attempts"] == 1
    assert "converter chatter" in failed["log_tail"]
    crashed = by[("coreml", "fp16")]
    assert crashed["status"] == "crashed" and crashed["attempts"] == 2  # run once more, crashed again
    assert "SIGSEGV" in crashed["error"] and "aten::crash" in crashed["log_tail"]
    assert "SIGSEGV" in crashed["earlier_attempts"][0]["error"]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        recorded = {(x.target, x.precision): x.data["sweep"] for x in store.runs("export")}
    assert recorded[("coreml", "fp16")]["status"] == "crashed" and "aten::crash" in recorded[("coreml", "fp16")]["log_tail"]
    assert recorded[("onnx", "fp32")]["status"] == "verified"
    assert not [p for p in (tmp_path / "out").iterdir() if "coreml" in p.name or "fp16" in p.name and "tflite" in p.name]
    # the failed cells run again on the next sweep; the verified ones do not
    again = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["tflite", "coreml", "onnx"], precisions=["fp32", "fp16"])
    assert again.counts()["skipped"] == 3


def test_a_crash_is_retried_once_and_then_recorded_as_verified(tmp_path, fake_child, monkeypatch):
    monkeypatch.setenv("FAKE_CRASH_ONCE", str(tmp_path / "crashed"))
    r = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["executorch"], jobs=1)
    (row,) = r.rows
    assert row["status"] == "verified" and row["attempts"] == 2
    assert "SIGSEGV" in row["earlier_attempts"][0]["error"]


class _Ref:  # an object reference: hashable, holds the result
    def __init__(self, value):
        self.value = value


class _FakeRay:
    """Ray's driver API as the sweep uses it, on two fake nodes: tasks run at once, in this process,
    on the first node their label selector allows. What the driver asked for is kept."""

    class exceptions:
        RayError = RuntimeError

    def __init__(self):
        self.nodes_ = [{"Alive": True, "NodeID": n, "Resources": {"CPU": 1.0, "memory": 8e9}} for n in ("node-a", "node-b")]
        self.submitted = []

    def is_initialized(self):
        return True

    def nodes(self):
        return self.nodes_

    def cluster_resources(self):
        return {"CPU": 2.0}

    def put(self, value):
        return value

    def remote(self, fn):
        ray = self

        class Task:
            def options(self, **kw):
                self.kw = kw
                return self

            def remote(self, *args):
                avoid = (self.kw.get("label_selector") or {}).get("ray.io/node-id", "").lstrip("!")
                node = next(n["NodeID"] for n in ray.nodes_ if n["NodeID"] != avoid)
                ray.submitted.append((dict(self.kw), node))
                result = fn(*args)
                result["worker"]["ray_node_id"] = node
                return _Ref(result)

        return Task()

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value


def test_on_ray_each_cell_is_a_task_with_its_needs_and_a_crash_is_retried_on_another_node(tmp_path, fake_child,
                                                                                        monkeypatch):
    import contextlib

    from edgevit.sweep import driver

    fake = _FakeRay()
    monkeypatch.setattr(driver, "ray_connection", lambda address, verbose=False: contextlib.nullcontext(fake))
    monkeypatch.setenv("FAKE_CRASH_ONCE", str(tmp_path / "crashed"))
    r = _sweep(tmp_path, models=["vit_fmnist_tiny", "mobilevit_fmnist"], targets=["onnx", "executorch"], ray="auto",
               threads=1)
    assert r.mode == "ray" and r.counts() == {"verified": 4}
    crashed = next(x for x in r.rows if x["attempts"] == 2)  # the first executorch cell: crashed once
    assert crashed["target"] == "executorch" and "SIGSEGV" in crashed["earlier_attempts"][0]["error"]
    first_node = crashed["earlier_attempts"][0]["worker"]["ray_node_id"]
    assert crashed["worker"]["ray_node_id"] != first_node  # retried elsewhere
    kws = [kw for kw, _ in fake.submitted]
    assert len(kws) == 5 and all(kw["max_retries"] == 1 and kw["num_cpus"] == 1 for kw in kws)
    assert [kw.get("label_selector") for kw in kws].count({"ray.io/node-id": f"!{first_node}"}) == 1
    mem = {kw["name"].split()[1]: kw["memory"] for kw in kws}
    assert mem["mobilevit_fmnist"] > mem["vit_fmnist_tiny"] >= 1.5 * 2**30  # from the parameter count
    # a node that cannot take a cell is not asked to: the cell fails at once, naming the numbers
    for n in fake.nodes_:
        n["Resources"]["memory"] = 1e9
    r = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["tflite"], ray="auto")
    assert r.rows[0]["status"] == "failed" and "1.5 GB" in r.rows[0]["error"] and len(fake.submitted) == 5


def test_a_cell_removes_the_folders_of_cells_whose_worker_was_killed(tmp_path, fake_child, monkeypatch):
    monkeypatch.setattr(sweep_cell.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: a worker killed mid-cell
    stale = tmp_path / f"edgevit-cell-{dead.pid}-abc"
    live = tmp_path / f"edgevit-cell-{os.getppid()}-def"  # a cell of a process that still runs
    other = tmp_path / "edgevit-cell-notapid"
    for d in (stale, live, other):
        (d / "out").mkdir(parents=True)
    (row,) = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["onnx"], jobs=1).rows
    assert row["status"] == "verified"
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.glob("edgevit-cell-*")) == sorted([live.name, other.name])  # its own is gone


def test_a_hung_cell_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_cell, "child_command", lambda spec: [sys.executable, "-c", "import time; print('stuck'); time.sleep(60)"])
    r = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["onnx"], timeout=2)
    (row,) = r.rows
    assert row["status"] == "timeout" and row["attempts"] == 1 and "stuck" in row["log_tail"]


def test_ray_without_ray_installed_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"pip install 'edgevit\[cluster\]'"):
        _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["onnx"], ray="auto")
    from edgevit.cli import main

    assert main(["sweep", "vit_fmnist_tiny", "--targets", "onnx", "--ray", "auto", "--db", str(tmp_path / "x.sqlite")]) == 1
    assert "edgevit[cluster]" in capsys.readouterr().err
    art = tmp_path / "m.tflite"
    art.write_bytes(b"not used")
    assert main(["bench", "--on", "device:rpi5", str(art), "--no-record"]) == 1
    assert "edgevit[cluster]" in capsys.readouterr().err


def test_bench_on_a_device_needs_a_cluster(tmp_path):
    with pytest.raises(ConfigError, match="--ray"):
        _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["onnx"], bench_on="device:rpi5")


def test_local_sweep_and_the_device_side_never_import_ray():
    code = ("import sys\nfrom edgevit.cli import main\n"
            "assert main(['sweep', 'vit_fmnist_*', '--targets', 'onnx', '--dry-run']) == 0\n"
            "import edgevit.sweep, edgevit.sweep.cluster\nassert 'ray' not in sys.modules, 'ray imported'\nprint('no ray')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "no ray" in proc.stdout, proc.stderr[-2000:]


def test_the_modules_tops_import_only_the_standard_library_and_the_device_safe_core():
    import ast

    files = sorted(Path(sw.__file__).parent.glob("*.py"))
    assert [f.stem for f in files] == ["__init__", "cell", "cluster", "driver", "plan"]
    for f in files:
        top = [n for n in ast.parse(f.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name).split(".")[0] for n in top}
        edgevit_mods = {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module.startswith("edgevit")}
        assert "ray" not in names and "torch" not in names, f
        assert all(m in ("edgevit._version", "edgevit.errors") or m.startswith("edgevit.sweep.") for m in edgevit_mods), f


def test_cli_dry_run_and_json(tmp_path, fake_child, capsys):
    from edgevit.cli import main

    assert main(["sweep", "vit_fmnist_tiny", "--targets", "onnx", "executorch", "-p", "fp32", "fp16", "--dry-run",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["cells"]) == 3 and doc["unsupported"][0]["cell"] == "vit_fmnist_tiny executorch fp16"
    assert main(["sweep", "vit_fmnist_tiny", "--targets", "onnx", "--option", "rewrite=true,false", "--out",
                 str(tmp_path / "o"), "--db", str(tmp_path / "d.sqlite"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"] == {"verified": 2} and {str(c["options"]["rewrite"]) for c in doc["cells"]} == {"True", "False"}
    assert main(["sweep", "vit_fmnist_tiny", "--targets", "tflite", "-p", "fp16", "--out", str(tmp_path / "o"),
                 "--db", str(tmp_path / "d.sqlite")]) == 1  # a failed cell: exit 1, the table says why
    captured = capsys.readouterr()
    assert "failed" in captured.out and "ConversionError" in captured.out
    assert captured.err.startswith("Weights: random init")  # which weights the cells export, said first
    assert main(["sweep", "vit_fmnist_tiny", "--targets", "onnx", "--pretrained", "--dry-run"]) == 0
    assert "Weights: each model's trained weights" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_local_sweep_exports_verifies_and_resumes(tmp_path):
    from edgevit.runtimes import Classifier

    r = _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["onnx"], pretrained=True, jobs=1)
    (row,) = r.rows
    assert row["status"] == "verified" and row["cosine_min"] >= 0.9999, row
    clf = Classifier.load(row["artifact"])
    assert clf.runtime.metadata.weights.endswith(".safetensors") and len(clf.runtime.metadata.labels) == 10
    assert _sweep(tmp_path, models=["vit_fmnist_tiny"], targets=["onnx"], pretrained=True).counts() == {"skipped": 1}
