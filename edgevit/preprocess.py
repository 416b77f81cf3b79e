"""Torch-free image loading and preprocessing (Pillow + numpy).

This is the reference preprocessing every artifact declares in its metadata: decode, convert to
the model's colour mode, resize the shorter side to ``size / crop_pct``, centre-crop to ``size``,
scale to [0, 1], normalise with mean/std, lay out as NCHW or NHWC. With a fused-input artifact the
last three steps happen inside the model and the frame is fed as uint8 NHWC.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgevit.errors import ImageError
from edgevit.metadata import ArtifactMetadata

__all__ = ["ImageInput", "load_image", "preprocess", "resize_and_crop"]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# Images above this many pixels are refused before decoding (decompression-bomb guard): Pillow's
# own threshold, ~9.5k x 9.5k (Pillow itself refuses twice that at open).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def _to_8bit(img: Image.Image) -> Image.Image:
    """Convert 16/32-bit integer and float images to 8-bit grayscale keeping the full range."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)
    arr = arr.astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0):
        scaled = arr / 257.0
    else:  # 'F' or signed 32-bit: stretch the observed range
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _convert_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels over white, as a viewer shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(mode)


def _too_large(name: str, width: int | None, height: int | None, pixels: int | None = None) -> str:
    size = f"{width}x{height} pixels" if width and height else f"{pixels:,} pixels" if pixels else "too many pixels"
    return (f"{name} has {size}, over the {MAX_PIXELS:,} pixel limit (a possible decompression bomb); "
            "downscale it first")


def _bomb_pixels(exc: Exception) -> int | None:
    """The pixel count Pillow's refusal quotes ("Image size (N pixels) exceeds limit of ...")."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def load_image(source: ImageInput, mode: str = "RGB") -> Image.Image:
    """Open ``source`` (path, PIL image or HxW[xC] uint8 array) as a decoded image in ``mode``.

    Grayscale, palette, alpha, 16-bit and CMYK images are converted; EXIF orientation is applied.
    Anything that cannot be decoded raises :class:`ImageError` naming the file and the problem.
    """
    name = "<array>"
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            raise ImageError(f"image arrays must be uint8 HxW or HxWx3/4, got dtype {arr.dtype}")
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or 0 in arr.shape:
            raise ImageError(f"image arrays must be uint8 HxW or HxWx3/4, got shape {arr.shape}")
        img = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    elif isinstance(source, Image.Image):
        img = source
        name = "<PIL image>"
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image")
        if path.stat().st_size == 0:
            raise ImageError(f"{path} is empty (0 bytes)")
        try:
            # Pillow warns above its limit and refuses above twice it; both become one refusal
            # here, quoting one limit (edgevit's, which is Pillow's own threshold). The CLI turns
            # the warning into an error for its own process (edgevit.cli.main); no process-wide
            # filter is changed here (warnings.catch_warnings is not thread-safe).
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(_too_large(str(path), img.width, img.height))
            img.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(_too_large(str(path), None, None, _bomb_pixels(exc))) from None
        except UnidentifiedImageError:
            raise ImageError(f"{path} is not an image Pillow can decode") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{path} could not be decoded (truncated or corrupt?): {exc}") from None
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{name} has zero size ({img.width}x{img.height})")
    if img.width * img.height > MAX_PIXELS:
        raise ImageError(_too_large(name, img.width, img.height))
    try:
        img = ImageOps.exif_transpose(img)
        return _convert_mode(img, mode)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name} could not be converted to {mode}: {exc}") from None


def resize_and_crop(img: Image.Image, meta: ArtifactMetadata) -> Image.Image:
    """Resize the shorter side to ``size / crop_pct`` and centre-crop to the model's input size."""
    th, tw = meta.input_size
    resample = _RESAMPLE.get(meta.interpolation, Image.Resampling.BICUBIC)
    scale_size = math.floor(min(th, tw) / meta.crop_pct)
    w, h = img.size
    if w <= h:
        nw, nh = scale_size, max(1, int(scale_size * h / w))
    else:
        nh, nw = scale_size, max(1, int(scale_size * w / h))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    left = int(round((nw - tw) / 2.0))
    top = int(round((nh - th) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def preprocess(source: ImageInput, meta: ArtifactMetadata) -> np.ndarray:
    """Turn an image into the batch-of-one tensor the artifact takes (its dtype and layout)."""
    img = resize_and_crop(load_image(source, meta.color_mode), meta)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if meta.fused_input:
        # The model normalises internally and takes the frame as the camera gives it.
        return np.ascontiguousarray(arr[None])
    x = arr.astype(np.float32) / 255.0
    x = (x - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    if meta.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)
