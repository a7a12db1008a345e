"""Exact ground truth for a base/query pair, written to vector files (ids and distances)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from spann.exact import exact_knn
from spann.datasets.formats import VectorFile, open_vectors, write_vectors, detect_format, check_finite

__all__ = ["compute_ground_truth", "ground_truth_files", "distances_path_for"]


def compute_ground_truth(base: VectorFile | np.ndarray, queries: np.ndarray, k: int, metric: str, *,
                         progress: bool = True, desc: str = "ground truth") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ids (int64, (nq, k)) and distances (float32, (nq, k)) of ``queries`` in ``base``.

    ``base`` is streamed in blocks (memory stays bounded by the block size and nq * k).
    """
    check_finite(np.asarray(queries), "queries")
    bar = tqdm(total=len(base), desc=desc, unit="vec", unit_scale=True, disable=not progress, leave=False)
    try:
        return exact_knn(base, queries, k, metric, progress=bar.update)
    finally:
        bar.close()


def distances_path_for(ids_path: str | os.PathLike[str]) -> Path:
    """Where the distances that go with an ids file are written: ``gt.ibin`` -> ``gt.dist.fbin``."""
    p = Path(ids_path)
    fmt = detect_format(p)
    ext = {"ibin": "fbin", "ivecs": "fvecs", "npy": "npy"}.get(fmt, "fbin")
    return p.with_name(p.name[: -len(p.suffix)] + f".dist.{ext}")


def ground_truth_files(base_path: str | os.PathLike[str], queries_path: str | os.PathLike[str],
                       out_path: str | os.PathLike[str], k: int, metric: str, *,
                       base_fmt: str | None = None, queries_fmt: str | None = None,
                       out_fmt: str | None = None, progress: bool = True) -> tuple[Path, Path]:
    """Compute ground truth between two vector files; write ids to ``out_path`` (int32, or int64
    for .npy) and distances beside it (see :func:`distances_path_for`). Returns both paths."""
    fmt = detect_format(out_path, out_fmt)
    with open_vectors(base_path, base_fmt) as base, open_vectors(queries_path, queries_fmt) as qf:
        if qf.dim != base.dim:
            from spann.errors import DataError
            raise DataError(f"{queries_path}: queries have dimension {qf.dim}, base {base_path} has {base.dim}")
        ids, dists = compute_ground_truth(base, qf.read(), k, metric, progress=progress)
    ids_out = ids if fmt == "npy" else ids.astype(np.int32)
    write_vectors(out_path, ids_out, fmt)
    dpath = distances_path_for(out_path) if out_fmt is None else Path(str(out_path) + ".dist.npy")
    write_vectors(dpath, dists)
    return Path(out_path), dpath
