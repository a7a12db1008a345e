"""The issue-3 benchmark: spann on glove-50 beside faiss IVF-Flat, in one invocation.

Prints (and writes as JSON):
- build time and build peak RSS (child process), index size on disk vs the raw vectors;
- head-search recall@m (graph search vs exact nearest heads);
- for max_postings in {8,16,32,64,128} x prune_eps: recall@10, mean / p99 single-query
  latency (one thread), batch QPS on --threads, posting lists and KiB read per query;
- the same with a cold page cache (index files evicted before every query, reads prefetched);
- search memory: anonymous RSS growth of a process that opens the index and searches, beyond
  the interpreter and the compiled kernels;
- faiss IVF-Flat (1,024 lists, in RAM) measured the same way in the same process, its single
  query latencies interleaved with spann's query by query (a shared machine's load then hits
  both alike), and the ratio spann / faiss of mean latency at recall 0.90 and 0.95
  (interpolated along each latency Pareto front).

Usage: python benchmarks/bench_glove.py [--data data/glove-50] [--out bench-out/glove]
       [--build-params '{"head_ratio": 0.05}'] [--threads 2]
Needs: pip install -e ".[bench]"
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import numpy as np


def _build_child(base: str, index: str, metric: str, params: dict, conn) -> None:
    import resource
    import spann
    t = time.perf_counter()
    spann.build(base, index, metric=metric, progress=False, overwrite=True, **params).close()
    conn.send({"build_seconds": time.perf_counter() - t,
               "build_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _memory_child(index: str, queries: str, conn) -> None:
    import spann
    from spann.bench.runner import rss_anon_bytes
    from spann.datasets import read_vectors, synthetic_array
    q = read_vectors(queries)
    tmp = Path(index).with_name("memprobe.spann")
    with spann.build(synthetic_array(3000, q.shape[1]), tmp, metric="l2", progress=False, overwrite=True) as t:
        t.prepare()  # kernels compiled / loaded: not the index's memory
    shutil.rmtree(tmp)
    a0 = rss_anon_bytes()
    t = time.perf_counter()
    idx = spann.open(index)
    open_s = time.perf_counter() - t
    idx.search(q, 10)
    for i in range(500):
        idx.search(q[i], 10)
    conn.send({"open_seconds": open_s, "search_anon_mb": (rss_anon_bytes() - a0) / 2**20,
               "index_ram_mb_reported": idx.info()["ram_bytes"] / 2**20})
    idx.close()


def _in_child(target, *args):
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*args, child))
    p.start()
    child.close()
    out = parent.recv()
    p.join()
    return out


def head_recall(index_path: str, queries: np.ndarray, ms=(8, 16, 32, 64, 128), n: int = 1000) -> dict[int, float]:
    import spann
    from spann.exact import exact_knn
    from spann.head_index import beam_search
    from spann.metrics import normalize_rows
    out = {}
    with spann.open(index_path) as idx:
        q = queries[:n].astype(np.float32)
        if idx.metric == "cosine":
            q = normalize_rows(q)
        heads = idx.heads.astype(np.float32)
        vis = np.zeros(heads.shape[0], np.uint32)
        for m in ms:
            gi, _ = exact_knn(heads, q, m, "l2")
            ef = max(idx.default_params.replace(max_postings=m).effective_ef(), m)
            hit = 0
            oi, od = np.empty(m, np.int32), np.empty(m, np.float32)
            for i in range(len(q)):
                beam_search(q[i], np.float32(0), idx.heads, idx.head_ext, idx.neighbors, idx.entries, ef, vis,
                            np.uint32(m * 100000 + i + 1), oi, od)
                hit += len(np.intersect1d(oi, gi[i]))
            out[m] = hit / (m * len(q))
    return out


def interpolated_latency(records, target: float) -> float | None:
    """Mean latency at exactly ``target`` recall, linear along the latency Pareto front."""
    from spann.eval import pareto_front
    front = pareto_front(records, speed="latency_mean_ms")
    for a, b in zip(front, front[1:]):
        if a.recall <= target <= b.recall:
            w = (target - a.recall) / max(1e-12, b.recall - a.recall)
            return a.latency_mean_ms + w * (b.latency_mean_ms - a.latency_mean_ms)
    if front and front[0].recall >= target:
        return front[0].latency_mean_ms
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/glove-50")
    ap.add_argument("--out", default="bench-out/glove")
    ap.add_argument("--build-params", default="{}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-queries", type=int, default=2000)
    ap.add_argument("--cold-queries", type=int, default=500)
    ap.add_argument("--prune-eps", default="inf,1.0,0.5")
    args = ap.parse_args()
    from spann.datasets import load, prepare
    from spann.eval import evaluate
    from spann.eval import EvalRecord
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (Path(args.data) / "manifest.json").exists():
        print(f"preparing glove-50 in {args.data} ...")
        prepare("glove-50", args.data)
    m = load(args.data)
    params = json.loads(args.build_params)
    index = str(out / "glove.spann")
    report: dict = {"dataset": str(args.data), "build_params": params, "threads": args.threads}
    report.update(_in_child(_build_child, str(m.path("base")), index, m.metric, params))
    import spann
    with spann.open(index) as idx:
        st = idx.attrs["stats"]
    raw = st["raw_bytes"]
    report.update({"index_mb": st["index_bytes"] / 2**20, "raw_mb": raw / 2**20, "disk_over_raw": st["index_bytes"] / raw,
                   "heads": st["heads"], "replicas_per_vector": st["replicas_per_vector"], "posting_cap": st["posting_cap"],
                   "posting_mean": st["posting_mean"], "build_phase_seconds": st["seconds"]})
    report.update(_in_child(_memory_child, index, str(m.path("queries"))))
    report["index_ram_over_raw"] = report["search_anon_mb"] / report["raw_mb"]
    report["head_recall"] = head_recall(index, m.load_queries())
    print(json.dumps(report, indent=2))

    eps = [float(e) for e in args.prune_eps.split(",")]
    sweep = [{"max_postings": mp_, "prune_eps": e} for e in eps for mp_ in (8, 16, 32, 64, 96, 128, 192)]

    # Latency, interleaved: for every sampled query, each spann point and each faiss point are
    # timed back to back, so load from other jobs on the machine hits both alike. Medians.
    from spann.eval import recall_at_k
    from spann.bench.peers import FaissIVF
    q = m.load_queries()
    gi, gd = m.load_gt()
    sample = np.linspace(0, len(q) - 1, num=min(args.latency_queries, len(q))).astype(int)
    faiss = FaissIVF(1024)
    faiss.fit(str(m.path("base")), m.metric, out)
    f_points = [{"nprobe": p} for p in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)]
    with spann.open(index) as idx:
        idx.prepare()
        s_lat = np.zeros((len(sweep), sample.size))
        f_lat = np.zeros((len(f_points), sample.size))
        for j, i in enumerate(sample):
            for a, p in enumerate(sweep):
                t = time.perf_counter()
                idx.search(q[i], 10, **p)
                s_lat[a, j] = time.perf_counter() - t
            for a, p in enumerate(f_points):
                faiss.set_query_arguments(**p)
                t = time.perf_counter()
                faiss.query(q[i], 10)
                f_lat[a, j] = time.perf_counter() - t
        warm = []
        for a, p in enumerate(sweep):
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                r = idx.search(q, 10, threads=args.threads, **p)
                best = min(best, time.perf_counter() - t)
            lat = s_lat[a] * 1e3
            warm.append(EvalRecord(system="spann", params=p, k=10, recall=recall_at_k(r.ids, gi, 10),
                                   latency_mean_ms=float(lat.mean()), latency_p50_ms=float(np.median(lat)),
                                   latency_p95_ms=float(np.percentile(lat, 95)), latency_p99_ms=float(np.percentile(lat, 99)),
                                   qps=len(q) / best, threads=args.threads, lists_read=float(r.lists_read.mean()),
                                   kib_read=float(r.bytes_read.mean() / 1024), distance_evals=float(r.distance_evals.mean())))
        cs = np.linspace(0, len(q) - 1, num=min(args.cold_queries, len(q))).astype(int)
        cold = evaluate(idx, q[cs], gi[cs], 10, sweep=[{"max_postings": mp_, "prefetch": True} for mp_ in (8, 16, 32, 64, 96, 128, 192)],
                        runs=1, threads=args.threads, latency_queries=len(cs), cold=True)
    faiss_recs = []
    for a, p in enumerate(f_points):
        faiss.set_query_arguments(**p)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            ids = faiss.batch_query(q, 10, args.threads)
            best = min(best, time.perf_counter() - t)
        lat = f_lat[a] * 1e3
        faiss_recs.append(EvalRecord(system="faiss-ivf", params=p, k=10, recall=recall_at_k(ids, gi, 10),
                                     latency_mean_ms=float(lat.mean()), latency_p50_ms=float(np.median(lat)),
                                     latency_p95_ms=float(np.percentile(lat, 95)), latency_p99_ms=float(np.percentile(lat, 99)),
                                     qps=len(q) / best, threads=args.threads))
    faiss = faiss_recs

    def row(r: EvalRecord) -> str:
        p = ",".join(f"{k}={v}" for k, v in r.params.items() if k != "prefetch")
        io = "" if r.lists_read is None else f"{r.lists_read:7.1f} {r.kib_read:8.1f}"
        return (f"{r.system + ('-cold' if r.cold else ''):<11} {p:<28} {r.recall:7.4f} {r.latency_mean_ms:8.3f} "
                f"{r.latency_p99_ms:8.3f} {r.qps:9,.0f} {io}")

    lines = [f"{'system':<11} {'params':<28} {'recall':>7} {'mean ms':>8} {'p99 ms':>8} {'QPS':>9} {'lists':>7} {'KiB':>8}"]
    lines += [row(r) for r in warm] + [row(r) for r in cold] + [row(r) for r in faiss]
    ratios = {}
    for tgt in (0.90, 0.95):
        s, f = interpolated_latency(warm, tgt), interpolated_latency(faiss, tgt)
        ratios[str(tgt)] = {"spann_ms": s, "faiss_ms": f, "ratio": (s / f) if s and f else None,
                            "spann_cold_ms": interpolated_latency(cold, tgt)}
    lines.append("")
    for tgt, v in ratios.items():
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
        lines.append(f"recall {tgt}: spann {fmt(v['spann_ms'])} ms, faiss IVF-Flat {fmt(v['faiss_ms'])} ms, "
                     f"ratio {fmt(v['ratio'])}; spann cold {fmt(v['spann_cold_ms'])} ms")
    table = "\n".join(lines)
    print(table)
    report["ratios"] = ratios
    report["records"] = [r.to_dict() for r in warm + cold + faiss]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "table.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
