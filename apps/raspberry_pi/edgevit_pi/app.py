"""The camera classifier: capture, inference and rendering threads around one frame source.

Threads and what they share::

    capture  --frame-->  [inference slot: 1]  -->  inference  --> latest prediction
             --frame-->  [render slot: 1]     -->  render     --> JPEG broadcast --> MJPEG viewers
                                                               --> window (main thread, optional)
    HTTP server threads read the latest prediction, the counters and the broadcast.

Each slot holds only the newest frame: when inference (or rendering) is slower than the camera,
older frames are replaced and counted as dropped, so the capture loop never waits for the model.
A source that fails is closed and reopened with exponential back-off while the server keeps
serving; one frame that fails to decode or classify is logged, counted and skipped.
"""

from __future__ import annotations

import logging
import os
import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from PIL import Image

from edgevit.errors import ConfigError

from .overlay import annotate, encode_jpeg
from .server import FrameBroadcast, ViewerServer, allowed_host_name
from .sources import EndOfSource, FrameError, FrameSource

__all__ = ["AppConfig", "CameraApp", "Frame", "LatestSlot", "RateMeter"]

log = logging.getLogger("edgevit_pi")

FOLDER_FPS = 2.0  # image folders have no timing of their own


@dataclass(frozen=True)
class AppConfig:
    """Settings of one app run; invalid values raise :class:`ConfigError` when built.

    ``fps`` paces file sources (``None``: the file's own timing, folders at 2 frames/s; ``0``: as
    fast as they decode); live cameras pace themselves. ``window``: ``None`` shows an OpenCV window
    when a display and OpenCV's GUI are present, ``True`` requires one, ``False`` never opens one.
    """

    top_k: int = 3
    host: str = "127.0.0.1"
    port: int = 8080
    window: bool | None = None
    max_frames: int | None = None
    fps: float | None = None
    max_stream_clients: int = 8
    max_connections: int = 64
    write_timeout: float = 5.0
    allowed_hosts: tuple[str, ...] = ()
    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    jpeg_quality: int = 80
    display_width: int = 960
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 10.0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.top_k >= 1, f"--top-k must be >= 1, got {self.top_k}")
        need(0 <= self.port <= 65535, f"--port must be in 0..65535 (0 picks a free port), got {self.port}")
        need(bool(self.host), "--host must not be empty (127.0.0.1 serves this machine only, 0.0.0.0 the network)")
        need(self.max_frames is None or self.max_frames >= 1, f"--frames must be >= 1, got {self.max_frames}")
        need(self.fps is None or self.fps >= 0, f"--fps must be >= 0 (0: as fast as possible), got {self.fps}")
        need(1 <= self.max_stream_clients <= 1000, f"--max-clients must be in 1..1000, got {self.max_stream_clients}")
        need(self.max_connections > self.max_stream_clients,
             "max_connections must exceed the stream-client limit, or viewers would starve the API")
        need(self.write_timeout > 0, f"write timeout must be > 0 s, got {self.write_timeout}")
        need(self.header_timeout > 0 and self.idle_timeout > 0, "header and idle timeouts must be > 0 s")
        for name in self.allowed_hosts:
            try:
                allowed_host_name(name)
            except ValueError as exc:
                raise ConfigError(f"--allowed-host: {exc}") from None
        need(1 <= self.jpeg_quality <= 95, f"--jpeg-quality must be in 1..95, got {self.jpeg_quality}")
        need(self.display_width >= 160, f"--display-width must be >= 160, got {self.display_width}")
        need(0 < self.reconnect_delay <= self.reconnect_max_delay,
             "reconnect delays must satisfy 0 < initial <= maximum")


@dataclass(frozen=True)
class Frame:
    """A captured frame: ``number`` counts every frame since start (across reconnects)."""

    image: Image.Image
    number: int
    index: int
    name: str
    captured_at: float


class ClassifierLike(Protocol):
    metadata: Any

    def predict(self, image: Any, top_k: int = 5) -> list[Any]: ...


T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A mailbox of size one: ``put`` replaces an unread item (counted in ``dropped``) and never blocks."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()

    def take(self, timeout: float) -> T | None:
        """The item, or ``None`` after ``timeout`` seconds or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._full or self._closed, timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    @property
    def empty(self) -> bool:
        with self._cond:
            return not self._full

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RateMeter:
    """Events per second over the last ``window`` events; 0 when events stopped coming."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._times) < 2:
                return 0.0
            first, last, n = self._times[0], self._times[-1], len(self._times)
        span = last - first
        if span <= 0:
            return 0.0
        period = span / (n - 1)
        if now - last > max(2.0, 3 * period):  # stalled: do not keep showing the old rate
            return 0.0
        return (n - 1) / span


class CameraApp:
    """Classify the frames of ``source`` with ``classifier`` and serve the browser view.

    ``start()``/``stop()`` drive it from code (tests, embedding); ``run()`` is the blocking entry
    the CLI uses: it installs SIGINT/SIGTERM handlers, shows the optional window and returns 0
    after a clean shutdown.
    """

    def __init__(self, classifier: ClassifierLike, source: FrameSource, config: AppConfig | None = None) -> None:
        self.classifier = classifier
        self.source = source
        self.config = config or AppConfig()
        self.model_name = str(getattr(getattr(classifier, "metadata", None), "model", "model"))
        self.broadcast = FrameBroadcast()
        self.server: ViewerServer | None = None
        self._infer_slot: LatestSlot[Frame] = LatestSlot()
        self._render_slot: LatestSlot[Frame] = LatestSlot()
        self._stop = threading.Event()
        self._capture_done = threading.Event()
        self._inference_done = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._last_frame: Frame | None = None
        self._snapshot: tuple[tuple[int, Any], bytes] | None = None
        self._window_image: Image.Image | None = None
        self._window_on = False
        self._state = "starting"
        self._counts = {
            "frames_captured": 0,
            "frames_inferred": 0,
            "frames_rendered": 0,
            "frame_errors": 0,
            "source_errors": 0,
            "reconnects": 0,
            "inference_errors": 0,
            "stream_viewers": 0,
            "viewers_dropped_slow": 0,
        }
        self._capture_rate = RateMeter()
        self._infer_rate = RateMeter()
        self._latencies: deque[float] = deque(maxlen=512)
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self._started = False

    # -- shared state ----------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _set_state(self, state: str) -> None:
        with self._lock:
            if self._state != state:
                log.debug("source state: %s -> %s", self._state, state)
            self._state = state

    @property
    def source_state(self) -> str:
        with self._lock:
            return self._state

    @property
    def url(self) -> str:
        if self.server is None:
            raise RuntimeError("the app is not started")
        return self.server.url

    @property
    def finished(self) -> bool:
        """The source ended (or ``max_frames`` was reached) and the last frame was classified."""
        return self._capture_done.is_set() and self._inference_done.is_set()

    def latest_json(self) -> dict[str, Any]:
        """The latest prediction: the frame it belongs to, top-k, timing, FPS."""
        with self._lock:
            latest = dict(self._latest) if self._latest else None
            state = self._state
        base = {
            "model": self.model_name,
            "source": self.source.description,
            "source_state": state,
            "fps": round(self._infer_rate.rate(), 2),
            "capture_fps": round(self._capture_rate.rate(), 2),
            "dropped": self._infer_slot.dropped,
        }
        if latest is None:
            return {"ready": False, "frame": None, "source_index": None, "source_name": None,
                    "timestamp": None, "predicted_at": None, "latency_ms": None,
                    "index": None, "label": None, "score": None, "predictions": [], **base}
        return {"ready": True, **latest, **base}

    def status_json(self) -> dict[str, Any]:
        """Counters and rates for ``/api/status`` and the final summary."""
        with self._lock:
            counts = dict(self._counts)
            latencies = list(self._latencies)
            state = self._state
        server = self.server
        refused = dict(server.counters) if server else {}
        lat: dict[str, float | None] = {"last": None, "mean": None, "p50": None, "p90": None}
        if latencies:
            lat = {
                "last": round(latencies[-1], 3),
                "mean": round(statistics.fmean(latencies), 3),
                "p50": round(float(np.percentile(latencies, 50)), 3),
                "p90": round(float(np.percentile(latencies, 90)), 3),
            }
        return {
            "model": self.model_name,
            "source": self.source.description,
            "source_state": state,
            "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started else 0.0,
            **counts,
            "frames_dropped": self._infer_slot.dropped,
            "fps": round(self._infer_rate.rate(), 2),
            "capture_fps": round(self._capture_rate.rate(), 2),
            "latency_ms": lat,
            "max_stream_clients": self.config.max_stream_clients,
            "stream_refused": refused.get("stream_refused", 0),
            "connections_refused": refused.get("connections_refused", 0),
            "request_timeouts": refused.get("request_timeouts", 0),
            "host_refused": refused.get("host_refused", 0),
        }

    def healthy(self) -> bool:
        """Frames flow and the model runs (or the source ended normally)."""
        if self._stop.is_set():
            return False
        state = self.source_state
        if state == "ended":
            return True
        inference_alive = any(t.name == "edgevit-inference" and t.is_alive() for t in self._threads)
        return state == "streaming" and inference_alive

    def viewer_joined(self) -> None:
        self._count("stream_viewers")
        last = self._last_frame
        if last is not None:
            self._render_slot.put(last)  # a new viewer gets a picture at once, even when paused

    def viewer_left(self, dropped_slow: bool) -> None:
        with self._lock:
            self._counts["stream_viewers"] -= 1
            if dropped_slow:
                self._counts["viewers_dropped_slow"] += 1

    def snapshot_jpeg(self) -> bytes | None:
        """The latest frame with the latest prediction drawn over it (rendered on demand)."""
        frame = self._last_frame
        if frame is None:
            return None
        with self._lock:
            latest_frame = self._latest["frame"] if self._latest else None
        key = (frame.number, latest_frame)
        cached = self._snapshot
        if cached is not None and cached[0] == key:
            return cached[1]
        jpeg = encode_jpeg(self._render(frame), self.config.jpeg_quality)
        self._snapshot = (key, jpeg)
        return jpeg

    # -- threads ---------------------------------------------------------------------------

    def _interval(self, duration: float | None) -> float:
        """Seconds until the next frame of a file source (0 for live cameras)."""
        if self.source.live:
            return 0.0
        fps = self.config.fps
        if fps is not None:
            return 1.0 / fps if fps > 0 else 0.0
        return duration if duration is not None else 1.0 / FOLDER_FPS

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as exc:  # a broken device may fail to close too; it is reopened anyway
            log.warning("closing %s failed: %s: %s", self.source.description, type(exc).__name__, exc)

    def _capture_loop(self) -> None:
        cfg = self.config
        desc = self.source.description
        delay = cfg.reconnect_delay
        is_open = ever_opened = False
        number = 0
        next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                if not is_open:
                    try:
                        self.source.open()
                    except Exception as exc:  # cameras fail in many ways; every one is retried
                        self._set_state("reconnecting")
                        self._count("source_errors")
                        log.warning("cannot open %s: %s; retrying in %.1f s", desc, exc, delay)
                        if self._stop.wait(delay):
                            break
                        delay = min(delay * 2, cfg.reconnect_max_delay)
                        continue
                    is_open = True
                    if ever_opened:
                        self._count("reconnects")
                        log.info("reopened %s", desc)
                    else:
                        log.info("opened %s", desc)
                    ever_opened = True
                try:
                    captured = self.source.read()
                except EndOfSource:
                    log.info("%s ended after %d frames", desc, number)
                    self._set_state("ended")
                    break
                except FrameError as exc:
                    self._count("frame_errors")
                    log.warning("skipped a frame of %s: %s", desc, exc)
                    if self._stop.wait(self._interval(None) or 0.01):  # no busy loop over bad files
                        break
                    continue
                except Exception as exc:  # the device went away: close, back off, reopen
                    self._count("source_errors")
                    self._set_state("reconnecting")
                    log.warning("%s failed: %s: %s; reopening in %.1f s", desc, type(exc).__name__, exc, delay)
                    self._close_source()
                    is_open = False
                    if self._stop.wait(delay):
                        break
                    delay = min(delay * 2, cfg.reconnect_max_delay)
                    continue
                delay = cfg.reconnect_delay
                number += 1
                frame = Frame(captured.image, number, captured.index, captured.name, time.time())
                self._last_frame = frame
                self._capture_rate.tick()
                self._count("frames_captured")
                self._set_state("streaming")
                self._infer_slot.put(frame)
                self._render_slot.put(frame)
                if cfg.max_frames is not None and number >= cfg.max_frames:
                    log.info("captured %d frames (--frames); finishing", number)
                    self._set_state("ended")
                    break
                interval = self._interval(captured.duration)
                if interval > 0:
                    now = time.monotonic()
                    next_due = max(next_due + interval, now - interval)  # catch up by one frame at most
                    if next_due > now and self._stop.wait(next_due - now):
                        break
        except BaseException:
            log.exception("capture thread crashed")
            raise
        finally:
            if is_open:
                self._close_source()
            self._capture_done.set()

    def _inference_loop(self) -> None:
        k = self.config.top_k
        try:
            while not self._stop.is_set():
                frame = self._infer_slot.take(timeout=0.25)
                if frame is None:
                    if self._capture_done.is_set() and self._infer_slot.empty:
                        break
                    continue
                start = time.perf_counter()
                try:
                    predictions = self.classifier.predict(frame.image, top_k=k)
                except Exception as exc:  # one bad frame must not stop the app: log, count, go on
                    self._count("inference_errors")
                    log.warning("frame %d could not be classified: %s: %s", frame.number, type(exc).__name__, exc)
                    continue
                latency_ms = (time.perf_counter() - start) * 1000.0
                preds = [p.to_dict() if hasattr(p, "to_dict") else dict(p) for p in predictions]
                top = preds[0] if preds else {"index": None, "label": None, "score": None}
                record = {
                    "frame": frame.number,
                    "source_index": frame.index,
                    "source_name": frame.name,
                    "timestamp": frame.captured_at,
                    "predicted_at": time.time(),
                    "latency_ms": round(latency_ms, 3),
                    "index": top["index"],
                    "label": top["label"],
                    "score": top["score"],
                    "predictions": preds,
                }
                self._infer_rate.tick()
                with self._lock:
                    self._latest = record
                    self._counts["frames_inferred"] += 1
                    self._latencies.append(latency_ms)
        except BaseException:
            log.exception("inference thread crashed")
            raise
        finally:
            self._inference_done.set()

    def _render(self, frame: Frame) -> Image.Image:
        with self._lock:
            latest = self._latest
            state = self._state
        preds = latest["predictions"] if latest else []
        latency = latest["latency_ms"] if latest else None
        status = "" if state in ("streaming", "ended") else state
        return annotate(frame.image, preds, fps=self._infer_rate.rate(), latency_ms=latency,
                        status=status, max_width=self.config.display_width)

    def _render_loop(self) -> None:
        quality = self.config.jpeg_quality
        while not self._stop.is_set():
            frame = self._render_slot.take(timeout=0.25)
            if frame is None:
                continue
            with self._lock:
                watched = self._counts["stream_viewers"] > 0
            if not watched and not self._window_on:
                continue  # nobody is looking: save the CPU for the model
            image = self._render(frame)
            if watched:
                self.broadcast.publish(encode_jpeg(image, quality))
            if self._window_on:
                self._window_image = image
            self._count("frames_rendered")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the server and start the capture, inference and render threads."""
        if self._started:
            raise RuntimeError("CameraApp.start() called twice")
        cfg = self.config
        try:
            self.server = ViewerServer(
                (cfg.host, cfg.port), self,
                max_stream_clients=cfg.max_stream_clients,
                max_connections=cfg.max_connections,
                write_timeout=cfg.write_timeout,
                header_timeout=cfg.header_timeout,
                idle_timeout=cfg.idle_timeout,
                allowed_hosts=cfg.allowed_hosts,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {cfg.host}:{cfg.port}: {exc.strerror or exc}; choose another --port/--host"
            ) from None
        self._started = True
        self._started_at = time.monotonic()
        targets: list[tuple[str, Callable[[], None]]] = [
            ("edgevit-http", self.server.serve_forever),
            ("edgevit-capture", self._capture_loop),
            ("edgevit-inference", self._inference_loop),
            ("edgevit-render", self._render_loop),
        ]
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.server.serving.wait(5.0)
        log.info("classifying %s with %s; browser view at %s", self.source.description, self.model_name, self.url)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the app finished (source ended or ``max_frames``) or was asked to stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (self.finished or self._stop.is_set()):
            remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._stop.wait(remaining)
        return True

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop everything and join the threads; True when every thread ended in time."""
        self._stop.set()
        self._infer_slot.close()
        self._render_slot.close()
        clean = True
        if self.server is not None:
            clean = self.server.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                clean = False
                log.warning("thread %s did not stop within %.1f s (a blocked camera read?)", thread.name, timeout)
        if self._started:
            self._set_state("stopped")
        return clean

    def run(self) -> int:
        """Run until SIGINT/SIGTERM, the window is closed, or the source is done. Returns 0 when
        every thread stopped cleanly, 1 otherwise."""
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, _frame: Any) -> None:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                self._stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, on_signal)
        try:
            window = self._open_window()
            self.start()
            if window is not None:
                self._window_loop(window)
            else:
                while not (self._stop.is_set() or self.finished):
                    self._stop.wait(0.2)
        finally:
            clean = self.stop()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        status = self.status_json()
        log.info("stopped %s: %d frames captured, %d classified, %d dropped", "cleanly" if clean else "with stuck threads",
                 status["frames_captured"], status["frames_inferred"], status["frames_dropped"])
        return 0 if clean else 1

    # -- optional OpenCV window (main thread only) --------------------------------------------

    WINDOW_TITLE = "edgevit camera"

    def _open_window(self) -> Any:
        want = self.config.window
        if want is False:
            return None
        has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if not has_display:
            if want:
                raise ConfigError("--window needs a display (DISPLAY/WAYLAND_DISPLAY is not set); use the browser view")
            log.info("no display: browser view only")
            return None
        try:
            import cv2  # type: ignore[import-not-found]

            cv2.namedWindow(self.WINDOW_TITLE, cv2.WINDOW_NORMAL)
        except ImportError:
            if want:
                raise ConfigError("--window needs OpenCV with GUI support: pip install opencv-python") from None
            log.info("OpenCV is not installed: browser view only (pip install opencv-python for a window)")
            return None
        except Exception as exc:  # cv2.error: a headless OpenCV build has no GUI
            if want:
                raise ConfigError(f"OpenCV cannot open a window ({exc}); install opencv-python, not -headless") from None
            log.info("OpenCV cannot open a window (%s): browser view only", str(exc).splitlines()[0][:120])
            return None
        self._window_on = True
        log.info("showing frames in an OpenCV window (q or closing it quits)")
        return cv2

    def _window_loop(self, cv2: Any) -> None:
        import numpy as np

        shown = None
        try:
            while not (self._stop.is_set() or self.finished):
                image = self._window_image
                if image is not None and image is not shown:
                    cv2.imshow(self.WINDOW_TITLE, np.asarray(image)[:, :, ::-1])
                    shown = image
                key = cv2.waitKey(30) & 0xFF
                if key in (ord("q"), 27):
                    log.info("window: quit key pressed")
                    break
                if cv2.getWindowProperty(self.WINDOW_TITLE, cv2.WND_PROP_VISIBLE) < 1:
                    log.info("window closed")
                    break
        finally:
            cv2.destroyAllWindows()
