"""Exact k-nearest-neighbour search by blocks (BLAS matrix products), with bounded memory.

Used for ground truth, the brute-force baseline and small exact sub-problems of the build.
The base is streamed once, in blocks; each query keeps a running candidate list. Candidates
found in float32 arithmetic are re-ranked in float64 so the final order is exact; integer data
(uint8/int8) is computed in float64 throughout, which is exact.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from spann.errors import DataError, ParameterError
from spann.kernels.metrics import Metric, get_metric, normalize_rows

__all__ = ["exact_knn", "pairwise_distances"]


def _prep(x: np.ndarray, metric: Metric, work_dtype) -> np.ndarray:
    if metric.normalize:
        return normalize_rows(x).astype(work_dtype, copy=False)
    return np.asarray(x, dtype=work_dtype)


def pairwise_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Distances (nq, nx) in spann's convention, computed in float64 (exact reference)."""
    metric = get_metric(metric)
    q64 = _prep(q, metric, np.float64)
    x64 = _prep(x, metric, np.float64)
    dots = q64 @ x64.T
    if metric.squared_l2:
        return (q64 * q64).sum(1)[:, None] + (x64 * x64).sum(1)[None, :] - 2 * dots
    if metric.inner_product:
        return -dots
    return 1.0 - dots  # unit rows: 1 - cos


def exact_knn(base, queries: np.ndarray, k: int, metric: str = "l2", *,
              base_block: int = 32768, query_block: int = 1024,
              progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``queries`` (nq, d) among ``base`` rows.

    ``base`` is an (n, d) array or a :class:`~spann.datasets.formats.VectorFile` (read in blocks).
    Returns ``(ids int64 (nq, k), dists float32 (nq, k))`` sorted by (distance, id); when
    ``k > n`` the tail is padded with id -1 and distance +inf. ``progress(rows)`` is called after
    every base block.
    """
    metric = get_metric(metric)
    if k <= 0:
        raise ParameterError(f"k must be >= 1, got {k}")
    queries = np.asarray(queries)
    n = len(base)
    d = base.shape[1]
    if queries.ndim != 2 or queries.shape[1] != d:
        raise DataError(f"queries have shape {queries.shape}, expected (nq, {d}) to match the base")
    nq = queries.shape[0]
    integer = np.dtype(base.dtype).kind in "iu" and not metric.normalize
    work = np.float64 if integer else np.float32
    kk = min(n, k + (0 if integer else max(8, k // 4)))
    q = _prep(queries, metric, work)
    qn = (q * q).sum(1) if metric.squared_l2 else None
    best_d = np.full((nq, kk), np.inf, dtype=work)
    best_i = np.full((nq, kk), -1, dtype=np.int64)
    read = base.read if hasattr(base, "iter_blocks") else (lambda s, e: base[s:e])
    for s in range(0, n, base_block):
        xb = _prep(read(s, min(n, s + base_block)), metric, work)
        m = xb.shape[0]
        xn = (xb * xb).sum(1) if metric.squared_l2 else None
        ids_b = np.arange(s, s + m, dtype=np.int64)
        for qs in range(0, nq, query_block):
            qe = min(nq, qs + query_block)
            dots = q[qs:qe] @ xb.T
            if metric.squared_l2:
                dist = xn[None, :] - 2 * dots + qn[qs:qe, None]
            elif metric.inner_product:
                dist = -dots
            else:
                dist = 1 - dots
            if m > kk:  # this block's own top-kk first: keeps the merge small
                part = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
                blk_d = np.take_along_axis(dist, part, 1)
                blk_i = ids_b[part]
            else:
                blk_d, blk_i = dist, np.broadcast_to(ids_b, dist.shape)
            cand_d = np.concatenate([best_d[qs:qe], blk_d], axis=1)
            cand_i = np.concatenate([best_i[qs:qe], blk_i], axis=1)
            part = np.argpartition(cand_d, kk - 1, axis=1)[:, :kk]
            best_d[qs:qe] = np.take_along_axis(cand_d, part, 1)
            best_i[qs:qe] = np.take_along_axis(cand_i, part, 1)
        if progress is not None:
            progress(m)
    # exact float64 re-rank of the candidates, then order by (distance, id)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_d = np.full((nq, k), np.inf, dtype=np.float32)
    take = base.take if hasattr(base, "iter_blocks") else (lambda ids: np.asarray(base)[ids])
    for qs in range(0, nq, query_block):
        qe = min(nq, qs + query_block)
        bi = best_i[qs:qe]
        uniq, inv = np.unique(bi.ravel(), return_inverse=True)
        vecs = _prep(take(uniq), metric, np.float64)
        qq = _prep(queries[qs:qe], metric, np.float64)
        cv = vecs[inv.reshape(bi.shape)]  # (b, kk, d)
        if metric.squared_l2:
            diff = cv - qq[:, None, :]
            dd = np.einsum("bkd,bkd->bk", diff, diff)
        elif metric.inner_product:
            dd = -np.einsum("bkd,bd->bk", cv, qq)
        else:
            dd = 1 - np.einsum("bkd,bd->bk", cv, qq)
        order = np.lexsort((bi, dd), axis=1)[:, :k]
        w = min(k, kk)
        out_i[qs:qe, :w] = np.take_along_axis(bi, order, 1)[:, :w]
        out_d[qs:qe, :w] = np.take_along_axis(dd, order, 1)[:, :w]
    return out_i, out_d
