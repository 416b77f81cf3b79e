"""The device path (runtimes + predict CLI) must work without torch or timm, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

BLOCKER = textwrap.dedent(
    """
    import sys
    class _Block:
        # Make torch/timm/torchvision unimportable, as on a device without them.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "timm", "torchvision"}:
                raise ImportError(f"{name} is blocked: the device runtime must not import it")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, has_fmnist_weights):
    from edgevit.converters import export

    out = tmp_path_factory.mktemp("torchfree")
    return export("vit_fmnist_tiny", "tflite", out=out, pretrained=has_fmnist_weights).path


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_runtime_api_without_torch(artifact):
    from edgevit.data.samples import FASHION_SAMPLES_DIR, natural_photos

    img = next(iter(sorted(FASHION_SAMPLES_DIR.glob("*.png"))), None)
    if img is None:
        import tempfile

        img = tempfile.mktemp(suffix=".png")
        natural_photos(1)[0][1].save(img)
    proc = _run(
        f"""
        from edgevit.runtimes import Classifier
        clf = Classifier.load({str(artifact)!r})
        preds = clf.predict({str(img)!r}, top_k=3)
        assert len(preds) == 3
        mods = [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision')]
        assert not mods, mods
        print("ok", preds[0].label)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_predict_cli_without_torch(artifact, tmp_path, photos):
    img = tmp_path / "photo.jpg"
    photos[0][1].save(img)
    proc = _run(
        f"""
        from edgevit.cli import main
        rc = main(["predict", {str(artifact)!r}, {str(img)!r}, "--json", "--top-k", "4"])
        assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')]
        sys.exit(rc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1 and len(lines[0]["top_k"]) == 4
    assert set(lines[0]["top_k"][0]) == {"index", "label", "score"}
