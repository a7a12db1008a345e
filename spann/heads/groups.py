"""Head groups: a flat partition of the heads that a search scans instead of walking the graph.

Up to ``GROUPS_MAX_HEADS`` heads, the heads are clustered at build time into about 4 sqrt(H)
groups (balanced k-means; one int32 label per head is stored, ``head_groups``). A search
compares the query with every group's centroid, then scans the heads of its ``probes``
nearest groups, which lie next to each other in memory in group order: a sequential scan of
byte codes instead of a graph walk's random rows and heap work. It keeps the ``ef`` best on
the codes and re-scores them on the float32 heads, as the walk does. This is faiss' choice of
a flat coarse quantizer below ~10^5 lists and a graph (HNSW) one above: the scan costs
O(C + probes * H / C) head distances, which outgrows a walk's ~10^3 random ones as H grows,
so larger head sets keep the graph walk.

How many groups a search scans grows as ef^(2/3) (:func:`probes_for`). At 14,500-19,500 heads
the scan selects the same heads as the walk (equal recall@10) in 40-80 % of its time. Groups
are k-means clusters of the heads, not ranges of the head order: those would need half again
as many probes for the same recall.

Heads that list splits of an updated index move or add join the group of their nearest
centroid: the update stores every head's label (moved heads relabelled); heads past the stored
labels join at open. (In a format-3 index, heads that splits moved without storing labels keep
their build labels; a later split relabels only the heads it moves.)
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from spann.heads.clustering import balanced_kmeans, sq_dists
from spann.heads.graph import no_walk_codes, rescore_pool, walk_codes, write_pool
from spann.kernels.distances import FASTMATH as _FM
from spann.kernels.distances import sq_l2
from spann.kernels.topk import topk_insert

__all__ = ["GROUPS_MAX_HEADS", "MIN_PROBES", "COVERAGE_MARGIN", "default_group_count", "group_labels", "HeadGroups",
           "head_groups", "no_head_groups", "group_of_heads", "nearest_group", "probes_for", "group_order",
           "scan_groups", "pool_heads",
           "group_search_start", "group_search_finish", "group_search", "EARLY_GROUPS", "code_dot"]

#: above this many heads, searches walk the head graph (a scan's cost grows as sqrt(H)); an
#: estimate from the cost model above, measured at 14,500-19,500 heads only
GROUPS_MAX_HEADS = 32768
MIN_PROBES = 16  #: groups scanned at least
MIN_HEADS = 64   #: fewer heads: no groups (the walk compares every entry anyway)
#: groups a search from the device scans before it requests its best heads' lists (the rest of
#: the scan overlaps the reads): by then the best heads so far are, nearly always, among the
#: heads finally selected
EARLY_GROUPS = 8
#: a build with head_groups -1 keeps the groups unless the walk's lists hold this much more of
#: sample queries' neighbours (the share of 10, see spann.builder.stages.pruner_stage): scanning
#: groups costs less time per query where both select as well. It separates data where both
#: cover the same share (GloVe-50: groups faster) from hub-heavy data where the walk covers
#: ~0.01 more (groups slower and lose recall); see docs/design.md
COVERAGE_MARGIN = 0.005


def default_group_count(n_heads: int) -> int:
    """About 4 sqrt(H) groups for ``MIN_HEADS <= H <= GROUPS_MAX_HEADS`` heads, else 0 (walk)."""
    if n_heads < MIN_HEADS or n_heads > GROUPS_MAX_HEADS:
        return 0
    return int(round(4 * np.sqrt(n_heads)))


def group_labels(heads: np.ndarray, n_groups: int, seed: int = 0) -> np.ndarray:
    """Group of every head (float32 (H, Dh)) by balanced k-means (no group over twice the
    mean size): int32 (H,) in [0, n_groups)."""
    labels, _ = balanced_kmeans(np.ascontiguousarray(heads, dtype=np.float32), int(n_groups), slack=1.0,
                                rng=np.random.default_rng(seed + 11))
    return np.ascontiguousarray(labels, dtype=np.int32)


class HeadGroups(NamedTuple):
    """The heads in group order, as a search kernel reads them (numba-passable).

    ``perm`` int32 (H,): head ids in group order; ``starts`` int64 (C + 1,): group g holds
    positions ``starts[g]:starts[g+1]`` of ``perm``; ``centroids`` float32 (C, Dh): the mean
    head of each group; ``u8`` uint8 (H, Dh) byte codes in group order (``head ~ lo + step *
    u8``) or (0, Dh) when ``rows`` float32 (H, Dh) holds the heads in group order instead
    (narrow heads); ``norms`` float32 (H,): ``|step * u8|^2`` of each code (coded groups; else
    empty), so that a code's distance is ``|q - lo|^2 + norms - 2 <(q - lo) * step, u8>``, one
    multiply-add per coordinate. Empty (C = 0): the search walks the graph.
    """
    perm: np.ndarray
    starts: np.ndarray
    centroids: np.ndarray
    u8: np.ndarray
    lo: np.ndarray
    step: np.ndarray
    rows: np.ndarray
    norms: np.ndarray


def no_head_groups(dim: int) -> HeadGroups:
    """Empty :class:`HeadGroups` (searches walk the graph)."""
    wc = no_walk_codes(dim)
    return HeadGroups(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros((0, dim), np.float32), wc.u8, wc.lo,
                      wc.step, np.zeros((0, dim), np.float32), np.zeros(0, np.float32))


def head_groups(heads: np.ndarray, labels: np.ndarray | None, code_min_dim: int = 32) -> HeadGroups:
    """:class:`HeadGroups` of ``heads`` (float32 or 8-bit (H, Dh)) from the stored ``labels`` (int32
    (H0,), H0 <= H; None or empty: no groups). Heads past H0 join their nearest centroid's group.
    Byte codes from ``code_min_dim`` head dimensions on (see
    :data:`spann.heads.graph.WALK_CODES_MIN_DIM`)."""
    H, dim = heads.shape
    if labels is None or labels.size == 0:
        return no_head_groups(dim)
    labels = np.asarray(labels, dtype=np.int64)
    h0 = labels.shape[0]
    cnt = np.bincount(labels)
    full = cnt > 0  # k-means may leave a group empty: dropped, the labels renumbered
    first = (np.cumsum(cnt) - cnt)[full]
    sums = np.add.reduceat(heads[:h0][np.argsort(labels, kind="stable")].astype(np.float64), first, axis=0)
    cent = np.ascontiguousarray(sums / cnt[full, None], dtype=np.float32)
    labels = (np.cumsum(full) - 1)[labels]
    if H > h0:  # heads added by updates
        extra = np.argmin(sq_dists(np.ascontiguousarray(heads[h0:], dtype=np.float32), cent), axis=1)
        labels = np.concatenate([labels, extra])
    C = cent.shape[0]
    perm = np.argsort(labels, kind="stable").astype(np.int32)
    starts = np.zeros(C + 1, np.int64)
    starts[1:] = np.cumsum(np.bincount(labels, minlength=C))
    ordered = np.ascontiguousarray(heads[perm], dtype=np.float32)
    wc = walk_codes(ordered, code_min_dim)  # the same codes as the walk's (min / max do not depend on the order)
    rows = ordered if wc.u8.shape[0] == 0 else np.zeros((0, dim), np.float32)
    norms = np.zeros(wc.u8.shape[0], np.float32)
    for a in range(0, norms.shape[0], 8192):
        norms[a:a + 8192] = np.square(wc.u8[a:a + 8192] * wc.step).sum(1)
    return HeadGroups(perm, starts, cent, wc.u8, wc.lo, wc.step, rows, norms)


def group_of_heads(hg: HeadGroups) -> np.ndarray:
    """Each head's group in ``hg`` (the numbering of ``hg.centroids``): int32 (H,)."""
    labels = np.empty(hg.perm.shape[0], np.int32)
    labels[hg.perm] = np.repeat(np.arange(hg.starts.shape[0] - 1, dtype=np.int32), np.diff(hg.starts))
    return labels


def nearest_group(hg: HeadGroups, rows: np.ndarray) -> np.ndarray:
    """The group of the centroid nearest each head-space row (float32 (n, Dh)): int32 (n,)."""
    return np.argmin(sq_dists(np.ascontiguousarray(rows, dtype=np.float32), hg.centroids), axis=1).astype(np.int32)


@numba.njit(cache=True, nogil=True)
def probes_for(ef, n_groups, n_heads):
    """Groups a search with beam width ``ef`` scans: 2.6 ef^(2/3) (at least MIN_PROBES), all of
    them once ef >= H / 2: the probes whose recall of the m nearest heads matches the graph
    walk's (ef = 1.25 m) grow as about 3 m^(2/3) (28 for m = 32, 180 for 512 at 19,500 heads)."""
    if 2 * ef >= n_heads:
        return n_groups
    return min(max(MIN_PROBES, int(np.ceil(2.6 * ef ** (2.0 / 3.0)))), n_groups)


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def group_order(q, hg, P):
    """The ``P`` groups of ``hg`` whose centroids are nearest ``q``: int64 (P,), ascending
    distance, -1 padded."""
    gd = np.full(P, np.inf, np.float32)
    gi = np.full(P, -1, np.int64)
    for g in range(hg.centroids.shape[0]):
        topk_insert(gd, gi, sq_l2(q, hg.centroids[g]), g)
    return gi


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def scan_groups(q, qq, hg, gi, p0, p1, pd, pi):
    """Scan the heads of groups ``gi[p0:p1]`` into the ascending pool ``pd``/``pi`` (group
    positions): on the byte codes, ``qq = (q - hg.lo) * hg.step`` and distances less the
    query's constant ``|q - lo|^2`` (the pool is only ranked, then re-scored exactly), or on the
    float rows. Returns the distance evaluations."""
    coded = hg.u8.shape[0] > 0
    n_eval = 0
    for p in range(p0, p1):
        g = gi[p]
        if g < 0:
            break
        a, b = hg.starts[g], hg.starts[g + 1]
        n_eval += b - a
        if coded:  # one loop per case (the case tested inside the loop: GloVe-50 ~110 vs ~65 us per search)
            for t in range(a, b):
                topk_insert(pd, pi, hg.norms[t] - np.float32(2.0) * code_dot(qq, hg.u8[t]), t)
        else:
            for t in range(a, b):
                topk_insert(pd, pi, sq_l2(q, hg.rows[t]), t)
    return n_eval


@numba.njit(cache=True, fastmath=_FM, nogil=True, inline="always")
def code_dot(w, c):
    """<w, c> for float32 ``w`` and a uint8 code ``c`` (Dh,). On mpnet-768's heads (Cascade
    Lake, 1,700 heads in cache): 78 ns a head, against 100-110 ns for ``sum((qq - step * c)^2)``."""
    s = np.float32(0.0)
    for i in range(w.shape[0]):
        s += w[i] * np.float32(c[i])
    return s


@numba.njit(cache=True, nogil=True)
def pool_heads(hg, pi, n, out):
    """Head ids of the pool's first ``n`` group positions ``pi`` into ``out`` (int32); returns
    how many there were."""
    m = 0
    while m < n and m < pi.shape[0] and pi[m] >= 0:
        out[m] = hg.perm[pi[m]]
        m += 1
    return m


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def group_search_start(q, hg, ef):
    """Begin a scan of the groups nearest ``q`` for ``ef`` heads: (probe order gi int64 (P,),
    empty pool pd float32 / pi int64 (ef,), qq = (q - hg.lo) * hg.step, distance evaluations so
    far)."""
    P = probes_for(ef, hg.centroids.shape[0], hg.perm.shape[0])
    gi = group_order(q, hg, P)
    qq = np.empty(q.shape[0], np.float32)
    for i in range(q.shape[0]):
        qq[i] = (q[i] - hg.lo[i]) * hg.step[i]
    return gi, np.full(ef, np.inf, np.float32), np.full(ef, -1, np.int64), qq, hg.centroids.shape[0]


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def group_search_finish(q, heads, hg, pd, pi, out_i, out_d):
    """End a group scan: the pool's heads re-scored exactly on ``heads`` (coded groups) into
    ``out_i`` (int32 head ids) / ``out_d`` (float32 squared distances), ascending, -1 / inf
    padded. Returns the distance evaluations of the re-scoring."""
    pool = np.empty(pi.shape[0], np.int32)
    n = pool_heads(hg, pi, pi.shape[0], pool)
    n_eval = 0
    if hg.u8.shape[0] > 0:  # exact distances, re-sorted
        rescore_pool(q, heads, pd, pool, n)
        n_eval = n
    write_pool(pd, pool, n, out_i, out_d)
    return n_eval


@numba.njit(cache=True, fastmath=_FM, nogil=True)
def group_search(q, heads, hg, ef, out_i, out_d):
    """The ``len(out_i)`` nearest heads of ``q`` (float32 (Dh,)) by scanning the groups of
    :class:`HeadGroups` ``hg`` nearest ``q`` (:func:`probes_for` ``ef``): the ``ef`` best on
    the codes, re-scored on ``heads`` (exact). Writes head ids (int32) and exact squared
    distances (float32), ascending, -1 / inf padded; returns the number of distance
    evaluations. (:func:`spann.search.kernels.select_lists_early` runs the same steps with a request
    for the best heads' lists after the :data:`EARLY_GROUPS` nearest groups.)"""
    gi, pd, pi, qq, n_eval = group_search_start(q, hg, ef)
    n_eval += scan_groups(q, qq, hg, gi, 0, gi.shape[0], pd, pi)
    return n_eval + group_search_finish(q, heads, hg, pd, pi, out_i, out_d)
