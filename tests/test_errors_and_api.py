"""The public surface: exception tree, sorted __all__, registries' error messages."""

from __future__ import annotations

import pytest

import edgevit
from edgevit import errors


def test_all_is_sorted_and_complete():
    assert edgevit.__all__ == sorted(edgevit.__all__, key=lambda s: (s.startswith("_"), s))
    for name in edgevit.__all__:
        assert hasattr(edgevit, name)
    public_errors = {n for n in dir(errors) if n.endswith("Error") and isinstance(getattr(errors, n), type)}
    assert public_errors <= set(edgevit.__all__)


@pytest.mark.parametrize("name", [n for n in errors.__all__])
def test_every_error_derives_from_base(name):
    assert issubclass(getattr(errors, name), errors.EdgeVitError)


def test_unknown_name_suggests_closest():
    e = errors.UnknownModelError("mobilevit_xxxs", ["mobilevit_xxs", "mobilevit_xs", "deit_tiny"])
    assert "mobilevit_xxs" in str(e) and isinstance(e, ValueError)


def test_missing_dependency_names_pip_command():
    e = errors.MissingDependencyError("onnxruntime", "onnx", "run .onnx artifacts")
    assert "pip install 'edgevit[onnx]'" in str(e) and isinstance(e, ImportError)


def test_unknown_target_and_precision():
    from edgevit.converters import get_converter

    with pytest.raises(errors.UnknownTargetError, match="tflite"):
        get_converter("tflit")
    conv = get_converter("tflite")
    with pytest.raises(errors.UnknownPrecisionError, match="int8"):
        conv.make_config("int4")
    with pytest.raises(errors.ConfigError, match="no option"):
        conv.make_config("fp32", options={"bogus": 1})


def test_import_edgevit_then_timm_works_without_importing_torch_up_front():
    """`import edgevit` installs a hook, not torch; timm imported afterwards (directly, as users
    do) finds torchvision importable on this stack."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import edgevit\n"
        "assert 'torch' not in sys.modules, 'import edgevit pulled in torch'\n"
        "import timm\n"
        "m = timm.create_model('test_vit', pretrained=False)\n"
        "print(type(m).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "VisionTransformer"
