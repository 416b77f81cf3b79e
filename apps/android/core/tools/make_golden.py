#!/usr/bin/env python3
"""Generate the golden fixtures of the Android core module's tests from the Python runtime.

For each case it writes the input image (PNG, decoded in Java with javax.imageio), the artifact
metadata JSON, and the tensor that ``edgevit.preprocess.preprocess`` makes of that image
(raw little-endian float32, or uint8 for fused-input artifacts; gzip-compressed). It also converts a tiny torch
model to a real ``.tflite`` with litert-torch and embeds edgevit metadata the way
``edgevit export`` does (once inline, once in a buffer after the flatbuffer, as large models
keep it), with the entries Python's reader finds in them.

    .venv/bin/python apps/android/core/tools/make_golden.py            # rewrite the fixtures
    .venv/bin/python apps/android/core/tools/make_golden.py --no-tflite  # images/tensors only

Needs the ``export`` extra (torch, litert-torch) for the .tflite fixtures and scikit-image for
the photo. The Java tests only read what this script wrote.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from edgevit.metadata import METADATA_KEY, ArtifactMetadata
from edgevit.preprocess import preprocess

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "src" / "test" / "resources" / "golden"
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _spec_metadata(catalog_name: str, **changes) -> ArtifactMetadata:
    """Metadata as ``edgevit export`` builds it for a catalog model, with ``changes`` applied."""
    from edgevit.models import get_spec

    spec = get_spec(catalog_name)
    meta = ArtifactMetadata(
        model=spec.name,
        target="tflite",
        precision="fp32",
        input_size=tuple(spec.input_size),
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        labels=tuple(spec.label_names()),
        color_mode=spec.color_mode,
        interpolation=spec.interpolation,
        crop_pct=spec.crop_pct,
        family=spec.family,
        attention=spec.attention,
        source=spec.source,
        weights="golden-fixture",
        edgevit_version="golden",
    )
    return meta.replace(**changes)


def _chelsea() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())  # 451x300 RGB, public domain


def _fashion_sample() -> tuple[str, Image.Image]:
    """A real Fashion-MNIST test image: edgevit's shipped sample if present, else the Debian set."""
    from edgevit.data.samples import FASHION_SAMPLES_DIR

    files = sorted(FASHION_SAMPLES_DIR.glob("*.png"))
    if files:
        return files[0].stem, Image.open(files[0]).convert("L")
    with gzip.open(FASHION_IDX, "rb") as f:
        data = f.read(16 + 28 * 28)
    return "t10k_0", Image.fromarray(np.frombuffer(data[16:], np.uint8).reshape(28, 28), mode="L")


def _with_alpha(img: Image.Image) -> Image.Image:
    """A crop of the photo with an alpha ramp covering 0..255 (exercises compositing over white)."""
    crop = img.crop((170, 40, 290, 130)).convert("RGBA")
    w, h = crop.size
    ramp = np.round(np.linspace(0, 255, w)).astype(np.uint8)
    alpha = np.tile(ramp, (h, 1))
    alpha[: h // 3] = 255  # a fully opaque band
    arr = np.asarray(crop).copy()
    arr[..., 3] = alpha
    return Image.fromarray(arr, mode="RGBA")


def write_images(out: Path) -> dict[str, str]:
    chelsea = _chelsea()
    fashion_name, fashion = _fashion_sample()
    images = {
        "chelsea": ("chelsea.png", chelsea),
        "chelsea_rgba": ("chelsea_rgba.png", _with_alpha(chelsea)),
        "fashion": (f"fashion_{fashion_name}.png", fashion),
    }
    for file, img in images.values():
        img.save(out / file, optimize=True)
    return {key: file for key, (file, _) in images.items()}


def golden_cases() -> list[tuple[str, str, ArtifactMetadata]]:
    """(case name, image key, metadata): the interpolations, layouts, colour modes and crops covered."""
    short = tuple(f"class_{i}" for i in range(10))
    return [
        # DeiT-Tiny as exported: 224, bicubic, crop 0.9 -> resize 248 (downscale 300 -> 248), NCHW
        ("deit_tiny_bicubic_nchw", "chelsea", _spec_metadata("deit_tiny_patch16_224")),
        # non-square input, NHWC, bilinear; the crop is taller than the resized image -> zero rows
        ("bilinear_nhwc_128x96", "chelsea", _spec_metadata(
            "deit_tiny_patch16_224", input_size=(128, 96), crop_pct=0.9, layout="NHWC",
            interpolation="bilinear", labels=short)),
        ("lanczos_96", "chelsea", _spec_metadata(
            "deit_tiny_patch16_224", input_size=(96, 96), interpolation="lanczos", labels=short)),
        ("nearest_64", "chelsea", _spec_metadata(
            "deit_tiny_patch16_224", input_size=(64, 64), crop_pct=1.0, interpolation="nearest", labels=short)),
        # the Fashion-MNIST model on a photo: RGB -> L, 300 -> 28 bilinear (support widened 10.7x)
        ("fmnist_on_photo", "chelsea", _spec_metadata("vit_fmnist_tiny")),
        # the Fashion-MNIST model on a real Fashion-MNIST image: no resize at all
        ("fmnist_sample", "fashion", _spec_metadata("vit_fmnist_tiny")),
        # upscaling a 28x28 image with bicubic (negative lobes, clipping)
        ("fmnist_upscale_bicubic", "fashion", _spec_metadata(
            "vit_fmnist_tiny", input_size=(64, 64), crop_pct=0.875, interpolation="bicubic")),
        # fused-input artifact: uint8 NHWC frame, no normalisation
        ("fused_uint8_96", "chelsea", _spec_metadata(
            "deit_tiny_patch16_224", input_size=(96, 96), fused_input=True, layout="NHWC", input_dtype="uint8",
            labels=short)),
        # translucent pixels composited over white, then upscaled (120x90 -> 128x96 bicubic, crop 84)
        ("rgba_over_white", "chelsea_rgba", _spec_metadata(
            "deit_tiny_patch16_224", input_size=(84, 84), labels=short)),
    ]


def write_golden(out: Path) -> list[dict]:
    images = write_images(out)
    cases = []
    for name, image_key, meta in golden_cases():
        image_file = images[image_key]
        # Preprocess from the written PNG, exactly what the Java test decodes.
        tensor = preprocess(out / image_file, meta)
        suffix = ".u8.gz" if tensor.dtype == np.uint8 else ".f32.gz"
        tensor_file = f"{name}{suffix}"
        raw = tensor.astype(tensor.dtype.newbyteorder("<")).tobytes()
        (out / tensor_file).write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
        meta_file = f"{name}.json"
        (out / meta_file).write_text(meta.to_json(), encoding="utf-8")
        cases.append({
            "name": name,
            "image": image_file,
            "metadata": meta_file,
            "tensor": tensor_file,
            "dtype": str(tensor.dtype),
            "shape": list(tensor.shape),
        })
    return cases


# ---- .tflite fixtures -------------------------------------------------------------------------


def describe_entries(data: bytes) -> dict:
    """What Python finds in a model: metadata entry names, sizes and hashes, the edgevit JSON, and
    the input/output tensors as LiteRT's interpreter reports them."""
    from ai_edge_litert.interpreter import Interpreter

    from edgevit.runtimes.tflite import read_tflite_metadata

    entries = read_tflite_metadata(data)
    interpreter = Interpreter(model_content=data)

    def tensors(details: list[dict]) -> list[dict]:
        return [
            {
                "name": d["name"],
                "shape": [int(v) for v in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]),
                "zero_point": int(d["quantization"][1]),
            }
            for d in details
        ]

    return {
        "entries": {k: {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()} for k, v in entries.items()},
        "edgevit": entries[METADATA_KEY].decode("utf-8") if METADATA_KEY in entries else None,
        "inputs": tensors(interpreter.get_input_details()),
        "outputs": tensors(interpreter.get_output_details()),
    }


def _tiny_tflite(meta: ArtifactMetadata) -> bytes:
    """A real (tiny) LiteRT model from litert-torch, with edgevit metadata embedded as export does."""
    import litert_torch
    import torch

    from edgevit.converters.tflite import embed_tflite_metadata

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 4, kernel_size=7, stride=7)
            self.head = torch.nn.Linear(4, len(meta.labels))

        def forward(self, x):
            return self.head(self.stem(x).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Tiny().eval()
    example = torch.zeros(meta.input_shape(1))
    edge = litert_torch.convert(model, (example,))
    return embed_tflite_metadata(edge.model_content(), METADATA_KEY, meta.to_json().encode("utf-8"))


def _move_metadata_after_flatbuffer(data: bytes, key: str) -> bytes:
    """Rewrite ``data`` so entry ``key`` lives after the flatbuffer (Buffer.offset/size), as in >2 GB models."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    entry = next(m for m in model.metadata if (m.name.decode() if isinstance(m.name, bytes) else m.name) == key)
    buffer = model.buffers[entry.buffer]
    payload = bytes(bytearray(buffer.data))
    buffer.data = None
    buffer.size = len(payload)
    buffer.offset = 1 << 40  # placeholder: a non-default value takes the same 8 bytes as the final one
    head = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    start = (len(head) + 15) // 16 * 16
    buffer.offset = start
    head = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    assert (len(head) + 15) // 16 * 16 == start, "flatbuffer size changed with the offset value"
    return head + b"\0" * (start - len(head)) + payload


def _with_input_quantization(data: bytes, scale: float, zero_point: int) -> bytes:
    """``data`` with per-tensor quantisation parameters recorded on its input tensor (read-back test
    of the fields an int8 model's input carries; the float model still runs)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    q = schema.QuantizationParametersT()
    q.scale = [scale]
    q.zeroPoint = [zero_point]
    graph.tensors[graph.inputs[0]].quantization = q
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _without_entry(data: bytes, key: str) -> bytes:
    """``data`` with metadata entry ``key`` removed (a plain litert-torch model, no edgevit metadata)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    model.metadata = [m for m in model.metadata if (m.name.decode() if isinstance(m.name, bytes) else m.name) != key]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def write_tflite(out: Path) -> list[dict]:
    meta = _spec_metadata(
        "vit_fmnist_tiny",
        model="tiny_fixture",
        weights="random-init (fixture)",
        # non-ASCII text travels as \\u escapes (json.dumps ensure_ascii), incl. a surrogate pair
        extra={"note": "caf\u00e9 \u2615 \U0001f408", "numbers": [1, -2.5e-3, 1e300], "nested": {"ok": True}},
    )
    inline = _tiny_tflite(meta)
    # the offset fixture also carries quantisation parameters on its input (0.0078125, -1)
    offset = _move_metadata_after_flatbuffer(_with_input_quantization(inline, 0.0078125, -1), METADATA_KEY)
    plain = _without_entry(inline, METADATA_KEY)
    fixtures = []
    for file, data in (("tiny_inline.tflite", inline), ("tiny_offset.tflite", offset), ("tiny_plain.tflite", plain)):
        (out / file).write_bytes(data)
        described = describe_entries(data)
        if file != "tiny_plain.tflite":
            assert described["edgevit"] == meta.to_json(), f"{file}: Python reads back different metadata"
        fixtures.append({"file": file, **described})
    return fixtures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture folder (default: %(default)s)")
    parser.add_argument("--no-tflite", action="store_true", help="skip the .tflite fixtures (no torch needed)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "golden.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    import PIL

    manifest = {
        "generator": "apps/android/core/tools/make_golden.py",
        "pillow": PIL.__version__,
        "cases": write_golden(args.out),
        "tflite": old.get("tflite", []) if args.no_tflite else write_tflite(args.out),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    total = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"wrote {len(manifest['cases'])} golden cases and {len(manifest['tflite'])} .tflite fixtures "
          f"to {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
