"""Plumbing shared by the atheris fuzz targets in this folder.

Each target is a script: ``python tests/fuzz/fuzz_<name>.py [CORPUS_DIR] [libFuzzer flags]``,
for example ``python tests/fuzz/fuzz_load_image.py /tmp/corpus -max_total_time=60``. An empty or
missing corpus folder is filled with the target's seeds first. A target may raise only
:class:`edgevit.errors.EdgeVitError`; any other exception, or a native crash, stops the fuzzer
with a non-zero exit and a ``crash-*`` file holding the input (``-artifact_prefix=DIR/``).

``tests/test_fuzz.py`` runs every target for a bounded time in a child process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def take_option(argv: list[str], name: str) -> str | None:
    """Remove ``--name=VALUE`` (a flag of ours, not libFuzzer's) from ``argv``; return VALUE."""
    prefix = f"--{name}="
    for arg in list(argv):
        if arg.startswith(prefix):
            argv.remove(arg)
            return arg[len(prefix):]
    return None


def real_artifact(argv: list[str], target: str) -> Path:
    """The real artifact named by ``--artifact=PATH``, or a fresh export of ``vit_fmnist_tiny``
    (needs the export extra; takes a minute) when run without one."""
    given = take_option(argv, "artifact")
    if given:
        return Path(given)
    import reliability_harness

    return reliability_harness.exported_artifacts((target,))[target]


def corpus_dir(argv: list[str]) -> Path | None:
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return Path(arg)
    return None


def seed_corpus(argv: list[str], make_seeds: Callable[[], dict[str, bytes]]) -> int:
    """Write the seeds into the corpus folder named on the command line if it is empty;
    return the largest seed's size (for ``-max_len``)."""
    folder = corpus_dir(argv)
    if folder is None:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in folder.iterdir() if p.is_file()]
    if existing:
        return max(p.stat().st_size for p in existing)
    seeds = make_seeds()
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    return max((len(d) for d in seeds.values()), default=0)


def with_default_flags(argv: list[str], max_len: int) -> list[str]:
    """Add ``-max_len`` (large enough for the seeds) unless the caller chose one."""
    out = list(argv)
    if max_len and not any(a.startswith("-max_len=") for a in argv):
        out.append(f"-max_len={max_len + 1024}")
    return out


def scratch_file(suffix: str) -> Path:
    """A per-process scratch path on the fastest temporary storage available."""
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="edgevit-fuzz-", dir=base))
    import atexit
    import shutil

    atexit.register(shutil.rmtree, folder, True)
    return folder / f"input{suffix}"


def main(test_one_input: Callable[[bytes], None], make_seeds: Callable[[], dict[str, bytes]]) -> None:
    import atheris

    argv = with_default_flags(sys.argv, seed_corpus(sys.argv, make_seeds))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def load_and_run(path: Path, runtime: str) -> None:
    """Load ``path`` with the named runtime and run it once on a zero batch of its declared
    shape; an :class:`EdgeVitError` is the only acceptable failure."""
    import numpy as np

    from edgevit.errors import EdgeVitError
    from edgevit.runtimes import load

    try:
        rt = load(path, runtime=runtime)
        meta = rt.metadata
        out = rt.run(np.zeros(meta.input_shape(1), np.uint8 if meta.input_dtype == "uint8" else np.float32))
    except EdgeVitError:
        return
    assert out.shape[0] == 1, f"bad output shape {out.shape}"
