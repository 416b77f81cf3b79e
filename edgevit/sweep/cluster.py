"""Ray, when asked for: the connection, and benchmarks on devices that joined the cluster.

A box joins with a custom resource (``ray start --address HEAD --num-cpus 0 --resources
'{"device:rpi5": 1}'``); :func:`bench_on` ships artifact bytes to it through the object store
and runs :func:`edgevit.measure.bench.bench` there. The device task imports only the standard
library, ``edgevit.runtimes`` and the torch-free measure code, runs with torch made unimportable
(as on a device install), and returns the device's facts (CPU, cores, OS, runtime versions) beside
the figures. Ray is imported only inside these functions: nothing else in edgevit imports it.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgevit._version import __version__
from edgevit.errors import ConfigError, EdgeVitError
from edgevit.sweep.cell import worker_facts

__all__ = ["CLUSTER_HINT", "bench_on", "device_bench", "device_facts", "import_ray", "ray_connection"]

CLUSTER_HINT = "pip install 'edgevit[cluster]'"


def import_ray() -> Any:
    """Ray, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError(f"running on a Ray cluster needs Ray, which is not installed here; install it with: "
                          f"{CLUSTER_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_connection(address: str | None, verbose: bool = False):
    """Ray connected to the cluster at ``address`` (``auto``: RAY_ADDRESS or the local cluster);
    disconnects at the end only if it connected here."""
    import logging

    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's C++ warnings, before it starts
    try:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", logging_level=logging.ERROR,
                 log_to_driver=verbose, configure_logging=True)
    except ConnectionError as exc:
        raise ConfigError(f"no Ray cluster at {address or 'auto'} ({exc}); start one with `ray start --head` "
                          f"or pass its address (HOST:PORT)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_facts() -> dict[str, Any]:
    """This machine as a benchmark device: CPU model, cores, OS, Python and runtime versions."""
    from edgevit.measure.results import host_info

    facts = dict(host_info())
    with contextlib.suppress(OSError, AttributeError):
        facts["os"] = platform.freedesktop_os_release().get("PRETTY_NAME")
    facts["edgevit"] = __version__
    facts["runtimes"] = {d: v for d in ("ai-edge-litert", "tflite-runtime", "onnxruntime", "executorch", "numpy")
                         if (v := _dist_version(d)) is not None}
    facts.update(worker_facts())
    return facts


@contextlib.contextmanager
def _without_torch() -> Iterator[None]:
    """torch unimportable for a moment, as on a device install (a torch already loaded stays)."""
    if sys.modules.get("torch") is not None:
        yield
        return
    saved = {k: sys.modules.pop(k) for k in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]}
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["torch"]
        sys.modules.update(saved)


def device_bench(artifacts: Sequence[tuple[str, bytes]], image: tuple[str, bytes],
                 settings: Mapping[str, Any]) -> dict[str, Any]:
    """The device side of :func:`bench_on`: write the shipped artifacts, bench them, return the
    report with the device's facts. Imports no torch (it is made unimportable while it runs)."""
    from edgevit.measure.bench import bench

    with tempfile.TemporaryDirectory(prefix="edgevit-device-") as tmp, _without_torch():
        paths = []
        for name, payload in artifacts:
            p = Path(tmp) / Path(name).name
            p.write_bytes(payload)
            paths.append(p)
        img = Path(tmp) / f"input{Path(image[0]).suffix or '.png'}"
        img.write_bytes(image[1])
        report = bench(paths, threads=int(settings["threads"]), warmup=int(settings["warmup"]),
                       runs=int(settings["runs"]), image=img, memory_baseline=bool(settings["memory_baseline"]),
                       gemm=bool(settings["gemm"]))
        facts = device_facts()
        facts["torch_loaded"] = sys.modules.get("torch") is not None
    return {"report": report.to_dict(), "facts": facts}


def _bench_image(image: str | os.PathLike | None) -> tuple[str, bytes]:
    if image is not None:
        p = Path(image)
        if not p.is_file():
            raise ConfigError(f"image {p} does not exist")
        return p.name, p.read_bytes()
    from edgevit.data.samples import natural_photos
    from edgevit.errors import DataError

    photos = natural_photos(limit=1)
    if not photos:
        raise DataError("no sample photo is installed (scikit-image or matplotlib); pass --image FILE")
    name, img = photos[0]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"{name}.png", buf.getvalue()


def bench_on(
    artifacts: Sequence[str | os.PathLike],
    *,
    on: str,
    address: str | None = None,
    torch_models: Sequence[str] = (),
    torch_pretrained: bool = False,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 20,
    image: str | os.PathLike | None = None,
    memory_baseline: bool = True,
    gemm: bool = True,
    progress: Callable[[str], None] | None = None,
    timeout: float = 1800,
) -> Any:
    """:func:`edgevit.measure.bench.bench` on the cluster node that carries resource ``on``
    (``device:rpi5``): the artifacts' bytes travel through Ray's object store, the figures come back
    with the device's facts as the report's ``machine``. ``address``: the cluster (default
    ``RAY_ADDRESS``, else the local one)."""
    from edgevit.measure.bench import BenchReport

    if torch_models:
        raise ConfigError("--torch times torch eager, which a device install does not have; drop it with --on")
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    paths = [Path(a) for a in artifacts]
    if not paths:
        raise ConfigError("name at least one artifact to benchmark on the device")
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"{p}: no such artifact file (a device bench ships files; a CoreML package stays on macOS)")
    shipped = [(p.name, p.read_bytes()) for p in paths]
    img = _bench_image(image)
    settings = {"threads": threads, "warmup": warmup, "runs": runs, "memory_baseline": memory_baseline, "gemm": gemm}
    note = progress or (lambda msg: None)
    with ray_connection(address) as ray:
        have = ray.cluster_resources()
        if have.get(on, 0) < 1:
            devices = sorted(k for k in have if ":" in k and not k.startswith("node:"))
            raise ConfigError(f"no node of the Ray cluster carries resource {on!r} (it has: "
                              f"{', '.join(devices) or 'no custom resources'}); join the device with "
                              f"`ray start --address HEAD --num-cpus 0 --resources '{{\"{on}\": 1}}'`")
        note(f"{len(paths)} artifact(s) on {on}")
        task = ray.remote(device_bench).options(num_cpus=0, resources={on: 1}, max_retries=1,
                                                name=f"edgevit-bench on {on}")
        ref = task.remote(shipped, img, settings)
        ready, _ = ray.wait([ref], timeout=timeout)
        if not ready:
            ray.cancel(ref, force=True)
            raise EdgeVitError(f"the benchmark on {on} took longer than {timeout:.0f} s")
        try:
            done = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), EdgeVitError) else None
            if cause is not None:
                raise cause from None
            raise EdgeVitError(f"the benchmark on {on} failed: {str(exc).strip().splitlines()[-1][:500]}") from None
    rep = done["report"]
    local = {p.name: str(p) for p in paths}
    for row in rep["rows"]:
        row["artifact"] = local.get(row.get("name"), row.get("artifact"))
    machine = {**rep["machine"], **done["facts"], "ray_resource": on}
    return BenchReport(rep["rows"], machine, {**rep["settings"], "on": on}, rep["targets"])
