"""In-memory index over the heads: an RNG-pruned neighbour graph searched by beam search.

Head space: squared L2 between float32 rows of ``heads`` (H, Dh); for inner product the rows
carry one extra coordinate (the MIPS-to-L2 transform, see :mod:`spann.metrics`) and queries a 0
there, so every kernel here is plain squared L2.

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
from spann.distances import FASTMATH as _FM
from spann.distances import sq_l2
from spann.prefetch import prefetch_element

__all__ = ["EXACT_KNN_MAX", "build_graph", "beam_search", "knn_candidates"]

#: up to this many heads the candidate kNN is exact (O(H^2 d) BLAS work); above, partitioned.
EXACT_KNN_MAX = 30_000


@numba.njit(cache=True, nogil=True, inline="always")
def _pool_insert(pd, pi, done, size, cap, d, node):
    """Insert (d, node) into the ascending pool pd/pi (unexpanded) if it is among the ``cap``
    best; returns (new size, insert position or cap if rejected)."""
    if size == cap and d >= pd[size - 1]:
        return size, cap
    j = size if size < cap else cap - 1
    while j > 0 and pd[j - 1] > d:
        pd[j] = pd[j - 1]
        pi[j] = pi[j - 1]
        done[j] = done[j - 1]
        j -= 1
    pd[j] = d
    pi[j] = node
    done[j] = False
    if size < cap:
        size += 1
    return size, j


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def beam_search(q, heads, neighbors, entries, ef, visited, tag, out_i, out_d):
    """Greedy best-first search of the head graph for query ``q`` (float32 (Dh,)).

    The pool holds the ``ef`` nearest heads seen so far, sorted, each marked once expanded
    (DiskANN's search list): expand the nearest unexpanded head, offer its neighbours, stop
    when every head in the pool is expanded. ``visited`` (uint32 (H,)) marks heads seen in this
    query with ``tag`` (callers change it per query). Writes the ``len(out_i)`` nearest heads
    into ``out_i`` (int32) / ``out_d`` (float32), ascending, -1 / inf padded; returns the
    number of distance evaluations.
    """
    deg = neighbors.shape[1]
    line2 = min(heads.shape[1] - 1, 128 // heads.itemsize)  # a row spans several cache lines
    pd = np.empty(ef, np.float32)
    pi = np.empty(ef, np.int32)
    done = np.zeros(ef, np.bool_)
    size = 0
    n_eval = 0
    for e in entries:
        if visited[e] == tag:
            continue
        visited[e] = tag
        n_eval += 1
        size, _ = _pool_insert(pd, pi, done, size, ef, sq_l2(q, heads[e]), e)
    cur = 0
    while cur < size:
        node = pi[cur]
        done[cur] = True
        for t in range(deg):  # issue every unvisited neighbour's loads first: misses overlap
            nb = neighbors[node, t]
            if nb < 0:
                break
            if visited[nb] != tag:
                prefetch_element(heads, nb, 0)
                prefetch_element(heads, nb, line2)
        nxt = cur + 1
        for t in range(deg):
            nb = neighbors[node, t]
            if nb < 0:
                break
            if visited[nb] == tag:
                continue
            visited[nb] = tag
            n_eval += 1
            size, j = _pool_insert(pd, pi, done, size, ef, sq_l2(q, heads[nb]), nb)
            if j < nxt:
                nxt = j
        while nxt < size and done[nxt]:
            nxt += 1
        cur = nxt
    m = out_i.shape[0]
    for j in range(m):
        if j < size:
            out_i[j] = pi[j]
            out_d[j] = pd[j]
        else:
            out_i[j] = -1
            out_d[j] = np.inf
    return n_eval


@numba.njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
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


@numba.njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
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
    """Graph over head-space rows ``x`` (float32 (H, Dh)).

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
