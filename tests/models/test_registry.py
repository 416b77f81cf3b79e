"""The catalog registry: shipped entries are protected, run-time entries can be replaced/removed."""

import dataclasses

import pytest

from edgevit.models import get_spec, is_builtin, list_models, register_model, unregister_model


def test_shipped_entries_are_builtin_and_protected():
    spec = get_spec("vit_fmnist_tiny")
    assert is_builtin("vit_fmnist_tiny")
    with pytest.raises(ValueError, match="already registered"):
        register_model(spec)
    with pytest.raises(ValueError, match="shipped catalog entry"):
        register_model(spec, replace=True)
    with pytest.raises(ValueError, match="shipped catalog entry"):
        unregister_model("vit_fmnist_tiny")


def test_runtime_entries_replace_unregister_and_stay_out_of_builtin_listing():
    base = get_spec("vit_fmnist_tiny")
    name = "vit_fmnist_tiny_registry_test"
    register_model(dataclasses.replace(base, name=name, description="first"))
    try:
        assert not is_builtin(name)
        assert name in list_models() and name not in list_models(builtin_only=True)
        with pytest.raises(ValueError, match="replace=True"):
            register_model(dataclasses.replace(base, name=name))
        register_model(dataclasses.replace(base, name=name, description="second"), replace=True)
        assert get_spec(name).description == "second"
    finally:
        unregister_model(name)
    assert name not in list_models()
