"""Search kernels: head search + query-aware pruning, posting scan with replica de-dup, top-k.

Per query:
1. beam search of the head graph -> the ``m`` nearest heads (head-space squared L2);
2. prune: keep head j only while ``d(q, c_j) <= (1 + eps)^2 * d(q, c_1)`` (i.e. true distances
   within a factor 1 + eps; the nearest head always survives);
3. the kept heads themselves are candidates (heads are real vectors and are not stored in
   postings), then each kept posting list is scanned straight from its memory-mapped chunk;
4. ids already in the top-k are not inserted again (a vector's replicas share its distance).

Statistics per query (int64 (3,)): posting lists read, posting bytes read, distance evaluations.
"""

from __future__ import annotations

import numba
import numpy as np

from spann.distances import L2, neg_dot, pair_distance
from spann.head_index import beam_search
from spann.prefetch import prefetch_element
from spann.topk import topk_insert_unique

__all__ = ["select_lists", "scan_lists", "search_one", "select_batch", "scan_batch",
           "prefetch_lists"]


@numba.njit(cache=True, fastmath=True, nogil=True)
def select_lists(q, q_ext, heads, ext, neighbors, entries, ef, prune_eps, visited, tag, sel_i, sel_d):
    """Nearest heads of ``q`` into ``sel_i``/``sel_d`` (length m), pruned; returns (kept, evals)."""
    n_eval = beam_search(q, q_ext, heads, ext, neighbors, entries, ef, visited, tag, sel_i, sel_d)
    limit = sel_d[0] * (1.0 + prune_eps) * (1.0 + prune_eps)
    kept = 0
    for j in range(sel_i.shape[0]):
        if sel_i[j] < 0 or sel_d[j] > limit:
            break
        kept += 1
    return kept, n_eval


@numba.njit(cache=True, fastmath=True, nogil=True)
def scan_lists(q, metric, heads, head_ids, sel_i, sel_d, kept, counts, list_shard, vec_off, id_off,
               vec_views, id_views, top_d, top_i, stats):
    """Scan the kept heads and their posting lists into the top-k (``top_d``/``top_i``, pre-filled
    with inf / -1). Adds lists read, bytes read and distance evaluations to ``stats``."""
    dim = heads.shape[1]
    k = top_d.shape[0]
    for j in range(min(kept, 2)):
        _prefetch_list(sel_i[j], counts, list_shard, vec_off, vec_views, dim)
    for j in range(kept):
        if j + 2 < kept:  # the lists two ahead are loading while this one is scanned
            _prefetch_list(sel_i[j + 2], counts, list_shard, vec_off, vec_views, dim)
        h = sel_i[j]
        if metric == L2:
            d = sel_d[j]
        else:
            d = neg_dot(q, heads[h])
        topk_insert_unique(top_d, top_i, d, head_ids[h])
        c = counts[h]
        if c == 0:
            continue
        sh = list_shard[h]
        vv = vec_views[sh]
        iv = id_views[sh]
        vo = vec_off[h]
        io = id_off[h]
        block = vv[vo:vo + c * dim].reshape(c, dim)
        for t in range(c):
            d = pair_distance(q, block[t], metric)
            if d < top_d[k - 1]:
                topk_insert_unique(top_d, top_i, d, iv[io + t])
        stats[0] += 1
        stats[1] += c * (dim * vv.itemsize + iv.itemsize)
        stats[2] += c + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_list(h, counts, list_shard, vec_off, vec_views, dim):
    """Software-prefetch every cache line of posting list ``h``'s vectors."""
    vv = vec_views[list_shard[h]]
    step = 64 // vv.itemsize
    for e in range(0, counts[h] * dim, step):
        prefetch_element(vv, vec_off[h], e)


@numba.njit(cache=True, fastmath=True, nogil=True)
def search_one(q, q_ext, metric, heads, ext, head_ids, neighbors, entries, ef, m, prune_eps, counts,
               list_shard, vec_off, id_off, vec_views, id_views, visited, tag, top_d, top_i, stats):
    """One query end to end (no prefetch): fills ``top_d``/``top_i`` (length k) and ``stats``."""
    sel_i = np.empty(m, np.int32)
    sel_d = np.empty(m, np.float32)
    kept, n_eval = select_lists(q, q_ext, heads, ext, neighbors, entries, ef, prune_eps, visited, tag,
                                sel_i, sel_d)
    stats[2] += n_eval
    for j in range(top_d.shape[0]):
        top_d[j] = np.inf
        top_i[j] = -1
    scan_lists(q, metric, heads, head_ids, sel_i, sel_d, kept, counts, list_shard, vec_off, id_off,
               vec_views, id_views, top_d, top_i, stats)


@numba.njit(cache=True, fastmath=True, nogil=True, parallel=True)
def select_batch(qs, q_ext, heads, ext, neighbors, entries, ef, m, prune_eps, n_chunks):
    """Batch phase 1: the pruned nearest heads of every query, in parallel chunks (one visited
    array per chunk). Returns sel_i (nq, m) int32, sel_d (nq, m) float32, kept (nq,), evals (nq,)."""
    nq = qs.shape[0]
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
            kept[i], evals[i] = select_lists(qs[i], q_ext[i], heads, ext, neighbors, entries, ef, prune_eps,
                                             visited, tag, sel_i[i], sel_d[i])
    return sel_i, sel_d, kept, evals


@numba.njit(cache=True, fastmath=True, nogil=True, parallel=True)
def scan_batch(qs, metric, heads, head_ids, sel_i, sel_d, kept, counts, list_shard, vec_off, id_off,
               vec_views, id_views, k):
    """Batch phase 2: scan the selected lists of every query in parallel; returns (dists (nq, k),
    ids (nq, k), stats (nq, 3)). Between the phases the caller may prefetch all the lists."""
    nq = qs.shape[0]
    out_d = np.full((nq, k), np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    stats = np.zeros((nq, 3), np.int64)
    for i in numba.prange(nq):
        scan_lists(qs[i], metric, heads, head_ids, sel_i[i], sel_d[i], kept[i], counts, list_shard, vec_off,
                   id_off, vec_views, id_views, out_d[i], out_i[i], stats[i])
    return out_d, out_i, stats


def prefetch_lists(sel_i: np.ndarray, kept: np.ndarray, counts: np.ndarray, store) -> int:
    """Ask the kernel to read every selected posting range now (``madvise(WILLNEED)``), so the
    reads of a query (or batch) are in flight together instead of one page fault at a time.
    Returns the number of ranges advised."""
    from spann.storage import madvise_fn, MADV_WILLNEED, PAGE
    n = 0
    dim_bytes = store.vectors.row_elems // store.cap * store.vectors.dtype.itemsize
    for q in range(sel_i.shape[0]):
        for h in sel_i[q, :kept[q]]:
            c = int(counts[h])
            if c == 0:
                continue
            sh = int(store.list_shard[h])
            ranges = [(store.vec_addr[sh], store.vec_off[h] * store.vectors.dtype.itemsize, c * dim_bytes)]
            if not store.ids_in_ram:
                ranges.append((store.id_addr[sh], store.id_off[h] * store.ids.dtype.itemsize, c * store.ids.dtype.itemsize))
            for addr, off, nbytes in ranges:
                start = int(addr + off)
                aligned = start - start % PAGE
                madvise_fn(aligned, nbytes + (start - aligned), MADV_WILLNEED)
                n += 1
    return n
