from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
# CLI runs record results; keep them out of the user's ~/.cache during tests.
_RESULTS_DIR = tempfile.mkdtemp(prefix="edgevit-test-db-")
atexit.register(shutil.rmtree, _RESULTS_DIR, ignore_errors=True)  # one folder per run, gone with it
os.environ["EDGEVIT_RESULTS_DB"] = os.path.join(_RESULTS_DIR, "results.sqlite")

REPO = Path(__file__).resolve().parent.parent
FMNIST_WEIGHTS = REPO / "models" / "weights" / "vit_fmnist_tiny.safetensors"


@pytest.fixture(scope="session")
def photos():
    from edgevit.data.samples import natural_photos

    imgs = natural_photos()
    assert len(imgs) >= 5, "real sample photos (scikit-image, matplotlib, scikit-learn) must be installed"
    return imgs


@pytest.fixture(scope="session")
def has_fmnist_weights() -> bool:
    return FMNIST_WEIGHTS.is_file()
