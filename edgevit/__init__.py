"""edgevit: get efficient Vision Transformers onto phones, Raspberry Pis and Macs, and prove
they are still the same model.

The package root is light (numpy + Pillow) and holds only what a device may import (errors,
metadata, preprocessing); the rooms below it say what they are for: ``compress`` (training loop,
distillation, pruning, QAT), ``measure`` (profile, bench, eval, results, report), ``data``
(datasets, calibration, sample photos), ``cli``. Host-side parts (catalog, converters, compress,
measure) need ``pip install 'edgevit[export]'``; device runtimes need one runtime extra each.
"""

from edgevit._torchvision_compat import install_import_hook as _install_import_hook
from edgevit._version import __version__
from edgevit.errors import (
    ArtifactError,
    ConfigError,
    ConversionError,
    DataError,
    EdgeVitError,
    ImageError,
    MissingDependencyError,
    ModelError,
    OutputExistsError,
    UnknownModelError,
    UnknownNameError,
    UnknownPrecisionError,
    UnknownRuntimeError,
    UnknownTargetError,
    VerificationError,
)
from edgevit.metadata import ArtifactMetadata

# `import edgevit; import timm` works on this stack: see edgevit/_torchvision_compat.py.
_install_import_hook()

__all__ = [
    "ArtifactError",
    "ArtifactMetadata",
    "ConfigError",
    "ConversionError",
    "DataError",
    "EdgeVitError",
    "ImageError",
    "MissingDependencyError",
    "ModelError",
    "OutputExistsError",
    "UnknownModelError",
    "UnknownNameError",
    "UnknownPrecisionError",
    "UnknownRuntimeError",
    "UnknownTargetError",
    "VerificationError",
    "__version__",
]
