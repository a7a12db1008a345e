"""The HTTP range server of the tests and benchmarks: one byte range per request, 416 for
anything else, bodies streamed, idle connections timed out, connections bounded."""

import http.client
import socket
import time

import pytest

from spann.bench.range_server import RangeServer, parse_range

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("rs")
    (d / "f.bin").write_bytes(DATA)
    (d / "big.bin").write_bytes(DATA * 300)  # 3 MiB: streamed in several reads
    with RangeServer(d, timeout=1.0, max_connections=4) as srv:
        yield srv


def get(srv, path="/f.bin", rng=None, method="GET"):
    c = http.client.HTTPConnection(srv.url.removeprefix("http://"), timeout=10)
    try:
        c.request(method, path, headers={"Range": rng} if rng is not None else {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


@pytest.mark.parametrize("rng, want", [(None, (0, 10240)), ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 10240)),
                                       ("bytes=-100", (10140, 10240)), ("bytes=-99999", (0, 10240)),
                                       ("bytes=10000-99999", (10000, 10240)), ("bytes=5-5", (5, 6))])
def test_satisfiable_ranges(server, rng, want):
    status, h, body = get(server, rng=rng)
    assert status == (200 if rng is None else 206)
    assert body == DATA[want[0]:want[1]] and int(h["Content-Length"]) == len(body)
    if rng is not None:
        assert h["Content-Range"] == f"bytes {want[0]}-{want[1] - 1}/10240"


@pytest.mark.parametrize("rng", ["bytes=100-50", "bytes=10240-", "bytes=-0", "bytes=0-1,5-9", "bytes=-", "items=0-1",
                                 "bytes=" + "9" * 4300 + "-", "bytes=0-" + "1" * 4300, "bytes=abc-", "bytes= 1-2"])
def test_unsatisfiable_or_malformed_ranges_are_416(server, rng):
    status, h, body = get(server, rng=rng)
    assert status == 416 and h["Content-Range"] == "bytes */10240" and body == b""
    assert get(server, rng="bytes=0-3")[2] == DATA[:4]  # the server is still there


def test_head_missing_and_escaping_paths(server):
    status, h, body = get(server, method="HEAD")
    assert status == 200 and h["Content-Length"] == "10240" and body == b""
    assert get(server, "/nope")[0] == 404
    assert get(server, "/../../etc/passwd")[0] == 404


def test_large_bodies_are_streamed_whole(server):
    status, h, body = get(server, "/big.bin")
    assert status == 200 and body == DATA * 300
    status, _, body = get(server, "/big.bin", rng="bytes=1000000-2999999")
    assert status == 206 and body == (DATA * 300)[1000000:3000000]


def test_idle_connections_are_closed_and_connections_bounded(server):
    host, port = server.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(6)]  # 4 served, 2 closed at once
    try:
        t0 = time.monotonic()
        for s in idle:
            s.settimeout(5)
            assert s.recv(1) == b""  # closed: over the bound at once, the others after the 1 s idle timeout
        assert time.monotonic() - t0 < 4
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert get(server)[0] == 200  # slots freed


def test_parse_range():
    assert parse_range(None, 0) == (0, 0)
    assert parse_range("bytes=0-", 0) is None and parse_range("bytes=-5", 0) is None
    assert parse_range("bytes=3-1", 10) is None and parse_range("bytes=0-0", 10) == (0, 1)
