"""How well an index's operating points (measured at build on its own rows) predict the recall of
held-out queries: for each recall target, the max_postings the index picks, the recall@10 the
held-out queries get there, and the lists and KiB they read.

    spann datasets prepare glove-50 data/glove-50
    python benchmarks/bench_operating_points.py --data data/glove-50 --index g.spann

``--data``: a prepared dataset (``spann datasets prepare``, or a registered name). Prints the
build's calibration cost and one line per target.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import spann
from spann.datasets import load
from spann.tools.eval import recall_at_k

TARGETS = (0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset directory or registered name")
    ap.add_argument("--index", required=True, help="index directory (built if missing)")
    ap.add_argument("--param", action="append", default=[], help="BuildParams name=value (repeatable)")
    ap.add_argument("--json", help="write the records here")
    a = ap.parse_args()
    m = load(a.data)
    base, metric = m.path("base"), m.metric
    q = m.load_queries()
    gt = m.load_gt()[0]
    params = spann.BuildParams.parse_assignments(a.param)
    t0 = time.perf_counter()
    if not (Path(a.index) / "zarr.json").exists():
        spann.build(base, a.index, metric=metric, progress=True, **params).close()
        print(f"built in {time.perf_counter() - t0:.1f} s")
    records = []
    with spann.open(a.index) as idx:
        st = idx.info()["stats"]
        p = idx.operating_points
        sec = st["seconds"]
        print(f"{st['heads']:,} heads, encoding {idx.layout.encoding}; calibration: truth "
              f"{sec.get('truth', 0):.1f} s, operating points {sec.get('operating_points', 0):.1f} s"
              f" of {st['build_seconds']:.1f} s; {p.queries} queries, {len(p.max_postings)} points, "
              f"re-rank factor {p.rerank_factor:g}; default max_postings {idx.default_params.max_postings}")
        print(f"{'target':>6} {'max_postings':>12} {'measured':>8} {'held-out':>8} {'diff':>7} {'lists':>6} {'KiB':>7}")
        for t in TARGETS:
            mp = p.max_postings_for(t)
            res = idx.search(q, 10, recall=t)
            r = recall_at_k(res.ids, gt, 10)
            rec = {"target": t, "max_postings": mp, "recall": r, "lists": float(res.lists_read.mean()),
                   "kib": float(res.bytes_read.mean() / 1024)}
            records.append(rec)
            print(f"{t:>6.2f} {mp:>12} {min(max(p.recall), t):>8.3f} {r:>8.4f} {r - t:>+7.4f} {rec['lists']:>6.1f} "
                  f"{rec['kib']:>7.1f}")
        r = idx.search(q, 10)
        print(f"default search: recall@10 {recall_at_k(r.ids, gt, 10):.4f}, {r.lists_read.mean():.1f} lists")
    if a.json:
        Path(a.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
