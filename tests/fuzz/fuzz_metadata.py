"""Fuzz target: ``ArtifactMetadata.from_json`` on arbitrary bytes (the metadata every runtime
reads out of an artifact). Only :class:`ArtifactError` may come out, and whatever parses must
serialise back to the same JSON.

    python tests/fuzz/fuzz_metadata.py CORPUS_DIR -max_total_time=60 -dict=tests/fuzz/metadata.dict
"""

from __future__ import annotations

import atheris

import fuzz_common

with atheris.instrument_imports(include=["edgevit.metadata"]):
    from edgevit.errors import ArtifactError
    from edgevit.metadata import ArtifactMetadata


def make_seeds() -> dict[str, bytes]:
    from edgevit.data.datasets import FASHION_MNIST_CLASSES

    base = ArtifactMetadata(
        model="vit_fmnist_tiny", target="tflite", precision="fp32", input_size=(28, 28), mean=(0.286,),
        std=(0.353,), labels=FASHION_MNIST_CLASSES, color_mode="L", interpolation="bilinear", crop_pct=1.0,
        family="vit", attention="global", source="edgevit", weights="edgevit:fmnist", edgevit_version="0.1.0",
        created="2026-11-25T12:00:00+00:00",
    )
    fused = base.replace(model="mobilevit_xxs", input_size=(256, 256), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         labels=tuple(f"class {i}" for i in range(20)), color_mode="RGB", layout="NHWC",
                         input_dtype="uint8", fused_input=True, fallbacks=("attention:reference",),
                         extra={"model_color_mode": "L", "nested": {"a": [1, 2.5, None, True]}})
    return {"seed-gray.json": base.to_json().encode(), "seed-fused.json": fused.to_json().encode(),
            "seed-min.json": b'{"model":"m","target":"onnx","precision":"fp16","input_size":[1,1],'
                             b'"mean":[0,0,0],"std":[1,1,1],"labels":[]}'}


def test_one_input(data: bytes) -> None:
    try:
        meta = ArtifactMetadata.from_json(data)
    except ArtifactError:
        return
    text = meta.to_json()
    again = ArtifactMetadata.from_json(text)
    assert again.to_json() == text, "metadata does not survive a to_json/from_json round trip"
    meta.input_shape(2)


if __name__ == "__main__":
    fuzz_common.main(test_one_input, make_seeds)
