"""Checkpoints load safely: safetensors or weights_only torch files; pickles never execute."""

from __future__ import annotations

import pickle

import pytest
import torch

from edgevit.errors import ModelError
from edgevit.models import create_model
from edgevit.models.weights import save_weights

MODEL = "vit_fmnist_tiny"


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_roundtrip(tmp_path):
    src = create_model(MODEL)
    save_weights(src, tmp_path / "w.safetensors")
    assert _same(src, create_model(MODEL, weights=tmp_path / "w.safetensors"))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_torch_file_with_weights_only(tmp_path, wrap):
    src = create_model(MODEL)
    obj = src.state_dict() if wrap is None else {wrap: src.state_dict(), "epoch": 3}
    torch.save(obj, tmp_path / "w.pth")
    assert _same(src, create_model(MODEL, weights=tmp_path / "w.pth"))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/edgevit_pwned_marker",))


def test_malicious_pickle_does_not_run(tmp_path):
    import os

    marker = "/tmp/edgevit_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(ModelError, match="weights_only"):
        create_model(MODEL, weights=path)
    assert not os.path.exists(marker), "the pickle's payload ran"


def test_mismatched_weights_name_the_keys(tmp_path):
    other = create_model("vit_tiny_window")
    save_weights(other, tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="does not fit"):
        create_model(MODEL, weights=tmp_path / "other.safetensors")


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_broken_weight_files(tmp_path, content):
    for suffix in (".safetensors", ".pth"):
        p = tmp_path / f"w{suffix}"
        p.write_bytes(content)
        with pytest.raises(ModelError):
            create_model(MODEL, weights=p)
    with pytest.raises(ModelError, match="no such"):
        create_model(MODEL, weights=tmp_path / "missing.safetensors")
