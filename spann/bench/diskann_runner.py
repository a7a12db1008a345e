"""Build and measure DiskANN (diskannpy) in its own interpreter.

diskannpy 0.7 pins numpy 1.25, which cannot sit beside zarr 3, so ``spann bench`` runs this
file with another Python (``--diskann-python PATH``): a venv with ``numpy==1.25.*`` and
``diskannpy==0.7.0``. It imports nothing from spann: vector files are read with numpy alone,
and results go back as one JSON document on stdout (diskannpy's own chatter goes to stderr).

    python diskann_runner.py --base B.fbin --queries Q.fbin --gt GT.ibin --workdir DIR \\
        --metric l2 --k 10 --sweep 10,16,20,30,40,60 --beam 2 --latency-queries 1000 --threads 1

Every DiskANN query reads with O_DIRECT (no page cache), so its latencies are cold ones;
``--cache-nodes`` (default 0) keeps that many nodes in RAM, as DiskANN's own cache does.

With ``--serve`` it builds or opens the index, writes one JSON line (the index's facts, no
records) and then answers requests, one JSON line each way, until stdin closes::

    -> {"L": 16, "rows": [0, 17, 34]}            (rows of the queries file)
    <- {"latency_ms": [..3 floats..], "ids": [[..k ints..], ..3 lists..]}

so a benchmark in another interpreter can interleave DiskANN's queries with its own, block by
block, and a shared disk's drift falls on both alike. One untimed query runs before the facts
line, so the first timed one does not pay the process's first-call costs. ``--gt``, ``--sweep``
and ``--latency-queries`` are not used there.

Note: diskannpy 0.7's StaticDiskIndex deadlocks with num_threads=1; it is opened with 2 and the
single-query latencies use one query at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np


def _read(path: str):
    with open(path, "rb") as fh:
        n, d = (int(v) for v in np.frombuffer(fh.read(8), "<u4"))
    ext = path.rsplit(".", 1)[-1]
    dt = {"fbin": "<f4", "u8bin": "u1", "i8bin": "i1", "ibin": "<i4"}[ext]
    return np.fromfile(path, dt, offset=8).reshape(n, d)


def _normalize(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return (x / n).astype(np.float32)


def _dir_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--metric", default="l2", choices=["l2", "cosine", "ip"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--R", type=int, default=64)
    ap.add_argument("--L", type=int, default=100)
    ap.add_argument("--pq-bytes", type=float, default=0, help="PQ bytes per vector in RAM (0: dim / 2)")
    ap.add_argument("--sweep", default="10,16,20,30,40,60,80")
    ap.add_argument("--beam", type=int, default=2)
    ap.add_argument("--latency-queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="build threads")
    ap.add_argument("--cache-nodes", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--serve", action="store_true", help="answer JSON-line requests on stdin (see above)")
    a = ap.parse_args()
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # diskann's C++ code prints to fd 1: send it to stderr, keep stdout for the JSON
    with contextlib.redirect_stdout(sys.stderr):
        import diskannpy as dap  # only in the DiskANN venv
        q = _read(a.queries).astype(np.float32)
        dist = "mips" if a.metric == "ip" else "l2"
        if a.metric == "cosine":
            q = _normalize(q)
        os.makedirs(a.workdir, exist_ok=True)
        out = {"system": "diskann", "params": {"R": a.R, "L": a.L, "beam": a.beam, "cache_nodes": a.cache_nodes}}
        if a.rebuild or not os.path.exists(os.path.join(a.workdir, "ann_disk.index")):
            x = _read(a.base).astype(np.float32)
            if a.metric == "cosine":
                x = _normalize(x)
            for stale in os.listdir(a.workdir):  # an interrupted build's files make diskannpy refuse to start
                p = os.path.join(a.workdir, stale)
                if stale.startswith("ann_") and os.path.isfile(p):
                    os.remove(p)
            pq = a.pq_bytes or x.shape[1] / 2
            t = time.perf_counter()
            dap.build_disk_index(data=x, distance_metric=dist, index_directory=a.workdir, complexity=a.L,
                                 graph_degree=a.R, search_memory_maximum=pq * len(x) / 2**30,
                                 build_memory_maximum=8.0, num_threads=a.threads, pq_disk_bytes=0)
            out["build_seconds"] = time.perf_counter() - t
            del x
        out["index_bytes"] = _dir_bytes(a.workdir)
        pq_file = os.path.join(a.workdir, "ann_pq_compressed.bin")  # int32 n, int32 bytes, codes
        if os.path.exists(pq_file):
            with open(pq_file, "rb") as fh:
                n_pq, b_pq = np.frombuffer(fh.read(8), np.int32)
            out["pq_bytes_per_vector"] = int(b_pq)
        idx = dap.StaticDiskIndex(index_directory=a.workdir, num_threads=2, num_nodes_to_cache=a.cache_nodes)
        if a.serve:
            _serve(idx, q, a, out, real_stdout)
            return
        gt = _read(a.gt)[:, :a.k]
        sample = np.linspace(0, len(q) - 1, min(a.latency_queries, len(q))).astype(int)
        records = []
        for L in (int(v) for v in a.sweep.split(",")):
            L = max(L, a.k)
            idx.search(q[0], k_neighbors=a.k, complexity=L, beam_width=a.beam)
            lat, hits = [], 0
            for i in sample:
                t = time.perf_counter()
                ids, _ = idx.search(q[i], k_neighbors=a.k, complexity=L, beam_width=a.beam)
                lat.append(time.perf_counter() - t)
                hits += len(set(ids.tolist()) & set(gt[i].tolist()))
            lat = np.array(lat) * 1e3
            records.append({"params": {"L": L}, "recall": hits / (a.k * len(sample)),
                            "latency_mean_ms": float(lat.mean()), "latency_p50_ms": float(np.median(lat)),
                            "latency_p99_ms": float(np.percentile(lat, 99)), "queries": len(sample)})
        out["records"] = records
    _write_all(real_stdout, json.dumps(out).encode())


def _serve(idx, q, a, facts: dict, fd: int) -> None:
    """Answer {"L", "rows"} requests from stdin until it closes (see the module docstring)."""
    idx.search(q[0], k_neighbors=a.k, complexity=a.k, beam_width=a.beam)  # warm-up, untimed
    _write_all(fd, (json.dumps(facts) + "\n").encode())
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        L = max(int(req["L"]), a.k)
        lat, ids = [], []
        for i in req["rows"]:
            t = time.perf_counter()
            found, _ = idx.search(q[int(i)], k_neighbors=a.k, complexity=L, beam_width=a.beam)
            lat.append((time.perf_counter() - t) * 1e3)
            ids.append(np.asarray(found).astype(np.int64).tolist())
        _write_all(fd, (json.dumps({"latency_ms": lat, "ids": ids}) + "\n").encode())


if __name__ == "__main__":
    main()
