"""Head search at growing head counts: recall of the in-RAM head index against the exact
nearest heads, and its time per query.

For each index given: queries (a float32 .npy, or the scale benchmark's held-out queries) are
searched as a single-query search finds its heads when it walks the graph: the SEEDS entries
nearest the query, then a beam search of the head graph with pool ``ef`` on the heads as the
index holds them (8-bit data: its own dtype, exact; float heads: their byte codes from 32
dimensions on, the pool then re-scored on the float32 heads).
Reported per ef: recall@8 and recall@32 against the exact nearest heads (BLAS over all heads)
and the median microseconds per query (one thread, the Python calls included), and of them
the seeding's (the entries of the nearest ``probe`` entry groups compared with the query; with
fewer than 1,024 entries one group of them all).

Usage:
    python benchmarks/bench_head_search.py /work/scratch/scale/idx-1000000.spann /work/scratch/scale/idx-10000000.spann
    python benchmarks/bench_head_search.py --rows-of /work/scratch/scale/base-10000000.u8bin \
        --row-heads 100000,1000000 --probes 0,1000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def rows_as_heads(base: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stand-in head set beyond the indexes at hand: the first ``n`` rows of the uint8 vector
    file ``base`` as heads, with a head graph built as a build builds it (default parameters).
    Rows are not centroids (they lie closer together), so this measures the graph and the
    seeding at that head count, not a real index's heads. Returns (heads, neighbors, entries)."""
    from spann.datasets.formats import open_vectors
    from spann.heads.graph import build_graph
    from spann.params import BuildParams
    with open_vectors(base) as vf:
        heads = np.ascontiguousarray(vf.take(np.arange(n)))
    p = BuildParams()
    t = time.perf_counter()
    nb, entries = build_graph(heads.astype(np.float32), degree=p.graph_degree, candidates=p.graph_candidates,
                              alpha=p.graph_alpha)
    print(f"graph over {n:,} rows: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return heads, nb, entries


def measure(path: str, q: np.ndarray, efs: list[int], probe: int = 0, rows: tuple | None = None) -> dict:
    import spann
    from spann.heads.graph import SEEDS, adjacency, beam_search, entry_seeds, seed_entries, walk_codes
    from spann.kernels.exact import exact_knn
    if rows is not None:
        heads, nb, entries = rows
        graph = adjacency(nb)
    else:
        with spann.open(path) as idx:  # the heads as the index holds them (8-bit data: its dtype)
            heads = np.ascontiguousarray(idx.heads)
            graph = adjacency(np.asarray(idx.neighbors))
            entries = np.ascontiguousarray(np.asarray(idx.entries))
    H = heads.shape[0]
    qh = np.ascontiguousarray(q[:, :heads.shape[1]], dtype=np.float32)
    truth, _ = exact_knn(np.ascontiguousarray(heads, dtype=np.float32), qh, 32, "l2", base_block=8192,
                         query_block=256)
    wc = walk_codes(heads)
    groups = entry_seeds(heads, entries).groups  # as the open index seeds a single query
    if probe:
        groups = groups._replace(probe=min(probe, groups.centers.shape[0]))
    vis = np.zeros(H, np.uint32)
    out: dict = {"index": path, "heads": H, "entries": int(entries.size), "entry_groups": groups.centers.shape[0],
                 "probe": groups.probe, "points": []}
    tag = 0
    for ef in efs:
        oi, od = np.empty(ef, np.int32), np.empty(ef, np.float32)
        hits8 = hits32 = 0
        times, seed_times = [], []
        for i in range(qh.shape[0]):
            tag += 1
            t0 = time.perf_counter()
            seeds = seed_entries(qh[i], groups, entries, SEEDS)
            t1 = time.perf_counter()
            beam_search(qh[i], heads, graph, seeds, ef, vis, np.uint32(tag), oi, od, wc)
            times.append(time.perf_counter() - t0)
            seed_times.append(t1 - t0)
            hits8 += np.intersect1d(oi[:8], truth[i, :8]).size
            hits32 += np.intersect1d(oi[:32], truth[i, :32]).size if ef >= 32 else 0
        out["points"].append({"ef": ef, "recall@8": hits8 / (8 * qh.shape[0]),
                              "recall@32": hits32 / (32 * qh.shape[0]) if ef >= 32 else None,
                              "us_per_query": 1e6 * statistics.median(times),
                              "seed_us": 1e6 * statistics.median(seed_times)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("indexes", nargs="*")
    ap.add_argument("--rows-of", help="a uint8 vector file whose first rows stand in for heads (see rows_as_heads)")
    ap.add_argument("--row-heads", default="", help="head counts to take from --rows-of, e.g. 100000,1000000")
    ap.add_argument("--queries", help="float32 .npy of queries (default: the scale benchmark's)")
    ap.add_argument("--ef", default="32,64,128,256")
    ap.add_argument("--probes", default="0", help="entry groups a query's seeds come from (0: the index's own; "
                    "as many as there are groups: every entry)")
    a = ap.parse_args()
    if a.queries:
        q = np.load(a.queries).astype(np.float32)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_scale import Mixture
        q = Mixture(10**7).rows(0, 1000, stream=1).astype(np.float32)
    from spann.kernels.threads import NumbaThreads
    with NumbaThreads(1):
        efs = [int(v) for v in a.ef.split(",")]
        for p in a.indexes:
            for probe in (int(v) for v in a.probes.split(",")):
                print(json.dumps(measure(p, q, efs, probe), indent=1), flush=True)
    for n in (int(v) for v in a.row_heads.split(",") if v):
        rows = rows_as_heads(a.rows_of, n)  # the graph build on every core
        with NumbaThreads(1):
            for probe in (int(v) for v in a.probes.split(",")):
                print(json.dumps(measure(f"{a.rows_of}[:{n}]", q, efs, probe, rows), indent=1), flush=True)


if __name__ == "__main__":
    main()
