"""edgevit sweep and bench --on through a real two-node Ray cluster, on loopback only.

On Linux Ray replaces 127.0.0.1 by the machine's network address (even with
``--node-ip-address 127.0.0.1``), and traffic to any other address than loopback is not allowed
here. So the cluster, and this test process while it talks to it, live in a private network
namespace that has nothing but ``lo``: Ray finds no other address to use, and the test asserts
``ray.nodes()`` lists only 127.0.0.1. Entering a network namespace needs root (CAP_SYS_ADMIN);
CI runs as root. Only this test thread enters it, and it returns to the machine's namespace at the
end; every process started in the namespace is stopped by the fixture, whatever happened.

The cluster: a head (1 CPU) and a second node (1 CPU) carrying a fake ``device:test`` resource,
with small object stores and no dashboard.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import edgevit.sweep as sw
from edgevit.measure.results import ResultsStore

# Starting the cluster costs half a minute and a few hundred MB: the whole module is slow.
pytestmark = pytest.mark.slow

CLONE_NEWNET = 0x40000000
RAY = str(Path(sys.executable).with_name("ray"))


def _netns_inode(pid: int | str = "self") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _pids_in_namespace(inode: int) -> list[int]:
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and _netns_inode(entry) == inode:
            out.append(int(entry))
    return out


def _loopback_up() -> None:
    """``ip link set lo up``, by ioctl (no iproute2 needed)."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, struct.pack("16sH14x", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


@contextlib.contextmanager
def _private_loopback_namespace():
    """This thread (and what it starts) in a fresh network namespace with only ``lo`` up."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("a private network namespace needs root on Linux; without it Ray would use the machine's "
                    "network address, which these tests must not")
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            pytest.skip(f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}")
        inode = _netns_inode("thread-self")
        try:
            _loopback_up()
            yield inode
        finally:
            pids = _pids_in_namespace(inode)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.time() + 10
                while time.time() < deadline and (pids := _pids_in_namespace(inode)):
                    time.sleep(0.2)
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to the machine's network namespace")
    finally:
        os.close(home)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(*args: str, temp: Path) -> None:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    head = ["--include-dashboard=false", f"--temp-dir={temp}"] if "--head" in args else []
    proc = subprocess.run([RAY, "start", *args, *head, "--disable-usage-stats", "--object-store-memory", str(80 * 2**20)],
                          capture_output=True, text=True, env=env, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="the cluster extra is not installed: pip install 'edgevit[cluster]'")
    temp = Path(tempfile.mkdtemp(prefix="evray-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        with _private_loopback_namespace() as inode:
            port = _free_port()
            address = f"127.0.0.1:{port}"
            _ray_start("--head", f"--port={port}", "--num-cpus=1", "--node-ip-address=127.0.0.1", temp=temp)
            _ray_start(f"--address={address}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                       '--resources={"device:test": 1}', temp=temp)
            yield {"address": address, "netns": inode, "temp": temp, "ray": ray}
            if ray.is_initialized():
                ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    base = tmp_path_factory.mktemp("sweep-ray")
    return {"out": base / "out", "db": base / "results.sqlite"}


def test_the_cluster_is_on_loopback_only(cluster):
    ray = cluster["ray"]
    ray.init(address=cluster["address"], logging_level="ERROR", log_to_driver=False)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert [n["Resources"].get("device:test") for n in nodes].count(1.0) == 1
    # and there is no other address to use: the namespace has no interface but loopback
    assert [name for _, name in socket.if_nameindex()] == ["lo"]


def test_sweep_through_ray_and_resume_a_half_done_sweep(cluster, shared):
    first = sw.sweep(["vit_fmnist_tiny"], ["onnx"], out=shared["out"], db=shared["db"], ray=cluster["address"],
                     pretrained=True)
    assert first.mode == "ray" and first.counts() == {"verified": 1}, first.rows
    assert first.rows[0]["worker"].get("ray_node_id")  # it ran as a Ray task
    # the same sweep grown by a target: the verified cell is skipped, only the new one runs
    second = sw.sweep(["vit_fmnist_tiny"], ["onnx", "tflite"], out=shared["out"], db=shared["db"],
                      ray=cluster["address"], pretrained=True)
    assert second.counts() == {"skipped": 1, "verified": 1}, second.rows
    assert {r["target"]: r["status"] for r in second.rows} == {"onnx": "skipped", "tflite": "verified"}
    names = sorted(p.name for p in shared["out"].iterdir())
    assert names == ["vit_fmnist_tiny_onnx_fp32.onnx", "vit_fmnist_tiny_tflite_fp32.tflite"]  # written by the driver
    with ResultsStore(shared["db"]) as store:
        runs = store.runs("export")
    assert [(r.target, r.data["sweep"]["status"]) for r in runs] == [("onnx", "verified"), ("tflite", "verified")]
    from edgevit.runtimes import Classifier

    assert Classifier.load(shared["out"] / "vit_fmnist_tiny_tflite_fp32.tflite").runtime.metadata.model == "vit_fmnist_tiny"


def _cell_child(inode: int) -> tuple[int, int] | None:
    """(pid, parent pid) of a running cell export in the namespace."""
    for pid in _pids_in_namespace(inode):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if b"edgevit.sweep.cell" in cmd:
            return pid, int(stat.rsplit(")", 1)[1].split()[1])
    return None


def test_a_worker_killed_mid_task_is_retried_and_the_cell_recorded(cluster, shared):
    killed: dict[str, int] = {}

    def kill_the_worker() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            found = _cell_child(cluster["netns"])
            if found:
                time.sleep(3)  # mid-task: the export has started
                child, worker = found
                os.kill(worker, signal.SIGKILL)  # the Ray worker process running the cell
                killed.update(worker=worker, child=child)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    try:
        r = sw.sweep(["vit_fmnist_tiny"], ["onnx"], options={"rewrite": False}, out=shared["out"], db=shared["db"],
                     ray=cluster["address"], pretrained=True)
    finally:
        killer.join()
    assert killed, "no cell process was seen"
    (row,) = r.rows
    assert row["status"] == "verified", row
    assert row["worker"]["pid"] != killed["worker"]  # the result came from the retry, in another worker
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{killed['child']}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{killed['child']}").exists()  # the killed worker's export went with it
    with ResultsStore(shared["db"]) as store:
        rec = [x for x in store.runs("export") if x.data["sweep"]["key"] == row["key"]]
    assert len(rec) == 1 and rec[0].data["sweep"]["status"] == "verified" and Path(rec[0].artifact).is_file()


def test_bench_on_a_device_node_returns_the_devices_facts(cluster, shared, monkeypatch, capsys):
    from edgevit.cli import main

    artifact = shared["out"] / "vit_fmnist_tiny_onnx_fp32.onnx"
    if not artifact.is_file():
        sw.sweep(["vit_fmnist_tiny"], ["onnx"], out=shared["out"], db=shared["db"], ray=cluster["address"],
                 pretrained=True)
    monkeypatch.setenv("RAY_ADDRESS", cluster["address"])
    db = shared["db"]
    rc = main(["bench", "--on", "device:test", str(artifact), "--runs", "5", "--warmup", "1", "--no-gemm",
               "--json", "--db", str(db)])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(out)
    ray = cluster["ray"]
    machine = doc["machine"]
    ray.init(address=cluster["address"], logging_level="ERROR", log_to_driver=False)
    try:
        device_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("device:test"))
    finally:
        ray.shutdown()
    assert machine["ray_node_id"] == device_node and machine["ray_resource"] == "device:test"
    assert machine["torch_loaded"] is False  # the device side ran without torch
    assert machine["runtimes"]["onnxruntime"] and machine["cpu"] and machine["cores"] >= 1 and machine["os"]
    (row,) = doc["rows"]
    assert row["runtime"] == "onnx" and row["median_ms"] > 0 and row["model"] == "vit_fmnist_tiny"
    assert row["artifact"] == str(artifact)  # named by the driver's path, not the device's temporary one
    with ResultsStore(db) as store:
        bench_runs = store.runs("bench")
    assert bench_runs[-1].data["machine"]["ray_node_id"] == device_node


def test_sweep_bench_on_a_device(cluster, shared):
    r = sw.sweep(["vit_fmnist_tiny"], ["onnx"], out=shared["out"], db=shared["db"], ray=cluster["address"],
                 pretrained=True, bench_on="device:test", bench_runs=3)
    (row,) = r.rows
    assert row["status"] in ("skipped", "verified") and row["device_bench"]["on"] == "device:test"
    assert row["device_bench"]["median_ms"] > 0
    with ResultsStore(shared["db"]) as store:
        last = store.runs("bench")[-1]
    assert last.artifact == row["artifact"] and last.data["machine"]["torch_loaded"] is False
    assert last.data["machine"]["ray_resource"] == "device:test"


def test_a_cell_no_node_can_take_fails_at_once_instead_of_waiting_for_ever(cluster, tmp_path):
    r = sw.sweep(["vit_fmnist_tiny"], ["onnx"], out=tmp_path / "o", db=tmp_path / "r.sqlite", ray=cluster["address"],
                 memory_gb=10_000)
    (row,) = r.rows
    assert row["status"] == "failed" and "10000.0 GB" in row["error"] and "--memory-gb" in row["error"]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.runs("export")[0].data["sweep"]["status"] == "failed"


def test_bench_on_a_resource_no_node_has_names_what_there_is(cluster, tmp_path):
    from edgevit.errors import ConfigError

    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    with pytest.raises(ConfigError, match="device:rpi5.*device:test"):
        sw.bench_on([art], on="device:rpi5", address=cluster["address"])
