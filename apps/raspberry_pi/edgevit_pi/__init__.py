"""edgevit camera app: classify camera frames on a Raspberry Pi (or any machine) with an exported
edgevit artifact, and show the top-k labels live in a window or in the browser (MJPEG).

Device-side only: it imports ``edgevit.runtimes`` / ``edgevit.preprocess``, numpy and Pillow, and
picamera2 or OpenCV lazily when a camera or video source needs them; never torch.

>>> from edgevit.runtimes import Classifier                          # doctest: +SKIP
>>> from edgevit_pi import AppConfig, CameraApp, open_source         # doctest: +SKIP
>>> app = CameraApp(Classifier.load("model.tflite"), open_source("picamera"), AppConfig(port=8080))
>>> app.run()                                                        # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve lazily (PEP 562), so `edgevit --help` can read this app's options from
# edgevit_pi.cli without importing numpy, Pillow and the server.
_EXPORTS = {
    "AppConfig": "app",
    "CameraApp": "app",
    "Frame": "app",
    "LatestSlot": "app",
    "RateMeter": "app",
    "AnimatedImageSource": "sources",
    "CameraError": "sources",
    "Captured": "sources",
    "EndOfSource": "sources",
    "FrameError": "sources",
    "FrameSource": "sources",
    "ImageFolderSource": "sources",
    "OpenCVSource": "sources",
    "PiCameraSource": "sources",
    "open_source": "sources",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgevit_pi' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "AnimatedImageSource",
    "AppConfig",
    "CameraApp",
    "CameraError",
    "Captured",
    "EndOfSource",
    "Frame",
    "FrameError",
    "FrameSource",
    "ImageFolderSource",
    "LatestSlot",
    "OpenCVSource",
    "PiCameraSource",
    "RateMeter",
    "open_source",
]
