"""The build's last measurement: calibration queries, their exact neighbours, and the operating
points of the finished index (see :mod:`spann.search.operating_points`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from spann.datasets.formats import check_finite
from spann.kernels.exact import exact_knn
from spann.kernels.metrics import Metric
from spann.params import BuildParams
from spann.search.operating_points import K, OperatingPoints, calibration_queries, measure_operating_points
from spann.search.reader import IndexReader

__all__ = ["Truth", "calibration_rows", "other_rows", "truth_stage", "operating_points_stage"]

#: bytes of distances the exact search holds at a time
TRUTH_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Truth:
    """Calibration queries: base ``rows`` (int64 (q,), ascending) and their exact ``K + 1``
    nearest rows ``neighbors`` (int64 (q, K + 1), the row itself among them)."""

    rows: np.ndarray
    neighbors: np.ndarray


def calibration_rows(n: int, dim: int, params: BuildParams) -> np.ndarray:
    """The base rows (int64, ascending; seeded) searched as calibration queries. The clustering
    sample leaves them out: a row that helped place the heads finds its neighbours in fewer
    lists than a new query does (on GloVe-50, recall@10 0.01-0.02 higher at the same budget)."""
    q = calibration_queries(n, dim, params.calibration_queries)
    if q == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(params.seed + 11)
    return np.sort(rng.choice(n, q, replace=False)).astype(np.int64)


def other_rows(n: int, held: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct rows of ``range(n)`` drawn with ``rng``, none in ``held`` (int64,
    ascending), ascending; O(k + |held|) memory."""
    rest = n - held.size
    if k >= rest:
        return np.setdiff1d(np.arange(n, dtype=np.int64), held)
    j = np.sort(rng.choice(rest, k, replace=False)).astype(np.int64)
    # the j-th row not held: j plus the held rows at or before it
    return j + np.searchsorted(held - np.arange(held.size), j, side="right")


def truth_stage(src, metric: Metric, params: BuildParams, progress: bool = False) -> Truth:
    """Find the exact neighbours of the calibration queries (:func:`calibration_rows`) in one
    pass over the base, in blocks of bounded memory."""
    rows = calibration_rows(src.n, src.dim, params)
    q = rows.size
    if q == 0:
        return Truth(rows=rows, neighbors=np.zeros((0, K + 1), np.int64))
    queries = src.take(rows)
    check_finite(queries, f"{src.path}")
    block = int(max(1024, TRUTH_BLOCK_BYTES // (q * 8 * 3)))  # distances (float64 for 8-bit data) and temporaries
    # the exact re-rank holds ~K + 9 candidate vectors per query in float64, three times
    qblock = int(max(1, TRUTH_BLOCK_BYTES // (3 * (K + 9) * src.dim * 8)))
    # BLAS on the build's threads: the neighbours are re-ranked in float64 and ordered by (distance,
    # row), so they do not depend on how BLAS splits the products (the build holds BLAS to one
    # thread elsewhere)
    with tqdm(total=src.n, desc="calibration truth", unit="row", unit_scale=True, disable=not progress,
              leave=False) as bar, threadpool_limits(params.threads or os.cpu_count() or 1):
        nbr, _ = exact_knn(src, queries, K + 1, metric.name, base_block=block, query_block=qblock,
                           progress=bar.update)
    return Truth(rows=rows, neighbors=nbr)


def operating_points_stage(index_dir: Path, src, truth: Truth, user_ids: np.ndarray | None, threads: int,
                           progress: bool = False) -> OperatingPoints | None:
    """Open the finished index in ``index_dir`` and measure its operating points with the
    calibration queries (None without any)."""
    if truth.rows.size == 0:
        return None
    queries = np.ascontiguousarray(src.take(truth.rows), np.float32)
    gt, own = truth.neighbors, truth.rows
    if user_ids is not None:  # searches return the users' ids
        gt, own = user_ids[gt], user_ids[own]
    with IndexReader(index_dir) as r, tqdm(desc="operating points", unit="step", disable=not progress,
                                           leave=False) as bar:
        def search(q, k, **p):
            return r.search(q, k, threads or None, **p)

        def breakdown(q, g, k, **p):
            return r.breakdown(q, g, k, threads or None, **p)

        return measure_operating_points(search, breakdown, queries, gt, own, int(r.snap.heads.shape[0]),
                                        bool(r.layout.coded), progress=bar.update)
