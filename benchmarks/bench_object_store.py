"""A local index against the same index in an object store (loopback S3), in one invocation.

With ``--server moto`` (default), exports INDEX to ``s3://BUCKET/PREFIX`` on a moto S3 server it
starts on 127.0.0.1 (``--server env``: the server AWS_ENDPOINT_URL names); with ``--server
http``, serves INDEX's directory from :class:`spann.bench.range_server.RangeServer` with
``--delay-ms`` per request (an object store's first-byte latency, ~10-30 ms on S3). Then it
times single queries:

- local: the index directory, page cache warm (reference);
- s3 cold: the fetch cache emptied before every query (every list is a ranged GET);
- s3 warm: the cache on, each query run once before it is timed.

Prints medians and p95 (ms), GETs, KiB fetched and lists read per query, and checks that the
results equal the local index's. Both servers are Python: moto answers one request at a time
(~50 ms per ranged GET of a 64 MiB shard object here), the range server a few ms of CPU each;
their cost, not the network's, dominates the cold figures on loopback.

Usage:
    python benchmarks/bench_object_store.py bench-out/glove.spann /data/glove-50/queries.fbin --queries 200
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _timed(idx, q, k, mp, before=None):
    lat, res = [], []
    for i in range(q.shape[0]):
        if before is not None:
            before()
        t = time.perf_counter()
        r = idx.search(q[i], k, max_postings=mp)
        lat.append(time.perf_counter() - t)
        res.append(r)
    return np.array(lat) * 1e3, res


def main() -> None:
    import spann
    from spann.datasets.formats import read_vectors
    from spann.io.publish import export_index
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index")
    ap.add_argument("queries")
    ap.add_argument("--queries-n", "--queries", dest="nq", type=int, default=200)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--max-postings", type=int, default=32)
    ap.add_argument("--server", choices=["moto", "env", "http"], default="moto")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="per-request delay of --server http")
    ap.add_argument("--url", default="s3://spann-bench/index")
    a = ap.parse_args()
    srv = http = None
    if a.server == "http":
        from spann.bench.range_server import RangeServer
        http = RangeServer(a.index, delay_ms=a.delay_ms)
        a.url = http.url + "/"
    elif a.server == "moto":
        import logging
        import urllib.request

        from moto.server import ThreadedMotoServer
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        srv.start()
        host, port = srv.get_host_and_port()
        os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        bucket = a.url.split("/")[2]
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/{bucket}", method="PUT")).read()
    try:
        q = read_vectors(a.queries)[:a.nq]
        t = time.perf_counter()
        if http is None:
            export_index(a.index, a.url, overwrite=True)
        upload = time.perf_counter() - t
        local = spann.open(a.index)
        t = time.perf_counter()
        remote = spann.open(a.url)
        open_s = time.perf_counter() - t
        for idx in (local, remote):
            idx.search(q[:2], a.k)  # compile
        l_lat, l_res = _timed(local, q, a.k, a.max_postings)
        c_lat, c_res = _timed(remote, q, a.k, a.max_postings, before=remote.cache.clear)
        for i in range(q.shape[0]):
            remote.search(q[i], a.k, max_postings=a.max_postings)
        w_lat, w_res = _timed(remote, q, a.k, a.max_postings)
        same = all(np.array_equal(x.ids, y.ids) for x, y in zip(l_res, c_res)) and \
            all(np.array_equal(x.ids, y.ids) for x, y in zip(l_res, w_res))
        per = lambda rs, f: float(np.median([getattr(r, f)[0] for r in rs]))  # noqa: E731
        rec = {"index": a.index, "url": a.url, "server": {"moto": "moto (loopback)",
                                                          "http": f"range server, {a.delay_ms} ms per request",
                                                      "env": os.environ.get("AWS_ENDPOINT_URL")}[a.server],
               "queries": int(q.shape[0]), "k": a.k, "max_postings": a.max_postings, "encoding": local.layout.encoding,
               "upload_s": round(upload, 2), "open_s": round(open_s, 3), "identical_results": same,
               "local_warm_ms": {"p50": round(float(np.median(l_lat)), 3), "p95": round(float(np.percentile(l_lat,
                                                                                                            95)), 3)},
               "s3_cold_ms": {"p50": round(float(np.median(c_lat)), 2), "p95": round(float(np.percentile(c_lat, 95)),
                                                                                     2)},
               "s3_warm_ms": {"p50": round(float(np.median(w_lat)), 3), "p95": round(float(np.percentile(w_lat, 95)),
                                                                                     3)},
               "cold_gets_per_query": per(c_res, "requests"), "cold_lists_read": per(c_res, "lists_read"),
               "cold_kib_fetched": round(per(c_res, "bytes_fetched") / 1024, 1),
               "warm_gets_per_query": per(w_res, "requests")}
        print(json.dumps(rec, indent=1))
    finally:
        if srv is not None:
            srv.stop()
        if http is not None:
            http.stop()


if __name__ == "__main__":
    main()
