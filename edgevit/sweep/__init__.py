"""Sweeps: model sources x targets x precisions x options, every cell an export verified on real
photos (and optionally benchmarked), run in parallel local processes or as tasks of a Ray cluster;
and benchmarks on devices that joined that cluster.

>>> from edgevit.sweep import sweep
>>> report = sweep(["vit_fmnist_*"], targets=["tflite", "onnx"], precisions=["fp32"], out="zoo/")  # doctest: +SKIP
>>> report = sweep(["mobilevit_*"], ray="auto", out="zoo/")        # every cell a Ray task  # doctest: +SKIP

How a cell runs (:func:`run_cell`, the same locally and on a Ray node): the export happens in a
fresh child process (``python -m edgevit.sweep.cell SPEC PARENT``) whose stdout and stderr go
to a log file, so a converter that segfaults, runs out of memory or hangs takes only its own cell
down and still leaves its log tail and exit signal. The cell returns the artifact's bytes, the
export result and that log tail; nothing is shared through a file system. The driver (the process
that called :func:`sweep`) writes the artifacts under ``out`` with the atomic publish of
:mod:`edgevit.converters._output` and is the only writer of the results database.

Each cell is keyed by (model source, weights digest, target, precision, options, edgevit
version). A rerun skips cells whose latest record is verified (or structural, for CoreML on Linux)
and whose artifact is still under ``out`` (``redo=True`` forces), so an interrupted sweep resumes.
A cell whose child process crashed is run once more (locally: submitted again; on Ray: a new task,
on another node when one can take it); a Ray worker or node lost mid-task is retried once by Ray
itself (``max_retries=1``).

Devices: a box joins the cluster with a custom resource (``ray start --address HEAD --num-cpus 0
--resources '{"device:rpi5": 1}'``) and :func:`bench_on` ships artifact bytes to it and runs
:func:`edgevit.measure.bench.bench` there. The device task imports only the standard library,
``edgevit.runtimes`` and the torch-free measure code; it runs with torch made unimportable, as on
a device install, and returns the device's facts (CPU, cores, OS, runtime versions) beside the
figures.

Modules: ``plan`` (the cells and their keys), ``cell`` (one cell in a child process, wherever it
runs), ``driver`` (:func:`sweep`: local threads or Ray tasks, retries, publish, the database),
``cluster`` (Ray, imported only when asked for, and benchmarks on devices). Their tops import only
the standard library and edgevit's device-safe core: Ray workers on devices import them, and a
local sweep never imports Ray.
"""

from edgevit.sweep.cell import run_cell
from edgevit.sweep.cluster import CLUSTER_HINT, bench_on, device_facts
from edgevit.sweep.driver import SweepReport, default_jobs, sweep
from edgevit.sweep.plan import Cell, expand_sources, plan

__all__ = ["CLUSTER_HINT", "Cell", "SweepReport", "bench_on", "default_jobs", "device_facts", "expand_sources", "plan",
           "run_cell", "sweep"]
