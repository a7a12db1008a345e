"""Queries checked and mapped into the spaces an index searches in.

A search compares queries with two kinds of vectors: entries and stored rows (the metric's
query space: cosine normalises, inner product stays as given) and heads (the same, plus a
zero column for inner product's head transform, and rotated when the encoding keeps its heads
in a rotated space, see :mod:`spann.codecs.rabitq`). :class:`QuerySpace` checks a batch (shape,
dtype, finite, small enough for float32 distances) and returns both forms.
"""

from __future__ import annotations

import numpy as np

from spann.errors import QueryError
from spann.kernels.metrics import Metric
from spann.kernels.query_space import rotate_query, single_query_space

__all__ = ["QuerySpace"]


class QuerySpace:
    """The checks and transforms of an index's queries: ``dim`` and the stored ``dtype``,
    the ``metric``, the heads' ``rotation`` (float32 (dim, dim') or None) and whether the
    index was built from float32 vectors (``float_source``: byte queries are refused)."""

    def __init__(self, dim: int, dtype: np.dtype, metric: Metric, rotation: np.ndarray | None,
                 float_source: bool):
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.metric = metric
        self.rotation = rotation
        self.float_source = float_source

    def prepare(self, queries: np.ndarray, k: int, live: int) -> tuple[np.ndarray, np.ndarray]:
        """``(qs, qh)``: float32 (nq, dim) in the metric's query space and float32 (nq, dim'')
        in the heads' space, for ``queries`` (nq, dim) or (dim,) of a float or integer dtype
        and a ``k`` in 1..``live``. Raises :class:`~spann.errors.QueryError` for anything else."""
        dim, metric = self.dim, self.metric
        if (type(queries) is np.ndarray and queries.ndim == 1 and queries.dtype == np.float32
                and queries.shape[0] == dim and type(k) is int and 0 < k <= live):
            # one float32 query (the latency path): checks and normalisation in one kernel, the
            # rabitq rotation in another (the numpy steps below would cost more than the search itself)
            qs = np.empty((1, dim), np.float32)
            if single_query_space(queries, metric.normalize, qs[0]):
                if self.rotation is not None:
                    rot = self.rotation
                    qh = np.empty((1, rot.shape[1] + int(metric.mips)), np.float32)
                    rotate_query(qs[0], rot, qh[0])
                    return qs, qh
                if not metric.mips:
                    return qs, qs
                return qs, np.hstack([qs, np.zeros((1, 1), np.float32)])
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise QueryError(f"queries must be a 2-D array (nq, {dim}), got shape {q.shape}")
        if q.shape[1] != dim:
            raise QueryError(f"queries have dimension {q.shape[1]}, the index has {dim}")
        if q.shape[0] == 0:
            raise QueryError("queries are empty (0 rows)")
        if q.dtype.kind not in "fiu" or q.dtype.itemsize > 8:
            raise QueryError(f"queries have dtype {q.dtype}; expected float32, float64, uint8 or int8")
        if self.dtype.kind == "f" and q.dtype.kind in "iu" and self.float_source:
            raise QueryError(f"queries are {q.dtype} but the index holds float32 vectors")
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        if k > live:
            raise QueryError(f"k = {k} exceeds the {live} vectors in the index")
        with np.errstate(over="ignore", invalid="ignore"):
            qf = np.asarray(q, dtype=np.float32)
            if not (qf.flags.c_contiguous and qf.flags.writeable):  # e.g. mapped queries: a copy (see VectorFile.read)
                qf = np.array(qf, order="C")
            bad = ~np.isfinite(qf).all(1)
        if bad.any():
            raise QueryError(f"query {int(np.flatnonzero(bad)[0])} contains NaN or Inf (or overflows float32)")
        qs, qh = metric.query_space(qf)
        if self.rotation is not None:  # heads live in the rotated space (see spann.codecs.rabitq)
            qh = np.ascontiguousarray(np.hstack([qs @ self.rotation, qh[:, dim:]]), dtype=np.float32)
        # squared distances must stay finite in float32 (~3.4e38)
        big = float(np.abs(qs).max(initial=0.0))
        if not (np.isfinite(qs).all() and np.isfinite(qh).all()) or big * big * qs.shape[1] > 1e36:
            raise QueryError(f"queries are too large in magnitude for float32 distances (largest |value| {big:.3g})")
        return qs, qh
