"""spann against faiss IVF-Flat (warm, in RAM) and DiskANN (cold, on disk), in one invocation.

For one prepared dataset (``spann datasets prepare ...``) and one spann index, on the same
spread sample of queries, one thread, k = 10:

- spann warm: the index preloaded first (``Index.preload``: every page read and mapped, as in a
  process that has served a while; no page requests until evict); latencies of single
  queries, interleaved with faiss IVF-Flat (nlist 1024 and 4096, in RAM) so a shared machine's
  load hits both alike: the configurations take turns on blocks of ``--block`` queries, in an
  order drawn anew per block (:func:`spann.bench.runner.block_turns`). Blocks rather than single
  queries, because a switch between systems evicts the other's heads or centroids from the CPU
  caches, and alternating per query would charge those misses to whichever configuration
  comes first after it;
- spann cold: the index's pages evicted (MADV_DONTNEED + POSIX_FADV_DONTNEED) before every
  query, so every list and row comes from the device, as DiskANN's O_DIRECT reads always do;
- spann cold direct (``--direct-sweep``): lists and rows read with O_DIRECT (``direct=True``),
  bypassing the page cache as DiskANN does; cold only (every such query reads the device);
- DiskANN (diskannpy 0.7, R 64, L 100, PQ dim/2 bytes in RAM unless --diskann-pq-bytes, beam
  width 2, no node cache; a built index in --diskann-workdir is reused, its PQ size reported) in
  its own interpreter (``--diskann-python``: a venv with numpy==1.25.* and diskannpy==0.7.0),
  serving single queries over a pipe (:class:`spann.bench.runner.DiskANNServer`): its search
  list sizes take turns with spann's cold operating points on blocks of ``--cold-block``
  queries, so the ratio of the two is taken in one time window of a shared disk;
- for each system its operating points (recall on the sample, median and mean latency, lists
  and KiB read per query for spann), and the latency interpolated at recall 0.90 and 0.95 with
  the ratios spann / peer.

Usage:
    python benchmarks/bench_disk.py --data data/glove-50 --index bench-out/glove.spann \\
        --diskann-python /path/to/diskann-venv/bin/python --out bench-out/disk-glove
Needs: pip install -e ".[bench]"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def interp_latency(points: list[tuple[float, float]], target: float) -> float | None:
    """Latency at ``target`` recall, linear between the two operating points that bracket it on
    the latency-sorted Pareto front; None if the target is not reached."""
    pts = sorted(points, key=lambda p: p[1])
    front, best = [], -1.0
    for rec, lat in pts:
        if rec > best:
            front.append((rec, lat))
            best = rec
    for (r0, l0), (r1, l1) in zip(front, front[1:]):
        if r0 < target <= r1:
            return l0 + (l1 - l0) * (target - r0) / (r1 - r0)
    if front and front[0][0] >= target:
        return front[0][1]
    return None


def _build(base: str, index: str, metric: str, params: dict) -> dict:
    import spann
    t = time.perf_counter()
    spann.build(base, index, metric=metric, progress=True, overwrite=True, **params).close()
    return {"build_seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--build-params", default="{}", help="JSON build parameters (if the index is built here)")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--baseline-index", help="a second spann index of the same data, timed in the same turns "
                    "(row label spann-baseline)")
    ap.add_argument("--sweep", default="8,12,16,24,32,48,64", help="max_postings values, or max_postings/rerank")
    ap.add_argument("--no-pruner-sweep", default="", help="max_postings values measured with the pruner off")
    ap.add_argument("--no-bound-sweep", default="",
                    help="max_postings values measured with rabitq's error-bound cut of the re-rank off")
    ap.add_argument("--direct-sweep", default="", help="max_postings values measured cold with direct reads")
    ap.add_argument("--queries", type=int, default=1000, help="spread sample of queries timed")
    ap.add_argument("--faiss", default="1024,4096", help="IVF-Flat nlist values ('' = none)")
    ap.add_argument("--nprobe", default="8,16,24,32,48,64,96,128")
    ap.add_argument("--diskann-python", help="interpreter with diskannpy 0.7 (numpy 1.25)")
    ap.add_argument("--diskann-workdir", help="where DiskANN's index goes (default OUT/diskann)")
    ap.add_argument("--diskann-sweep", default="10,12,16,20,25,30,40,50,60,80")
    ap.add_argument("--block", type=lambda v: max(1, int(v)), default=20,
                    help="warm: queries each configuration runs back to back per turn (1: alternate per query)")
    ap.add_argument("--cold-block", type=lambda v: max(1, int(v)), default=10,
                    help="cold: queries each configuration (spann's and DiskANN's) runs per turn")
    ap.add_argument("--diskann-pq-bytes", type=float, default=0,
                    help="PQ bytes per vector DiskANN keeps in RAM, when it builds here (0: dim / 2)")
    ap.add_argument("--out", default="bench-out/disk")
    a = ap.parse_args()

    import spann
    from spann.bench.runner import block_turns
    from spann.datasets import load, read_vectors
    from spann.tools.eval import recall_at_k
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    m = load(a.data)
    q = m.load_queries()
    gt, _ = m.load_gt()
    sample = np.linspace(0, len(q) - 1, min(a.queries, len(q))).astype(np.int64)
    qs, gs = q[sample], gt[sample]
    report: dict = {"dataset": m.name, "n": m.n_base, "dim": m.dim, "queries_timed": len(sample), "k": 10}

    # DiskANN, started (and built if need be) first: a failure shows before spann's runs. Its PQ
    # codes (dim/2 bytes per vector) stay in its process's RAM meanwhile, as they would in service
    server = None
    if a.diskann_python:
        from spann.bench.runner import DiskANNServer
        extra = ["--pq-bytes", str(a.diskann_pq_bytes)] if a.diskann_pq_bytes else []
        try:
            server = DiskANNServer(a.diskann_python, a.data, 10, a.diskann_workdir or str(out / "diskann"), extra,
                                   log=str(out / "diskann-serve.log"))
        except RuntimeError as e:
            raise SystemExit(f"DiskANN: {e} (log: {out / 'diskann-serve.log'})") from None
        report["diskann_index"] = {k_: server.facts.get(k_) for k_ in ("index_bytes", "build_seconds",
                                                                     "pq_bytes_per_vector", "params")}
    if a.rebuild or not (Path(a.index) / "zarr.json").exists():
        report["build"] = _build(str(m.path("base")), a.index, m.metric, json.loads(a.build_params))
    indexes = {"spann": spann.open(a.index)}
    if a.baseline_index:
        indexes["spann-baseline"] = spann.open(a.baseline_index)
    for sysname, idx in indexes.items():
        idx.prepare()
        info = idx.info()
        st = info["stats"]
        report[f"{sysname.replace('-', '_')}_index"] = {
            "path": str(a.index if sysname == "spann" else a.baseline_index), "encoding": idx.layout.encoding,
            "heads": st["heads"], "replicas_per_vector": st["replicas_per_vector"],
            "soar_lambda": idx.build_params.soar_lambda, "disk_bytes": info["disk_bytes"],
            "raw_bytes": st["raw_bytes"], "ram_bytes": info["ram_bytes"], "pruner": idx.pruner is not None}
    def point(v: str, **kw) -> dict:  # "24" or "24/12" (max_postings / rerank)
        mp, _, rr = v.partition("/")
        return {"max_postings": int(mp), **({"rerank": int(rr)} if rr else {}), **kw}

    points = [point(v) for v in a.sweep.split(",")]
    points += [point(v, pruner=False) for v in a.no_pruner_sweep.split(",") if v]
    points += [point(v, rerank_bound=False) for v in a.no_bound_sweep.split(",") if v]
    direct_points = [point(v, direct=True) for v in a.direct_sweep.split(",") if v]
    points = list({json.dumps(p): p for p in points}.values())  # a repeated value would be timed twice
    direct_points = list({json.dumps(p): p for p in direct_points}.values())

    faiss_cfg = []
    if a.faiss:
        import os

        import faiss
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # train on every core; search on one (below)
        from spann.kernels.metrics import get_metric
        met = get_metric(m.metric)
        x = read_vectors(m.path("base")).astype(np.float32)
        xq = met.query_space(qs)[0] if met.normalize else qs.astype(np.float32)
        if met.normalize:
            x = met.stored_rows(x)
        for nl in (int(v) for v in a.faiss.split(",")):
            quant = faiss.IndexFlatIP(x.shape[1]) if m.metric == "ip" else faiss.IndexFlatL2(x.shape[1])
            ivf = faiss.IndexIVFFlat(quant, x.shape[1], nl, faiss.METRIC_INNER_PRODUCT if m.metric == "ip"
                                     else faiss.METRIC_L2)
            ivf.cp.niter = 12
            ivf.train(x)
            ivf.add(x)
            for npb in (int(v) for v in a.nprobe.split(",")):
                if npb <= nl:
                    faiss_cfg.append((f"faiss-ivf{nl}", {"nlist": nl, "nprobe": npb}, ivf))
        del x
        faiss.omp_set_num_threads(1)

    # recall and I/O on the sample (batch), then warm latencies interleaved with faiss
    rec = {}
    for sysname, idx in indexes.items():
        for p in points + direct_points:
            r = idx.search(qs, 10, **p)
            rec[(sysname, json.dumps(p))] = (recall_at_k(r.ids, gs, 10), float(r.lists_read.mean()),
                                             float(r.bytes_read.mean()) / 1024)
    frec = {}
    for name, p, ivf in faiss_cfg:
        ivf.nprobe = p["nprobe"]
        frec[(name, p["nprobe"])] = recall_at_k(ivf.search(xq, 10)[1], gs, 10)
    for idx in indexes.values():
        idx.preload()  # warm: every page in RAM and mapped, as in a process that has served a while
    lat = {(sysname, json.dumps(p)): [] for sysname in indexes for p in points}
    flat = {(name, p["nprobe"]): [] for name, p, _ in faiss_cfg}
    runs = [(sysname, p) for sysname in indexes for p in points] + [("faiss", c) for c in faiss_cfg]
    # configurations take turns on blocks of queries: each block runs back to back in one
    # configuration (its heads, centroids and graph stay in the CPU caches, as when a service
    # runs one configuration), in an order drawn anew per block, so a shared machine's load and
    # the cache misses of the first query after a switch fall on all alike
    for s, e, order in block_turns(len(sample), a.block, len(runs), seed=1):
        for kind, c in (runs[i] for i in order):
            for j in range(s, e):
                if kind in indexes:
                    t = time.perf_counter()
                    indexes[kind].search(qs[j], 10, **c)
                    lat[(kind, json.dumps(c))].append(time.perf_counter() - t)
                else:
                    name, p, ivf = c
                    ivf.nprobe = p["nprobe"]
                    t = time.perf_counter()
                    ivf.search(xq[j:j + 1], 10)
                    flat[(name, p["nprobe"])].append(time.perf_counter() - t)
    # cold: every query from the device. spann's operating points and DiskANN's (served by its own
    # interpreter, timed there around each search call) take turns on blocks of --cold-block
    # queries, in an order drawn anew per block: a shared disk's drift (1.7x within 40 minutes
    # seen here) falls on both alike, so their ratio is taken at one time, not an hour apart
    dk_sweep = list(dict.fromkeys(max(int(v), 10) for v in a.diskann_sweep.split(","))) if server else []
    cold = {(sysname, json.dumps(p)): [] for sysname in indexes for p in points + direct_points}
    dk_lat = {L: [] for L in dk_sweep}
    dk_ids = {L: [] for L in dk_sweep}
    cold_runs = [(sysname, p) for sysname in indexes for p in points + direct_points]
    cold_runs += [("diskann", L) for L in dk_sweep]
    try:
        for s, e, order in block_turns(len(sample), a.cold_block, len(cold_runs), seed=2):
            for kind, c in (cold_runs[i] for i in order):
                if kind == "diskann":
                    if server is None:  # it died in an earlier block: spann's rows go on
                        continue
                    try:
                        lat_ms, ids = server.search(c, sample[s:e])
                    except RuntimeError as err:
                        report["diskann_failed"] = f"{err} (log: {out / 'diskann-serve.log'})"
                        print(f"DiskANN: {report['diskann_failed']}; spann's measurements go on", file=sys.stderr)
                        server, dk_sweep = None, []
                        continue
                    dk_lat[c].extend(lat_ms.tolist())
                    dk_ids[c].append(ids)
                    continue
                idx = indexes[kind]
                for j in range(s, e):
                    idx.evict()
                    t = time.perf_counter()
                    idx.search(qs[j], 10, **c)
                    cold[(kind, json.dumps(c))].append(time.perf_counter() - t)
    finally:
        if server is not None:
            server.close()
    rows = []
    for sysname, p in ((sysname, p) for sysname in indexes for p in points + direct_points):
        key = (sysname, json.dumps(p))
        r, lists, kib = rec[key]
        c = np.array(cold[key]) * 1e3
        label = "" if p.get("pruner", True) else " (pruner off)"
        label += "" if p.get("rerank_bound", True) else " (bound off)"
        label += " direct" if p.get("direct") else ""
        row = {"system": sysname + label, "params": p, "recall": r, "lists": lists, "kib": kib,
               "cold_median_ms": float(np.median(c)), "cold_mean_ms": float(c.mean()),
               "cold_p99_ms": float(np.percentile(c, 99))}
        if key in lat:
            w = np.array(lat[key]) * 1e3
            row.update(warm_median_ms=float(np.median(w)), warm_mean_ms=float(w.mean()))
        rows.append(row)
    for name, p, _ in faiss_cfg:
        w = np.array(flat[(name, p["nprobe"])]) * 1e3
        rows.append({"system": name, "params": p, "recall": frec[(name, p["nprobe"])],
                     "warm_median_ms": float(np.median(w)), "warm_mean_ms": float(w.mean())})
    for idx in indexes.values():
        idx.close()
    (out / "rows_spann_faiss.json").write_text(json.dumps(rows, indent=2))

    for L in dk_sweep:
        c = np.array(dk_lat[L])
        rows.append({"system": "diskann", "params": {"L": L}, "recall": recall_at_k(np.concatenate(dk_ids[L]), gs, 10),
                     "cold_median_ms": float(np.median(c)), "cold_mean_ms": float(c.mean()),
                     "cold_p99_ms": float(np.percentile(c, 99))})
    report["rows"] = rows

    def curve(system, field):
        return [(r["recall"], r[field]) for r in rows if r["system"] == system and field in r]

    summary = {}
    systems = list(dict.fromkeys(r["system"] for r in rows))
    for tgt in (0.90, 0.95):
        for s in systems:
            for field in ("warm_median_ms", "cold_median_ms"):
                v = interp_latency(curve(s, field), tgt)
                if v is not None:
                    summary[f"{s} {field} @{tgt}"] = v
    report["summary"] = summary
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{m.name}: {m.n_base:,} x {m.dim}, {len(sample)} queries timed, k=10, one thread")
    print(f"{'system':<22} {'params':<34} {'recall':>6} {'lists':>6} {'KiB':>6} {'warm med':>9} {'cold med':>9} "
          f"{'cold mean':>9}")
    for r in rows:
        ps = ",".join(f"{k}={v}" for k, v in r["params"].items())
        f = lambda k, fmt, r=r: (fmt % r[k]) if k in r else "-"  # noqa: E731
        print(f"{r['system']:<22} {ps:<34} {r['recall']:>6.3f} {f('lists', '%6.1f'):>6} {f('kib', '%6.0f'):>6} "
              f"{f('warm_median_ms', '%9.3f'):>9} {f('cold_median_ms', '%9.3f'):>9} {f('cold_mean_ms', '%9.3f'):>9}")
    print("interpolated latency (ms) at recall 0.90 / 0.95:")
    for k_, v in summary.items():
        print(f"  {k_:<48} {v:.3f}")


if __name__ == "__main__":
    main()
