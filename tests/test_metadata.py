from __future__ import annotations

import json

import pytest

from edgevit.errors import ArtifactError
from edgevit.metadata import ArtifactMetadata


def _meta(**kw):
    base = dict(model="m", target="tflite", precision="fp32", input_size=(224, 224), mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5), labels=("a", "b"))
    base.update(kw)
    return ArtifactMetadata(**base)


def test_roundtrip():
    m = _meta(extra={"k": 1}, fallbacks=("x",))
    assert ArtifactMetadata.from_json(m.to_json()) == m


def test_unknown_fields_are_ignored_for_forward_compatibility():
    d = json.loads(_meta().to_json())
    d["future_field"] = 3
    assert ArtifactMetadata.from_dict(d).model == "m"


@pytest.mark.parametrize(
    "text,match",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"model": "m"}', "lacks required fields"),
        (json.dumps({**json.loads(_meta().to_json()), "schema_version": 99}), "newer"),
        (json.dumps({**json.loads(_meta().to_json()), "layout": "NCWH"}), "layout"),
        (json.dumps({**json.loads(_meta().to_json()), "std": [0, 1, 1]}), "std"),
        (json.dumps({**json.loads(_meta().to_json()), "labels": "abc"}), "must be a list"),
    ],
)
def test_malformed_metadata_is_rejected_clearly(text, match):
    with pytest.raises(ArtifactError, match=match):
        ArtifactMetadata.from_json(text)


def test_input_shape_layouts():
    assert _meta().input_shape(2) == (2, 3, 224, 224)
    assert _meta(layout="NHWC").input_shape() == (1, 224, 224, 3)
    gray = _meta(color_mode="L", mean=(0.2,), std=(0.3,))
    assert gray.input_shape() == (1, 1, 224, 224)
