"""``/healthz`` latency of the Pi app's browser view while slow clients are connected.

Starts the server (apps/raspberry_pi/edgevit_pi/server.py) in a child process on loopback with a
stand-in app state (no model, no camera), connects ``--slow`` clients that each send a request one
byte every ``--byte-interval`` seconds and never finish it (reconnecting when the server closes
them, as an attacker would), then times ``--requests`` requests for ``/healthz`` and for the page
``/`` on fresh connections, spread over ``--spread`` seconds; then the same with no slow clients.

    python benchmarks/pi_slow_clients.py [--slow 200] [--requests 200] [--app-dir apps/raspberry_pi]

``--app-dir`` points at another copy of the app (e.g. an older checkout) to compare servers.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

SERVER = textwrap.dedent(
    """
    import json, sys, threading
    sys.path.insert(0, sys.argv[1])
    from edgevit_pi.server import FrameBroadcast, ViewerServer

    class State:
        broadcast = FrameBroadcast()
        def latest_json(self): return {"ready": True, "label": "a"}
        def status_json(self): return {"model": "bench", "source_state": "streaming"}
        def healthy(self): return True
        def snapshot_jpeg(self): return None
        def viewer_joined(self): pass
        def viewer_left(self, dropped_slow): pass

    server = ViewerServer(("127.0.0.1", 0), State())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    server.stop()
    print(json.dumps(server.counters), flush=True)
    """
)


class SlowClients:
    """``n`` connections that each send one byte of a never-ending request every ``interval`` s."""

    PAYLOAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000

    def __init__(self, port: int, n: int, interval: float) -> None:
        self.port, self.n, self.interval = port, n, interval
        self.reconnects = 0
        self.connected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _connect(self, sel: selectors.BaseSelector, first_byte: float) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self._waiting.append(time.monotonic() + self.interval)
            return
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, [0, first_byte, time.monotonic()])  # sent, next send, since

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        self._waiting: list[float] = []  # when closed clients come back
        start = time.monotonic()
        for i in range(self.n):  # staggered over one interval
            self._connect(sel, start + self.interval * i / self.n)
        while not self._stop.is_set():
            now = time.monotonic()
            for key in list(sel.get_map().values()):
                sent, due, _ = key.data
                if due <= now:
                    try:
                        key.fileobj.send(self.PAYLOAD[sent:sent + 1])  # type: ignore[union-attr]
                    except OSError:
                        pass
                    key.data[0], key.data[1] = (sent + 1) % len(self.PAYLOAD), due + self.interval
            for key, _ in sel.select(0.05):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if not data:
                    # Closed by the server: come back at once if it held us a while (a deadline), after
                    # one interval if it refused us straight away (no reconnect storm).
                    sel.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
                    self.reconnects += 1
                    held = time.monotonic() - key.data[2]
                    self._waiting.append(time.monotonic() + (0 if held >= self.interval else self.interval))
            now = time.monotonic()
            due_now = [t for t in self._waiting if t <= now]
            self._waiting = [t for t in self._waiting if t > now]
            for _ in due_now:
                self._connect(sel, now)
            self.connected = len(sel.get_map())
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


def timed_get(port: int, path: str) -> tuple[float, int]:
    """Seconds for one request on a new connection, and its status (0: no answer)."""
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return time.perf_counter() - start, 0
    elapsed = time.perf_counter() - start
    try:
        return elapsed, int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return elapsed, 0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, 100 * q))  # numpy's definition, as bench and the Pi app use


def measure(port: int, requests: int, spread: float) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    samples: dict[str, list[tuple[float, int]]] = {"/healthz": [], "/": []}
    pause = spread / requests
    for _ in range(requests):
        tick = time.monotonic()
        for path, got in samples.items():
            got.append(timed_get(port, path))
        time.sleep(max(0.0, pause - (time.monotonic() - tick)))
    for path, got in samples.items():
        ms = [t * 1000 for t, _ in got]
        statuses: dict[int, int] = {}
        for _, status in got:
            statuses[status] = statuses.get(status, 0) + 1
        results[path] = {"p50_ms": round(percentile(ms, 0.5), 2), "p99_ms": round(percentile(ms, 0.99), 2),
                         "max_ms": round(max(ms), 2), "statuses": statuses}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=200, help="slow clients (default 200)")
    parser.add_argument("--byte-interval", type=float, default=2.0, help="seconds between their bytes (default 2)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per path (default 200)")
    parser.add_argument("--spread", type=float, default=15.0,
                        help="seconds the timed requests are spread over (default 15: past the 10 s header deadline)")
    parser.add_argument("--app-dir", default=str(REPO / "apps" / "raspberry_pi"), help="where edgevit_pi is")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.slow + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))

    server = subprocess.Popen([sys.executable, "-c", SERVER, args.app_dir], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        report: dict[str, object] = {"slow_clients": args.slow, "byte_interval_s": args.byte_interval,
                                     "requests": args.requests, "app_dir": args.app_dir}
        report["baseline"] = measure(port, args.requests, args.spread)
        with SlowClients(port, args.slow, args.byte_interval) as slow:
            time.sleep(args.byte_interval + 1)  # every slow client has sent something
            connected_before = slow.connected
            report["with_slow_clients"] = measure(port, args.requests, args.spread)
            report["slow_connected"] = {"at_start": connected_before, "at_end": slow.connected,
                                        "reconnects": slow.reconnects}
        server.stdin.close()  # type: ignore[union-attr]
        report["server_counters"] = json.loads(server.stdout.readline() or "null")  # type: ignore[union-attr]
        server.wait(15)
    finally:
        if server.poll() is None:
            server.kill()
    print(json.dumps(report, indent=1))
    for phase in ("baseline", "with_slow_clients"):
        for path, r in report[phase].items():  # type: ignore[union-attr]
            print(f"{phase:18} {path:9} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:8.2f} ms  statuses {r['statuses']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
