"""In-memory index over the heads: an RNG-pruned neighbour graph searched by beam search.

Head space: squared L2 between rows of ``heads`` (H, Dh), float32 or the data's 8-bit dtype
(:mod:`spann.heads.compact`); for inner product the rows
carry one extra coordinate (the MIPS-to-L2 transform, see :mod:`spann.kernels.metrics`) and queries a 0
there, so every kernel here is plain squared L2.

Build: candidate neighbours by exact blocked kNN (BLAS) for up to ``EXACT_KNN_MAX`` heads,
above that within a balanced partition of the heads (each partition compares against its
``probe`` nearest partitions); then DiskANN/HNSW-style RNG pruning with slack ``alpha``,
reverse edges, and a second pruning pass; then one pass of Vamana (DiskANN's graph build):
each head searches the graph for itself and robust-prunes the heads its walk expanded. A kNN
graph alone has only local edges, and on clustered data a greedy walk from a few entry points
then stops in the wrong cluster (measured on a 10^6-point mixture, 50k heads: the nearest head
found for 48 % of the points before the pass, 88 % after). A final repair links every head the
entries cannot reach (NSG's). Entry points: heads spread evenly through the head order, one per
128 heads, all compared before the walk.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

from spann.heads.clustering import balanced_kmeans, sq_dists
from spann.kernels.distances import FASTMATH as _FM
from spann.kernels.distances import sq_l2
from spann.kernels.exact import exact_knn
from spann.kernels.prefetch import prefetch_element
from spann.kernels.topk import topk_insert

__all__ = ["EXACT_KNN_MAX", "SEEDS", "nearest_entries", "WALK_CODES_MIN_DIM", "WalkCodes", "walk_codes",
           "no_walk_codes", "build_graph", "default_entry_count", "spread_entries", "EntrySeeds", "refine_graph",
           "beam_search", "head_distance", "rescore_pool", "write_pool", "knn_candidates", "head_search_recall",
           "EntryTree", "entry_seeds", "ENTRY_TREE_MIN", "EntryGroups", "no_entry_groups", "seed_entries",
           "ENTRY_SEARCH_PROBE", "Adjacency", "adjacency", "neighbor_row"]

#: up to this many heads the candidate kNN is exact (O(H^2 d) BLAS work); above, partitioned.
EXACT_KNN_MAX = 30_000

#: from this head-space width on, searches walk the graph on one byte per coordinate (GloVe-50,
#: 19,500 heads, warm: 8 % less time per query at the same recall; narrower rows fit a cache line)
WALK_CODES_MIN_DIM = 32


class WalkCodes(NamedTuple):
    """The heads at one byte per coordinate, for the graph walk of a search (numba-passable).

    ``u8`` uint8 (H, Dh): ``heads ~ lo + step * u8``, per coordinate over the heads' range;
    ``lo``, ``step`` float32 (Dh,). Empty (``u8`` of shape (0, Dh)) when the walk reads the
    heads themselves (narrow float32 heads, or 8-bit heads, which are exact). A walk on codes
    moves a quarter of the bytes (at 768 dimensions a query's
    walk touches ~1,500 heads: 4.5 MB of float32 rows, which no cache holds); its pool is
    then re-scored on the float32 heads, so the heads it returns carry exact distances.
    """
    u8: np.ndarray
    lo: np.ndarray
    step: np.ndarray


def no_walk_codes(dim: int) -> WalkCodes:
    """An empty :class:`WalkCodes`: walks read the float32 heads."""
    return WalkCodes(np.zeros((0, dim), np.uint8), np.zeros(dim, np.float32), np.ones(dim, np.float32))


def walk_codes(heads: np.ndarray, min_dim: int = WALK_CODES_MIN_DIM) -> WalkCodes:
    """Byte codes of ``heads`` (float32 (H, Dh)) when Dh >= ``min_dim``, else empty; empty for
    8-bit heads too (:mod:`spann.heads.compact`): the walk reads them as they are, exactly."""
    H, dim = heads.shape
    if dim < min_dim or H == 0 or heads.dtype.itemsize == 1:
        return no_walk_codes(dim)
    lo = heads.min(axis=0).astype(np.float32)
    step = np.maximum((heads.max(axis=0) - lo) / np.float32(255.0), np.float32(1e-30)).astype(np.float32)
    u8 = np.empty((H, dim), np.uint8)
    for s in range(0, H, 65536):  # blocks: no float copy of every head at once
        u8[s:s + 65536] = np.clip(np.rint((heads[s:s + 65536] - lo) / step), 0, 255)
    return WalkCodes(u8, lo, step)


class Adjacency(NamedTuple):
    """The head graph without its padding, as an open index holds it (numba-passable): head h's
    neighbours are ``ids[ptr[h]:ptr[h + 1]]``; ``ptr`` (H + 1,) int32 (int64 from 2^31 padded
    slots on: ~67M heads of degree 32), ``ids`` int32 (edges,).
    The graph is stored padded (int32 (H, R), -1 after a head's last neighbour); RNG pruning
    leaves most heads short of R (a mean degree of 21 of 32 on 50k heads of a 10^6 SIFT-like
    set), so this holds about two thirds of the padded bytes."""
    ptr: np.ndarray
    ids: np.ndarray

    def padded(self, width: int) -> np.ndarray:
        """The padded form, int32 (H, ``width``), -1 after each head's neighbours (a new array)."""
        H = self.ptr.shape[0] - 1
        deg = np.diff(self.ptr)
        out = np.full((H, width), -1, np.int32)
        out[np.repeat(np.arange(H), deg), np.arange(self.ids.shape[0]) - np.repeat(self.ptr[:-1], deg)] = self.ids
        return out


def adjacency(neighbors: np.ndarray) -> Adjacency:
    """:class:`Adjacency` of a padded graph (int32 (H, R), each row's neighbours first, then -1)."""
    deg = (neighbors >= 0).sum(axis=1)
    ptr = np.zeros(neighbors.shape[0] + 1, np.int32 if neighbors.size < 2**31 else np.int64)
    np.cumsum(deg, out=ptr[1:])
    return Adjacency(ptr, np.ascontiguousarray(neighbors[neighbors >= 0], dtype=np.int32))


def neighbor_row(graph, node):
    """Head ``node``'s neighbours in ``graph`` (int32 (H, R) padded with -1, or an
    :class:`Adjacency`): a 1-D int32 view (a padded row may end in -1s). Numba kernels only,
    chosen by ``graph``'s type."""
    raise TypeError("neighbor_row runs inside numba kernels only")


@overload(neighbor_row, jit_options={"nogil": True}, inline="always")
def _neighbor_row(graph, node):
    if isinstance(graph, types.Array):
        return lambda graph, node: graph[node]
    return lambda graph, node: graph.ids[graph.ptr[node]:graph.ptr[node + 1]]


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


@numba.njit(cache=True, fastmath=_FM, nogil=True, inline="always")
def head_distance(q, heads, codes, qq, step, node):
    """Squared L2 from ``q`` to head ``node``: exact, or on its byte code (``qq = q - lo``)."""
    if codes.shape[0] == 0:
        return sq_l2(q, heads[node])
    c = codes[node]
    s = np.float32(0.0)
    for i in range(qq.shape[0]):
        t = qq[i] - step[i] * np.float32(c[i])
        s += t * t
    return s


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_head(heads, codes, coded, node):
    """Software-prefetch every cache line of head ``node``'s row (its codes when ``coded``)."""
    if coded:
        for b in range(0, codes.shape[1], 64):
            prefetch_element(codes, node, b)
        prefetch_element(codes, node, codes.shape[1] - 1)
    else:
        for c in range(0, heads.shape[1], 64 // heads.itemsize):
            prefetch_element(heads, node, c)
        prefetch_element(heads, node, heads.shape[1] - 1)  # a row need not start on a line


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def _beam(q, heads, neighbors, entries, visited, tag, pd, pi, done, trail_i, trail_d, wc):
    """The walk of :func:`beam_search` into the pool ``pd``/``pi``/``done`` (its length is the
    beam width ef); every
    expanded head is also appended to ``trail_i``/``trail_d`` while they have room (the graph
    build's candidates; pass empty arrays to skip). ``wc``: :class:`WalkCodes` (empty: exact
    distances; else the pool holds code distances). Returns (pool size, distance evaluations,
    trail length)."""
    ef = pd.shape[0]
    codes = wc.u8
    coded = codes.shape[0] > 0
    qq = np.empty(q.shape[0] if coded else 0, np.float32)
    for i in range(qq.shape[0]):
        qq[i] = q[i] - wc.lo[i]
    size = 0
    n_eval = 0
    n_trail = 0
    for e in entries:  # all their loads first: the misses overlap
        if visited[e] != tag:
            _prefetch_head(heads, codes, coded, e)
    for e in entries:
        if visited[e] == tag:
            continue
        visited[e] = tag
        n_eval += 1
        size, _ = _pool_insert(pd, pi, done, size, ef, head_distance(q, heads, codes, qq, wc.step, e), e)
    cur = 0
    while cur < size:
        node = pi[cur]
        done[cur] = True
        if n_trail < trail_i.shape[0]:
            trail_i[n_trail] = node
            trail_d[n_trail] = pd[cur]
            n_trail += 1
        row = neighbor_row(neighbors, node)
        for t in range(row.shape[0]):  # issue every unvisited neighbour's loads first: misses overlap
            nb = row[t]
            if nb < 0:
                break
            if visited[nb] != tag:
                _prefetch_head(heads, codes, coded, nb)
        nxt = cur + 1
        for t in range(row.shape[0]):
            nb = row[t]
            if nb < 0:
                break
            if visited[nb] == tag:
                continue
            visited[nb] = tag
            n_eval += 1
            size, j = _pool_insert(pd, pi, done, size, ef, head_distance(q, heads, codes, qq, wc.step, nb), nb)
            if j < nxt:
                nxt = j
        while nxt < size and done[nxt]:
            nxt += 1
        cur = nxt
    return size, n_eval, n_trail


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def beam_search(q, heads, neighbors, entries, ef, visited, tag, out_i, out_d, wc):
    """Greedy best-first search of the head graph for query ``q`` (float32 (Dh,)).

    The pool holds the ``ef`` nearest heads seen so far, sorted, each marked once expanded
    (DiskANN's search list): expand the nearest unexpanded head, offer its neighbours, stop
    when every head in the pool is expanded. ``neighbors``: the graph, padded int32 (H, R) or
    an :class:`Adjacency`. ``visited`` (uint32 (H,)) marks heads seen in this
    query with ``tag`` (callers change it per query). ``wc``: :class:`WalkCodes` (empty: the
    walk reads ``heads``, float32 or 8-bit; else it walks on the codes and re-scores its pool
    exactly).
    Writes the ``len(out_i)`` nearest heads into ``out_i`` (int32) / ``out_d`` (float32, exact),
    ascending, -1 / inf padded; returns the number of distance evaluations.
    """
    pd = np.empty(ef, np.float32)
    pi = np.empty(ef, np.int32)
    done = np.zeros(ef, np.bool_)
    size, n_eval, _ = _beam(q, heads, neighbors, entries, visited, tag, pd, pi, done,
                            np.empty(0, np.int32), np.empty(0, np.float32), wc)
    if wc.u8.shape[0] > 0:  # exact distances for the pool, re-sorted
        rescore_pool(q, heads, pd, pi, size)
        n_eval += size
    write_pool(pd, pi, size, out_i, out_d)
    return n_eval


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def rescore_pool(q, heads, pd, pi, size):
    """Exact squared distances from ``q`` to the heads ``pi[:size]`` into ``pd``, both re-sorted
    ascending (stable): a pool found on byte codes, re-scored on the float32 heads."""
    for j in range(size):
        prefetch_element(heads, pi[j], 0)
    for j in range(size):
        pd[j] = sq_l2(q, heads[pi[j]])
    o = np.argsort(pd[:size], kind="mergesort")
    pd[:size] = pd[:size][o]
    pi[:size] = pi[:size][o]


@numba.njit(cache=True, nogil=True, inline="always")
def write_pool(pd, pi, size, out_i, out_d):
    """The first ``len(out_i)`` of the ascending pool ``pd``/``pi`` (``size`` filled) into
    ``out_i`` (int32) / ``out_d``, -1 / inf padded."""
    for j in range(out_i.shape[0]):
        if j < size:
            out_i[j] = pi[j]
            out_d[j] = pd[j]
        else:
            out_i[j] = -1
            out_d[j] = np.inf


@numba.njit(cache=True, nogil=True, inline="always")
def _contains(a, m, v):
    """Whether ``v`` is among ``a[:m]``."""
    for u in range(m):
        if a[u] == v:
            return True
    return False


@numba.njit(cache=True, fastmath=_FM, nogil=True, inline="always")
def _prune_into(x, p, ci, cd, m, alpha2, out):
    """Robust (RNG) pruning of node p's candidates ``ci``/``cd`` [:m] (ascending squared
    distances, duplicates allowed) into ``out`` (-1 padded): keep candidate c unless a kept r
    has ``alpha2 * d(r, c) <= d(p, c)``. Returns the number kept."""
    degree = out.shape[0]
    kept = 0
    for t in range(m):
        c = ci[t]
        if c < 0 or c == p:
            continue
        dpc = cd[t]
        ok = True
        for s in range(kept):
            r = out[s]
            if r == c or alpha2 * sq_l2(x[r], x[c]) <= dpc:
                ok = False
                break
        if ok:
            out[kept] = c
            kept += 1
            if kept == degree:
                break
    for s in range(kept, degree):
        out[s] = -1
    return kept


@numba.njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def _rng_prune(x, cand_i, cand_d, degree, alpha2):
    """Per node: :func:`_prune_into` of its sorted candidate row."""
    n = cand_i.shape[0]
    out = np.full((n, degree), -1, np.int32)
    for p in numba.prange(n):
        _prune_into(x, p, cand_i[p], cand_d[p], cand_i.shape[1], alpha2, out[p])
    return out


@numba.njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def _refine_batch(x, nbrs, seeds, nodes, ef, alpha2, n_chunks):
    """Vamana's pass for a batch of ``nodes`` (int64 (b,)) against the graph as it stands:
    search the graph for each node's own vector (from its ``seeds`` row), take every head the walk expanded plus the
    node's current neighbours as candidates, and robust-prune them. The walk's early, far
    heads are what make the graph navigable (long edges) where a kNN graph has only local
    ones. Returns the new rows int32 (b, R)."""
    b = nodes.shape[0]
    deg = nbrs.shape[1]
    out = np.full((b, deg), -1, np.int32)
    step = (b + n_chunks - 1) // n_chunks
    cap = 4 * ef
    exact = WalkCodes(np.zeros((0, x.shape[1]), np.uint8), np.zeros(x.shape[1], np.float32),
                      np.ones(x.shape[1], np.float32))
    for ch in numba.prange(n_chunks):
        visited = np.zeros(x.shape[0], np.uint32)
        pd = np.empty(ef, np.float32)
        pi = np.empty(ef, np.int32)
        done = np.zeros(ef, np.bool_)
        ti = np.empty(cap + ef + deg, np.int32)
        td = np.empty(cap + ef + deg, np.float32)
        tag = np.uint32(0)
        for j in range(ch * step, min(b, (ch + 1) * step)):
            p = nodes[j]
            tag += np.uint32(1)
            visited[p] = tag
            size, _, m = _beam(x[p], x, nbrs, seeds[j], visited, tag, pd, pi, done, ti[:cap], td[:cap], exact)
            for t in range(size):  # the final pool (the trail may have filled before the walk ended)
                ti[m] = pi[t]
                td[m] = pd[t]
                m += 1
            for t in range(deg):
                c = nbrs[p, t]
                if c < 0:
                    break
                ti[m] = c
                td[m] = sq_l2(x[p], x[c])
                m += 1
            o = np.argsort(td[:m])
            ci = ti[:m][o]
            cd = td[:m][o]
            _prune_into(x, p, ci, cd, m, alpha2, out[j])
    return out


@numba.njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def _add_reverse(x, nbrs, targets, ptr, srcs, alpha2):
    """Give each ``targets[g]`` the back edges ``srcs[ptr[g]:ptr[g+1]]``: appended while its
    row has room, else its row and the newcomers are robust-pruned together."""
    deg = nbrs.shape[1]
    for g in numba.prange(targets.shape[0]):
        c = targets[g]
        row = nbrs[c]
        m = 0
        while m < deg and row[m] >= 0:
            m += 1
        extra = ptr[g + 1] - ptr[g]
        ci = np.empty(m + extra, np.int32)
        cd = np.empty(m + extra, np.float32)
        for t in range(m):
            ci[t] = row[t]
        k = m
        for t in range(ptr[g], ptr[g + 1]):
            s = srcs[t]
            if s != c and not _contains(ci, k, s):
                ci[k] = s
                k += 1
        if k <= deg:
            for t in range(m, k):
                row[t] = ci[t]
            continue
        for t in range(k):
            cd[t] = sq_l2(x[c], x[ci[t]])
        o = np.argsort(cd[:k])
        _prune_into(x, c, ci[:k][o], cd[:k][o], k, alpha2, row)


@numba.njit(cache=True, nogil=True)
def _mark_reachable(nbrs, start, seen, queue):
    """Breadth-first from the nodes ``start``: sets ``seen`` for every node they reach."""
    head = 0
    tail = 0
    for s in start:
        if not seen[s]:
            seen[s] = True
            queue[tail] = s
            tail += 1
    while head < tail:
        u = queue[head]
        head += 1
        for t in range(nbrs.shape[1]):
            v = nbrs[u, t]
            if v < 0:
                break
            if not seen[v]:
                seen[v] = True
                queue[tail] = v
                tail += 1


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def _connect(x, nbrs, entries, starts, ef):
    """NSG's repair: every head the entries cannot reach is linked from the reachable head a
    search for it ends at (the nearest one of the walk's pool with a free slot, else the
    nearest, whose last edge that is not itself a repair link it replaces), and its island
    then counts as reached. ``starts`` int64: the entries. Returns the number of links added."""
    n, deg = nbrs.shape
    seen = np.zeros(n, np.bool_)
    queue = np.empty(n, np.int64)
    _mark_reachable(nbrs, starts, seen, queue)
    visited = np.zeros(n, np.uint32)
    exact = WalkCodes(np.zeros((0, x.shape[1]), np.uint8), np.zeros(x.shape[1], np.float32),
                      np.ones(x.shape[1], np.float32))
    pd = np.empty(ef, np.float32)
    pi = np.empty(ef, np.int32)
    done = np.zeros(ef, np.bool_)
    none_i = np.empty(0, np.int32)
    none_d = np.empty(0, np.float32)
    one = np.empty(1, np.int64)
    repaired = np.zeros(n, np.bool_)  # heads whose in-link a repair added: never overwritten
    tag = np.uint32(0)
    added = 0
    for u in range(n):
        if seen[u]:
            continue
        tag += np.uint32(1)
        size, _, _ = _beam(x[u], x, nbrs, entries, visited, tag, pd, pi, done, none_i, none_d, exact)
        host = -1
        slot = deg - 1
        for j in range(size):
            c = pi[j]
            if seen[c] and nbrs[c, deg - 1] < 0:
                host = c
                slot = 0
                while nbrs[c, slot] >= 0:
                    slot += 1
                break
        if host < 0:
            for j in range(size):
                if seen[pi[j]]:
                    host = pi[j]
                    break
            if host < 0:
                host = starts[0]
            while slot > 0 and repaired[nbrs[host, slot]]:
                slot -= 1
        nbrs[host, slot] = u
        repaired[u] = True
        added += 1
        one[0] = u
        _mark_reachable(nbrs, one, seen, queue)
    return added


def refine_graph(x: np.ndarray, nbrs: np.ndarray, entries: np.ndarray, *, ef: int, alpha: float, seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """One Vamana pass over every node of the graph ``nbrs`` (int32 (H, R), updated in place
    and returned), in random order and in batches of 1/64 of the heads, 256..16384 (each batch
    searches the graph as the previous batches left it)."""
    n = x.shape[0]
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    batch = int(np.clip(n // 64, 256, 16384))
    a2 = np.float32(alpha * alpha)
    chunks = max(1, numba.get_num_threads() * 4)
    seeds = EntrySeeds(x, entries)
    for s in range(0, n, batch):
        nodes = order[s:s + batch]
        new = _refine_batch(x, nbrs, seeds.for_rows(x[nodes]), nodes, ef, a2, chunks)
        nbrs[nodes] = new
        src = np.repeat(nodes.astype(np.int32), new.shape[1])
        dst = new.ravel()
        keep = dst >= 0
        src, dst = src[keep], dst[keep]
        o = np.argsort(dst, kind="stable")
        targets, starts = np.unique(dst[o], return_index=True)
        ptr = np.append(starts, dst.size).astype(np.int64)
        _add_reverse(x, nbrs, targets.astype(np.int64), ptr, src[o], a2)
        if progress:
            progress(int(nodes.size))
    return nbrs


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
            if not _contains(tmp_i, m, c):
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


def default_entry_count(n_heads: int) -> int:
    """Entry heads for a graph of ``n_heads``: one per 128 heads, 48..4096. A walk has to start
    in the query's cluster: on data with many well-separated clusters no graph routes between
    them reliably (measured at 500k heads over a 1,581-cluster mixture: with 707 entries 24 %
    of walks end in another cluster, after two Vamana passes as after one)."""
    return int(np.clip(n_heads // 128, 48, 4096))


def spread_entries(n_heads: int, n_entries: int) -> np.ndarray:
    """``n_entries`` heads evenly spaced through the head order, int32 (E,). Heads come in the
    depth-first leaf order of the balanced k-means tree, so this is one head per subtree of
    ~H/E heads: every region of the data holds entries in proportion to its heads."""
    e = max(1, min(n_heads, n_entries))
    step = n_heads / e
    return np.unique((np.arange(e) * step + step / 2).astype(np.int64)).astype(np.int32)


#: a walk starts from the SEEDS entries nearest the query (all of them when there are no more).
#: Measured on GloVe-50 (19,500 heads, 152 entries, pool 40): seeding with the nearest 16 instead
#: of all 152 cut the evaluations of a walk from 647 to 511 at the same head recall (0.986 of the
#: 32 nearest heads); the entry rows are compared from a contiguous copy, which costs little
#: beside that many random head rows when the CPU caches are cold (interleaved queries)
SEEDS = 16
ALL_ENTRIES_MAX = SEEDS


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def nearest_entries(x, rows, entries, m):
    """The ``m`` entries (int32 (m,)) whose ``rows`` (float32 (E, Dh)) are nearest to the one
    row ``x`` (float32 (Dh,)); all E if E <= m."""
    m = min(m, rows.shape[0])
    bd = np.full(m, np.inf, np.float32)
    out = np.full(m, -1, np.int32)
    for e in range(rows.shape[0]):  # the m best by insertion: no sort of all E distances
        topk_insert(bd, out, sq_l2(x, rows[e]), entries[e])
    return out


class EntryGroups(NamedTuple):
    """How a kernel seeds a single query's walk (numba-passable): the entry heads' rows
    ``rows`` (E, Dh, the heads' dtype) and ids ``entries`` int32 (E,) in group order, group g at
    ``starts[g]:starts[g + 1]`` (int64 (G + 1,)) with centre ``centers[g]`` (float32 (G, Dh));
    the query's SEEDS nearest entries are sought among the ``probe`` groups whose centres are
    nearest it (all G: every entry). ``rows`` empty: every entry is a seed."""
    centers: np.ndarray
    starts: np.ndarray
    rows: np.ndarray
    entries: np.ndarray
    probe: int


def no_entry_groups(dim: int, dtype=np.float32) -> EntryGroups:
    """Empty :class:`EntryGroups` (rows of ``dtype``, the heads' dtype: one compiled kernel for
    indexes with and without groups): a kernel starts from every entry it is given."""
    return EntryGroups(np.zeros((0, dim), np.float32), np.zeros(1, np.int64), np.zeros((0, dim), dtype),
                       np.zeros(0, np.int32), 0)


@numba.njit(cache=True, fastmath=_FM, nogil=True, inline="always")
def _nearest_in_groups(x, rows, entries, starts, groups, bd, bi):
    """The entries of ``groups`` (rows and entries in group order, group g at
    ``starts[g]:starts[g + 1]``) nearest ``x``, kept by insertion in ``bd``/``bi``."""
    for g in groups:
        for e in range(starts[g], starts[g + 1]):
            topk_insert(bd, bi, sq_l2(x, rows[e]), entries[e])


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def seed_entries(x, eg, all_entries, m):
    """The entries a walk for head-space row ``x`` (float32 (Dh,)) starts from: int32, the
    ``m`` entries of :class:`EntryGroups` ``eg`` nearest ``x`` among its ``probe`` nearest
    groups, nearest first (all of ``all_entries`` when ``eg`` has no rows)."""
    if eg.rows.shape[0] == 0:
        return all_entries
    G = eg.centers.shape[0]
    if eg.probe >= G:
        return nearest_entries(x, eg.rows, eg.entries, m)
    gd = np.full(eg.probe, np.inf, np.float32)
    gi = np.full(eg.probe, -1, np.int32)
    for g in range(G):
        topk_insert(gd, gi, sq_l2(x, eg.centers[g]), g)
    bd = np.full(m, np.inf, np.float32)
    out = np.full(m, -1, np.int32)
    _nearest_in_groups(x, eg.rows, eg.entries, eg.starts, gi, bd, out)
    n = 0
    while n < m and out[n] >= 0:
        n += 1
    return out[:n].copy()


class EntrySeeds:
    """Where walks start: the entry heads (int32 (E,)) and their rows (the heads' dtype).

    ``for_rows(x)`` gives int32 (b, m) seeds for head-space rows ``x`` (float32 (b, Dh)): all E
    entries when E <= ALL_ENTRIES_MAX, else each row's SEEDS nearest entries (one row: one
    kernel; a batch: BLAS in blocks of ~32 MiB of distances). ``groups``: the
    :class:`EntryGroups` a kernel that seeds a single query itself takes (one group of every
    entry; no rows when every entry is a seed).
    """

    def __init__(self, heads: np.ndarray, entries: np.ndarray):
        self.entries = np.ascontiguousarray(entries, dtype=np.int32)
        self.all = self.entries.size <= ALL_ENTRIES_MAX
        self._one = self.entries[None, :]  # one query's seeds when all entries are compared: no copy
        if self.all:
            self.groups = no_entry_groups(heads.shape[1], heads.dtype)
        else:
            self.rows = np.ascontiguousarray(heads[self.entries])  # the heads' dtype (8-bit heads: 8-bit rows)
            rows = self.rows.astype(np.float32, copy=False)
            self.norms = np.einsum("ij,ij->i", rows, rows)
            self.groups = EntryGroups(rows.mean(axis=0, keepdims=True), np.array([0, self.entries.size], np.int64),
                                      self.rows, self.entries, 1)

    def for_rows(self, x: np.ndarray) -> np.ndarray:
        e = self.entries
        if self.all:
            return self._one if x.shape[0] == 1 else np.ascontiguousarray(np.broadcast_to(e, (x.shape[0], e.size)))
        m = SEEDS
        if x.shape[0] == 1 and x.dtype == np.float32 and x.flags.c_contiguous:
            return nearest_entries(x[0], self.rows, e, m)[None]
        out = np.empty((x.shape[0], m), np.int32)
        block = max(64, (32 << 20) // (4 * e.size))
        rows = self.rows.astype(np.float32, copy=False)  # BLAS: float32 (E x Dh, made per batch for 8-bit rows)
        for s in range(0, x.shape[0], block):
            d = sq_dists(np.asarray(x[s:s + block], dtype=np.float32), rows, self.norms)
            out[s:s + block] = e[np.argpartition(d, m - 1, axis=1)[:, :m]]
        return out


#: from this many entries on, the build's assignment seeds a row from the entries of its nearest
#: entry groups (about sqrt(E) groups) instead of comparing it with every entry: at 500k heads
#: (3,906 entries) the comparison with every entry was half of the assignment's time
ENTRY_TREE_MIN = 1024
#: entry groups a row's seeds are drawn from, per group of the tree (at least 4)
ENTRY_TREE_PROBE = 1 / 4
#: entry groups a single query's seeds are drawn from: a fixed number, so that seeding costs
#: about (1 + ENTRY_SEARCH_PROBE) sqrt(E) distances instead of E (at 500k heads, 3,906 entries
#: in 63 groups, comparing every entry was two thirds of a head search at ef 32; from the
#: nearest 8 groups the walk finds the same heads, recall@8 within 0.001, in half the time)
ENTRY_SEARCH_PROBE = 8


@numba.njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def _group_seeds(x, rows, entries, starts, near, m, out):
    """Per row i of ``x``: the ``m`` entries nearest it among the groups ``near[i]`` (rows and
    entries in group order, group g at ``starts[g]:starts[g + 1]``) into ``out[i]``, nearest
    first (fewer candidates than ``m``: the nearest repeated)."""
    for i in numba.prange(x.shape[0]):
        bd = np.full(m, np.inf, np.float32)
        bi = np.full(m, -1, np.int32)
        _nearest_in_groups(x[i], rows, entries, starts, near[i], bd, bi)
        for j in range(m):
            out[i, j] = bi[j] if bi[j] >= 0 else bi[0]


class EntryTree:
    """Seeds at many entries: the entry rows clustered into about sqrt(E) balanced groups
    (seeded); a row of a batch (the build's assignment, a batch search) is compared with the
    group centres, then with the entries of its nearest ``max(4, G * ENTRY_TREE_PROBE)``
    groups, and starts its walk from the SEEDS nearest of those; a single query (``groups``,
    the :class:`EntryGroups` a kernel takes) looks into its ENTRY_SEARCH_PROBE nearest groups.
    (:class:`EntrySeeds` compares a row with every entry.) Deterministic for given heads and
    entries."""

    def __init__(self, heads: np.ndarray, entries: np.ndarray, seed: int = 0):
        self.entries = np.ascontiguousarray(entries, dtype=np.int32)
        E = self.entries.size
        rows = np.ascontiguousarray(heads[self.entries], dtype=np.float32)
        G = int(math.ceil(math.sqrt(E)))
        labels, centers = balanced_kmeans(rows, G, rng=np.random.default_rng([seed, 29]))
        order = np.argsort(labels, kind="stable")
        self.rows = np.ascontiguousarray(heads[self.entries[order]])  # the heads' dtype: 8-bit heads keep 8-bit rows
        self.sorted_entries = np.ascontiguousarray(self.entries[order])
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=G))]).astype(np.int64)
        self.centers = np.ascontiguousarray(centers, dtype=np.float32)
        self.cnorms = np.einsum("ij,ij->i", self.centers, self.centers)
        self.probe = int(min(G, max(4, math.ceil(G * ENTRY_TREE_PROBE))))
        self.groups = EntryGroups(self.centers, self.starts, self.rows, self.sorted_entries,
                                  int(min(G, ENTRY_SEARCH_PROBE)))

    def for_rows(self, x: np.ndarray) -> np.ndarray:
        """int32 (b, SEEDS) seeds for head-space rows ``x`` (float32 (b, Dh))."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        d = sq_dists(x, self.centers, self.cnorms)
        near = np.ascontiguousarray(np.argpartition(d, self.probe - 1, axis=1)[:, :self.probe]).astype(np.int64)
        out = np.empty((x.shape[0], SEEDS), np.int32)
        _group_seeds(x, self.rows, self.sorted_entries, self.starts, near, SEEDS, out)
        return out


def entry_seeds(heads: np.ndarray, entries: np.ndarray) -> "EntrySeeds | EntryTree":
    """What walks are seeded with (the build's assignment, updates' inserts, searches): an
    :class:`EntryTree` from ENTRY_TREE_MIN entries on, else :class:`EntrySeeds`."""
    return EntryTree(heads, entries) if entries.size >= ENTRY_TREE_MIN else EntrySeeds(heads, entries)


def build_graph(x: np.ndarray, *, degree: int = 32, candidates: int = 64, alpha: float = 1.2,
                n_entries: int | None = None, seed: int = 0, refine: bool = True,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Graph over head-space rows ``x`` (float32 (H, Dh)): kNN candidates (exact or
    partitioned), RNG-pruned with their reverse edges, then (``refine``) one Vamana pass that
    adds the long edges a greedy walk needs on clustered data. ``progress`` advances 2H (H
    without ``refine``).

    ``x`` should come in the head order (depth-first leaves of the clustering tree): the entries
    are spread through it (:func:`spread_entries`). Returns ``(neighbors int32 (H, degree), -1
    padded; entries int32 (E,))``.
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
    entries = spread_entries(n, n_entries or default_entry_count(n))
    if refine:
        refine_graph(x, neighbors, entries, ef=candidates, alpha=alpha, seed=seed + 2, progress=progress)
    starts = entries.astype(np.int64)
    for _ in range(4):  # a replaced edge can cut off another island: repeat until none is
        if _connect(x, neighbors, entries, starts, candidates) == 0:
            break
    return neighbors, entries


def head_search_recall(x: np.ndarray, neighbors: np.ndarray, entries: np.ndarray, queries: np.ndarray, *,
                       k: int = 8, ef: int = 64) -> float:
    """Recall@k of :func:`beam_search` (pool ``ef``, seeded as :class:`EntrySeeds` seeds the
    assignment and searches) against the exact k nearest heads, over head-space ``queries``
    (float32 (q, Dh)): how well the graph finds what assignment and search ask of it."""
    k = min(k, x.shape[0])
    gi, _ = exact_knn(x, queries, k, "l2", base_block=4096, query_block=256)  # ~4 MiB of distances (memory_limit)
    vis = np.zeros(x.shape[0], np.uint32)
    oi, od = np.empty(k, np.int32), np.empty(k, np.float32)
    seeds = EntrySeeds(x, entries).for_rows(queries)
    exact = no_walk_codes(x.shape[1])
    hits = 0
    for i in range(queries.shape[0]):
        beam_search(queries[i], x, neighbors, seeds[i], max(ef, k), vis, np.uint32(i + 1), oi, od, exact)
        hits += np.intersect1d(oi, gi[i]).size
    return hits / (k * max(1, queries.shape[0]))
