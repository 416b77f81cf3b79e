"""The edgevit model catalog.

>>> from edgevit.models import create_model, list_models
>>> list_models("deit*")                                    # doctest: +SKIP
>>> model = create_model("mobilevit_xxs")                   # doctest: +SKIP
"""

from edgevit.models._registry import (
    ATTENTION_KINDS,
    ModelSpec,
    create_model,
    get_spec,
    list_models,
    register_model,
)
from edgevit.models.catalog_edgevit import DEFAULT_MODEL

__all__ = [
    "ATTENTION_KINDS",
    "DEFAULT_MODEL",
    "ModelSpec",
    "create_model",
    "get_spec",
    "list_models",
    "register_model",
]
