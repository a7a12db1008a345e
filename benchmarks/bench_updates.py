"""Updates and filtered search on a real data set: the "Updates" and "Filtered search" tables of
docs/benchmarks.md.

1. **Insert/delete** (``inserts``): build on a random 90 % of the base (ids = row numbers),
   insert the other 10 % in batches of 10,000, delete a random 5 % of the final set in one
   batch; throughput of each, single-query latency while the batches run (a second thread
   searches continuously) against idle; recall@10 of the updated index against exact ground
   truth of the final set, next to a fresh build of the final set, over a max_postings sweep.
2. **Churn** (``churn``): build on 70 %, then six batches each inserting 5 % of the base (from the
   other 30 %) and deleting 5 % (of the first 70 %): 30 % churn; recall against a rebuild of
   the final set.
3. **Filters** (``filters``): every vector independently carries label 50 with probability
   0.5, label 10 with 0.1, label 1 with 0.01; recall@10 against the exact filtered ground truth
   and median single-query latency (warm, one thread) for each filter and unfiltered, over a
   max_postings sweep; latency at recall 0.90 and the ratio to unfiltered.

Usage:
    spann datasets prepare glove-50 data/glove-50
    python benchmarks/bench_updates.py --data data/glove-50 --out bench-out/updates [--parts inserts,churn,filters]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from bench_disk import interp_latency as interp  # same directory: the Pareto-front interpolation


def recall(got, gt, k=10):
    return float(np.mean([len(set(g[:k].tolist()) & set(t[:k].tolist())) / k for g, t in zip(got, gt)]))


def single_latencies(idx, qs, **kw):
    lat = []
    for q in qs:
        t = time.perf_counter()
        idx.search(q, 10, **kw)
        lat.append(time.perf_counter() - t)
    return lat


def sweep(idx, qs, gt, values, **kw):
    out = []
    for mp in values:
        r = idx.search(qs, 10, max_postings=mp, threads=1, **kw)
        lat = single_latencies(idx, qs, max_postings=mp, **kw)
        out.append({"max_postings": mp, "recall": recall(r.ids, gt), "p50_ms": 1e3 * statistics.median(lat),
                    "lists": float(np.median(r.lists_read)), "kib": float(np.median(r.bytes_read)) / 1024})
    return out


def exact_gt(x, ids, qs, metric, k=10):
    from spann.kernels.exact import exact_knn
    gi, _ = exact_knn(x, qs, k, metric)
    return ids[gi]


def part_inserts(x, qs, metric, work, values, rng):
    import spann
    n = x.shape[0]
    perm = rng.permutation(n)
    base, ins = np.sort(perm[:int(0.9 * n)]), perm[int(0.9 * n):]
    t = time.perf_counter()
    idx = spann.build(x[base], work / "upd.spann", metric=metric, ids=base, progress=False, overwrite=True)
    rep = {"build_90pct_s": time.perf_counter() - t}
    idx.prepare()
    idle = single_latencies(idx, qs[:300])
    during, stop = [], threading.Event()

    def searcher():
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            idx.search(qs[i % len(qs)], 10)
            during.append(time.perf_counter() - t0)
            i += 1

    th = threading.Thread(target=searcher)
    th.start()
    batches = []
    for b in range(0, len(ins), 10_000):
        chunk = ins[b:b + 10_000]
        t = time.perf_counter()
        idx.add(x[chunk], ids=chunk)
        batches.append({"vectors": len(chunk), "seconds": time.perf_counter() - t})
    live = np.sort(np.concatenate([base, ins]))
    gone = rng.choice(live, int(0.05 * n), replace=False)
    t = time.perf_counter()
    idx.delete(gone)
    del_s = time.perf_counter() - t
    stop.set()
    th.join()
    final = np.setdiff1d(live, gone)
    rep.update(insert_batches=batches,
               insert_per_s=sum(b["vectors"] for b in batches) / sum(b["seconds"] for b in batches),
               delete_ids=len(gone), delete_s=del_s, delete_per_s=len(gone) / del_s,
               idle_p50_ms=1e3 * statistics.median(idle), during_updates_p50_ms=1e3 * statistics.median(during),
               during_updates_p99_ms=1e3 * float(np.percentile(during, 99)), searches_during=len(during),
               splits=idx.attrs.get("splits", 0), heads=int(idx.heads.shape[0]), live=len(idx))
    gt = exact_gt(x[final], final, qs, metric)
    rep["updated"] = sweep(idx, qs, gt, values)
    idx.close()
    t = time.perf_counter()
    fresh = spann.build(x[final], work / "fresh.spann", metric=metric, ids=final, progress=False, overwrite=True)
    rep["fresh_build_s"] = time.perf_counter() - t
    fresh.prepare()
    rep["fresh"] = sweep(fresh, qs, gt, values)
    fresh.close()
    return rep


def part_churn(x, qs, metric, work, values, rng):
    import spann
    n = x.shape[0]
    perm = rng.permutation(n)
    a, pool = np.sort(perm[:int(0.7 * n)]), perm[int(0.7 * n):]
    idx = spann.build(x[a], work / "churn.spann", metric=metric, ids=a, progress=False, overwrite=True)
    live = set(a.tolist())
    step = int(0.05 * n)
    candidates = a.copy()
    rng.shuffle(candidates)
    t = time.perf_counter()
    for b in range(6):
        add = pool[b * step:(b + 1) * step]
        idx.add(x[add], ids=add)
        dele = candidates[b * step:(b + 1) * step]
        idx.delete(dele)
        live.update(add.tolist())
        live.difference_update(dele.tolist())
    rep = {"churn_fraction": 12 * step / n / 2 + 0.0, "churn_s": time.perf_counter() - t,
           "splits": idx.attrs.get("splits", 0), "heads": int(idx.heads.shape[0]), "live": len(idx)}
    final = np.array(sorted(live))
    gt = exact_gt(x[final], final, qs, metric)
    rep["updated"] = sweep(idx, qs, gt, values)
    idx.close()
    fresh = spann.build(x[final], work / "churn-fresh.spann", metric=metric, ids=final, progress=False,
                        overwrite=True)
    rep["rebuild"] = sweep(fresh, qs, gt, values)
    fresh.close()
    return rep


def part_filters(x, qs, metric, work, values, rng):
    import spann
    n = x.shape[0]
    lab = np.full((n, 3), -1, np.int64)
    lab[:, 0] = np.where(rng.random(n) < 0.5, 50, -1)
    lab[:, 1] = np.where(rng.random(n) < 0.1, 10, -1)
    lab[:, 2] = np.where(rng.random(n) < 0.01, 1, -1)
    t = time.perf_counter()
    idx = spann.build(x, work / "lab.spann", metric=metric, labels=lab, progress=False, overwrite=True)
    rep = {"build_s": time.perf_counter() - t}
    idx.prepare()
    ids = np.arange(n)
    cases = {"unfiltered": (None, ids)}
    for f in (1, 10, 50):
        cases[f"label{f}"] = ([f], np.flatnonzero((lab == f).any(1)))
    # recall from batches; latencies of single queries interleaved across every (filter,
    # max_postings) pair query by query, so the shared machine's noise hits all alike
    lat = {(key, mp): [] for key in cases for mp in values}
    for qi in range(len(qs)):
        for key, (flt, _) in cases.items():
            for mp in values:
                t0 = time.perf_counter()
                idx.search(qs[qi], 10, max_postings=mp, filter=flt)
                lat[(key, mp)].append(time.perf_counter() - t0)
    for key, (flt, members) in cases.items():
        gt = exact_gt(x[members], members, qs, metric)
        pts = []
        for mp in values:
            r = idx.search(qs, 10, max_postings=mp, threads=1, filter=flt)
            pts.append({"max_postings": mp, "recall": recall(r.ids, gt), "p50_ms": 1e3 * statistics.median(lat[(key,
                                                                                                                mp)]),
                        "lists": float(np.median(r.lists_read)), "kib": float(np.median(r.bytes_read)) / 1024})
        rep[key] = {"share": len(members) / n, "points": pts}
    for target in (0.90, 0.95):
        base = interp([(p["recall"], p["p50_ms"]) for p in rep["unfiltered"]["points"]], target)
        for key in ("label1", "label10", "label50", "unfiltered"):
            at = interp([(p["recall"], p["p50_ms"]) for p in rep[key]["points"]], target)
            rep[key][f"p50_ms_at_{target:.2f}"] = at
            rep[key][f"ratio_to_unfiltered_at_{target:.2f}"] = (at / base) if (at and base) else None
            rep[key]["best_recall"] = max(p["recall"] for p in rep[key]["points"])
    idx.close()
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="bench-out/updates")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--sweep", default="8,12,16,24,32,48,64")
    ap.add_argument("--parts", default="inserts,churn,filters")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import numba

    from spann.datasets import load, read_vectors
    m = load(a.data)
    x = np.ascontiguousarray(read_vectors(m.path("base")))
    q = m.load_queries()
    qs = np.ascontiguousarray(q[np.linspace(0, len(q) - 1, min(a.queries, len(q))).astype(np.int64)])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    values = [int(v) for v in a.sweep.split(",")]
    report = {"dataset": m.name, "n": int(x.shape[0]), "dim": int(x.shape[1]), "metric": m.metric,
              "queries": len(qs), "k": 10, "threads_search": 1, "threads_build": numba.config.NUMBA_NUM_THREADS}
    parts = {"inserts": part_inserts, "churn": part_churn, "filters": part_filters}
    for name in a.parts.split(","):
        t = time.perf_counter()
        report[name] = parts[name](x, qs, m.metric, work, values, np.random.default_rng(a.seed))
        report[name]["part_seconds"] = time.perf_counter() - t
        (out / "report.json").write_text(json.dumps(report, indent=1))
        print(json.dumps({name: report[name]}, indent=1), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
