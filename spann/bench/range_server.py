"""A small threaded HTTP server of a directory's files, with Range requests and an optional
delay per request: an index served over plain HTTP (``spann.open("http://host:port/")``), and
the object-store stand-in of the tests and benchmarks (the delay plays the store's latency,
so concurrent ranged GETs show as overlapping). Read-only; not for untrusted networks.

Bounded: one ``Range: bytes=a-b`` (or ``a-`` or the suffix ``-n``) per request, answered 206;
anything else in a Range header (a reversed or unsatisfiable range, several ranges, numbers of
more than 19 digits) 416; bodies are streamed in 1 MiB reads (a GET of a whole large file
costs no more memory than a small one); a connection idle for ``timeout`` seconds is closed;
at most ``max_connections`` connections are served at once (more are closed on accept).
"""

from __future__ import annotations

import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["RangeServer", "parse_range"]

_BLOCK = 1 << 20  #: bytes per read of a body
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) that a ``Range`` header asks of a file of ``size`` bytes;
    ``(0, size)`` with no header; ``None`` when the header is not one satisfiable byte range
    (the answer is then 416)."""
    if header is None:
        return 0, size
    m = _RANGE.fullmatch(header.strip())
    if m is None or not (m.group(1) or m.group(2)):
        return None
    if not m.group(1):  # suffix: the last n bytes
        n = int(m.group(2))
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size or end <= start:
        return None
    return start, min(end, size)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    timeout = 30.0  # seconds a connection may stay idle (or stall a read or write)
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
        try:
            f = open(p, "rb") if p is not None else None
        except OSError:
            f = None
        if f is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            header = self.headers.get("Range")
            rng = parse_range(header, size)
            if rng is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = rng
            self.send_response(206 if header is not None else 200)
            if header is not None:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
            self.send_header("ETag", f'"{st.st_mtime_ns:x}-{size:x}"')
            self.end_headers()
            if head_only:
                return
            f.seek(start)
            left = end - start
            while left > 0:
                b = f.read(min(left, _BLOCK))
                if not b:  # the file shrank meanwhile: the client sees a short body and retries
                    self.close_connection = True
                    return
                self.wfile.write(b)
                left -= len(b)

    def do_GET(self) -> None:  # noqa: N802
        self._send(False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(True)


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` at once (more are closed on accept)."""

    request_queue_size = 256
    daemon_threads = True
    max_connections = 128

    def __init__(self, address, handler, max_connections: int):
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class RangeServer:
    """Serve ``root`` on 127.0.0.1 (a free port) until :meth:`stop`; ``url`` is its address,
    ``requests`` the number served so far, ``max_in_flight`` the most answered at once.
    ``delay_ms``: wait this long before each answer; ``timeout``: seconds a connection may stay
    idle; ``max_connections``: connections served at once."""

    def __init__(self, root: str | os.PathLike[str], delay_ms: float = 0.0, *, timeout: float = 30.0,
                 max_connections: int = 128):
        handler = type("Handler", (_Handler,), {"root": Path(root).resolve(), "delay": delay_ms / 1e3,
                                                "counter": [0, 0, 0], "timeout": timeout,
                                                "lock": threading.Lock()})
        self._handler = handler
        self.httpd = _Server(("127.0.0.1", 0), handler, max_connections)
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
