"""The edgevit model catalog.

>>> from edgevit.models import create_model, list_models
>>> list_models("deit*")                                    # doctest: +SKIP
>>> model = create_model("mobilevit_xxs")                   # doctest: +SKIP
"""

from edgevit.models._registry import (
    ATTENTION_KINDS,
    ModelSpec,
    create_model,
    ensure_catalog,
    get_spec,
    is_builtin,
    list_models,
    register_model,
    unregister_model,
)

ensure_catalog()  # the shipped catalog modules register their entries (marked as built in)

import edgevit.models.sources  # noqa: E402,F401  (timm:, hf: and folder sources for get_spec())

from edgevit.models.catalog_edgevit import DEFAULT_MODEL  # noqa: E402

__all__ = [
    "ATTENTION_KINDS",
    "DEFAULT_MODEL",
    "ModelSpec",
    "create_model",
    "get_spec",
    "is_builtin",
    "list_models",
    "register_model",
    "unregister_model",
]
