"""Scale benchmark: memory-limited builds of synthetic uint8 x 128 data at growing n.

Generator (deterministic, streamed in blocks, never whole in RAM): a mixture of
``k = clip(sqrt(n) / 2, 16, 4096)`` clusters with log-normal weights (sizes spanning about two
orders of magnitude); cluster c has an exponential(28) centre and *anisotropic* axis-aligned
spreads ``s_c * exp(N(0, 0.5))`` per dimension with ``s_c ~ U(6, 16)``; values are rounded,
folded to non-negative and clipped to 0..255 (SIFT-like). Queries: 1,000 rows of an
independent stream of the same mixture; exact ground truth (``spann.kernels.exact``).

For each n: ``spann build --memory-limit`` in a child process (per-stage times, peak RSS of the
whole process, disk), recall@10 at fixed max_postings, warm and cold (pages evicted before
every query) single-query latency medians, RAM of the open index. Then the build-time growth
exponent ``a`` in time ~ n^a between consecutive sizes, and an extrapolation to 10^9.

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


def measure(n: int, work: Path, limit: str, max_postings: list[int], threads: int) -> dict:
    import spann
    from spann.datasets.formats import open_vectors
    from spann.kernels.exact import exact_knn
    mix = Mixture(n)
    base = work / f"base-{n}.u8bin"
    t = time.perf_counter()
    write_base(base, n, mix)
    gen_s = time.perf_counter() - t
    q = mix.rows(0, 1000, stream=1)
    gt_path = work / f"gt-{n}.npy"
    if gt_path.exists():
        gt = np.load(gt_path)
    else:
        with open_vectors(base) as vf:
            gt, _ = exact_knn(vf, q, 10, "l2")
        np.save(gt_path, gt)
    idx_path = work / f"idx-{n}.spann"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from spann.cli.main import cli; cli(sys.argv[1:])", "build",
                    str(base), str(idx_path), "--metric", "l2", "--memory-limit", limit, "--overwrite", "-q",
                    "--threads", str(threads)], check=True)
    wall = time.perf_counter() - t
    rep: dict = {"n": n, "generate_s": gen_s, "build_wall_s": wall}
    with spann.open(idx_path) as idx:
        info = idx.info()
        st = info["stats"]
        rep.update(build_s=st["build_seconds"], stage_s=st["seconds"], peak_rss_mib=st["peak_rss_bytes"] / 2**20,
                   disk_gib=info["disk_bytes"] / 2**30, raw_gib=st["raw_bytes"] / 2**30, heads=st["heads"],
                   ram_mib=info["ram_bytes"] / 2**20, ram_fraction_of_raw=info["ram_bytes"] / st["raw_bytes"],
                   replicas_per_vector=st["replicas_per_vector"], head_search_recall=st.get("head_search_recall"),
                   posting_mean=st["posting_mean"], posting_max=st["posting_max"], posting_empty=st["posting_empty"],
                   graph_entries=st["graph_entries"], stage_growth_mib={k: v / 2**20 for k, v in
                                                                        st.get("directory_growth_bytes", {}).items()})
        idx.prepare()
        pts = []
        for mp in max_postings:
            r = idx.search(q, 10, max_postings=mp, threads=1)
            rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r.ids, gt)]))
            warm = []
            for qi in range(300):
                t0 = time.perf_counter()
                idx.search(q[qi], 10, max_postings=mp)
                warm.append(time.perf_counter() - t0)
            cold = []
            for qi in range(100):
                idx.evict()
                t0 = time.perf_counter()
                idx.search(q[qi], 10, max_postings=mp)
                cold.append(time.perf_counter() - t0)
            pts.append({"max_postings": mp, "recall": rec, "warm_p50_ms": 1e3 * statistics.median(warm),
                        "cold_p50_ms": 1e3 * statistics.median(cold), "kib": float(np.median(r.bytes_read)) / 1024,
                        "lists": float(np.median(r.lists_read))})
        rep["points"] = pts
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--memory-limit", default="4G")
    ap.add_argument("--max-postings", default="16,32,64")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--work", default="bench-out/scale-work")
    ap.add_argument("--out", default="bench-out/scale")
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(v) for v in a.sizes.split(",")]
    report = {"memory_limit": a.memory_limit, "dim": DIM, "runs": []}
    for n in sizes:
        report["runs"].append(measure(n, work, a.memory_limit, [int(v) for v in a.max_postings.split(",")], a.threads))
        runs = report["runs"]
        if len(runs) > 1:
            r0, r1 = runs[-2], runs[-1]
            a_exp = math.log(r1["build_s"] / r0["build_s"]) / math.log(r1["n"] / r0["n"])
            report["growth_exponent"] = a_exp
            t9 = r1["build_s"] * (1e9 / r1["n"]) ** a_exp
            report["extrapolated_1e9_hours_this_machine"] = t9 / 3600
            report["extrapolated_1e9_hours_32_cores"] = t9 / 3600 / 16  # if the build scaled linearly to 32 cores
        (out / "report.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(runs[-1], indent=1), flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
