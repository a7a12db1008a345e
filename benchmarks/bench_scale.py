"""Scale benchmark: is a query's cost flat as the collection grows?

Generator (deterministic, streamed in blocks, never whole in RAM): a mixture of
``k = clip(sqrt(N) / 2, 16, 4096)`` clusters (N: the largest size) with log-normal weights
(sizes spanning about two orders of magnitude); cluster c has an exponential(28) centre and
*anisotropic* axis-aligned spreads ``s_c * exp(N(0, 0.5))`` per dimension with
``s_c ~ U(6, 16)``; values are rounded, folded to non-negative and clipped to 0..255
(SIFT-like). Every size is a prefix of the largest base (the same generator: the first 10^6
rows against all 10^7). Queries: 1,000 rows of an independent stream of the same mixture;
exact ground truth per size (``spann.kernels.exact``, one blocked pass; its time is reported).

For each n: ``spann build --memory-limit`` in a child process (per-stage times, peak RSS of the
whole process, disk, heads). Then, all indexes open in this one process, one search thread:
recall@10 over a ladder of max_postings; at the smallest max_postings reaching ``--recall`` (and at the
index's own operating point for it, ``search(recall=...)``), KiB and lists read per query and
single-query latency, warm and cold (the index's pages evicted before every query), the sizes
interleaved in three rounds so that their ratio comes from the same minutes of a shared machine.
Reported: each size's figures, the ratios of every size to the smallest, the build-time
growth exponent ``a`` (time ~ n^a) and an extrapolation to 10^9.

Usage:
    python benchmarks/bench_scale.py --sizes 1000000,10000000 --memory-limit 4G --work /work/scratch/scale
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 128
LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class Mixture:
    def __init__(self, n_hint: int, seed: int = 0):
        rng = np.random.default_rng([seed, 1])
        k = int(np.clip(np.sqrt(n_hint) / 2, 16, 4096))
        w = rng.lognormal(0.0, 1.0, size=k)
        self.w = w / w.sum()
        self.centers = rng.exponential(28.0, size=(k, DIM)).astype(np.float32)
        self.scales = (rng.uniform(6.0, 16.0, size=(k, 1)) * np.exp(rng.normal(0, 0.5, size=(k,
                                                                                             DIM)))).astype(np.float32)
        self.k, self.seed = k, seed

    def rows(self, start: int, stop: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2 + stream, start])
        m = stop - start
        c = rng.choice(self.k, size=m, p=self.w)
        x = self.centers[c] + self.scales[c] * rng.standard_normal((m, DIM), dtype=np.float32)
        return np.clip(np.rint(np.abs(x)), 0, 255).astype(np.uint8)


def write_base(path: Path, n: int, mix: Mixture, block: int = 1 << 20) -> None:
    if path.exists() and path.stat().st_size == 8 + n * DIM:
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.array([n, DIM], np.int32).tofile(f)
        for s in range(0, n, block):
            mix.rows(s, min(n, s + block)).tofile(f)
    tmp.rename(path)


def prefix_base(big: Path, path: Path, n: int) -> None:
    """The first ``n`` rows of the base ``big`` as a base of its own."""
    if path.exists() and path.stat().st_size == 8 + n * DIM:
        return
    tmp = path.with_suffix(".tmp")
    with open(big, "rb") as src, open(tmp, "wb") as dst:
        src.read(8)
        np.array([n, DIM], np.int32).tofile(dst)
        left = n * DIM
        while left:
            chunk = src.read(min(left, 1 << 26))
            dst.write(chunk)
            left -= len(chunk)
    tmp.rename(path)


def build(n: int, base: Path, work: Path, limit: str, threads: int, q: np.ndarray) -> dict:
    from spann.datasets.formats import open_vectors
    from spann.kernels.exact import exact_knn
    gt_path = work / f"gt-{n}.npy"
    rep: dict = {"n": n}
    if gt_path.exists():
        gt = np.load(gt_path)
    else:
        t = time.perf_counter()
        with open_vectors(base) as vf:
            gt, _ = exact_knn(vf, q, 10, "l2")
        rep["ground_truth_s"] = time.perf_counter() - t
        np.save(gt_path, gt)
    idx_path = work / f"idx-{n}.spann"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from spann.cli.main import cli; cli(sys.argv[1:])", "build",
                    str(base), str(idx_path), "--metric", "l2", "--memory-limit", limit, "--overwrite", "-q",
                    "--threads", str(threads)], check=True)
    rep["build_wall_s"] = time.perf_counter() - t
    import spann
    from spann.bench.runner import rss_anon_bytes
    def serve(idx) -> None:
        for i in range(200):
            idx.search(q[i], 10, threads=1)
        idx.search(q[:200], 10, threads=1)

    with spann.open(idx_path) as idx:  # first: the kernels compile (or load), outside the measurement
        serve(idx)
    anon0 = rss_anon_bytes()
    with spann.open(idx_path) as idx:  # what an open index holds once it has served queries (scratch included)
        serve(idx)
        rep["anon_mib"] = (rss_anon_bytes() - anon0) / 2**20
        info = idx.info()
        st = info["stats"]
        rep.update(build_s=st["build_seconds"], stage_s=st["seconds"], peak_rss_mib=st["peak_rss_bytes"] / 2**20,
                   disk_gib=info["disk_bytes"] / 2**30, raw_gib=st["raw_bytes"] / 2**30, heads=st["heads"],
                   head_buckets=st.get("head_buckets", 0), ram_mib=info["ram_bytes"] / 2**20,
                   ram_fraction_of_raw=info["ram_bytes"] / st["raw_bytes"],
                   anon_fraction_of_raw=rep["anon_mib"] * 2**20 / st["raw_bytes"],
                   replicas_per_vector=st["replicas_per_vector"], head_search_recall=st.get("head_search_recall"),
                   posting_mean=st["posting_mean"], posting_max=st["posting_max"], posting_empty=st["posting_empty"],
                   stage_growth_mib={k: v / 2**20 for k, v in st.get("directory_growth_bytes", {}).items()})
    return rep


def _recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt)]))


def evaluate(runs: list[dict], work: Path, q: np.ndarray, target: float, rounds: int = 3, per_round: int = 100
             ) -> None:
    """Every index at the first ladder rung reaching ``target`` (and at its own operating point
    for it), warm and cold, sizes interleaved round by round; fills each run's report."""
    import spann
    idxs = [spann.open(work / f"idx-{r['n']}.spann") for r in runs]
    configs = []  # (run, index, kwargs, label)
    for r, idx in zip(runs, idxs):
        idx.prepare()
        gt = np.load(work / f"gt-{r['n']}.npy")
        ladder = []
        for mp in LADDER:
            res = idx.search(q, 10, max_postings=mp, threads=1)
            ladder.append({"max_postings": mp, "recall": _recall(res.ids, gt),
                           "kib": float(np.mean(res.bytes_read)) / 1024, "lists": float(np.mean(res.lists_read))})
            if ladder[-1]["recall"] >= target + 0.02:
                break
        hit = next((p for p in ladder if p["recall"] >= target), ladder[-1])
        lo = max([p["max_postings"] for p in ladder if p["recall"] < target], default=0)
        while hit["recall"] >= target and hit["max_postings"] - lo > 1:  # the smallest max_postings reaching it
            mp = (lo + hit["max_postings"]) // 2
            res = idx.search(q, 10, max_postings=mp, threads=1)
            p = {"max_postings": mp, "recall": _recall(res.ids, gt), "kib": float(np.mean(res.bytes_read)) / 1024,
                 "lists": float(np.mean(res.lists_read))}
            ladder.append(p)
            if p["recall"] >= target:
                hit = p
            else:
                lo = mp
        r["ladder"] = sorted(ladder, key=lambda p: p["max_postings"])
        res = idx.search(q, 10, recall=target, threads=1)
        r["at_target"] = dict(hit)
        r["learned"] = {"recall": _recall(res.ids, gt), "kib": float(np.mean(res.bytes_read)) / 1024,
                        "lists": float(np.mean(res.lists_read))}
        configs.append((r, idx, {"max_postings": hit["max_postings"]}, "at_target"))
        configs.append((r, idx, {"recall": target}, "learned"))
    lat = {(id(r), label): {"warm": [], "cold": []} for r, _, _, label in configs}
    for rnd in range(rounds):
        qs = q[rnd * per_round:(rnd + 1) * per_round]
        for r, idx, kw, label in configs:
            warm, cold = [], []
            for x in qs:
                t0 = time.perf_counter()
                idx.search(x, 10, **kw)
                warm.append(time.perf_counter() - t0)
            for x in qs:
                idx.evict()
                t0 = time.perf_counter()
                idx.search(x, 10, **kw)
                cold.append(time.perf_counter() - t0)
            lat[(id(r), label)]["warm"].append(statistics.median(warm))
            lat[(id(r), label)]["cold"].append(statistics.median(cold))
    for r, _, _, label in configs:
        v = lat[(id(r), label)]
        r[label]["warm_p50_ms"] = 1e3 * statistics.median(v["warm"])
        r[label]["cold_p50_ms"] = 1e3 * statistics.median(v["cold"])
        r[label]["cold_round_ms"] = [1e3 * t for t in v["cold"]]
    for idx in idxs:
        idx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--memory-limit", default="4G")
    ap.add_argument("--recall", type=float, default=0.90)
    ap.add_argument("--threads", type=int, default=0, help="build threads (searches run on one)")
    ap.add_argument("--skip-build", action="store_true", help="measure the indexes an earlier run built")
    ap.add_argument("--work", default="bench-out/scale-work")
    ap.add_argument("--out", default="bench-out/scale")
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(v) for v in a.sizes.split(","))
    mix = Mixture(sizes[-1])
    big = work / f"base-{sizes[-1]}.u8bin"
    t = time.perf_counter()
    write_base(big, sizes[-1], mix)
    for n in sizes[:-1]:
        prefix_base(big, work / f"base-{n}.u8bin", n)
    report: dict = {"memory_limit": a.memory_limit, "dim": DIM, "recall_target": a.recall,
                    "generate_s": time.perf_counter() - t, "runs": []}
    q = mix.rows(0, 1000, stream=1)
    old = out / "report.json"
    built = {r["n"]: r for r in json.loads(old.read_text())["runs"]} if a.skip_build and old.exists() else {}
    for n in sizes:
        r = built.get(n) or build(n, work / f"base-{n}.u8bin", work, a.memory_limit, a.threads, q)
        report["runs"].append(r)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(r, indent=1), flush=True)
    runs = report["runs"]
    evaluate(runs, work, q, a.recall)
    r0 = runs[0]
    for r in runs[1:]:
        r["vs_smallest"] = {k: {m: r[k][m] / r0[k][m] for m in ("kib", "lists", "cold_p50_ms", "warm_p50_ms")}
                            for k in ("at_target", "learned")}
    if len(runs) > 1:
        lo, hi = runs[0], runs[-1]
        a_exp = math.log(hi["build_s"] / lo["build_s"]) / math.log(hi["n"] / lo["n"])
        report["growth_exponent"] = a_exp
        report["extrapolated_1e9_hours_this_machine"] = hi["build_s"] * (1e9 / hi["n"]) ** a_exp / 3600
    (out / "report.json").write_text(json.dumps(report, indent=1))
    for r in runs:
        keys = ("n", "heads", "head_buckets", "build_s", "ram_fraction_of_raw", "anon_fraction_of_raw", "at_target",
                "learned", "vs_smallest")
        print(json.dumps({k: r[k] for k in keys if k in r}, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
