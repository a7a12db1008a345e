"""A build on a Dask LocalCluster against the local build of the same data, in one invocation.

Builds BASE (a vector file) locally and on a LocalCluster of ``--workers`` worker processes
(one thread each), same seed and parameters; prints each build's wall time (cluster start-up
counted apart), whether the two indexes are identical (heads, lists, search results) and
recall@k of both against GT. One JSON record.

Usage:
    spann datasets prepare glove-50 /data/glove-50
    python benchmarks/bench_distributed.py /data/glove-50 --metric cosine --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import spann
    from spann.builder.dask import local_cluster
    from spann.datasets.formats import read_vectors
    from spann.tools.eval import recall_at_k
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="prepared dataset directory (base.*, queries.fbin, gt.ibin)")
    ap.add_argument("--metric", default="cosine")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="bench-out/distributed")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--max-postings", type=int, default=32)
    a = ap.parse_args()
    d = Path(a.dataset)
    base = next(p for p in sorted(d.iterdir()) if p.name.startswith("base."))
    q = read_vectors(d / "queries.fbin")
    gt = read_vectors(d / "gt.ibin", ids=True)[:, :a.k]
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    local = spann.build(base, work / "local.spann", metric=a.metric, progress=False)
    t_local = time.perf_counter() - t
    t = time.perf_counter()
    client, cluster = local_cluster(a.workers)
    t_start = time.perf_counter() - t
    t = time.perf_counter()
    try:
        dist = spann.build(base, work / "dist.spann", metric=a.metric, progress=False, client=client)
    finally:
        t_dist = time.perf_counter() - t
        client.close()
        cluster.close()
    rl = local.search(q, a.k, max_postings=a.max_postings)
    rd = dist.search(q, a.k, max_postings=a.max_postings)
    same = bool(np.array_equal(local.heads, dist.heads) and np.array_equal(local.counts, dist.counts)
                and np.array_equal(rl.ids, rd.ids))
    print(json.dumps({"base": str(base), "n": local.n, "workers": a.workers, "local_build_s": round(t_local, 2),
                      "cluster_start_s": round(t_start, 2), "dask_build_s": round(t_dist, 2),
                      "overhead": round(t_dist / t_local, 3), "identical": same,
                      f"recall@{a.k}_local": round(float(recall_at_k(rl.ids, gt, a.k)), 4),
                      f"recall@{a.k}_dask": round(float(recall_at_k(rd.ids, gt, a.k)), 4),
                      "max_postings": a.max_postings, "stages_local": local.attrs["stats"]["seconds"],
                      "stages_dask": dist.attrs["stats"]["seconds"]}, indent=1))


if __name__ == "__main__":
    main()
