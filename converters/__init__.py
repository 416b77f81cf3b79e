"""Host-side converters: export catalog models to device artifacts and verify them.

>>> from edgevit.converters import export
>>> result = export("mobilevit_xxs", target="tflite", out="out/")   # doctest: +SKIP
>>> result.verification.summary()                                    # doctest: +SKIP
"""

from edgevit._torchvision_compat import ensure_torchvision_importable as _ensure_torchvision

# Converters run beside torch: make torchvision (imported by timm and some converter stacks)
# importable before anything else imports it (see edgevit/_torchvision_compat.py).
try:
    import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover - the export extra is not installed
    pass
else:
    _ensure_torchvision()

from edgevit.converters.base import (
    PRECISIONS,
    ConvertOutput,
    Converter,
    DelegationReport,
    ExportConfig,
    available_targets,
    get_converter,
    register_converter,
)
from edgevit.converters.export import ExportResult, export
from edgevit.converters.verify import TOLERANCES, Tolerance, VerificationReport

__all__ = [
    "PRECISIONS",
    "TOLERANCES",
    "ConvertOutput",
    "Converter",
    "DelegationReport",
    "ExportConfig",
    "ExportResult",
    "Tolerance",
    "VerificationReport",
    "available_targets",
    "export",
    "get_converter",
    "register_converter",
]
