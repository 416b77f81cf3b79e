"""Wall time of one small sweep run three ways, interleaved: serial (``--jobs 1``), two local
processes (``--jobs 2``) and a two-node local Ray cluster (one CPU per node); the per-cell overhead
Ray adds; and an estimate, with its arithmetic, of the whole catalog x 4 targets x 4 precisions
on 1, 8 and 64 machines.

    sudo .venv/bin/python benchmarks/sweep_scaling.py                  # default cells, 1 round
    sudo .venv/bin/python benchmarks/sweep_scaling.py --rounds 3 --models vit_fmnist_tiny mobilevit_fmnist

The Ray cluster runs on loopback only, in a private network namespace of this process (root on
Linux): Ray would otherwise use the machine's network address. Writes
``benchmarks/results/sweep_scaling.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "sweep_scaling.md"
CLONE_NEWNET = 0x40000000
RAY = str(Path(sys.executable).with_name("ray"))
# Export time relative to fp32 (assumptions for the estimate, stated in the output): fp16 a cast
# pass; int8-dynamic a quantization pass; int8 static calibrates and runs the ViT-aware sensitivity search.
PRECISION_FACTOR = {"fp32": 1.0, "fp16": 1.2, "int8-dynamic": 1.5, "int8": 6.0}


def _pids_in(inode: int) -> list[int]:
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{e}/ns/net").st_ino == inode:
                    out.append(int(e))
    return out


def _loopback_up() -> None:
    """``ip link set lo up``, by ioctl."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0))[:18])[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))  # SIOCSIFFLAGS, IFF_UP


@contextlib.contextmanager
def loopback_cluster(temp: Path):
    """A head and a second node (1 CPU each) in a fresh network namespace with only ``lo``."""
    if os.geteuid() != 0:
        sys.exit("needs root: the Ray cluster runs in a private network namespace (loopback only)")
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        sys.exit(f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}")
    inode = os.stat("/proc/thread-self/ns/net").st_ino
    try:
        _loopback_up()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--object-store-memory={200 * 2**20}"]
        for args in (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                     [f"--address=127.0.0.1:{port}"]):
            subprocess.run([RAY, "start", *args, *common], check=True, capture_output=True, env=env, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _pids_in(inode):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(2)
        libc.setns(home, CLONE_NEWNET)
        os.close(home)


def _payload(n: int) -> bytes:
    return os.urandom(n)


def ray_overhead(address: str, n: int = 20, size: int = 1 << 20) -> dict:
    """Connect/disconnect time, and the round trip of a trivial task that ships ``size`` bytes back
    (an artifact's way home), median of ``n`` sequential tasks."""
    import ray

    t = time.perf_counter()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    connect = time.perf_counter() - t
    task = ray.remote(_payload).options(num_cpus=1)
    ray.get(task.remote(size))  # a worker process started
    trips = []
    for _ in range(n):
        t = time.perf_counter()
        ray.get(task.remote(size))
        trips.append(time.perf_counter() - t)
    t = time.perf_counter()
    ray.shutdown()
    return {"connect_s": connect, "shutdown_s": time.perf_counter() - t, "task_roundtrip_ms": 1e3 * statistics.median(trips),
            "payload_mb": size / 1e6}


def _run(models, targets, mode: str, address: str | None) -> dict:
    from edgevit.sweep import sweep

    with tempfile.TemporaryDirectory() as out:
        kw = {"ray": address} if mode == "ray" else {"jobs": 1 if mode == "serial" else 2}
        r = sweep(models, targets, ["fp32"], out=out, record=False, pretrained=True, **kw)
    bad = [row for row in r.rows if row["status"] != "verified"]
    assert not bad, bad
    rows = r.rows
    return {"wall_s": r.wall_s, "cells": len(rows), "cell_wall_s": sum(x["wall_s"] for x in rows),
            "export_s": sum(x.get("export_s") or 0 for x in rows)}


def estimate(per_machine_speedup: float, cell_overhead_s: float, ray_overhead_s: float) -> list[str]:
    """The whole catalog x 4 targets x 4 precisions on 1, 8, 64 machines like this one."""
    from edgevit.models import list_models

    from edgevit.measure.support import load_support
    from edgevit.sweep import plan

    models = list_models(builtin_only=True)
    cells, unsupported, _ = plan(models, ["tflite", "executorch", "onnx", "coreml"], list(PRECISION_FACTOR),
                                 calibration="fashion-mnist")  # int8 cells calibrate (any set: only counted here)
    results = load_support().get("results", {})
    mean_fp32 = {}
    for t in ("tflite", "executorch", "onnx", "coreml"):
        secs = [v[t]["seconds"] for v in results.values() if v.get(t, {}).get("seconds")]
        mean_fp32[t] = statistics.mean(secs)

    def cell_s(c) -> float:  # the model's own fp32 time where measured, else its target's mean
        fp32 = results.get(c.source, {}).get(c.target, {}).get("seconds") or mean_fp32[c.target]
        return fp32 * PRECISION_FACTOR[c.precision] + cell_overhead_s

    work = sum(cell_s(c) for c in cells)
    slowest = max(cells, key=cell_s)
    lines = [
        f"- cells: {len(models)} catalog models x 4 targets x 4 precisions = {len(models) * 16}, of which "
        f"{len(unsupported)} are unsupported pairs (ExecuTorch fp16, CoreML int8-dynamic and int8), leaving **{len(cells)}**.",
        "- fp32 export time per cell: the model's own from `models/support.json` (the last matrix run, 2-core "
        "machine), else its target's mean there: "
        + ", ".join(f"{t} {s:.1f} s" for t, s in mean_fp32.items()) + "; other precisions x "
        + ", ".join(f"{p} {f}" for p, f in PRECISION_FACTOR.items()) + " (assumed; int8 runs the calibrated sensitivity search)"
        f"; plus {cell_overhead_s:.0f} s per cell outside the conversion (process start, imports, model build, "
        f"verification: measured here, cell wall minus export time).",
        f"- serial work: sum over cells = **{work / 3600:.1f} h** on one 2-core machine, one cell at a time.",
        f"- one machine runs {per_machine_speedup:.2f} cells' worth at once (measured: serial / --jobs 2 wall time); "
        f"Ray adds {ray_overhead_s:.1f} s per cell.",
    ]
    for n in (1, 8, 64):
        spread = (work + len(cells) * ray_overhead_s * (n > 1)) / (n * per_machine_speedup)
        total = max(spread, cell_s(slowest))
        lines.append(f"- **{n} machine(s)**: max(({work / 3600:.1f} h{' + Ray overhead' if n > 1 else ''}) / ({n} x "
                     f"{per_machine_speedup:.2f}) = {spread / 3600:.2f} h, slowest cell {cell_s(slowest) / 60:.0f} min) "
                     f"= **{total / 3600:.2f} h**")
    lines.append(f"- the slowest cell bounds any cluster: {slowest.label}, {cell_s(slowest) / 60:.0f} min estimated; "
                 "cells are scheduled in plan order, so sorting the slowest first would reach that bound.")
    return lines


def _rounded(x):
    if isinstance(x, float):
        return round(x, 2)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit_fmnist_tiny", "vit_fmnist_window"])
    ap.add_argument("--targets", nargs="+", default=["onnx", "tflite"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    temp = Path(tempfile.mkdtemp(prefix="evray-", dir="/tmp"))
    runs: dict[str, list[dict]] = {"serial": [], "jobs2": [], "ray": []}
    try:
        with loopback_cluster(temp) as address:
            overhead = ray_overhead(address)
            for i in range(args.rounds):
                for mode in ("serial", "jobs2", "ray"):  # interleaved: each round sees the same machine load
                    res = _run(args.models, args.targets, mode, address)
                    runs[mode].append(res)
                    print(f"round {i + 1} {mode:6s}: {res['wall_s']:.1f} s for {res['cells']} cells", flush=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    med = {m: statistics.median(r["wall_s"] for r in v) for m, v in runs.items()}
    n = runs["serial"][0]["cells"]
    serial = runs["serial"][0]
    cell_overhead = (serial["cell_wall_s"] - serial["export_s"]) / n
    ray_extra = (med["ray"] - med["jobs2"]) * 2 / n  # two slots either way; negative: Ray was faster
    speedup = med["serial"] / med["jobs2"]
    busy = load > (os.cpu_count() or 1)
    lines = [
        "# Sweep scaling: serial vs --jobs 2 vs a two-node local Ray cluster",
        "",
        f"Measured {dt.date.today().isoformat()} by `sudo .venv/bin/python benchmarks/sweep_scaling.py"
        f" --rounds {args.rounds} --models {' '.join(args.models)} --targets {' '.join(args.targets)}` on a "
        + (f"quiet {os.cpu_count()}-core machine (load average {load:.2f} at the start). " if load < 1.0 else
           f"shared {os.cpu_count()}-core machine (load average {load:.2f} at the start: other work was running, so "
           "read the figures as ratios of one interleaved run). ")
        + "Cells: "
        f"{' '.join(args.models)} x {' '.join(args.targets)} x fp32, trained weights, each exported and verified.",
        "",
        "| mode | wall s (median) | vs serial |",
        "|---|---:|---:|",
        *[f"| {m} | {med[m]:.1f} | {med['serial'] / med[m]:.2f}x |" for m in ("serial", "jobs2", "ray")],
        "",
        "- ray: a head and a second node, one CPU each, on loopback in a private network namespace; every cell a Ray "
        "task whose child process exports, artifact bytes back through the object store.",
        f"- Ray's own costs: connect {overhead['connect_s']:.2f} s and disconnect {overhead['shutdown_s']:.2f} s per "
        f"sweep; a task round trip shipping {overhead['payload_mb']:.0f} MB back {overhead['task_roundtrip_ms']:.0f} ms "
        f"(median of 20); end to end Ray vs --jobs 2 (two slots each): {ray_extra:+.1f} s per cell"
        + (" (within the noise of this load)" if busy else "") + ".",
        f"- per cell outside the conversion (process start, imports, model build, verification): {cell_overhead:.1f} s.",
        "",
        "## Estimate: the whole catalog x 4 targets x 4 precisions",
        "",
        *estimate(speedup, cell_overhead, max(ray_extra, overhead["task_roundtrip_ms"] / 1e3)),
        *([f"- caveat: measured with the machine oversubscribed (load {load:.1f} on {os.cpu_count()} cores), so "
           "two local processes gained little over one; exports at --threads 1 are mostly single-threaded, so on a "
           "quiet machine expect up to one cell per core and divide these hours accordingly (rerun the command "
           "above there)."] if busy else []),
        "",
        "Raw: " + json.dumps(_rounded({"overhead": overhead, "runs": runs})),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
