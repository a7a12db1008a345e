"""Vector labels (tenant, category, ...) and filters over them.

Each vector carries up to ``L`` labels, non-negative int32 values; a row of the labels array is
``-1`` padded. A filter is a set of labels; a vector matches if it carries any of them. Labels
are stored inside every posting entry (the ``labels`` section of :mod:`spann.format.layout`) so the
scan filters in the same read; rare labels also get a *label list* (all their vectors, full
precision) that a selective filter scans exactly instead.
"""

from __future__ import annotations

import numba
import numpy as np

from spann.errors import DataError, QueryError

__all__ = ["MAX_LABELS", "check_labels", "label_directory", "check_filter", "has_label", "is_dead"]

MAX_LABELS = 64  #: labels per vector at most


def check_labels(labels, n: int, what: str = "labels") -> np.ndarray:
    """``labels`` as int32 (n, L), -1 padded: accepts an int array (n,) or (n, L) (-1 = none)
    or a list of n lists of ints. One-line :class:`DataError` on anything else."""
    if isinstance(labels, (list, tuple)) and labels and not np.isscalar(labels[0]):
        if len(labels) != n:
            raise DataError(f"{what}: {len(labels)} rows for {n} vectors")
        rows = []
        for r in labels:
            try:
                a = np.atleast_1d(np.asarray(r))
            except (ValueError, TypeError):
                a = np.asarray([None])
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise DataError(f"{what}: each row must be a list of integers, got {r!r}")
            rows.append(a.astype(np.int64))
        width = max((len(r) for r in rows), default=0)
        out = np.full((n, max(width, 1)), -1, np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        arr = out
    else:
        arr = np.asarray(labels)
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 8:
        raise DataError(f"{what}: must be integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DataError(f"{what}: expected shape ({n},) or ({n}, L), got {arr.shape}")
    if not 1 <= arr.shape[1] <= MAX_LABELS:
        raise DataError(f"{what}: {arr.shape[1]} labels per vector; 1..{MAX_LABELS} are supported")
    if arr.size and (int(arr.min()) < -1 or int(arr.max()) > 2**31 - 1):
        raise DataError(f"{what}: values must be in 0..2147483647 (-1 = no label)")
    out = np.sort(arr.astype(np.int32), axis=1)[:, ::-1]  # labels first, -1 padding last
    return np.ascontiguousarray(out)


def label_directory(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct labels int32 (V,) ascending, vectors carrying each int64 (V,))."""
    flat = labels[labels >= 0]
    if flat.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    vals, cnt = np.unique(flat, return_counts=True)
    return vals.astype(np.int32), cnt.astype(np.int64)


def check_filter(filt) -> np.ndarray:
    """A filter (an int or an iterable of ints >= 0) as sorted distinct int32 (F,)."""
    if isinstance(filt, (bool, np.bool_)):
        raise QueryError(f"filter must be a label or a list of labels (integers >= 0), got {filt!r}")
    arr = np.atleast_1d(np.asarray(filt))
    if arr.size == 0:
        raise QueryError("filter is empty: give at least one label")
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise QueryError(f"filter must be a label or a list of labels (integers >= 0), got {filt!r}")
    if int(arr.min()) < 0 or int(arr.max()) > 2**31 - 1:
        raise QueryError("filter labels must be in 0..2147483647")
    return np.unique(arr.astype(np.int32))


@numba.njit(cache=True, nogil=True, inline="always")
def _contains(sorted_arr, v):
    lo = 0
    hi = sorted_arr.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_arr[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < sorted_arr.shape[0] and sorted_arr[lo] == v


@numba.njit(cache=True, nogil=True, inline="always")
def has_label(i32, start, width, filt):
    """Whether the ``width`` labels at int32 index ``start`` (-1 padded, labels first) meet the
    sorted filter ``filt``."""
    for t in range(width):
        lab = i32[start + t]
        if lab < 0:
            return False
        if _contains(filt, lab):
            return True
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def is_dead(dead, key):
    """Whether ``key`` is in the sorted int64 tombstone array ``dead``."""
    return dead.shape[0] > 0 and _contains(dead, key)
