"""Hub-heavy data: recall@10 against distance evaluations per query, spann vs faiss IVF-Flat.

The synthetic uint8 x 128 mixture (``spann datasets prepare synthetic DIR --n N --dim 128
--dtype uint8``: uneven, anisotropic clusters) makes hub heads with long lists, which an index
that caps list length would cut.
Here both systems are compared at an equal number of distance evaluations per query: spann
counts head distances + entries scanned (+ re-ranked rows when coded); faiss counts its nlist
centroid distances + the vectors in the probed lists. Also checks that no vector is lost.

    python benchmarks/bench_hubs.py --data data/syn-300k --index /tmp/syn300k.spann \\
        --out bench-out/hubs-300k [--n 300000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared dataset directory (made here if missing)")
    ap.add_argument("--n", type=int, default=300_000, help="vectors, when the dataset is prepared here")
    ap.add_argument("--index", required=True)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--out", default="bench-out/hubs")
    a = ap.parse_args()
    import spann
    from spann.datasets import load, prepare
    from spann.tools.eval import recall_at_k
    from spann.tools.verify import verify_index
    if not (Path(a.data) / "manifest.json").exists():
        prepare("synthetic", a.data, n=a.n, dim=128, dtype="uint8", n_queries=max(a.queries, 1000), progress=True)
    m = load(a.data)
    q = m.load_queries()[:a.queries]
    gt = m.load_gt()[0][:a.queries]
    if a.rebuild or not Path(a.index).exists():
        shutil.rmtree(a.index, ignore_errors=True)
        t = time.perf_counter()
        spann.build(m.path("base"), a.index, metric=m.metric, progress=True).close()
        print(f"spann build {time.perf_counter() - t:.0f}s")
    summary = verify_index(a.index)  # every vector in a list, ids in range, checksums
    rows = []
    with spann.open(a.index) as idx:
        st = idx.attrs["stats"]
        print(f"spann: {st['heads']} heads, mean list {st['posting_mean']:.1f}, max {st['posting_max']}, "
              f"empty {st['posting_empty']}, replicas/vector {st['replicas_per_vector']:.2f}, verify ok "
              f"({summary['entries']} entries)")
        for mp in (2, 4, 8, 16, 32, 64, 128, 256):
            r = idx.search(q, 10, max_postings=mp)
            rows.append({"system": "spann", "max_postings": mp, "recall": recall_at_k(r.ids, gt, 10),
                         "evals": float(r.distance_evals.mean()), "lists": float(r.lists_read.mean())})
    import faiss
    x = np.ascontiguousarray(np.asarray(spann.datasets.read_vectors(m.path("base")), np.float32))
    quant = faiss.IndexFlatL2(x.shape[1])
    ivf = faiss.IndexIVFFlat(quant, x.shape[1], a.nlist)
    ivf.train(x)
    ivf.add(x)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(a.nlist)])
    qf = np.ascontiguousarray(q, np.float32)
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        ivf.nprobe = nprobe
        _, ids = ivf.search(qf, 10)
        _, probed = quant.search(qf, nprobe)
        evals = a.nlist + sizes[probed].sum(1).mean()
        rows.append({"system": f"faiss-ivf{a.nlist}", "nprobe": nprobe, "recall": recall_at_k(ids, gt, 10),
                     "evals": float(evals)})
    print(f"{'system':<14} {'param':>14} {'recall@10':>9} {'evals/query':>12}")
    for r in rows:
        p = f"max_postings={r['max_postings']}" if "max_postings" in r else f"nprobe={r['nprobe']}"
        print(f"{r['system']:<14} {p:>14} {r['recall']:>9.3f} {r['evals']:>12,.0f}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hubs.json").write_text(json.dumps({"data": a.data, "stats": st, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
