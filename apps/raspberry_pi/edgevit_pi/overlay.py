"""Draw the top-k labels, scores and FPS over a frame with Pillow, and encode it as JPEG."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["annotate", "display_size", "encode_jpeg"]

MIN_DISPLAY_WIDTH = 320  # tiny frames (a 28x28 test image) are enlarged so the text fits


def display_size(size: tuple[int, int], max_width: int) -> tuple[int, int]:
    """The size a frame is shown at: at most ``max_width`` wide, at least 320 wide."""
    w, h = size
    target = min(max(w, MIN_DISPLAY_WIDTH), max_width)
    if target == w:
        return w, h
    return target, max(1, round(h * target / w))


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType: the bitmap font
        return ImageFont.load_default()


def annotate(
    image: Image.Image,
    predictions: Sequence[Mapping[str, Any]],
    *,
    fps: float | None = None,
    latency_ms: float | None = None,
    status: str = "",
    max_width: int = 960,
) -> Image.Image:
    """A copy of ``image`` (resized for display) with a translucent panel listing the
    predictions (``label``, ``score``) and a line with FPS, latency and ``status``."""
    size = display_size(image.size, max_width)
    frame = image.convert("RGB")
    if size != frame.size:
        resample = Image.Resampling.NEAREST if size[0] > frame.width * 2 else Image.Resampling.BILINEAR
        frame = frame.resize(size, resample)
    w, h = frame.size
    font_px = max(11, min(28, h // 22))
    font = _font(font_px)
    line_h = int(font_px * 1.35)
    pad = max(4, font_px // 3)

    lines = [f"{p['label']}  {100.0 * float(p['score']):5.1f}%" for p in predictions]
    stats = []
    if fps is not None:
        stats.append(f"{fps:4.1f} FPS")
    if latency_ms is not None:
        stats.append(f"{latency_ms:.1f} ms")
    if status:
        stats.append(status)
    if stats:
        lines.append("  ".join(stats))
    if not lines:
        return frame

    panel = Image.new("RGBA", frame.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(panel)
    text_w = max(draw.textlength(line, font=font) for line in lines)
    box_w = min(w, int(text_w) + 2 * pad)
    box_h = min(h, line_h * len(lines) + 2 * pad)
    draw.rectangle((0, 0, box_w, box_h), fill=(0, 0, 0, 150))
    bar_max = max(1, box_w - 2 * pad)
    for i, line in enumerate(lines):
        y = pad + i * line_h
        is_prediction = i < len(predictions)
        if is_prediction:  # a thin score bar under each label
            score = max(0.0, min(1.0, float(predictions[i]["score"])))
            draw.rectangle((pad, y + line_h - 3, pad + int(bar_max * score), y + line_h - 2), fill=(80, 200, 120, 220))
        color = (255, 255, 255, 255) if i == 0 and is_prediction else (220, 220, 220, 255)
        draw.text((pad, y), line, font=font, fill=color)
    out = Image.alpha_composite(frame.convert("RGBA"), panel)
    return out.convert("RGB")


def encode_jpeg(image: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
