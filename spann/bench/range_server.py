"""A small threaded HTTP server of a directory's files, with Range requests and an optional
delay per request: an index served over plain HTTP (``spann.open("http://host:port/")``), and
the object-store stand-in of the tests and benchmarks (the delay plays the store's latency,
so concurrent ranged GETs show as overlapping). Read-only; not for untrusted networks.
"""

from __future__ import annotations

import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["RangeServer"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    root: Path
    delay: float
    counter: list  # [requests, in flight, most in flight at once]
    lock: threading.Lock

    def log_message(self, *_a) -> None:
        pass

    def _file(self) -> Path | None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        p = (self.root / rel).resolve()
        if self.root not in p.parents or not p.is_file():
            return None
        return p

    def _send(self, head_only: bool) -> None:
        with self.lock:
            self.counter[0] += 1
            self.counter[1] += 1
            self.counter[2] = max(self.counter[2], self.counter[1])
        try:
            if self.delay:
                time.sleep(self.delay)
            self._answer(head_only)
        finally:
            with self.lock:
                self.counter[1] -= 1

    def _answer(self, head_only: bool) -> None:
        p = self._file()
        if p is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = p.stat().st_size
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (int(m.group(1)), min(size, int(m.group(2)) + 1 if m.group(2) else size)) if m else (0, size)
        if m and start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if m else 200)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(p.stat().st_mtime)))
        self.send_header("ETag", f'"{p.stat().st_mtime_ns:x}-{size:x}"')
        self.end_headers()
        if not head_only:
            with open(p, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start))

    def do_GET(self) -> None:  # noqa: N802
        self._send(False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(True)


class RangeServer:
    """Serve ``root`` on 127.0.0.1 (a free port) until :meth:`stop`; ``url`` is its address,
    ``requests`` the number served so far, ``max_in_flight`` the most answered at once.
    ``delay_ms``: wait this long before each answer."""

    def __init__(self, root: str | os.PathLike[str], delay_ms: float = 0.0):
        handler = type("Handler", (_Handler,), {"root": Path(root).resolve(), "delay": delay_ms / 1e3,
                                                "counter": [0, 0, 0],
                                                "lock": threading.Lock()})
        self._handler = handler
        server = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 256})
        self.httpd = server(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> int:
        return self._handler.counter[0]

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being answered at the same time."""
        return self._handler.counter[2]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "RangeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
