"""The Pi app's HTTP server under slow and hostile clients (apps/raspberry_pi/edgevit_pi/server.py).

Loopback only, a bounded number of connections, short deadlines (the server takes them as
arguments) and a time limit per test. The server runs with a fake app state, no model.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "raspberry_pi"  # on sys.path through this folder's conftest.py

from edgevit_pi.server import FrameBroadcast, ViewerServer  # noqa: E402

JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"
NOSNIFF = "x-content-type-options"


class FakeState:
    """The app as the server sees it; ``hold`` makes /api/latest wait, to keep handlers busy."""

    def __init__(self) -> None:
        self.broadcast = FrameBroadcast()
        self.broadcast.publish(JPEG)
        self.ok = True
        self.snapshot: bytes | None = JPEG
        self.hold = threading.Event()
        self.hold.set()
        self.held = 0
        self._lock = threading.Lock()

    def latest_json(self) -> dict:
        with self._lock:
            self.held += 1
        try:
            self.hold.wait(10)
        finally:
            with self._lock:
                self.held -= 1
        return {"ready": True, "label": "a"}

    def status_json(self) -> dict:
        return {"model": "fake", "source_state": "streaming" if self.ok else "reconnecting"}

    def healthy(self) -> bool:
        return self.ok

    def snapshot_jpeg(self) -> bytes | None:
        return self.snapshot

    def viewer_joined(self) -> None:
        pass

    def viewer_left(self, dropped_slow: bool) -> None:
        pass


@contextlib.contextmanager
def serving(state: FakeState | None = None, **options) -> Iterator[ViewerServer]:
    """A server on a free loopback port; on exit it must stop cleanly and leave no thread behind."""
    before = set(threading.enumerate())
    server = ViewerServer(("127.0.0.1", 0), state or FakeState(), **options)
    loop = threading.Thread(target=server.serve_forever, name="test-http-loop", daemon=True)
    loop.start()
    assert server.serving.wait(5)
    try:
        yield server
    finally:
        assert server.stop(timeout=3.0), "handler threads still running after stop()"
        loop.join(3)
        leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        assert not leftover, f"threads left running: {leftover}"


@pytest.fixture(autouse=True)
def _no_tracebacks(caplog):
    """Bad clients are logged at most briefly: never a warning with a traceback."""
    caplog.set_level(logging.DEBUG, logger="edgevit_pi.server")
    yield
    noisy = [r for r in caplog.records if r.name == "edgevit_pi.server" and r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


def _connect(server: ViewerServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=5)


def _read_response(sock: socket.socket, body: bool = True) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-case headers and body of one response (the head only for streams)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(f"connection closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if body:
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _request(server: ViewerServer, path: str = "/healthz", host: str | None = "127.0.0.1",
             method: str = "GET", extra: str = "", version: str = "HTTP/1.1",
             body: bool = True) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (``host=None``: no Host header)."""
    with _connect(server) as sock:
        lines = [f"{method} {path} {version}"]
        if host is not None:
            lines.append(f"Host: {host}")
        lines.append("Connection: close")
        sock.sendall(("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode())
        return _read_response(sock, body=body)


def _closed_within(sock: socket.socket, limit: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed ``sock`` (None if still open after ``limit``) and what it sent."""
    start = time.monotonic()
    got = b""
    while (left := limit - (time.monotonic() - start)) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return time.monotonic() - start, got
        got += chunk
    return None, got


# ------------------------------------------------------------------------------------------
# slow clients


@pytest.mark.timeout(30)
def test_slow_headers_are_cut_off_by_a_total_deadline():
    """Five clients sending a byte every 0.2 s never trip a per-read timeout; the 1 s total does."""
    with serving(header_timeout=1.0, idle_timeout=5.0) as server:
        trickle = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        socks = [_connect(server) for _ in range(5)]
        start = time.monotonic()
        closed: dict[socket.socket, tuple[float, bytes]] = {}
        received = {s: b"" for s in socks}
        i = 0
        while len(closed) < len(socks) and time.monotonic() - start < 4.0:
            for s in socks:
                if s in closed:
                    continue
                try:
                    s.send(trickle[i:i + 1])
                except OSError:
                    pass
            i += 1
            ready, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.2)
            for s in ready:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                received[s] += chunk
                if not chunk:
                    closed[s] = (time.monotonic() - start, received[s])
        for s in socks:
            s.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow client(s) still connected after 4 s"
    for elapsed, data in closed.values():
        assert 0.8 <= elapsed <= 2.0, f"closed after {elapsed:.2f} s; the deadline is 1 s"
        assert data.startswith(b"HTTP/1.1 408 "), data[:60]
        assert b"nosniff" in data
    assert server.counters["request_timeouts"] == len(socks)


@pytest.mark.timeout(30)
def test_healthz_and_the_camera_view_answer_while_slow_clients_hold_every_slot():
    """Three times as many slow clients as handler slots: they hold no thread, everything answers."""
    with serving(max_connections=4, max_stream_clients=2, header_timeout=30.0, idle_timeout=30.0) as server:
        threads_before = threading.active_count()
        slow = [_connect(server) for _ in range(12)]
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\nHo")
        time.sleep(0.3)  # let the server take them all in
        assert threading.active_count() == threads_before, "slow clients hold threads"
        start = time.monotonic()
        status, _, body = _request(server, "/healthz")
        latency = time.monotonic() - start
        assert status == 200 and b'"ok"' in body
        assert latency < 1.0, f"/healthz took {latency:.2f} s"
        assert _request(server, "/")[0] == 200
        assert _request(server, "/api/latest")[0] == 200
        assert _request(server, "/snapshot.jpg")[2] == JPEG
        with _connect(server) as viewer:
            viewer.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, headers, first = _read_response(viewer, body=False)
            assert status == 200 and headers["content-type"].startswith("multipart/x-mixed-replace")
            while JPEG not in first:
                first += viewer.recv(4096)
        # the slow clients were only waited for, never refused
        assert all(_closed_within(s, 0.01)[0] is None for s in slow)
        assert server.counters["connections_refused"] == 0
        for s in slow:
            s.close()


@pytest.mark.timeout(30)
def test_healthz_has_reserved_slots_when_every_handler_is_busy():
    state = FakeState()
    state.hold.clear()
    with serving(state, max_connections=2, max_stream_clients=1, healthz_slots=2) as server:
        busy = [_connect(server) for _ in range(2)]
        for s in busy:
            s.sendall(b"GET /api/latest HTTP/1.1\r\nHost: localhost\r\n\r\n")
        deadline = time.monotonic() + 5
        while state.held < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state.held == 2, "both handler slots should be busy"
        for _ in range(5):  # the reserve is given back after each request
            start = time.monotonic()
            status, headers, _ = _request(server, "/healthz")
            assert status == 200 and time.monotonic() - start < 1.0
            assert headers.get("connection") == "close"  # the reserve serves one request per connection
        status, headers, body = _request(server, "/api/latest")
        assert status == 503 and body == b"server busy\n" and headers[NOSNIFF] == "nosniff"
        assert _request(server, "/")[0] == 503
        state.hold.set()
        for s in busy:
            assert _read_response(s)[0] == 200
            s.close()
        assert _request(server, "/api/latest")[0] == 200


@pytest.mark.timeout(30)
def test_idle_keep_alive_connections_are_closed():
    with serving(idle_timeout=0.5, header_timeout=5.0) as server:
        threads_before = threading.active_count()
        with _connect(server) as sock:
            for _ in range(2):  # the same connection serves a second request...
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                status, headers, _ = _read_response(sock)
                assert status == 200 and headers.get("connection") != "close"
            answered = time.monotonic()
            while threading.active_count() > threads_before and time.monotonic() - answered < 0.3:
                time.sleep(0.01)  # the handler thread is ending
            assert threading.active_count() == threads_before, "an idle keep-alive connection holds a thread"
            waited = time.monotonic() - answered
            elapsed, data = _closed_within(sock, 3.0)  # ...and is closed once idle for 0.5 s
            assert elapsed is not None, "idle keep-alive connection still open after 3 s"
            assert 0.3 <= waited + elapsed <= 1.5 and data == b"", (waited + elapsed, data)
        with _connect(server) as fresh:  # a connection that never sends (as browsers pre-open)
            elapsed, data = _closed_within(fresh, 3.0)
            assert elapsed is not None and elapsed <= 1.5 and data == b"", (elapsed, data)
        assert server.counters["idle_closed"] == 2


# ------------------------------------------------------------------------------------------
# Host header (DNS rebinding) and nosniff


@pytest.mark.timeout(30)
def test_host_header_must_name_this_server():
    with serving(allowed_hosts=["camera.example"]) as server:
        port = server.server_address[1]
        good = ["127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LocalHost", f"[::1]:{port}",
                "192.168.1.20:8080", "camera.example", f"Camera.Example.:{port}", socket.gethostname()]
        for host in good:
            status, _, _ = _request(server, "/api/latest", host=host)
            assert status == 200, f"Host {host!r} refused"
        rebinding = ["evil.example", f"evil.example:{port}", "127.0.0.1.evil.example",
                     "localhost.evil.example", "camera.example.evil.example", "cameraexample"]
        for host in rebinding:
            for path in ("/", "/api/latest", "/snapshot.jpg", "/stream.mjpg", "/healthz"):
                status, headers, body = _request(server, path, host=host)
                assert status == 421, f"Host {host!r} got {status} for {path}"
                assert b"--allowed-host" in body and headers.get("connection") == "close"
        assert _request(server, host=None)[0] == 400  # HTTP/1.1 needs one
        assert _request(server, extra="Host: evil.example\r\n")[0] == 400  # two
        for malformed in ("bad host", "a/b", "[zz]:80", "x:port"):
            assert _request(server, host=malformed)[0] == 400, malformed
        assert _request(server, host=None, version="HTTP/1.0")[0] == 200  # HTTP/1.0 may omit it
        assert server.counters["host_refused"] >= 30
    with serving(allowed_hosts=["*"]) as server:
        assert _request(server, host="anything.example")[0] == 200


@pytest.mark.timeout(30)
def test_allowed_host_flag_reaches_the_server():
    from edgevit_pi import AppConfig, CameraApp, Captured, FrameSource
    from edgevit_pi.cli import add_app_arguments, config_from_args

    from edgevit.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_app_arguments(parser)
    args = parser.parse_args(["--port", "0", "--no-window", "--allowed-host", "cam.lan",
                              "--allowed-host", "pi.example"])
    config = config_from_args(args)
    assert config.allowed_hosts == ("cam.lan", "pi.example")
    with pytest.raises(ConfigError, match="allowed-host"):
        AppConfig(allowed_hosts=("http://cam.lan:8080/",))

    class Pattern(FrameSource):
        description = "test pattern"  # type: ignore[assignment]
        n = 0

        def open(self) -> None:
            pass

        def read(self) -> Captured:
            time.sleep(0.02)
            self.n += 1
            return Captured(Image.new("RGB", (32, 24), (200, 20, 20)), self.n, "pattern", None)

        def close(self) -> None:
            pass

    class Model:
        class metadata:  # noqa: N801
            model = "fake"

        def predict(self, image, top_k=3):
            return [{"index": 0, "label": "a", "score": 1.0}][:top_k]

    app = CameraApp(Model(), Pattern(), config)
    app.start()
    try:
        server = app.server
        assert server is not None
        assert _request(server, "/api/status", host="cam.lan")[0] == 200
        assert _request(server, "/api/status", host="pi.example:8080")[0] == 200
        assert _request(server, "/api/status", host="evil.example")[0] == 421
        status = app.status_json()
        assert status["host_refused"] == 1
    finally:
        assert app.stop()


@pytest.mark.timeout(30)
def test_every_response_says_nosniff():
    state = FakeState()
    with serving(state, header_timeout=0.5, max_stream_clients=1) as server:
        responses = {
            "page": _request(server, "/"),
            "page HEAD": _request(server, "/", method="HEAD", body=False),
            "json": _request(server, "/api/status"),
            "healthz": _request(server, "/healthz"),
            "snapshot": _request(server, "/snapshot.jpg"),
            "not found": _request(server, "/nope"),
            "bad method": _request(server, "/", method="POST", extra="Content-Length: 0\r\n"),
            "bad request": _request(server, "/", version="HTTP/x"),
            "bad version": _request(server, "/", version="HTTP/2.0"),
            "bad host": _request(server, host="evil.example"),
        }
        state.ok, state.snapshot = False, None
        responses["healthz 503"] = _request(server, "/healthz")
        responses["no snapshot"] = _request(server, "/snapshot.jpg")
        with _connect(server) as viewer:
            viewer.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
            responses["stream"] = _read_response(viewer, body=False)
            responses["stream refused"] = _request(server, "/stream.mjpg")
        with _connect(server) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\n")
            _, data = _closed_within(slow, 3.0)
            responses["timeout"] = _read_response(_Replay(data))
        with _connect(server) as big:
            big.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (40 * 1024))
            responses["too large"] = _read_response(big)
    statuses = {name: r[0] for name, r in responses.items()}
    assert statuses == {"page": 200, "page HEAD": 200, "json": 200, "healthz": 200, "snapshot": 200,
                        "not found": 404, "bad method": 501, "bad request": 400, "bad version": 505, "bad host": 421,
                        "healthz 503": 503, "no snapshot": 503, "stream": 200, "stream refused": 503,
                        "timeout": 408, "too large": 431}
    missing = [name for name, (_, headers, _) in responses.items() if headers.get(NOSNIFF) != "nosniff"]
    assert not missing, f"no X-Content-Type-Options: nosniff on {missing}"


class _Replay:
    """Bytes already received, read back like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def recv(self, n: int) -> bytes:
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk
