"""The browser view: a small stdlib HTTP server with a live MJPEG stream and a JSON API.

Routes: ``/`` (an HTML page: the stream plus the latest predictions, polled by JavaScript),
``/stream.mjpg`` (``multipart/x-mixed-replace`` JPEG stream), ``/snapshot.jpg`` (the latest
annotated frame), ``/api/latest`` (the latest prediction as JSON), ``/api/status`` (counters),
``/healthz`` (200 while frames flow, 503 otherwise).

Slow clients cannot starve it, and resources stay bounded whatever the clients do:

* one loop thread (:meth:`ViewerServer.serve_forever`) accepts connections and reads request
  headers from non-blocking sockets, so a connection costs no thread until its headers are in.
  They must be complete within ``header_timeout`` (10 s) of the request's first byte, however
  slowly they trickle in (then a 408 and the connection is closed); a connection with no request
  under way (a fresh one, or a keep-alive one between requests) is closed after ``idle_timeout``
  (5 s). At most ``max_pending`` connections wait like this; one more closes the one waiting
  longest;
* a complete request runs on its own thread, at most ``max_connections`` at once, beyond that a
  plain 503; ``/healthz`` has ``healthz_slots`` more, so it answers while every normal slot is busy;
* at most ``max_stream_clients`` MJPEG viewers; the next one gets a 503 naming the limit;
* a viewer only ever gets the newest frame (nothing is queued per client) and each write has a
  timeout with a small socket send buffer, so a stalled client is dropped, not buffered for;
* the ``Host`` header must name this server: any IP address, ``localhost``, this machine's
  hostname (also ``<hostname>.local``), the name it was bound to, or one of ``allowed_hosts``
  (``*``: any name). A DNS-rebinding web page reaches the server under its own domain name and
  gets a 421, so it cannot read the camera; an address cannot be rebound, so addresses pass;
* every response carries ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import collections
import errno
import html
import io
import ipaddress
import json
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
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


# -- Host names --------------------------------------------------------------------------------

_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{0,5})?", re.ASCII)
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?", re.ASCII)


def parse_host(value: str) -> tuple[str, bool] | None:
    """``(name, is_address)`` of a ``Host`` header value, lower case and without the port;
    ``None`` when it is malformed."""
    m = _HOST.fullmatch(value.strip().lower())
    if m is None:
        return None
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            return None
        return m["v6"], True
    name = m["name"].rstrip(".")
    if not name:
        return None
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return name, False
    return name, True


def allowed_host_name(name: str) -> str:
    """``name`` as ``allowed_hosts`` keeps it; ValueError unless it is a host name, an address or ``*``."""
    value = name.strip().lower()
    if value == "*":
        return value
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if not _NAME.fullmatch(value):
        raise ValueError(f"{name!r} is not a host name: give the bare name, without scheme, port or path "
                         "(e.g. camera.lan), or * for any name")
    return value.rstrip(".")


# -- the loop's canned responses ---------------------------------------------------------------

def _canned(status: str, text: str, extra: str = "") -> bytes:
    """A complete response that the loop thread sends without a handler; the connection then closes."""
    body = text.encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            f"X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n{extra}Connection: close\r\n\r\n")
    return head.encode() + body


_BUSY = _canned("503 Service Unavailable", "server busy\n", "Retry-After: 5\r\n")
_TIMED_OUT = _canned("408 Request Timeout", "request headers not complete in time\n")
_TOO_LARGE = _canned("431 Request Header Fields Too Large", "request headers too large\n")

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LISTENER = object()  # selector tags of the listening socket and the wake-up socket
_WAKER = object()


def _is_healthz(head: bytes) -> bool:
    parts = head.split(b"\n", 1)[0].split()
    return len(parts) >= 2 and parts[1].split(b"?", 1)[0] == b"/healthz"


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _SocketWriter(io.BufferedIOBase):
    """The response side of a connection: unbuffered writes straight to the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


# -- one request -------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    """Serves one request whose header block the loop thread has already read."""

    server: ViewerServer  # type: ignore[assignment]
    server_version = "edgevit-camera"
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls /api/latest twice a second
    # The stdlib answers requests it cannot parse (and HTTP/0.9 ones) without any headers: give them
    # a status line and headers like every other response.
    default_request_version = "HTTP/1.0"

    def __init__(self, sock: socket.socket, client_address: Any, server: ViewerServer, head: bytes,
                 reserved: bool) -> None:
        self._head = head
        self._reserved = reserved
        self._connection_sent = False
        super().__init__(sock, client_address, server)  # type: ignore[arg-type]  # serves the request

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = _SocketWriter(self.request)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        pass  # nothing is buffered; the server decides whether the connection stays open

    def handle_expect_100(self) -> bool:
        return True  # a request body is never read, so answer at once instead of "100 Continue"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.address_string(), format % args)

    # -- headers every response gets -------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        self.send_header("X-Content-Type-Options", "nosniff")

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection":
            self._connection_sent = True
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        if self.close_connection and not self._connection_sent:
            self.send_header("Connection", "close")
        super().end_headers()

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

    def _keep_alive_allowed(self) -> bool:
        # The body of a request is never read, so a connection that carried one cannot be reused;
        # a reserved /healthz slot serves one request per connection, so pipelining cannot hold it.
        has_body = ("Transfer-Encoding" in self.headers
                    or self.headers.get("Content-Length", "0").strip() != "0")
        return not (has_body or self._reserved or self.request_version != "HTTP/1.1"
                    or self.server.stopping.is_set())

    def _host_refused(self) -> bool:
        """Answer 400/421 (and True) unless the Host header names this server."""
        refusal = self.server.host_refusal(self.headers.get_all("Host") or [], self.request_version)
        if refusal is None:
            return False
        status, message = refusal
        self.server.count("host_refused")
        self.close_connection = True
        self._send_json(status, {"error": message})
        return True

    # -- routes ----------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 (stdlib naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        state = self.server.state
        try:
            if not self._keep_alive_allowed():
                self.close_connection = True
            if self._host_refused():
                return
            if path in ("/", "/index.html"):
                model = str(state.status_json().get("model", ""))
                page = PAGE.replace("__MODEL__", html.escape(model, quote=True))
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
            self.close_connection = True
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
        self.close_connection = True  # the stream has no length: it ends when the connection does
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


# -- the server --------------------------------------------------------------------------------

class _Conn:
    """A client connection while the loop thread owns it: reading a request, or idle between two."""

    __slots__ = ("sock", "addr", "buf", "started", "deadline")

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.started = False  # a request's first byte has arrived
        self.deadline = 0.0


class ViewerServer:
    """The HTTP server: one selector loop for connections and request headers, a thread per request."""

    request_queue_size = 128  # listen backlog

    def __init__(
        self,
        address: tuple[str, int],
        state: ViewerState,
        *,
        max_stream_clients: int = 8,
        max_connections: int = 64,
        write_timeout: float = 5.0,
        header_timeout: float = 10.0,
        idle_timeout: float = 5.0,
        healthz_slots: int = 2,
        max_pending: int = 256,
        max_header_bytes: int = 32 * 1024,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        if min(write_timeout, header_timeout, idle_timeout) <= 0:
            raise ValueError("write, header and idle timeouts must be > 0 s")
        if max_connections < 1 or max_pending < 1 or healthz_slots < 0:
            raise ValueError("max_connections and max_pending must be >= 1, healthz_slots >= 0")
        self.state = state
        self.max_stream_clients = max_stream_clients
        self.max_connections = max_connections
        self.write_timeout = write_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_pending = max_pending
        self.max_header_bytes = max_header_bytes
        self.allowed_hosts, self._any_host = self._host_names(address[0], allowed_hosts)
        self.stream_slots = threading.BoundedSemaphore(max_stream_clients)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._healthz_slots = threading.BoundedSemaphore(healthz_slots)
        self.stopping = threading.Event()
        self.serving = threading.Event()
        self.counters: dict[str, int] = dict.fromkeys(
            ("connections_refused", "stream_refused", "request_timeouts", "idle_closed", "connections_evicted",
             "host_refused", "headers_too_large"), 0)
        self._lock = threading.Lock()
        # Loop thread only (and stop() once the loop has ended):
        self._pending: collections.OrderedDict[_Conn, None] = collections.OrderedDict()
        self._next_sweep = float("inf")
        self._accept_paused_until = 0.0
        # Shared with handler threads, under _lock:
        self._active: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._returned: list[_Conn] = []
        self._closing = False
        self._loop_done = threading.Event()

        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(self.request_queue_size)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address: tuple[Any, ...] = self.socket.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKER)

    @staticmethod
    def _host_names(bound: str, extra: Iterable[str]) -> tuple[frozenset[str], bool]:
        names = {"localhost"}
        hostname = socket.gethostname().lower().rstrip(".")
        if hostname:
            short = hostname.split(".")[0]
            names |= {hostname, short, f"{short}.local"}
        parsed = parse_host(bound) if bound else None
        if parsed is not None and not parsed[1]:
            names.add(parsed[0])
        configured = {allowed_host_name(n) for n in extra}
        return frozenset(names | configured - {"*"}), "*" in configured

    def host_refusal(self, values: list[str], version: str) -> tuple[int, str] | None:
        """``(status, message)`` refusing a request with these ``Host`` header values, or None to serve it."""
        if not values:
            # HTTP/1.1 requires Host; HTTP/1.0 clients may omit it (browsers always send one).
            return (400, "an HTTP/1.1 request needs a Host header") if version == "HTTP/1.1" else None
        if len(values) > 1:
            return 400, "more than one Host header"
        parsed = parse_host(values[0])
        if parsed is None:
            return 400, f"malformed Host header {values[0][:100]!r}"
        name, is_address = parsed
        if is_address or self._any_host or name in self.allowed_hosts:
            return None
        return 421, (f"this server does not answer to the name {name[:100]!r}; if that name is yours, start "
                     f"the app with --allowed-host {name[:100]}")

    def count(self, key: str) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    @property
    def open_connections(self) -> int:
        """Connections waiting for a request plus those being answered."""
        with self._lock:
            return len(self._pending) + len(self._active)

    # -- the loop thread -------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections and read requests until :meth:`shutdown`; requests run on their own threads."""
        with self._lock:
            if self._closing:
                return
            self.serving.set()
        try:
            while not self._closing:
                timeout = max(0.0, min(poll_interval, self._next_sweep - time.monotonic()))
                events = self._selector.select(timeout)
                now = time.monotonic()
                for key, _ in events:
                    if key.data is _LISTENER:
                        self._accept(now)
                    elif key.data is _WAKER:
                        self._drain_wake()
                    else:
                        try:
                            self._read(key.data, now)
                        except Exception:  # a bug must cost one connection, not the whole server
                            log.warning("error while reading from %s", key.data.addr, exc_info=True)
                            self._close(key.data)
                self._take_returned(now)
                if now >= self._next_sweep:
                    self._sweep(now)
        finally:
            self._loop_done.set()

    def _accept(self, now: float) -> None:
        for _ in range(64):  # bounded, so a flood of connects cannot starve reading
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The listener stays readable; stop polling it for a moment instead of spinning.
                    log.warning("cannot accept connections: %s; pausing for 0.5 s", exc.strerror or exc)
                    self._selector.unregister(self.socket)
                    self._accept_paused_until = now + 0.5
                    self._next_sweep = min(self._next_sweep, self._accept_paused_until)
                return  # ECONNABORTED and the like: the client already left
            self._watch(_Conn(sock, addr), now)

    def _watch(self, conn: _Conn, now: float) -> None:
        """Wait (without a thread) for the next request on ``conn``."""
        if len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending))
            self.count("connections_evicted")
            self._close(oldest)
        conn.started = False
        conn.deadline = now + self.idle_timeout
        self._next_sweep = min(self._next_sweep, conn.deadline)
        try:
            conn.sock.setblocking(False)
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):
            _close_quietly(conn.sock)
            return
        self._pending[conn] = None

    def _unwatch(self, conn: _Conn) -> None:
        if conn in self._pending:
            del self._pending[conn]
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass

    def _close(self, conn: _Conn) -> None:
        self._unwatch(conn)
        _close_quietly(conn.sock)

    def _reject(self, conn: _Conn, response: bytes) -> None:
        """Send a canned response without blocking (best effort; it fits a socket buffer) and close."""
        self._unwatch(conn)
        try:
            conn.sock.send(response)
            conn.sock.shutdown(socket.SHUT_WR)
            # Closing with unread input would send a reset, which can destroy the response before
            # the client reads it: take what has already arrived.
            for _ in range(4):
                if not conn.sock.recv(65536):
                    break
        except OSError:
            pass
        _close_quietly(conn.sock)

    def _read(self, conn: _Conn, now: float) -> None:
        if conn not in self._pending:
            return  # closed earlier in this round of events
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        before = len(conn.buf)
        conn.buf += data
        self._feed(conn, now, before)

    def _feed(self, conn: _Conn, now: float, scanned: int) -> None:
        """Hand the request over once its header block is complete; ``scanned`` bytes had no end yet."""
        if not conn.started:
            del conn.buf[:len(conn.buf) - len(conn.buf.lstrip(b"\r\n"))]  # blank lines before a request
            if not conn.buf:
                return
            conn.started = True
            conn.deadline = now + self.header_timeout
            self._next_sweep = min(self._next_sweep, conn.deadline)
            scanned = 0
        end = _HEADER_END.search(conn.buf, max(0, scanned - 3))
        if end is None or end.end() > self.max_header_bytes:
            if end is not None or len(conn.buf) > self.max_header_bytes:
                self.count("headers_too_large")
                self._reject(conn, _TOO_LARGE)
            return
        head, rest = bytes(conn.buf[:end.end()]), bytes(conn.buf[end.end():])
        self._dispatch(conn, head, rest)

    def _dispatch(self, conn: _Conn, head: bytes, rest: bytes) -> None:
        """Run the request on a thread of its own if a slot is free, else answer 503."""
        self._unwatch(conn)
        slot, reserved = self._slots, False
        if not slot.acquire(blocking=False):
            slot, reserved = self._healthz_slots, True
            if not (_is_healthz(head) and slot.acquire(blocking=False)):
                self.count("connections_refused")
                self._reject(conn, _BUSY)
                return
        thread = threading.Thread(target=self._work, args=(conn, head, rest, slot, reserved),
                                  name="edgevit-http-request", daemon=True)
        with self._lock:
            self._active.add(conn.sock)
            # Finished threads leave here, not from inside themselves, so stop() can join each one.
            self._workers = {t for t in self._workers if t.is_alive()}
            self._workers.add(thread)
        try:
            thread.start()
        except RuntimeError:  # the system has no threads left
            with self._lock:
                self._active.discard(conn.sock)
                self._workers.discard(thread)
            slot.release()
            self.count("connections_refused")
            self._reject(conn, _BUSY)

    def _take_returned(self, now: float) -> None:
        with self._lock:
            returned, self._returned = self._returned, []
        for conn in returned:
            self._watch(conn, now)
            if conn.buf and conn in self._pending:  # the client already sent its next request
                self._feed(conn, now, 0)

    def _sweep(self, now: float) -> None:
        """Close connections past their deadline; note when the next one falls due."""
        next_due = float("inf")
        for conn in list(self._pending):
            if conn.deadline > now:
                next_due = min(next_due, conn.deadline)
            elif conn.started:
                self.count("request_timeouts")
                log.debug("closed %s: request headers not complete within %.1f s", conn.addr, self.header_timeout)
                self._reject(conn, _TIMED_OUT)
            else:
                self.count("idle_closed")
                self._close(conn)
        if self._accept_paused_until:
            if now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)
            else:
                next_due = min(next_due, self._accept_paused_until)
        self._next_sweep = next_due

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    # -- handler threads -------------------------------------------------------------------

    def _work(self, conn: _Conn, head: bytes, rest: bytes, slot: threading.BoundedSemaphore,
              reserved: bool) -> None:
        keep = False
        try:
            conn.sock.settimeout(self.write_timeout)
            keep = not _Handler(conn.sock, conn.addr, self, head, reserved).close_connection
        except OSError as exc:
            log.debug("client %s went away: %s", conn.addr, exc)
        except Exception:
            log.warning("error while serving %s", conn.addr, exc_info=True)
        finally:
            slot.release()
            with self._lock:
                self._active.discard(conn.sock)
                keep = keep and not self._closing
                if keep:
                    conn.buf = bytearray(rest)
                    self._returned.append(conn)
            if keep:
                self._wake()
            else:
                _close_quietly(conn.sock)

    # -- shutdown --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return (call it from another thread) and wait until it has."""
        with self._lock:
            self._closing = True
            running = self.serving.is_set()
        self._wake()
        if running:
            self._loop_done.wait()

    def server_close(self) -> None:
        try:
            self._selector.close()
        except (OSError, ValueError):
            pass
        for sock in (self.socket, self._wake_r, self._wake_w):
            _close_quietly(sock)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop accepting, end the streams and open connections, wait for their handler threads,
        close the socket. True when every handler finished within ``timeout`` seconds."""
        self.stopping.set()
        self.state.broadcast.close()
        self.shutdown()
        for conn in list(self._pending):
            self._close(conn)
        with self._lock:
            active = list(self._active)
            workers = list(self._workers)
        for sock in active:  # unblocks a handler stuck writing to a client that does not read
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(thread.is_alive() for thread in workers)
        if left:
            log.warning("%d HTTP connection(s) still open after %.1f s", left, timeout)
        with self._lock:
            returned, self._returned = self._returned, []
        for conn in returned:
            _close_quietly(conn.sock)
        self.server_close()
        return left == 0
