"""Top-k kernels on plain arrays: a sorted insertion list (ids int64 = -1, dists float32 = inf).

For the k used in ANN search (10-100) a sorted array with insertion beats a binary heap:
most candidates are rejected by one comparison with the current worst.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["topk_insert", "topk_insert_unique", "topk_insert_unique_with"]


@numba.njit(cache=True, nogil=True, inline="always")
def topk_insert(dists, ids, d, i) -> bool:
    """Insert (d, i) into ascending ``dists``/``ids`` if d beats the last; returns True if inserted."""
    k = dists.shape[0]
    if not d < dists[k - 1]:
        return False
    j = k - 1
    while j > 0 and dists[j - 1] > d:
        dists[j] = dists[j - 1]
        ids[j] = ids[j - 1]
        j -= 1
    dists[j] = d
    ids[j] = i
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def topk_insert_unique(dists, ids, d, i) -> bool:
    """As :func:`topk_insert`, but an id already present is not inserted again (replica de-dup)."""
    if not d < dists[dists.shape[0] - 1] or _present(ids, i):
        return False
    return topk_insert(dists, ids, d, i)


@numba.njit(cache=True, nogil=True, inline="always")
def _present(ids, i) -> bool:
    for j in range(ids.shape[0]):
        if ids[j] == i:
            return True
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def topk_insert_unique_with(dists, ids, extra, d, i, x) -> bool:
    """As :func:`topk_insert_unique`, carrying ``x`` into ``extra`` (float32, parallel to
    ``dists``), except that an id already present is replaced when ``d`` is smaller: replicas
    of a vector carry their own estimates (rabitq codes are relative to their list's head), and
    keeping each id's smallest makes the result independent of the order lists are scanned in
    (a direct read scans them as they land)."""
    k = dists.shape[0]
    if not d < dists[k - 1]:
        return False
    for p in range(k):
        if ids[p] == i:
            if not d < dists[p]:
                return False
            for t in range(p, k - 1):  # take the old estimate out
                dists[t] = dists[t + 1]
                ids[t] = ids[t + 1]
                extra[t] = extra[t + 1]
            dists[k - 1] = np.inf
            ids[k - 1] = -1
            extra[k - 1] = 0.0
            break
    j = k - 1
    while j > 0 and dists[j - 1] > d:
        dists[j] = dists[j - 1]
        ids[j] = ids[j - 1]
        extra[j] = extra[j - 1]
        j -= 1
    dists[j] = d
    ids[j] = i
    extra[j] = x
    return True
