"""The query-aware pruner: how many posting lists each query reads.

Queries differ: on GloVe-50 half the queries find 9 of their 10 neighbours within the
nearest 14 lists, one in ten needs more than 60. A fixed number of lists wastes reads on easy
queries and starves hard ones. The pruner predicts, before any posting is read, how many lists
a query needs, from the shape of its distances to the nearest heads (in the spirit of Li et al.,
"Improving approximate nearest neighbor search through learned adaptive early termination",
SIGMOD 2020):

    features  f = [1, log d_1, log(d_2/d_1), log(d_4/d_1), log(d_8/d_1), log(d_16/d_1), log(d_32/d_1)]
    predicted log lists needed  p = w . f        (least squares, fitted at build time)
    lists read  m = clip(round(max_postings * exp(p - p_med)), max_postings // 4, 2 * max_postings)

where ``d_j`` is the squared head-space distance to the j-th nearest head and ``p_med`` the
median prediction on the training queries: the median query reads ``max_postings`` lists, an
easy one down to a quarter of that, a hard one up to twice. The weights are fitted at build time
on a sample of the base used as queries, against their exact nearest neighbours within the
clustering sample: the target is the number of lists (in head order) that hold 9 of the 10.
The model is 8 floats stored with the index (``pruner``); an index built without it, or with
fewer heads than the features need, reads ``max_postings`` lists.

At equal recall the model reads about a sixth fewer lists than a fixed count on GloVe-50 and a
quarter fewer on mpnet-768 (docs/benchmarks.md). Its limit is the information it has: a query's
head distances say little more about where its neighbours are, so richer features of the same
distances do not read fewer lists.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["FEATURE_HEADS", "N_WEIGHTS", "features", "lists_for", "fit_pruner", "training_targets", "covered"]

FEATURE_HEADS = (1, 3, 7, 15, 31)   #: ratios d_{j+1} / d_1 used as features (0-based j)
N_WEIGHTS = 2 + len(FEATURE_HEADS)  #: intercept, log d_1, log ratios
MIN_HEADS = 32                      #: fewer heads: no model


@numba.njit(cache=True, nogil=True)
def features(sel_d, out):
    """Features of one query from its ascending head distances ``sel_d`` (at least 32 finite)."""
    d1 = max(sel_d[0], np.float32(1e-30))
    out[0] = 1.0
    out[1] = np.log(d1)
    k = 2
    for j in (1, 3, 7, 15, 31):
        out[k] = np.log(max(sel_d[j], d1) / d1)
        k += 1


@numba.njit(cache=True, nogil=True)
def lists_for(sel_d, n_found, model, budget):
    """Lists to read for one query: ``budget`` if ``model`` is empty (no pruner) or too few heads
    were found, else the model's prediction scaled so the median query reads ``budget``."""
    if model.shape[0] != N_WEIGHTS + 1 or n_found < MIN_HEADS:
        return min(budget, n_found)
    f = np.empty(N_WEIGHTS, np.float64)
    features(sel_d, f)
    p = 0.0
    for i in range(N_WEIGHTS):
        p += model[i] * f[i]
    m = int(np.round(budget * np.exp(min(p - model[N_WEIGHTS], 5.0))))
    lo = max(1, budget // 4)
    hi = 2 * budget
    if m < lo:
        m = lo
    if m > hi:
        m = hi
    return min(m, n_found)


@numba.njit(cache=True, nogil=True, inline="always")
def _first_position(sel_row, nbr_lists_ptr, nbr_lists, e, M):
    """The first position among ``sel_row[:M]`` of a list neighbour ``e`` is stored in (CSR
    ``nbr_lists_ptr``/``nbr_lists``), M if none."""
    best = M
    for t in range(nbr_lists_ptr[e], nbr_lists_ptr[e + 1]):
        h = nbr_lists[t]
        for j in range(min(best, M)):
            if sel_row[j] == h:
                best = j
                break
    return best


@numba.njit(cache=True, nogil=True)
def training_targets(sel, nbr_lists_ptr, nbr_lists, n_nbrs, need_of):
    """For each training query i: the smallest number of its selected lists (in head order) that
    hold ``need_of`` of its ``n_nbrs`` neighbours. ``nbr_lists_ptr``/``nbr_lists``: CSR of the lists
    each neighbour (query-major, n_nbrs per query) is stored in. Returns int64 (nq,)."""
    nq, M = sel.shape
    out = np.empty(nq, np.int64)
    pos = np.empty(n_nbrs, np.int64)
    for i in range(nq):
        for g in range(n_nbrs):
            pos[g] = _first_position(sel[i], nbr_lists_ptr, nbr_lists, i * n_nbrs + g, M)
        pos.sort()
        out[i] = min(pos[need_of - 1] + 1, M)
    return out


@numba.njit(cache=True, nogil=True)
def covered(sel, nbr_lists_ptr, nbr_lists, n_nbrs, L):
    """Mean fraction of each query's ``n_nbrs`` neighbours stored in one of its first ``L``
    selected lists (``sel`` int32 (nq, >= L), CSR as in :func:`training_targets`)."""
    nq = sel.shape[0]
    L = min(L, sel.shape[1])
    hit = 0
    for i in range(nq):
        for g in range(n_nbrs):
            if _first_position(sel[i], nbr_lists_ptr, nbr_lists, i * n_nbrs + g, L) < L:
                hit += 1
    return hit / max(1, nq * n_nbrs)


def fit_pruner(sel_d: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Least-squares weights of log(need) on the features of ``sel_d`` (float32 (q, >=32)), plus
    the median prediction: float64 (N_WEIGHTS + 1,)."""
    F = np.empty((sel_d.shape[0], N_WEIGHTS))
    for i in range(sel_d.shape[0]):
        features(sel_d[i], F[i])
    y = np.log(np.maximum(need, 1).astype(np.float64))
    w, *_ = np.linalg.lstsq(F, y, rcond=None)
    return np.concatenate([w, [float(np.median(F @ w))]])
