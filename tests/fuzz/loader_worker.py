"""Load artifact files one after another and report each outcome as a JSON line.

Run by the reliability tests in a child process, so that a loader that crashes the interpreter
(a segfault or abort in a native engine) is seen as a dead child instead of a dead test run:

    python tests/fuzz/loader_worker.py MANIFEST [RUNTIME]

MANIFEST holds one artifact path per line. For each line ``i`` the worker prints
``{"start": i}`` before touching the file, then one result line::

    {"i": i, "stage": "load"|"run", "outcome": "ok"|"edgevit"|"other", "type": ..., "msg": ...}

``stage`` is where it stopped: an artifact that loads is also run once on a zero batch of its
declared shape and dtype. Where the runtime refuses a valid artifact because it cannot execute
on this OS (CoreML off macOS), the worker reads its metadata with the any-OS reader instead
(stage "metadata"). ``outcome`` "edgevit" is an :class:`EdgeVitError` (a clear error),
"other" any other exception (a bug: it escaped the loader). If the child dies, the parent knows
the case from the last ``start`` line and restarts the worker after it. ``RUNTIME`` forces a
runtime by name (default: chosen by suffix, as ``edgevit predict`` does).
"""

from __future__ import annotations

import gc
import json
import sys


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    import numpy as np

    from edgevit.errors import EdgeVitError
    from edgevit.runtimes import load

    manifest = argv[1]
    runtime = argv[2] if len(argv) > 2 and argv[2] else None
    first = int(argv[3]) if len(argv) > 3 else 0
    paths = [line.rstrip("\n") for line in open(manifest, encoding="utf-8") if line.strip()]
    for i in range(first, len(paths)):
        _emit({"start": i})
        stage = "load"
        rt = None
        try:
            try:
                rt = load(paths[i], runtime=runtime)
            except EdgeVitError as exc:
                if type(exc).__name__ != "UnsupportedPlatformError":
                    raise
                stage = "metadata"
                from edgevit.runtimes.coreml import read_coreml_metadata

                read_coreml_metadata(paths[i])
                _emit({"i": i, "stage": stage, "outcome": "ok", "type": "", "msg": ""})
                continue
            stage = "run"
            meta = rt.metadata
            dtype = np.uint8 if meta.input_dtype == "uint8" else np.float32
            out = rt.run(np.zeros(meta.input_shape(1), dtype))
            if out.ndim != 2 or out.shape[0] != 1:
                raise AssertionError(f"bad output shape {out.shape}")
            _emit({"i": i, "stage": stage, "outcome": "ok", "type": "", "msg": ""})
        except EdgeVitError as exc:
            _emit({"i": i, "stage": stage, "outcome": "edgevit", "type": type(exc).__name__, "msg": str(exc)[:300]})
        except Exception as exc:  # noqa: BLE001 - the point is to see what escapes
            _emit({"i": i, "stage": stage, "outcome": "other", "type": type(exc).__name__, "msg": str(exc)[:300]})
        finally:
            del rt
            if i % 16 == 15:  # a full collection takes ~1 s once torch is imported: not every case
                gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
