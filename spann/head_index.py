"""In-memory index over the heads: an RNG-pruned neighbour graph searched by beam search.

Head space: squared L2 between head vectors plus an optional extra coordinate per head
(``ext``), which carries the MIPS-to-L2 transform for inner product (zeros otherwise):
``dist(q, h) = ||q - h||^2 + (q_ext - ext[h])^2``.

Build: candidate neighbours by exact blocked kNN (BLAS) for up to ``EXACT_KNN_MAX`` heads,
above that within a balanced partition of the heads (each partition compares against its
``probe`` nearest partitions); then DiskANN/HNSW-style RNG pruning with slack ``alpha``,
reverse edges, and a second pruning pass. Entry points: the heads nearest to the centres of
a small balanced k-means over the heads, tried before the graph walk.
"""

from __future__ import annotations

from typing import Callable

import numba
import numpy as np

from spann.clustering import balanced_kmeans, sq_dists
from spann.distances import sq_l2
from spann.prefetch import prefetch_element

__all__ = ["EXACT_KNN_MAX", "build_graph", "beam_search", "head_distance", "knn_candidates"]

#: up to this many heads the candidate kNN is exact (O(H^2 d) BLAS work); above, partitioned.
EXACT_KNN_MAX = 30_000


@numba.njit(cache=True, fastmath=True, nogil=True, inline="always")
def head_distance(q, q_ext, heads, ext, h):
    """||q - heads[h]||^2 + (q_ext - ext[h])^2"""
    e = q_ext - ext[h]
    return sq_l2(q, heads[h]) + e * e


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_push(hd, hi, n, d, i, sign):
    """Push (d, i) onto the binary heap hd/hi of size n (min-heap if sign = 1, max-heap if -1)."""
    j = n
    while j > 0:
        p = (j - 1) >> 1
        if sign * hd[p] <= sign * d:
            break
        hd[j] = hd[p]
        hi[j] = hi[p]
        j = p
    hd[j] = d
    hi[j] = i


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_pop(hd, hi, n, sign):
    """Remove the top of the heap of size n (the new size is n - 1)."""
    n -= 1
    d = hd[n]
    i = hi[n]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= n:
            break
        if c + 1 < n and sign * hd[c + 1] < sign * hd[c]:
            c += 1
        if sign * hd[c] >= sign * d:
            break
        hd[j] = hd[c]
        hi[j] = hi[c]
        j = c
    hd[j] = d
    hi[j] = i


@numba.njit(cache=True, nogil=True, inline="always")
def _offer(d, node, cd, ci, nc, rd, ri, nr, ef):
    """A newly evaluated head: if it beats the worst of the ``ef`` best (or there is room), it
    joins the results (max-heap rd/ri) and the candidates to expand (min-heap cd/ci).
    Returns the new heap sizes (nc, nr)."""
    if nr < ef or d < rd[0]:
        if nc < cd.shape[0]:
            _heap_push(cd, ci, nc, d, node, 1.0)
            nc += 1
        _heap_push(rd, ri, nr, d, node, -1.0)
        nr += 1
        if nr > ef:
            _heap_pop(rd, ri, nr, -1.0)
            nr -= 1
    return nc, nr


@numba.njit(cache=True, fastmath=True, nogil=True)
def beam_search(q, q_ext, heads, ext, neighbors, entries, ef, visited, tag, out_i, out_d):
    """Best-first beam search of the head graph for query ``q`` (float32 (d,)).

    A min-heap of candidates to expand and a max-heap of the ``ef`` best heads found (HNSW's
    search layer); the walk stops when the nearest unexpanded candidate is worse than the worst
    of the ``ef`` best. ``visited`` (uint32 (H,)) marks nodes seen in this query with ``tag``
    (callers bump it per query). Writes the ``len(out_i)`` nearest heads found into ``out_i``
    (int32) / ``out_d`` (float32), ascending, -1 / inf padded; returns the number of distance
    evaluations.
    """
    deg = neighbors.shape[1]
    line2 = min(heads.shape[1] - 1, 128 // heads.itemsize)  # a row spans several cache lines
    cap = ef * deg + entries.shape[0] + 1
    cd = np.empty(cap, np.float32)
    ci = np.empty(cap, np.int32)
    rd = np.empty(ef + 1, np.float32)
    ri = np.empty(ef + 1, np.int32)
    nc = 0
    nr = 0
    n_eval = 0
    for e in entries:
        if visited[e] == tag:
            continue
        visited[e] = tag
        n_eval += 1
        nc, nr = _offer(head_distance(q, q_ext, heads, ext, e), e, cd, ci, nc, rd, ri, nr, ef)
    while nc > 0:
        d0 = cd[0]
        node = ci[0]
        _heap_pop(cd, ci, nc, 1.0)
        nc -= 1
        if nr >= ef and d0 > rd[0]:
            break
        for t in range(deg):  # issue every unvisited neighbour's loads first: misses overlap
            nb = neighbors[node, t]
            if nb < 0:
                break
            if visited[nb] != tag:
                prefetch_element(heads, nb, 0)
                prefetch_element(heads, nb, line2)
        for t in range(deg):
            nb = neighbors[node, t]
            if nb < 0:
                break
            if visited[nb] == tag:
                continue
            visited[nb] = tag
            n_eval += 1
            nc, nr = _offer(head_distance(q, q_ext, heads, ext, nb), nb, cd, ci, nc, rd, ri, nr, ef)
    o = np.argsort(rd[:nr])
    m = out_i.shape[0]
    for j in range(m):
        if j < nr:
            out_i[j] = ri[o[j]]
            out_d[j] = rd[o[j]]
        else:
            out_i[j] = -1
            out_d[j] = np.inf
    return n_eval


@numba.njit(cache=True, fastmath=True, nogil=True, parallel=True)
def _rng_prune(x, cand_i, cand_d, degree, alpha2):
    """Per node: keep candidate c (nearest first) unless a kept r has alpha^2 * d(r, c) <= d(p, c)."""
    n = cand_i.shape[0]
    out = np.full((n, degree), -1, np.int32)
    for p in numba.prange(n):
        kept = 0
        for t in range(cand_i.shape[1]):
            c = cand_i[p, t]
            if c < 0 or c == p:
                continue
            dpc = cand_d[p, t]
            ok = True
            for s in range(kept):
                r = out[p, s]
                if r == c or alpha2 * sq_l2(x[r], x[c]) <= dpc:
                    ok = False
                    break
            if ok:
                out[p, kept] = c
                kept += 1
                if kept == degree:
                    break
    return out


@numba.njit(cache=True, fastmath=True, nogil=True, parallel=True)
def _merge_reverse(x, fwd, rev_ptr, rev_src, width):
    """Candidates per node = forward edges + reverse edges, sorted by distance, deduplicated."""
    n, deg = fwd.shape
    ci = np.full((n, width), -1, np.int32)
    cd = np.full((n, width), np.inf, np.float32)
    for p in numba.prange(n):
        tmp_i = np.empty(width, np.int32)
        tmp_d = np.empty(width, np.float32)
        m = 0
        for t in range(deg):
            c = fwd[p, t]
            if c < 0:
                break
            tmp_i[m] = c
            tmp_d[m] = sq_l2(x[p], x[c])
            m += 1
        for t in range(rev_ptr[p], rev_ptr[p + 1]):
            if m >= width:
                break
            c = rev_src[t]
            dup = False
            for s in range(m):
                if tmp_i[s] == c:
                    dup = True
                    break
            if not dup:
                tmp_i[m] = c
                tmp_d[m] = sq_l2(x[p], x[c])
                m += 1
        o = np.argsort(tmp_d[:m])
        for s in range(m):
            ci[p, s] = tmp_i[o[s]]
            cd[p, s] = tmp_d[o[s]]
    return ci, cd


def _topk_rows(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, dist.shape[1])
    part = np.argpartition(dist, k - 1, axis=1)[:, :k]
    d = np.take_along_axis(dist, part, 1)
    o = np.argsort(d, axis=1)
    return ids[np.take_along_axis(part, o, 1)].astype(np.int32), np.take_along_axis(d, o, 1)


def knn_candidates(x: np.ndarray, k: int, *, seed: int = 0, probe: int = 12,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate (exact below EXACT_KNN_MAX rows) k nearest rows of each row of float32 x (n, d),
    self included. Returns ``(ids int32 (n, k'), squared dists float32 (n, k'))``, k' = min(k, n)."""
    n = x.shape[0]
    k = min(k, n)
    xn = np.einsum("ij,ij->i", x, x)
    out_i = np.empty((n, k), np.int32)
    out_d = np.empty((n, k), np.float32)
    if n <= EXACT_KNN_MAX:
        all_ids = np.arange(n)
        rows = max(16, (1 << 23) // n)  # ~32 MB of distances (+ 64 MB argpartition) per block
        for s in range(0, n, rows):
            e = min(n, s + rows)
            out_i[s:e], out_d[s:e] = _topk_rows(sq_dists(x[s:e], x, xn), all_ids, k)
            if progress:
                progress(e - s)
        return out_i, out_d
    rng = np.random.default_rng(seed)
    parts = int(np.clip(np.sqrt(n) / 2, 16, 4096))
    labels, centers = balanced_kmeans(x, parts, iters=8, slack=0.1, rng=rng, train_points=64)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=parts))])
    near = np.argsort(sq_dists(centers, centers), axis=1)[:, :probe]
    for g in range(parts):
        mine = order[bounds[g]:bounds[g + 1]]
        if mine.size == 0:
            continue
        cand = np.concatenate([order[bounds[h]:bounds[h + 1]] for h in near[g]])
        out_i[mine], out_d[mine] = _topk_rows(sq_dists(x[mine], x[cand], xn[cand]), cand, k)
        if progress:
            progress(int(mine.size))
    return out_i, out_d


def build_graph(x: np.ndarray, *, degree: int = 32, candidates: int = 64, alpha: float = 1.2,
                n_entries: int = 48, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Graph over head-space vectors ``x`` (float32 (H, d'), the ext coordinate appended).

    Returns ``(neighbors int32 (H, degree), -1 padded; entries int32 (E,))``.
    """
    n = x.shape[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if n == 1:
        return np.full((1, degree), -1, np.int32), np.zeros(1, np.int32)
    cand_i, cand_d = knn_candidates(x, candidates + 1, seed=seed, progress=progress)
    a2 = np.float32(alpha * alpha)
    fwd = _rng_prune(x, cand_i, cand_d, degree, a2)
    # reverse edges (CSR by destination), then prune the union once more
    src = np.repeat(np.arange(n, dtype=np.int32), degree)
    dst = fwd.ravel()
    keep = dst >= 0
    src, dst = src[keep], dst[keep]
    o = np.argsort(dst, kind="stable")
    rev_src = src[o]
    rev_ptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))]).astype(np.int64)
    ci, cd = _merge_reverse(x, fwd, rev_ptr, rev_src, 2 * degree)
    neighbors = _rng_prune(x, ci, cd, degree, a2)
    rng = np.random.default_rng(seed + 1)
    e = min(n_entries, n)
    labels, centers = balanced_kmeans(x, e, iters=8, slack=0.5, rng=rng, train_points=128)
    from spann.clustering import _nearest_member
    entries = _nearest_member(x, labels, centers)
    entries = np.unique(entries[entries >= 0]).astype(np.int32)
    return neighbors, entries
