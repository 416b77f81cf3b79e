"""Demo media made from real photos: a short "video" (animated GIF) or an image folder.

The photos are the real sample images edgevit knows about (:func:`edgevit.data.samples.sample_images`):
Fashion-MNIST test images for Fashion-MNIST models, then natural photos (shipped with edgevit, matplotlib,
scikit-learn sample data where installed). Each photo is letterboxed into a fixed-size frame and
shown for a few frames with a slow zoom, so the stream really moves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

__all__ = ["build_demo_media", "demo_frames", "label_set_for", "write_folder", "write_gif"]

# Class names that only the Fashion-MNIST label set has (models/labels.py spells them this way).
_FASHION_MARKERS = {"T-shirt/top", "Trouser", "Ankle boot", "Sneaker"}


def label_set_for(metadata: Any) -> str:
    """``"fashion-mnist"`` for an artifact whose labels are Fashion-MNIST's, else ``"imagenet"``."""
    labels = set(getattr(metadata, "labels", ()) or ())
    return "fashion-mnist" if _FASHION_MARKERS <= labels else "imagenet"


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    small = image.width * 4 <= size[0] or image.height * 4 <= size[1]
    method = Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC  # keep tiny images crisp
    return ImageOps.pad(image, size, method=method, color=(0, 0, 0))


def demo_frames(
    images: Sequence[tuple[str, Image.Image]],
    size: tuple[int, int] = (320, 240),
    frames_per_image: int = 6,
    zoom: float = 0.12,
) -> list[tuple[str, Image.Image]]:
    """``frames_per_image`` frames per photo, letterboxed to ``size`` with a slow centre zoom."""
    if frames_per_image < 1:
        raise ValueError("frames_per_image must be >= 1")
    w, h = size
    out: list[tuple[str, Image.Image]] = []
    for name, image in images:
        base = _fit(image, size)
        for j in range(frames_per_image):
            scale = 1.0 + zoom * (j / max(1, frames_per_image - 1))
            cw, ch = w / scale, h / scale
            box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
            out.append((f"{name}_{j:02d}", base.resize(size, Image.Resampling.BILINEAR, box=box)))
    return out


def write_gif(frames: Sequence[tuple[str, Image.Image]], path: str | os.PathLike, fps: float = 10.0) -> Path:
    """An endlessly looping animated GIF of ``frames`` (each quantised to its own 256 colours)."""
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    # Fast octree quantisation: ~100x quicker than Pillow's default median cut for GIF frames.
    paletted = [img.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE) for _, img in frames]
    first, *rest = paletted
    first.save(path, save_all=True, append_images=rest, duration=max(10, round(1000 / fps)), loop=0)
    return path


def write_folder(frames: Sequence[tuple[str, Image.Image]], folder: str | os.PathLike) -> Path:
    """The frames as numbered PNG files (lossless) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, img) in enumerate(frames):
        img.save(folder / f"{i:04d}_{name}.png")
    return folder


def build_demo_media(
    metadata: Any,
    out_dir: str | os.PathLike,
    kind: str = "gif",
    size: tuple[int, int] = (320, 240),
    frames_per_image: int = 6,
    limit: int | None = None,
) -> Path:
    """Write a demo GIF (``kind="gif"``) or image folder (``"folder"``) of real photos suited to
    the artifact's labels into ``out_dir`` and return its path."""
    from edgevit.data.samples import sample_images

    images = sample_images(label_set_for(metadata), limit=limit)
    frames = demo_frames(images, size=size, frames_per_image=frames_per_image)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "gif":
        return write_gif(frames, out_dir / "demo.gif")
    if kind == "folder":
        return write_folder(frames, out_dir / "frames")
    raise ValueError(f"kind must be 'gif' or 'folder', got {kind!r}")
