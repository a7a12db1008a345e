"""Search kernels: head search + query-aware pruning, posting scan with replica de-dup, top-k.

Per query:
1. beam search of the head graph -> the ``m`` nearest heads (head-space squared L2);
2. prune: keep head j only while ``d(q, c_j) <= (1 + eps)^2 * d(q, c_1)`` (i.e. true distances
   within a factor 1 + eps; the nearest head always survives);
3. optionally request every kept list's pages from the device at once (``union_pages`` with
   advise), then scan each kept list through the :class:`~spann.postings.PostingsView`;
4. ids already in the top-k are not inserted again (a vector's replicas share its distance).

Statistics per query (int64 (4,)): posting lists read, bytes of the 4 KiB pages they span
(what a cold query reads from the device), distance evaluations (heads + entries), and bytes of
the entries scanned.
"""

from __future__ import annotations

import numba
import numpy as np

from spann.distances import FASTMATH, pair_distance
from spann.head_index import beam_search
from spann.postings import union_pages
from spann.prefetch import prefetch_element
from spann.topk import topk_insert_unique

__all__ = ["N_STATS", "select_lists", "scan_lists", "search_one", "select_batch", "scan_batch"]

N_STATS = 4  #: lists read, page bytes, distance evaluations, entry bytes


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def select_lists(qh, heads, neighbors, entries, ef, prune_eps, visited, tag, sel_i, sel_d):
    """Nearest heads of head-space query ``qh`` into ``sel_i``/``sel_d`` (length m), pruned;
    returns (kept, distance evaluations)."""
    n_eval = beam_search(qh, heads, neighbors, entries, ef, visited, tag, sel_i, sel_d)
    limit = sel_d[0] * (1.0 + prune_eps) * (1.0 + prune_eps)
    kept = 0
    for j in range(sel_i.shape[0]):
        if sel_i[j] < 0 or sel_d[j] > limit:
            break
        kept += 1
    return kept, n_eval


@numba.njit(cache=True, nogil=True, inline="always")
def _payload_offset(pv, c):
    return (8 * c + 4 * pv.label_width * c + 7) // 8 * 8


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_list(pv, h):
    """Software-prefetch the cache lines of list h's vectors (warm path: overlaps misses)."""
    c = pv.counts[h]
    if c == 0:
        return
    start = (pv.offsets[h] + _payload_offset(pv, c)) // pv.vec.itemsize
    step = 64 // pv.vec.itemsize
    for e in range(0, c * pv.dim, step):
        prefetch_element(pv.vec, start, e)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def scan_lists(q, metric, pv, sel_i, kept, top_d, top_i, stats):
    """Scan the first ``kept`` lists of ``sel_i`` into the top-k (``top_d``/``top_i``, pre-filled
    with inf / -1). Adds lists, distance evaluations and entry bytes to ``stats``."""
    dim = pv.dim
    k = top_d.shape[0]
    isz = pv.vec.itemsize
    for j in range(min(kept, 2)):
        _prefetch_list(pv, sel_i[j])
    for j in range(kept):
        if j + 2 < kept:  # the lists two ahead load while this one is scanned
            _prefetch_list(pv, sel_i[j + 2])
        h = sel_i[j]
        c = pv.counts[h]
        if c == 0:
            continue
        o = pv.offsets[h]
        ids = pv.i64[o >> 3:(o >> 3) + c]
        po = (o + _payload_offset(pv, c)) // isz
        block = pv.vec[po:po + c * dim].reshape(c, dim)
        for t in range(c):
            d = pair_distance(q, block[t], metric)
            if d < top_d[k - 1]:
                topk_insert_unique(top_d, top_i, d, ids[t])
        stats[0] += 1
        stats[2] += c
        stats[3] += _payload_offset(pv, c) + c * dim * isz


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def search_one(q, qh, metric, heads, neighbors, entries, ef, m, prune_eps, pv, prefetch, visited, tag,
               top_d, top_i, stats):
    """One query end to end: fills ``top_d``/``top_i`` (length k, ascending) and ``stats``."""
    sel_i = np.empty(m, np.int32)
    sel_d = np.empty(m, np.float32)
    kept, n_eval = select_lists(qh, heads, neighbors, entries, ef, prune_eps, visited, tag, sel_i, sel_d)
    stats[1] += 4096 * union_pages(pv, sel_i, kept, prefetch and pv.prefetchable)
    stats[2] += n_eval
    for j in range(top_d.shape[0]):
        top_d[j] = np.inf
        top_i[j] = -1
    scan_lists(q, metric, pv, sel_i, kept, top_d, top_i, stats)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def select_batch(qh, heads, neighbors, entries, ef, m, prune_eps, n_chunks):
    """Batch phase 1: the pruned nearest heads of every query, in parallel chunks (one visited
    array per chunk). Returns sel_i (nq, m) int32, sel_d (nq, m) float32, kept (nq,), evals (nq,)."""
    nq = qh.shape[0]
    sel_i = np.full((nq, m), -1, np.int32)
    sel_d = np.full((nq, m), np.inf, np.float32)
    kept = np.zeros(nq, np.int64)
    evals = np.zeros(nq, np.int64)
    step = (nq + n_chunks - 1) // n_chunks
    for ch in numba.prange(n_chunks):
        visited = np.zeros(heads.shape[0], np.uint32)
        tag = np.uint32(0)
        for i in range(ch * step, min(nq, (ch + 1) * step)):
            tag += np.uint32(1)
            kept[i], evals[i] = select_lists(qh[i], heads, neighbors, entries, ef, prune_eps, visited, tag,
                                             sel_i[i], sel_d[i])
    return sel_i, sel_d, kept, evals


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def scan_batch(qs, metric, pv, sel_i, kept, k):
    """Batch phase 2: scan the selected lists of every query in parallel; returns (dists (nq, k),
    ids (nq, k), stats (nq, N_STATS)). Between the phases the caller may prefetch the lists."""
    nq = qs.shape[0]
    out_d = np.full((nq, k), np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    stats = np.zeros((nq, N_STATS), np.int64)
    for i in numba.prange(nq):
        stats[i, 1] = 4096 * union_pages(pv, sel_i[i], kept[i], False)
        scan_lists(qs[i], metric, pv, sel_i[i], kept[i], out_d[i], out_i[i], stats[i])
    return out_d, out_i, stats
