"""The browser view: a small stdlib HTTP server with a live MJPEG stream and a JSON API.

Routes: ``/`` (an HTML page: the stream plus the latest predictions, polled by JavaScript),
``/stream.mjpg`` (``multipart/x-mixed-replace`` JPEG stream), ``/snapshot.jpg`` (the latest
annotated frame), ``/api/latest`` (the latest prediction as JSON), ``/api/status`` (counters),
``/healthz`` (200 while frames flow, 503 otherwise).

Resources stay bounded whatever the clients do:

* at most ``max_connections`` requests are handled at once; beyond that a connection gets a
  plain 503 and is closed before a thread is started for it;
* at most ``max_stream_clients`` MJPEG viewers; the next one gets a 503 naming the limit;
* a viewer only ever gets the newest frame (nothing is queued per client) and each write has a
  timeout with a small socket send buffer, so a stalled client is dropped, not buffered for;
* request reading has a timeout, so idle connections do not pin threads.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

__all__ = ["FrameBroadcast", "ViewerServer", "ViewerState"]

log = logging.getLogger("edgevit_pi.server")

STREAM_SNDBUF = 256 * 1024  # bytes the kernel may buffer per MJPEG client
BOUNDARY = "edgevitframe"


class FrameBroadcast:
    """The newest encoded frame and a sequence number; viewers wait for a newer one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._closed = False

    def publish(self, jpeg: bytes) -> None:
        with self._cond:
            self._jpeg = jpeg
            self._seq += 1
            self._cond.notify_all()

    def latest(self) -> tuple[bytes | None, int]:
        with self._cond:
            return self._jpeg, self._seq

    def wait_newer(self, seq: int, timeout: float) -> tuple[bytes | None, int]:
        """The newest frame once its sequence is past ``seq`` (or ``(None, seq)`` on timeout or close)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seq or self._closed, timeout)
            if self._seq > seq and not self._closed:
                return self._jpeg, self._seq
            return None, seq

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class ViewerState(Protocol):
    """What the server needs from the app."""

    broadcast: FrameBroadcast

    def latest_json(self) -> dict[str, Any]: ...
    def status_json(self) -> dict[str, Any]: ...
    def healthy(self) -> bool: ...
    def snapshot_jpeg(self) -> bytes | None: ...
    def viewer_joined(self) -> None: ...
    def viewer_left(self, dropped_slow: bool) -> None: ...


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgevit camera — __MODEL__</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 0; background: #111; color: #eee; }
 header { padding: .6rem 1rem; background: #222; }
 main { display: flex; flex-wrap: wrap; gap: 1rem; padding: 1rem; }
 #stream { max-width: 100%; min-width: 320px; background: #000; border: 1px solid #333; }
 section { min-width: 16rem; }
 ol { padding-left: 1.4rem; }
 li { margin: .2rem 0; }
 .bar { height: 4px; background: #4c8; }
 .muted { color: #999; font-size: .9rem; }
 #status.bad { color: #f86; }
</style>
</head>
<body>
<header><strong>edgevit camera</strong> · <span id="model">__MODEL__</span>
 · <span id="status" class="muted">connecting…</span></header>
<main>
 <img id="stream" src="stream.mjpg" alt="live camera stream" data-natural-width="0">
 <section>
  <h2>Predictions</h2>
  <ol id="predictions" data-count="0"></ol>
  <p class="muted">frame <span id="frame">–</span> · <span id="fps">–</span> FPS ·
   <span id="latency">–</span> ms · dropped <span id="dropped">–</span></p>
 </section>
</main>
<script>
const img = document.getElementById('stream');
const statusEl = document.getElementById('status');
function noteImage() { img.dataset.naturalWidth = String(img.naturalWidth || 0); }
img.addEventListener('load', noteImage);
img.addEventListener('error', () => {
  statusEl.textContent = 'stream unavailable (too many viewers?), retrying';
  statusEl.className = 'bad';
  setTimeout(() => { img.src = 'stream.mjpg?t=' + Date.now(); }, 3000);
});
function render(d) {
  noteImage();
  const list = document.getElementById('predictions');
  list.replaceChildren();
  for (const p of d.predictions || []) {
    const li = document.createElement('li');
    li.dataset.label = p.label; li.dataset.index = p.index; li.dataset.score = p.score;
    li.textContent = p.label + ' — ' + (100 * p.score).toFixed(1) + '%';
    const bar = document.createElement('div'); bar.className = 'bar';
    bar.style.width = (100 * p.score).toFixed(1) + '%'; li.appendChild(bar);
    list.appendChild(li);
  }
  list.dataset.count = String((d.predictions || []).length);
  list.dataset.frame = d.frame === null ? '' : String(d.frame);
  document.getElementById('frame').textContent = d.frame === null ? '–' : d.frame;
  document.getElementById('fps').textContent = (d.fps || 0).toFixed(1);
  document.getElementById('latency').textContent = d.latency_ms === null ? '–' : d.latency_ms.toFixed(1);
  document.getElementById('dropped').textContent = d.dropped;
  statusEl.textContent = d.source_state + ' · ' + d.source;
  statusEl.className = d.source_state === 'streaming' ? 'muted' : 'bad';
}
async function poll() {
  try {
    const r = await fetch('api/latest', {cache: 'no-store'});
    render(await r.json());
  } catch (e) {
    statusEl.textContent = 'server unreachable, retrying'; statusEl.className = 'bad';
  } finally {
    setTimeout(poll, 500);
  }
}
poll();
</script>
</body>
</html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "edgevit-camera"
    protocol_version = "HTTP/1.0"  # one request per connection: simple and bounded

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # applies to reading the request
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.address_string(), format % args)

    # -- helpers ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self._send(status, body, "application/json", headers)

    # -- routes ----------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 (stdlib naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        state = self.server.state
        try:
            if path in ("/", "/index.html"):
                model = str(state.status_json().get("model", ""))
                page = PAGE.replace("__MODEL__", _html_escape(model))
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif path == "/stream.mjpg":
                self._stream()
            elif path == "/api/latest":
                self._send_json(200, state.latest_json())
            elif path == "/api/status":
                self._send_json(200, state.status_json())
            elif path == "/healthz":
                status = state.status_json()
                ok = state.healthy()
                body = {"status": "ok" if ok else "unavailable", "source_state": status["source_state"]}
                self._send_json(200 if ok else 503, body)
            elif path == "/snapshot.jpg":
                jpeg = state.snapshot_jpeg()
                if jpeg is None:
                    self._send_json(503, {"error": "no frame yet"}, {"Retry-After": "1"})
                else:
                    self._send(200, jpeg, "image/jpeg")
            else:
                self._send_json(404, {"error": f"no such page {path!r}",
                                      "pages": ["/", "/stream.mjpg", "/snapshot.jpg", "/api/latest",
                                                "/api/status", "/healthz"]})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("client %s went away", self.address_string())

    def _stream(self) -> None:
        server = self.server
        if not server.stream_slots.acquire(blocking=False):
            server.count("stream_refused")
            self._send_json(
                503,
                {"error": f"too many stream viewers (limit {server.max_stream_clients}); close another "
                          "viewer or start the app with a higher --max-clients"},
                {"Retry-After": "5"},
            )
            return
        state = server.state
        dropped_slow = False
        try:
            self.connection.settimeout(server.write_timeout)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            self.end_headers()
            if self.command == "HEAD":
                return
            state.viewer_joined()
            broadcast = state.broadcast
            jpeg, seq = broadcast.latest()
            while not server.stopping.is_set():
                if jpeg is not None:
                    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
                    self.wfile.write(head + jpeg + b"\r\n")
                jpeg, seq = broadcast.wait_newer(seq, timeout=0.5)
        except TimeoutError:
            dropped_slow = True
            log.info("dropped stream viewer %s: not reading for %.1f s", self.address_string(),
                     server.write_timeout)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            log.debug("stream viewer %s left", self.address_string())
        finally:
            server.stream_slots.release()
            if self.command != "HEAD":
                state.viewer_left(dropped_slow)


def _html_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
         b"Connection: close\r\nContent-Length: 12\r\n\r\nserver busy\n")


class ViewerServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on concurrent requests and MJPEG viewers."""

    # Handler threads are daemons (socketserver does not join those); stop() instead ends every
    # open connection and waits until their threads have released them.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        state: ViewerState,
        *,
        max_stream_clients: int = 8,
        max_connections: int = 64,
        write_timeout: float = 5.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.state = state
        self.max_stream_clients = max_stream_clients
        self.max_connections = max_connections
        self.write_timeout = write_timeout
        self.request_timeout = request_timeout
        self.stream_slots = threading.BoundedSemaphore(max_stream_clients)
        self._connection_slots = threading.BoundedSemaphore(max_connections)
        self.stopping = threading.Event()
        self.counters: dict[str, int] = {"connections_refused": 0, "stream_refused": 0}
        self.serving = threading.Event()
        self._active: set[socket.socket] = set()
        self._count_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def count(self, key: str) -> None:
        with self._count_lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.serving.set()
        super().serve_forever(poll_interval)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connection_slots.acquire(blocking=False):
            self.count("connections_refused")
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._count_lock:
            self._active.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self._count_lock:
            self._active.discard(request)
        self._connection_slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("error while serving %s", client_address, exc_info=True)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop accepting, end the streams and open connections, wait for their handler threads,
        close the socket. True when every handler finished within ``timeout`` seconds."""
        self.stopping.set()
        self.state.broadcast.close()
        if self.serving.is_set():
            self.shutdown()  # returns once serve_forever() has left its loop
        # Browsers keep idle (pre-)connections open; end them so their threads return at once
        # instead of waiting for the request timeout.
        with self._count_lock:
            active = list(self._active)
        for sock in active:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while self.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        left = self.open_connections
        if left:
            log.warning("%d HTTP connection(s) still open after %.1f s", left, timeout)
        self.server_close()
        return left == 0

    @property
    def open_connections(self) -> int:
        with self._count_lock:
            return len(self._active)
