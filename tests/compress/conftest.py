"""Shared by the compression tests (train, distill, prune, QAT): a vit_fmnist_tiny that has learned
Fashion-MNIST."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> str:
    """A vit_fmnist_tiny that has learned Fashion-MNIST: the shipped weights, or (until they are
    shipped) one quick run on 3,000 real images, shared by this session's test modules."""
    from edgevit.models import get_spec
    from edgevit.models._registry import WEIGHTS_DIR

    spec = get_spec("vit_fmnist_tiny")
    if spec.embedded_weights and (WEIGHTS_DIR / spec.embedded_weights).is_file():
        return str(WEIGHTS_DIR / spec.embedded_weights)
    folder = tmp_path_factory.getbasetemp() / "edgevit-trained-tiny"
    weights = folder / "vit_fmnist_tiny.safetensors"
    if not weights.is_file():
        from edgevit.compress.training import train

        train("vit_fmnist_tiny", "fashion-mnist", epochs=2, batch_size=32, augment=False, train_limit=3000,
              test_limit=500, out=folder, force=True, progress=False)
    return str(weights)
