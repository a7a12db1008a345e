"""One query's validation and normalisation in one kernel (the single-query latency path).

:meth:`spann.Index.search` checks every query (finite, small enough for float32 squared
distances) and, for cosine, scales it to unit length. For a batch these are a few numpy
passes; for one float32 query they cost more than the search's numba work on a warm index,
so this kernel does them in one pass. Anything it does not accept goes the general way,
which also words the errors.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["single_query_space", "rotate_query"]


@numba.njit(cache=True, nogil=True)
def single_query_space(q, normalize, out) -> bool:
    """Write the scan-space form of query ``q`` (float32 (D,)) into ``out`` (float32 (D,)):
    ``q`` itself, or scaled to unit L2 norm with ``normalize`` (a zero query stays zero).
    Returns False, leaving ``out`` unspecified, if ``q`` holds NaN or Inf or values whose
    squared distances would overflow float32 (the caller then takes the general path)."""
    d = q.shape[0]
    ss = 0.0
    big = 0.0
    for i in range(d):
        v = np.float64(q[i])
        if not np.isfinite(v):
            return False
        ss += v * v
        a = abs(v)
        if a > big:
            big = a
    n = np.float32(1.0)
    if normalize and ss > 0.0:
        n = np.float32(np.sqrt(ss))  # as spann.kernels.metrics.normalize_rows: a float32 norm, float32 division
    big = big / np.float64(n)
    if big * big * d > 1e36:
        return False
    for i in range(d):
        out[i] = q[i] / n
    return True


@numba.njit(cache=True, nogil=True, fastmath=True)
def rotate_query(qs, rot, out) -> None:
    """``out[:Dp] = qs @ rot`` (qs float32 (D,), rot float32 (D, Dp) C order, out float32
    (>= Dp,)), the rest of ``out`` 0: the head-space form of a rabitq index's query (see
    :mod:`spann.codecs.rabitq`), one pass over ``rot`` row by row."""
    dp = rot.shape[1]
    for j in range(out.shape[0]):
        out[j] = 0.0
    for i in range(qs.shape[0]):
        v = qs[i]
        row = rot[i]
        for j in range(dp):
            out[j] += v * row[j]
