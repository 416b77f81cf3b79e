"""Frame sources: the Pi camera, a USB camera or stream, a video file, an animated image, a folder.

Every source hands out RGB :class:`PIL.Image.Image` frames through the same small contract
(:class:`FrameSource`). Camera libraries are imported lazily, only by the source that needs them:
``picamera2`` for the Pi camera, OpenCV for USB cameras, network streams and video files. Animated
GIF/WebP/PNG files and image folders need only Pillow, so the app runs without OpenCV.

Errors while reading are split in two: :class:`FrameError` means "this frame is unusable, the
source is fine" (a corrupt file in a folder) and the app skips it; any other exception from
:meth:`FrameSource.read` means the source itself broke (a camera unplugged) and the app closes and
reopens it with back-off. :class:`EndOfSource` ends a source that does not loop.
"""

from __future__ import annotations

import abc
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgevit.errors import ConfigError, DataError, EdgeVitError, ImageError
from edgevit.preprocess import load_image

__all__ = [
    "ANIMATED_SUFFIXES",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "AnimatedImageSource",
    "CameraError",
    "Captured",
    "EndOfSource",
    "FrameError",
    "FrameSource",
    "ImageFolderSource",
    "OpenCVSource",
    "PiCameraSource",
    "open_source",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Files Pillow can play frame by frame (a single still image plays as a one-frame loop).
ANIMATED_SUFFIXES = IMAGE_SUFFIXES + (".apng",)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mjpg", ".mjpeg", ".h264", ".mpg", ".mpeg")


class CameraError(EdgeVitError):
    """A camera or stream that cannot be opened or stopped delivering frames."""


class FrameError(EdgeVitError):
    """One frame could not be decoded; the source itself is still usable."""


class EndOfSource(Exception):
    """A source that does not loop has no more frames."""


@dataclass(frozen=True)
class Captured:
    """One frame as a source delivers it.

    ``index`` is the frame's position in the source (a file's frame number, or the count since
    the camera was opened), ``name`` says where it came from, ``duration`` is how long a file
    frame is meant to be shown (seconds; ``None`` for live cameras, which pace themselves).
    """

    image: Image.Image
    index: int
    name: str
    duration: float | None = None


class FrameSource(abc.ABC):
    """A source of RGB frames. ``open`` may be called again after ``close`` (reconnect)."""

    #: True for cameras and streams: they deliver frames at their own rate.
    live: bool = False

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """A short human-readable name, used in logs and the status JSON."""

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device or file. Raises on failure; the app retries with back-off."""

    @abc.abstractmethod
    def read(self) -> Captured:
        """The next frame. Raises :class:`FrameError`, :class:`EndOfSource` or anything else
        (source broken)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


# --------------------------------------------------------------------------------------------
# Pillow-only sources


class ImageFolderSource(FrameSource):
    """The images of a folder in name order, looping by default. Unreadable files are skipped
    (each one raises :class:`FrameError` once per pass)."""

    def __init__(self, folder: str | os.PathLike, loop: bool = True) -> None:
        self.folder = Path(folder)
        self.loop = loop
        self._files: list[Path] = []
        self._pos = 0
        if not self.folder.is_dir():
            raise DataError(f"{self.folder} is not a folder")
        if not self._list():
            raise DataError(
                f"{self.folder} has no images ({', '.join(IMAGE_SUFFIXES)}); put frames there or pass a video"
            )

    @property
    def description(self) -> str:
        return f"folder {self.folder}"

    def _list(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def open(self) -> None:
        files = self._list()
        if not files:
            raise DataError(f"{self.folder} has no images any more")
        self._files = files
        self._pos = 0

    def read(self) -> Captured:
        if self._pos >= len(self._files):
            if not self.loop:
                raise EndOfSource
            self._files = self._list() or self._files  # pick up new or removed files each pass
            self._pos = 0
        index = self._pos
        path = self._files[index]
        self._pos += 1
        try:
            image = load_image(path, "RGB")
        except ImageError as exc:
            raise FrameError(str(exc)) from None
        return Captured(image, index, path.name)

    def close(self) -> None:
        self._files = []


class AnimatedImageSource(FrameSource):
    """An animated GIF, WebP or PNG (or a multi-page TIFF, or one still image) played with Pillow
    at the file's own frame durations, looping by default."""

    DEFAULT_DURATION = 0.1  # seconds, for frames without a duration (GIF's de-facto default)

    def __init__(self, path: str | os.PathLike, loop: bool = True) -> None:
        self.path = Path(path)
        self.loop = loop
        self._img: Image.Image | None = None
        self._count = 0
        self._pos = 0
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")

    @property
    def description(self) -> str:
        return f"animation {self.path}"

    def open(self) -> None:
        self.close()
        try:
            img = Image.open(self.path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{self.path} is not an image or animation Pillow can read: {exc}") from None
        self._img = img
        self._count = int(getattr(img, "n_frames", 1))
        self._pos = 0

    def read(self) -> Captured:
        img = self._img
        if img is None:
            raise CameraError(f"{self.path} is not open")
        if self._pos >= self._count:
            if not self.loop:
                raise EndOfSource
            self._pos = 0
        index = self._pos
        self._pos += 1
        try:
            img.seek(index)
            frame = img.convert("RGB")  # composites partial GIF frames; a fresh copy
            duration = img.info.get("duration")
        except (OSError, ValueError, EOFError) as exc:
            raise FrameError(f"{self.path} frame {index}: {exc}") from None
        seconds = float(duration) / 1000.0 if duration else self.DEFAULT_DURATION
        return Captured(frame, index, f"{self.path.name}#{index}", seconds)

    def close(self) -> None:
        if self._img is not None:
            self._img.close()
            self._img = None


# --------------------------------------------------------------------------------------------
# Camera and video sources (lazily imported engines)


def _import_cv2(purpose: str) -> Any:
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"OpenCV is needed to {purpose} but is not installed; install it with "
            "`pip install opencv-python-headless` (or `sudo apt install python3-opencv` on Raspberry Pi OS), "
            "or use an animated GIF / image folder, which need only Pillow"
        ) from None
    return cv2


class OpenCVSource(FrameSource):
    """A USB camera (``camera:N``), a network stream (``rtsp://...``) or a video file, read with
    OpenCV's ``VideoCapture``. Files loop by default; cameras and streams are live."""

    def __init__(
        self,
        target: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        loop: bool = True,
    ) -> None:
        self.target = target
        self.width = width
        self.height = height
        self.loop = loop
        self.live = not (isinstance(target, str) and Path(target).is_file())
        self._cv2 = _import_cv2("read USB cameras, streams and video files")
        self._cap: Any = None
        self._pos = 0
        self._duration: float | None = None

    @property
    def description(self) -> str:
        if isinstance(self.target, int):
            return f"USB camera {self.target}"
        return f"{'stream' if self.live else 'video'} {self.target}"

    def open(self) -> None:
        self.close()
        cv2 = self._cv2
        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open {self.description} (not connected, busy, or unsupported)")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing stale frames
            self._duration = None
        else:
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            self._duration = 1.0 / fps if 0 < fps < 1000 else 1.0 / 25
        self._cap = cap
        self._pos = 0

    def read(self) -> Captured:
        cap = self._cap
        if cap is None:
            raise CameraError(f"{self.description} is not open")
        ok, bgr = cap.read()
        if not ok and not self.live:
            if not self.loop:
                raise EndOfSource
            cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            self._pos = 0
            ok, bgr = cap.read()
        if not ok or bgr is None:
            raise CameraError(f"{self.description} returned no frame (disconnected?)")
        index = self._pos
        self._pos += 1
        if bgr.ndim == 2:
            image = Image.fromarray(bgr).convert("RGB")
        else:
            image = Image.fromarray(np.ascontiguousarray(bgr[:, :, 2::-1]))  # BGR(A) -> RGB
        return Captured(image, index, f"{self.description}#{index}", self._duration)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class PiCameraSource(FrameSource):
    """A Raspberry Pi camera module through picamera2 (libcamera).

    Frames are requested as ``BGR888``, which picamera2 documents as pixels in [R, G, B] order;
    ``swap_rb`` swaps the channels for sensors that report them the other way round.
    """

    live = True

    def __init__(self, camera_num: int = 0, width: int = 640, height: int = 480, swap_rb: bool = False) -> None:
        self.camera_num = camera_num
        self.width = width
        self.height = height
        self.swap_rb = swap_rb
        self._cam: Any = None
        self._pos = 0
        try:
            import picamera2  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            raise ConfigError(
                "picamera2 is needed for the Raspberry Pi camera but is not importable; on Raspberry Pi OS "
                "run `sudo apt install python3-picamera2` and create the venv with --system-site-packages "
                "(apps/raspberry_pi/install.sh does both)"
            ) from None

    @property
    def description(self) -> str:
        return f"Pi camera {self.camera_num}"

    def open(self) -> None:
        self.close()
        from picamera2 import Picamera2  # type: ignore[import-not-found]

        try:
            cam = Picamera2(self.camera_num)
        except (IndexError, RuntimeError) as exc:
            raise CameraError(f"cannot open {self.description}: {exc}") from None
        try:
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "BGR888"}, buffer_count=2
            )
            cam.configure(config)
            cam.start()
        except Exception:
            cam.close()
            raise
        self._cam = cam
        self._pos = 0

    def read(self) -> Captured:
        cam = self._cam
        if cam is None:
            raise CameraError(f"{self.description} is not open")
        arr = cam.capture_array("main")
        if arr is None or arr.size == 0:
            raise CameraError(f"{self.description} returned no frame")
        arr = arr[:, :, :3]
        if self.swap_rb:
            arr = arr[:, :, ::-1]
        index = self._pos
        self._pos += 1
        return Captured(Image.fromarray(np.ascontiguousarray(arr)), index, f"{self.description}#{index}")

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()


# --------------------------------------------------------------------------------------------

_CAMERA = re.compile(r"^(?:camera|usb|cam)(?::(\d+))?$", re.IGNORECASE)
_PICAMERA = re.compile(r"^picamera(?::(\d+))?$", re.IGNORECASE)


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    loop: bool = True,
    swap_rb: bool = False,
) -> FrameSource:
    """The source that ``spec`` names (it is not opened yet).

    ``picamera`` / ``picamera:N``: a Pi camera module; ``camera:N`` (or ``N``): USB camera N;
    ``rtsp://...``, ``http://...``: a network stream; a folder: its images; a ``.gif``/``.webp``/
    ``.png``/... file: played with Pillow; a ``.mp4``/``.avi``/... file: played with OpenCV.
    """
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("empty --source; pass a file, a folder, camera:N or picamera")
    m = _PICAMERA.match(spec)
    if m:
        return PiCameraSource(int(m.group(1) or 0), width or 640, height or 480, swap_rb=swap_rb)
    m = _CAMERA.match(spec)
    if m or spec.isdigit():
        index = int(spec) if spec.isdigit() else int(m.group(1) or 0)  # type: ignore[union-attr]
        return OpenCVSource(index, width=width, height=height)
    if "://" in spec:
        return OpenCVSource(spec, width=width, height=height)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"--source {spec}: no such file or folder (use a video, GIF, image folder, camera:N or picamera)"
        )
    if path.is_dir():
        return ImageFolderSource(path, loop=loop)
    suffix = path.suffix.lower()
    if suffix in ANIMATED_SUFFIXES:
        return AnimatedImageSource(path, loop=loop)
    if suffix in VIDEO_SUFFIXES:
        return OpenCVSource(str(path), loop=loop)
    raise ConfigError(
        f"--source {spec}: unknown kind of file {suffix or '(no suffix)'}; "
        f"images/animations: {', '.join(ANIMATED_SUFFIXES)}; videos (OpenCV): {', '.join(VIDEO_SUFFIXES)}"
    )
