"""Which posting encoding: recall@10 against KiB read per query, full / sq8 / rabitq, per dataset.

Builds one index per encoding (defaults otherwise), sweeps max_postings on a sample of the
queries, and writes ``curves.json`` and ``encodings.png`` (recall vs KiB per query, one panel
per dataset). KiB are the 4 KiB pages a query touches: its posting lists, plus the vector-store
rows it re-ranks when the encoding is a code.

    python benchmarks/encoding_curves.py --data data/glove-50 data/mpnet-768 --work /tmp/enc \\
        --out docs
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--encodings", default="full,sq8,rabitq")
    ap.add_argument("--sweep", default="4,8,16,32,64,128")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--work", required=True, help="where the indexes are built (removed after)")
    ap.add_argument("--out", default="docs")
    a = ap.parse_args()
    import spann
    from spann.datasets import load
    from spann.tools.eval import recall_at_k
    curves: dict = {}
    for data in a.data:
        m = load(data)
        import numpy as np
        q, gt = m.load_queries(), m.load_gt()[0]
        pick = np.linspace(0, len(q) - 1, min(a.queries, len(q))).astype(np.int64)  # spread: files may be ordered
        q, gt = q[pick], gt[pick]
        for enc in a.encodings.split(","):
            path = Path(a.work) / f"{m.name}-{enc}"
            shutil.rmtree(path, ignore_errors=True)
            with spann.build(m.path("base"), path, metric=m.metric, encoding=enc, progress=False) as idx:
                st = idx.attrs["stats"]
                pts = []
                for mp in (int(v) for v in a.sweep.split(",")):
                    r = idx.search(q, 10, max_postings=mp)
                    pts.append({"max_postings": mp, "recall": recall_at_k(r.ids, gt, 10),
                                "kib": float(r.bytes_read.mean()) / 1024, "lists": float(r.lists_read.mean())})
                    print(f"{m.name:<12} {enc:<7} mp {mp:4d} recall {pts[-1]['recall']:.3f} "
                          f"KiB {pts[-1]['kib']:8.0f} lists {pts[-1]['lists']:6.1f}", flush=True)
                curves.setdefault(m.name, {})[enc] = {"disk_x_raw": st["index_bytes"] / st["raw_bytes"],
                                                      "points": pts}
            shutil.rmtree(path, ignore_errors=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoding-curves.json").write_text(json.dumps(curves, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (name, encs) in zip(axes[0], curves.items()):
        for enc, c in encs.items():
            ax.plot([p["kib"] for p in c["points"]], [p["recall"] for p in c["points"]], "o-",
                    label=f"{enc} (disk {c['disk_x_raw']:.1f}x raw)")
        ax.set_xscale("log")
        ax.set_xlabel("KiB read per query (4 KiB pages)")
        ax.set_ylabel("recall@10")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "encodings.png", dpi=110)


if __name__ == "__main__":
    main()
