"""Host-side converters: export catalog models to device artifacts and verify them.

>>> from edgevit.converters import export
>>> result = export("mobilevit_xxs", target="tflite", out="out/")   # doctest: +SKIP
>>> result.verification.summary()                                    # doctest: +SKIP
"""

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
