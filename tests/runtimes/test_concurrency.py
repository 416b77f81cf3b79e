"""Concurrency: one loaded artifact shared by many threads, one artifact per thread, several
runtimes at once, and thread-safe image loading.

``Runtime.run`` serialises calls with a lock, so a shared :class:`Classifier` must give every
thread exactly the logits a single thread gets (same runtime, same thread count, same input:
bit-identical, tolerance 0). Real photos (scikit-image, matplotlib, scikit-learn) and the shipped
Fashion-MNIST test images are the inputs, each thread walking them in its own order.
"""

from __future__ import annotations

import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

# tests/fuzz is on sys.path through this folder's conftest.py
import reliability_harness as harness  # noqa: E402

from edgevit.runtimes import Classifier, available_runtimes  # noqa: E402

THREADS = 8
PER_THREAD = 25
# Runtimes that execute on this machine (CoreML predicts only on macOS).
RUNNABLE = [r for r in sorted(available_runtimes()) if r != "coreml" or sys.platform == "darwin"]


@pytest.fixture(scope="module")
def artifacts() -> dict[str, Path]:
    return harness.runtime_artifacts()


@pytest.fixture(scope="module")
def images(photos):
    from edgevit.data.samples import fashion_samples

    imgs = [img for _, img in photos] + [img for _, img in fashion_samples()]
    assert len(imgs) >= 20
    return imgs


def _artifact(artifacts, runtime):
    return harness.artifact_for(runtime)


def _hammer(fn, n_threads: int = THREADS) -> list:
    """Run ``fn(thread_index)`` on ``n_threads`` threads released together; return the results."""
    start = threading.Barrier(n_threads)

    def run(t):
        start.wait()
        return fn(t)

    with ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(run, range(n_threads)))


def _order(t: int, n: int) -> list[int]:
    """Thread ``t``'s walk over ``n`` images: a different start and stride per thread."""
    stride = [1, 2, 3, 4, 5, 6, 7, 8][t % 8]
    while np.gcd(stride, n) != 1:
        stride += 1
    return [(t * 3 + k * stride) % n for k in range(PER_THREAD)]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNNABLE)
def test_one_classifier_shared_by_many_threads(runtime, artifacts, images):
    clf = Classifier.load(_artifact(artifacts, runtime))
    reference = [clf.logits(img)[0] for img in images]  # single-threaded, same instance

    def work(t):
        return [(i, clf.logits(images[i])[0]) for i in _order(t, len(images))]

    results = [pair for thread in _hammer(work) for pair in thread]
    assert len(results) == THREADS * PER_THREAD
    mismatched = [i for i, logits in results if not np.array_equal(logits, reference[i])]
    assert not mismatched, f"{len(mismatched)} of {len(results)} concurrent predictions differ from single-threaded"
    harness.record("concurrency", f"{runtime}-shared", predictions=len(results), mismatches=len(mismatched))


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNNABLE)
def test_one_classifier_per_thread(runtime, artifacts, images):
    art = _artifact(artifacts, runtime)
    # ExecuTorch's thread pool is process-wide (threads=None keeps it); the others get one
    # intra-op thread each so every instance computes the same way.
    threads = None if runtime == "executorch" else 1
    ref_clf = Classifier.load(art, threads=threads)
    reference = [ref_clf.logits(img)[0] for img in images]

    def work(t):
        own = Classifier.load(art, threads=threads)
        return [(i, own.logits(images[i])[0]) for i in _order(t, len(images))]

    results = [pair for thread in _hammer(work) for pair in thread]
    assert len(results) == THREADS * PER_THREAD
    mismatched = [i for i, logits in results if not np.array_equal(logits, reference[i])]
    assert not mismatched, f"{len(mismatched)} of {len(results)} predictions differ from the reference instance"
    harness.record("concurrency", f"{runtime}-per-thread", predictions=len(results), mismatches=len(mismatched))


@pytest.mark.slow
def test_several_runtimes_at_once(artifacts, images):
    """A multi-model app: threads hit different runtimes' classifiers at the same time."""
    clfs = {r: Classifier.load(_artifact(artifacts, r)) for r in RUNNABLE}
    reference = {r: [c.logits(img)[0] for img in images] for r, c in clfs.items()}
    names = sorted(clfs)

    def work(t):
        out = []
        for k, i in enumerate(_order(t, len(images))):
            r = names[(t + k) % len(names)]
            out.append((r, i, clfs[r].logits(images[i])[0]))
        return out

    results = [x for thread in _hammer(work) for x in thread]
    mismatched = [(r, i) for r, i, logits in results if not np.array_equal(logits, reference[r][i])]
    assert not mismatched, mismatched[:5]
    harness.record("concurrency", "mixed-runtimes", predictions=len(results), mismatches=len(mismatched))


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNNABLE)
def test_run_is_serialised_by_the_runtime_lock(runtime, artifacts, images):
    """The documented contract: one loaded artifact never runs two batches at once."""
    clf = Classifier.load(_artifact(artifacts, runtime))
    rt = clf.runtime
    inner = rt._run
    active = [0]
    peak = [0]
    guard = threading.Lock()

    def counting(batch):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return inner(batch)
        finally:
            with guard:
                active[0] -= 1

    rt._run = counting
    batches = [clf.preprocess(img) for img in images[:THREADS]]
    _hammer(lambda t: [rt.run(batches[t]) for _ in range(5)])
    assert peak[0] == 1


def test_concurrent_image_loading_leaves_global_warning_filters_alone(tmp_path, photos):
    """load_image must not change process-wide state: an app that loads images on several
    threads must not find Pillow's DecompressionBombWarning turned into an error everywhere (or
    the guard switched off in another thread). ``warnings.catch_warnings`` is not thread-safe."""
    from edgevit.preprocess import load_image

    path = tmp_path / "photo.png"
    photos[0][1].resize((32, 32)).save(path)
    before = list(warnings.filters)
    _hammer(lambda t: [load_image(path) for _ in range(200)])
    assert list(warnings.filters) == before
