"""Search kernels: head search + query-aware pruning, posting scan with replica de-dup, re-rank.

Per query:
1. beam search of the head graph -> the ``m`` nearest heads (head-space squared L2);
2. prune: keep head j only while ``d(q, c_j) <= (1 + eps)^2 * d(q, c_1)`` (true distances
   within a factor 1 + eps; the nearest head always survives);
3. request every kept list's pages from the device at once (``union_pages`` with an epoch),
   then scan each kept list through the :class:`~spann.io.postings.PostingsView`:
   - ``full`` encoding: exact distances straight into the top-k;
   - coded encodings: approximate distances into the best ``rerank`` candidates (their rows in
     the vector store), whose pages are then requested at once and re-ranked exactly (from the
     device, the best k candidates' rows are requested once half the lists is scanned);
4. a vector's replicas share its id (or row), which enters the top-k only once.

Statistics per query (int64 (4,)): posting lists read, bytes of the 4 KiB pages read (lists,
plus vector-store rows when coded), distance evaluations (heads + entries + re-ranked rows),
bytes of the entries scanned.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from spann.codecs.encodings import sq8_distance, sq8_prepare
from spann.codecs.rabitq import bound_cut, error_bound, estimate, prepare_list_query
from spann.format.labels import has_label, is_dead
from spann.heads.graph import SEEDS, beam_search, seed_entries
from spann.heads.groups import (EARLY_GROUPS, group_search, group_search_finish, group_search_start, pool_heads,
                                scan_groups)
from spann.heads.pruner import lists_for
from spann.io.direct import direct_landed, direct_poll, direct_reset, direct_wait
from spann.io.postings import aux_offset, codes_offset, direct_lists, entry_id, labels_start, union_pages
from spann.io.vector_store import direct_rows, row_offset, union_row_pages
from spann.kernels.distances import FASTMATH, NEG_DOT, pair_distance
from spann.kernels.prefetch import prefetch_element
from spann.kernels.topk import topk_insert, topk_insert_unique, topk_insert_unique_with
from spann.search.views import Candidates, Early, HeadIndex

__all__ = ["N_STATS", "compiled_entry", "select_lists", "scan_full", "scan_coded", "scan_rabitq", "rerank",
           "search_one", "select_batch", "select_heads_batch", "scan_batch", "scan_full_batch", "scan_coded_batch",
           "full_lists_batch"]

N_STATS = 4  #: lists read, page bytes, distance evaluations, entry bytes
# typed int64 constants, not literals: a literal argument makes numba compile its callee once more
NO_EPOCH = np.int64(-1)  #: count pages, request none (see spann.io.recent)
FROM_START = np.int64(0)  #: heads_not_in appends from the start of its output


def compiled_entry(kernel, args: tuple):
    """The compiled entry point of numba ``kernel`` for the types of ``args`` (after a call
    with them), or ``kernel`` itself if numba has none to give. Calling it skips the
    dispatcher's type resolution of every argument (microseconds for nested records, a
    noticeable share of a warm single query). The caller must then pass arguments of exactly those numba
    types: arrays of the same dtype, dimension, layout and writability, namedtuples with such
    fields, scalars of the same kind; the entry point converts arrays without checking."""
    try:
        return kernel.overloads[tuple(numba.typeof(a) for a in args)].entry_point
    except (AttributeError, KeyError, TypeError, ValueError):
        return kernel


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def select_lists(qh, hx, groups, entries, plan, visited, tag, sel_i, sel_d):
    """Nearest heads of head-space query ``qh`` into ``sel_i``/``sel_d`` (ascending): a scan of
    the nearest head groups of ``hx`` (a :class:`~spann.search.views.HeadIndex`; see
    :mod:`spann.heads.groups`), or when it has none a walk of its graph from ``entries``
    (int32; ``visited``/``tag``: the walk's marks), then how many of them to read: the pruner's
    choice for ``plan.budget`` (see :mod:`spann.heads.pruner`; just the budget without a
    model), cut further by the distance-ratio rule ``plan.prune_eps``. ``groups`` is
    ``hx.groups``, an argument so that numba compiles no group search for an index without
    groups (None: a None-typed argument prunes its branch; empty groups also walk, in a kernel
    compiled for both, as the build's comparisons of the two are). Returns (kept, distance
    evaluations)."""
    if groups is not None and groups.centroids.shape[0] > 0:
        n_eval = group_search(qh, hx.heads, groups, plan.ef, sel_i, sel_d)
    else:
        n_eval = beam_search(qh, hx.heads, hx.neighbors, entries, plan.ef, visited, tag, sel_i, sel_d, hx.walk)
    return lists_to_read(sel_i, sel_d, plan.model, plan.budget, plan.prune_eps), n_eval


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def select_lists_early(qh, hx, plan, sel_i, sel_d, pv, dl, offs, epoch, early_i):
    """:func:`select_lists` on head groups for a query whose lists come from the device: once
    the :data:`~spann.heads.groups.EARLY_GROUPS` nearest groups are scanned, the lists of the
    ``len(early_i)`` best heads so far are requested (their ids into ``early_i``, int32; see
    :func:`request_lists` for ``pv``, ``dl``, ``offs`` and ``epoch``), and the device reads them
    while the remaining groups are scanned. Returns (kept, distance evaluations, heads requested
    early, bytes requested directly)."""
    heads, hg = hx.heads, hx.groups
    gi, pd, pi, qq, n_eval = group_search_start(qh, hg, plan.ef)
    E = min(EARLY_GROUPS, gi.shape[0])
    n_eval += scan_groups(qh, qq, hg, gi, 0, E, pd, pi)
    n_early = pool_heads(hg, pi, early_i.shape[0], early_i)
    got = request_lists(pv, dl, offs, early_i, n_early, epoch)
    n_eval += scan_groups(qh, qq, hg, gi, E, gi.shape[0], pd, pi)
    n_eval += group_search_finish(qh, heads, hg, pd, pi, sel_i, sel_d)
    return lists_to_read(sel_i, sel_d, plan.model, plan.budget, plan.prune_eps), n_eval, n_early, got


@numba.njit(cache=True, nogil=True)
def request_lists(pv, dl, offs, sel, n, epoch):
    """Start reading lists ``sel[:n]``: with a direct reader ``dl`` (see :mod:`spann.io.direct`)
    into its buffer (``offs``: the offsets of its buffer view; returns the bytes requested), or
    with ``dl`` None through the page cache (``epoch``: see :func:`union_pages`; returns 0, the
    caller counts pages)."""
    if dl is not None:
        return direct_lists(pv, dl, sel, n, offs)
    union_pages(pv, sel, n, epoch)
    return 0


@numba.njit(cache=True, nogil=True)
def request_rows(vv, dr, rows, n, epoch, pos):
    """Start reading vector-store rows ``rows[:n]``: with a direct reader ``dr`` into its buffer
    (``pos[j]``: where row j lands; returns the bytes requested), or with ``dr`` None (or a
    reader that reads nothing, ``ctx`` 0) through the page cache (returns 0)."""
    if dr is not None and dr.ctx != 0:
        return direct_rows(vv, dr, rows, n, pos)
    union_row_pages(vv, rows, n, epoch)
    return 0


@numba.njit(cache=True, nogil=True)
def lists_to_read(sel_i, sel_d, model, budget, prune_eps):
    """How many of the ascending selected heads ``sel_i``/``sel_d`` to read: the pruner's
    choice (see :func:`spann.heads.pruner.lists_for`), cut by the distance-ratio rule ``prune_eps``."""
    found = 0
    while found < sel_i.shape[0] and sel_i[found] >= 0:
        found += 1
    want = lists_for(sel_d, found, model, budget)
    limit = sel_d[0] * (1.0 + prune_eps) * (1.0 + prune_eps) if prune_eps < 1e17 else np.inf
    kept = 0
    while kept < want and sel_d[kept] <= limit:
        kept += 1
    return kept


@numba.njit(cache=True, nogil=True)
def heads_not_in(a, na, b, nb, out, m):
    """Append to ``out`` (from position ``m``) the heads of ``a[:na]`` that are not among
    ``b[:nb]``; returns the new length."""
    for j in range(na):
        h = a[j]
        seen = False
        for t in range(nb):
            if b[t] == h:
                seen = True
                break
        if not seen:
            out[m] = h
            m += 1
    return m


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_codes(pv, h):
    """Software-prefetch the cache lines of list h's codes (warm path: overlaps misses)."""
    c = pv.counts[h]
    if c == 0:
        return
    start = pv.offsets[h] + codes_offset(pv, c)
    for e in range(0, c * pv.code_bytes, 64):
        prefetch_element(pv.u8, start, e)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def scan_full(q, metric, pv, sel_i, kept, filt, dead, top_d, top_i, stats):
    """Scan the first ``kept`` lists of ``sel_i`` (full vectors) into the top-k
    (``top_d``/``top_i``, pre-filled with inf / -1). ``filt``: sorted int32 labels an entry
    must carry one of (empty: no filter); ``dead``: sorted int64 ids to skip (deleted)."""
    dim = pv.dim
    k = top_d.shape[0]
    isz = pv.vec.itemsize
    nf = filt.shape[0] > 0
    L = pv.label_width
    for j in range(min(kept, 2)):
        _prefetch_codes(pv, sel_i[j])
    for j in range(kept):
        if j + 2 < kept:  # the lists two ahead load while this one is scanned
            _prefetch_codes(pv, sel_i[j + 2])
        h = sel_i[j]
        c = pv.counts[h]
        if c == 0:
            continue
        o = pv.offsets[h]
        ids = pv.i64[o >> 3:(o >> 3) + c]  # full postings always hold int64 ids
        po = (o + codes_offset(pv, c)) // isz
        block = pv.vec[po:po + c * dim].reshape(c, dim)
        for t in range(c):
            if nf and not has_label(pv.i32, labels_start(pv, o, c, t), L, filt):
                continue
            d = pair_distance(q, block[t], metric)
            if d < top_d[k - 1] and not is_dead(dead, ids[t]):
                topk_insert_unique(top_d, top_i, d, ids[t])
        stats[0] += 1
        stats[2] += c
        stats[3] += codes_offset(pv, c) + c * pv.code_bytes


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def scan_coded(q, metric, pv, cb, qa, sel_i, kept, filt, dead, cand_d, cand_r, stats):
    """Scan the first ``kept`` lists' codes into the best ``len(cand_d)`` candidates (rows,
    approximate distances; pre-filled with inf / -1). ``qa``: scratch (D,) float32; ``filt``,
    ``dead``: as in :func:`scan_full` (``dead`` holds store rows)."""
    R = cand_d.shape[0]
    nf = filt.shape[0] > 0
    L = pv.label_width
    B = pv.code_bytes
    const = sq8_prepare(q, metric, cb.lo, cb.scale, qa)
    for j in range(min(kept, 2)):
        _prefetch_codes(pv, sel_i[j])
    for j in range(kept):
        if j + 2 < kept:
            _prefetch_codes(pv, sel_i[j + 2])
        h = sel_i[j]
        c = pv.counts[h]
        if c == 0:
            continue
        o = pv.offsets[h]
        co = o + codes_offset(pv, c)
        codes = pv.u8[co:co + c * B].reshape(c, B)
        for t in range(c):
            if nf and not has_label(pv.i32, labels_start(pv, o, c, t), L, filt):
                continue
            d = sq8_distance(qa, const, cb.scale, codes[t], metric)
            if d < cand_d[R - 1]:
                r = entry_id(pv, o, t)
                if not is_dead(dead, r):
                    topk_insert_unique(cand_d, cand_r, d, r)
        stats[0] += 1
        stats[2] += c
        stats[3] += codes_offset(pv, c) + c * B


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")
def scan_rabitq(qh, metric, pv, heads, sel_i, kept, filt, dead, cand_d, cand_r, cand_e, stats):
    """Scan the first ``kept`` lists' RaBitQ codes (see :mod:`spann.codecs.rabitq`) into the best
    ``len(cand_d)`` candidates, with each estimate's error bound in ``cand_e`` (float32, same
    length). ``qh``: the head-space query, whose first Dp columns are the rotated query;
    ``heads``: the rotated head vectors (the lists' centres); ``filt``, ``dead``: as in
    :func:`scan_coded`."""
    R = cand_d.shape[0]
    nf = filt.shape[0] > 0
    L = pv.label_width
    W = pv.code_bytes // 8
    dp = W * 64
    A = pv.aux_floats
    qr = qh[:dp]
    planes = np.empty((4, W), np.int64)
    for j in range(min(kept, 2)):
        _prefetch_codes(pv, sel_i[j])
    for j in range(kept):
        if j + 2 < kept:
            _prefetch_codes(pv, sel_i[j + 2])
        h = sel_i[j]
        c = pv.counts[h]
        if c == 0:
            continue
        o = pv.offsets[h]
        ch = heads[h, :dp]
        if metric == NEG_DOT:  # -<q, x> = -<q, c> - |x - c| |q| <q / |q|, u>
            base = np.float32(0.0)
            for i in range(dp):
                base += qr[i] * ch[i]
            nq, lo, w, s_all = prepare_list_query(qr, ch, planes, False)
        else:  # |x - q|^2 = |x - c|^2 + |q - c|^2 - 2 |x - c| |q - c| <u, (q - c) / |q - c|>
            nq, lo, w, s_all = prepare_list_query(qr, ch, planes, True)
            base = nq * nq
        ao = (o + aux_offset(pv, c)) >> 2
        co = (o + codes_offset(pv, c)) >> 3
        words = pv.i64[co:co + c * W].reshape(c, W)
        for t in range(c):
            if nf and not has_label(pv.i32, labels_start(pv, o, c, t), L, filt):
                continue
            nr = pv.f32[ao + A * t]
            a = pv.f32[ao + A * t + 1]
            est = estimate(words[t], planes, lo, w, s_all, dp) / a
            if metric == NEG_DOT:
                d = -(base + nr * nq * est)
            else:
                d = nr * nr + base - 2.0 * nr * nq * est
            if d < cand_d[R - 1]:
                r = entry_id(pv, o, t)
                if not is_dead(dead, r):
                    e = nr * nq * error_bound(a, dp, w)
                    topk_insert_unique_with(cand_d, cand_r, cand_e, d, r, e if metric == NEG_DOT else 2.0 * e)
        stats[0] += 1
        stats[2] += c
        stats[3] += codes_offset(pv, c) + c * pv.code_bytes


def _absent(record, field: str) -> bool:
    """Whether ``field`` of numba namedtuple type ``record`` is None (the codec has no such array)."""
    return isinstance(record.types[record.fields.index(field)], types.NoneType)


def scan_candidates(q, qh, metric, pv, cb, heads, sel_i, kept, filt, dead, cands, stats):
    """Scan the first ``kept`` lists of ``sel_i`` into the :class:`~spann.search.views.Candidates`
    ``cands`` with the codes of codebook ``cb``: :func:`scan_coded` for sq8 (no rotation),
    :func:`scan_rabitq` for rabitq. Calls may continue one another's candidates. Chosen by
    ``cb``'s type when a kernel is compiled, so only the codec an index uses is compiled;
    callable from numba kernels only."""
    raise TypeError("scan_candidates runs inside numba kernels only")


@overload(scan_candidates, jit_options={"fastmath": FASTMATH, "nogil": True})
def _scan_candidates(q, qh, metric, pv, cb, heads, sel_i, kept, filt, dead, cands, stats):
    if _absent(cb, "rotation"):
        def sq8(q, qh, metric, pv, cb, heads, sel_i, kept, filt, dead, cands, stats):
            scan_coded(q, metric, pv, cb, cands.qa, sel_i, kept, filt, dead, cands.d, cands.r, stats)
        return sq8

    def rabitq(q, qh, metric, pv, cb, heads, sel_i, kept, filt, dead, cands, stats):
        scan_rabitq(qh, metric, pv, heads, sel_i, kept, filt, dead, cands.d, cands.r, cands.e, stats)
    return rabitq


def cut_candidates(cb, cands, bound_k):
    """Drop the candidates whose error bound keeps them out of the top ``bound_k``
    (:func:`~spann.codecs.rabitq.bound_cut`; rabitq codes with ``bound_k`` > 0; nothing for
    sq8, whose estimates carry no bound). Numba kernels only, chosen by ``cb``'s type."""
    raise TypeError("cut_candidates runs inside numba kernels only")


@overload(cut_candidates, jit_options={"nogil": True})
def _cut_candidates(cb, cands, bound_k):
    if _absent(cb, "rotation"):
        return lambda cb, cands, bound_k: None

    def rabitq(cb, cands, bound_k):
        if bound_k > 0:
            bound_cut(cands.d, cands.e, cands.r, bound_k)
    return rabitq


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def rerank(q, metric, vv, cand_r, top_d, top_i, stats):
    """Exact distances of the candidate rows (from the vector store) into the top-k; ids are
    the rows' stored ids. Every row's cache lines are requested first: the misses overlap
    instead of being paid one row at a time."""
    row_bytes = vv.dim * vv.vec.itemsize
    pos = np.empty(cand_r.shape[0], np.int64)
    for j in range(cand_r.shape[0]):
        r = cand_r[j]
        pos[j] = -1
        if 0 <= r < vv.n:  # -1: no candidate; >= n: a damaged list (``spann verify`` finds it)
            pos[j] = row_offset(vv, r)
            for b in range(0, row_bytes, 64):
                prefetch_element(vv.u8, pos[j], b)
    rerank_at(q, metric, vv, pos, cand_r.shape[0], top_d, top_i, stats)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def rerank_at(q, metric, vv, pos, n, top_d, top_i, stats):
    """Exact distances of the rows at byte ``pos[:n]`` of ``vv``'s memory (-1: none) into the
    top-k, with the rows' stored ids."""
    k = top_d.shape[0]
    isz = vv.vec.itemsize
    for j in range(n):
        p = pos[j]
        if p < 0:
            continue
        d = pair_distance(q, vv.vec[p // isz:p // isz + vv.dim], metric)
        stats[2] += 1
        if d < top_d[k - 1]:
            topk_insert(top_d, top_i, d, vv.i64[(p + vv.id_offset) >> 3])


@numba.njit(cache=True, nogil=True)
def positions_of(rows, n, a, a_pos, na, b, b_pos, nb):
    """Where each of ``rows[:n]`` landed: its position in ``a_pos`` (rows ``a[:na]``) or else
    ``b_pos`` (rows ``b[:nb]``); -1 when in neither. int64 (n,)."""
    out = np.full(max(n, 1), -1, np.int64)
    for j in range(n):
        r = rows[j]
        for t in range(na):
            if a[t] == r:
                out[j] = a_pos[t]
                break
        if out[j] < 0:
            for t in range(nb):
                if b[t] == r:
                    out[j] = b_pos[t]
                    break
    return out


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def scan_landed(q, qh, filt, hx, plan, lists, reads, sel, cands, out, half, early):
    """Scan lists ``sel`` read directly (:func:`request_lists` with ``reads.lists``, a
    :class:`~spann.search.views.Direct`) in the order their reads land, nearest first among
    those landed, through ``reads.lists_view``:
    full lists into ``out``'s top-k, coded ones into ``cands`` (see :func:`scan_part`),
    while the device still reads the others. Once ``half`` (> 0) lists are scanned, the rows of
    the best ``len(early.rows)`` candidates are requested from ``reads.rows`` (rows into
    ``early.rows``, their buffer positions into ``early.pos``). Returns (early rows, bytes
    requested)."""
    metric, cb, dead, heads = plan.metric, lists.codebook, lists.dead, hx.heads
    pvd, dl = reads.lists_view, reads.lists
    cand_r, early_r = cands.r, early.rows
    kept = sel.shape[0]
    todo = sel.copy()
    n_todo = kept
    ready = np.empty(max(kept, 1), np.int32)
    scanned = 0
    n_early_r = 0
    got = 0
    while n_todo > 0:
        direct_poll(dl, False)
        nr = 0
        left = 0
        for j in range(n_todo):
            h = todo[j]
            if pvd.counts[h] == 0 or direct_landed(dl, pvd.offsets[h]):
                ready[nr] = h
                nr += 1
            else:
                todo[left] = h
                left += 1
        n_todo = left
        if nr == 0:
            if dl.state[2] == 0:  # nothing in flight, yet a list has not landed: never requested
                raise OSError("direct read: a list to scan was not requested")
            direct_poll(dl, True)
            continue
        a = 0
        while a < nr:
            b = nr
            if scanned < half < scanned + nr - a:  # stop at half to request the early rows
                b = a + half - scanned
            scan_part(q, qh, metric, pvd, cb, heads, ready[a:b], b - a, filt, dead, cands, out)
            scanned += b - a
            a = b
            if half > 0 and scanned == half:  # (coded lists only: half is 0 for full ones)
                while n_early_r < early_r.shape[0] and cand_r[n_early_r] >= 0:
                    early_r[n_early_r] = cand_r[n_early_r]
                    n_early_r += 1
                got = request_rows(lists.vectors, reads.rows, early_r, n_early_r, -1, early.pos)
    return n_early_r, got


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def scan_part(q, qh, metric, pv, cb, heads, sel_i, kept, filt, dead, cands, out):
    """Scan lists ``sel_i[:kept]``: full vectors (``cb`` None) into ``out``'s top-k with
    :func:`scan_full`, codes into ``cands`` with :func:`scan_candidates`."""
    if cb is None:
        scan_full(q, metric, pv, sel_i, kept, filt, dead, out.top_d, out.top_i, out.stats)
    else:
        scan_candidates(q, qh, metric, pv, cb, heads, sel_i, kept, filt, dead, cands, out.stats)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def search_one(q, qh, filt, hx, plan, lists, scratch, reads, out):
    """One query end to end: fills ``out`` (:class:`~spann.search.views.Out`: top-k ascending
    and the statistics). ``q`` float32 (dim,) the query in scan space, ``qh`` float32 (Dh,) in
    head space; ``filt`` sorted int32 labels (empty: no filter). ``hx``
    (:class:`~spann.search.views.HeadIndex`): the heads; a walk of the graph starts from the
    :data:`~spann.heads.graph.SEEDS` entries nearest ``qh`` (see
    :func:`~spann.heads.graph.seed_entries`; all entries when ``hx.seeding`` has no rows);
    head groups, when there are any, are scanned instead (see :func:`select_lists`). ``plan``
    (:class:`~spann.search.views.Plan`): how many heads and lists, the pruner, the re-rank depth and bound. ``lists``
    (:class:`~spann.search.views.Lists`): the base and delta lists, the codebook, the vector
    store, the tombstones. ``scratch`` (:class:`~spann.search.views.Scratch`): the walk's marks,
    and ``epoch`` >= 0 to request the lists' pages (on head groups in two steps: the best
    heads' lists once the nearest groups are scanned, see :func:`select_lists_early`, the rest
    when the selection is done), then the rows of the best k candidates once the nearest half
    of the lists is scanned, and the other candidates' rows when the scan is done, except pages
    requested lately (within ~1 s, :mod:`spann.io.recent`; -1: request nothing, let the reads
    fault; ``bytes_read`` counts early rows that end up not re-ranked). ``reads``
    (:class:`~spann.search.views.Direct`, or None to read through the page cache): the base
    lists and rows are read with O_DIRECT in the same two steps each, into the readers'
    buffers, and scanned there through ``reads.lists_view`` and ``reads.rows_view``;
    ``bytes_read`` then counts the pages read.

    What kind of index and reads a call serves is fixed by its argument types, so numba
    compiles only the paths it takes: ``hx.groups`` None (walk the graph) or head groups,
    ``lists.codebook`` None (full vectors) or an sq8 or rabitq codebook, ``reads`` None or
    direct reads."""
    top_d, top_i, stats = out.top_d, out.top_i, out.stats
    if reads is not None:
        direct_reset(reads.lists)
        direct_reset(reads.rows)
    sel_i = np.empty(plan.m, np.int32)
    sel_d = np.empty(plan.m, np.float32)
    if reads is not None:
        kept = select_to_read(qh, hx, hx.groups, plan, lists.postings, scratch, reads.lists, reads.lists_view.offsets,
                              sel_i, sel_d, stats)
    else:
        kept = select_to_read(qh, hx, hx.groups, plan, lists.postings, scratch, None, lists.postings.offsets, sel_i,
                              sel_d, stats)
    stats[1] += 4096 * union_pages(lists.delta, sel_i, kept, scratch.epoch)
    for j in range(top_d.shape[0]):
        top_d[j] = np.inf
        top_i[j] = -1
    scan_selected(q, qh, filt, hx, plan, lists, lists.codebook, scratch, reads, out, sel_i[:kept])
    scan_full(q, plan.metric, lists.delta, sel_i, kept, filt, lists.delta_dead, top_d, top_i, stats)
    if reads is not None:
        direct_wait(reads.lists)  # lists requested early and not kept: errors surface in this query


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def select_to_read(qh, hx, groups, plan, pv, scratch, dl, offs, sel_i, sel_d, stats):
    """:func:`search_one`'s lists: select them (:func:`select_lists`; on head groups
    (``groups`` is ``hx.groups``) with lists from the device, :func:`select_lists_early`) and
    request them (``dl``, ``offs``: see :func:`request_lists`); adds the bytes and distance
    evaluations to ``stats``. Returns how many of ``sel_i`` to read."""
    epoch = scratch.epoch
    if groups is not None and groups.centroids.shape[0] > 0:
        if (dl is not None or (epoch >= 0 and pv.prefetchable)) and plan.budget >= 4:  # from the device: start early
            early_i = np.empty(plan.budget // 2, np.int32)
            kept, n_eval, n_early, got = select_lists_early(qh, hx, plan, sel_i, sel_d, pv, dl, offs, epoch, early_i)
            late = np.empty(kept, np.int32)
            n_late = heads_not_in(sel_i, kept, early_i, n_early, late, FROM_START)
            got += request_lists(pv, dl, offs, late, n_late, epoch)
            if dl is not None:
                stats[1] += got
            else:
                read_i = np.empty(kept + n_early, np.int32)  # counted: the kept lists and the early ones not kept
                read_i[:kept] = sel_i[:kept]
                n_read = heads_not_in(early_i, n_early, sel_i, kept, read_i, kept)
                stats[1] += 4096 * union_pages(pv, read_i, n_read, NO_EPOCH)
            stats[2] += n_eval
            return kept
        seeds = hx.entries
    else:
        seeds = seed_entries(qh, hx.seeding, hx.entries, SEEDS)
    kept, n_eval = select_lists(qh, hx, hx.groups, seeds, plan, scratch.visited, scratch.tag, sel_i, sel_d)
    if dl is not None:
        stats[1] += direct_lists(pv, dl, sel_i, kept, offs)
    else:
        stats[1] += 4096 * union_pages(pv, sel_i, kept, epoch)
    stats[2] += n_eval
    return kept


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def scan_selected(q, qh, filt, hx, plan, lists, cb, scratch, reads, out, sel):
    """:func:`search_one`'s scan of the base lists ``sel`` (requested already): full vectors
    (``cb``, the codebook, None) straight into the top-k; codes into the best ``plan.rerank``
    candidates, whose rows are then requested and re-ranked exactly (coded lists from the
    device: the best k candidates' rows once the nearest half of the lists is scanned)."""
    kept = sel.shape[0]
    metric, epoch = plan.metric, scratch.epoch
    top_d, top_i, stats = out.top_d, out.top_i, out.stats
    pv, vv, dead = lists.postings, lists.vectors, lists.dead
    R = plan.rerank if cb is not None else 0
    cands = Candidates(np.full(R, np.inf, np.float32), np.full(R, -1, np.int64), np.zeros(R, np.float32),
                       np.empty(q.shape[0] if cb is not None else 0, np.float32))
    cand_r = cands.r
    early_r = np.empty(min(top_d.shape[0], R), np.int64)
    early_pos = np.empty(early_r.shape[0], np.int64)
    early = Early(early_r, early_pos)
    if cb is None:
        if reads is not None:  # scan the lists as they land
            scan_landed(q, qh, filt, hx, plan, lists, reads, sel, cands, out, 0, early)
        else:
            scan_full(q, metric, pv, sel, kept, filt, dead, top_d, top_i, stats)
        return
    # coded lists from the device: once the nearest half of the lists is scanned, request the
    # rows of the best k candidates so far; the device reads them during the rest of the scan
    half = kept // 2 if (reads is not None or (epoch >= 0 and vv.prefetchable)) and kept >= 2 else 0
    n_early_r = 0
    got = 0
    if reads is not None:
        n_early_r, got = scan_landed(q, qh, filt, hx, plan, lists, reads, sel, cands, out, half, early)
    else:
        if half > 0:
            scan_candidates(q, qh, metric, pv, cb, hx.heads, sel[:half], half, filt, dead, cands, stats)
            while n_early_r < early_r.shape[0] and cand_r[n_early_r] >= 0:
                early_r[n_early_r] = cand_r[n_early_r]
                n_early_r += 1
            request_rows(vv, None, early_r, n_early_r, epoch, early_pos)
        scan_candidates(q, qh, metric, pv, cb, hx.heads, sel[half:], kept - half, filt, dead, cands, stats)
    cut_candidates(cb, cands, plan.bound_k)
    n_c = 0
    while n_c < R and cand_r[n_c] >= 0:
        n_c += 1
    rest = np.empty(n_c, np.int64)  # the candidates' rows not requested early
    rest_pos = np.empty(n_c, np.int64)
    n_rest = heads_not_in(cand_r, n_c, early_r, n_early_r, rest, FROM_START)
    if reads is not None:
        got += request_rows(vv, reads.rows, rest, n_rest, epoch, rest_pos)
        stats[1] += got
        pos = positions_of(cand_r, n_c, early_r, early_pos, n_early_r, rest, rest_pos, n_rest)
        direct_wait(reads.rows)
        rerank_at(q, metric, reads.rows_view, pos, n_c, top_d, top_i, stats)
    else:
        request_rows(vv, None, rest, n_rest, epoch, rest_pos)
        read_r = np.empty(n_c + n_early_r, np.int64)  # counted: the candidates and the early rows not among them
        read_r[:n_c] = cand_r[:n_c]
        n_read = heads_not_in(early_r, n_early_r, cand_r, n_c, read_r, n_c)
        stats[1] += 4096 * union_row_pages(vv, read_r, n_read, NO_EPOCH)
        rerank(q, metric, vv, cand_r, top_d, top_i, stats)


def select_batch(qh, hx, seeds, plan, n_chunks):
    """Batch phase 1: the pruned nearest heads of every query (see :func:`select_lists`), in
    ``n_chunks`` parallel chunks (one visited array per chunk); query i's walk starts from
    ``seeds[i]`` (int32 (nq, s), see :class:`spann.heads.graph.EntrySeeds`; unused with head
    groups). Returns sel_i (nq, plan.m) int32, sel_d (nq, plan.m) float32, kept (nq,), evals
    (nq,)."""
    # numba's parallel loops take records only as parameters, flat: the head index crosses field by field
    # (a plain Python function: one kernel less to compile on a first run)
    return select_heads_batch(qh, hx.heads, hx.walk, hx.neighbors, hx.groups, hx.entries, hx.seeding, seeds, plan,
                              n_chunks)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def select_heads_batch(qh, heads, walk, neighbors, groups, entries, seeding, seeds, plan, n_chunks):
    """:func:`select_batch` on the head index's fields."""
    nq = qh.shape[0]
    m = plan.m
    sel_i = np.full((nq, m), -1, np.int32)
    sel_d = np.full((nq, m), np.inf, np.float32)
    kept = np.zeros(nq, np.int64)
    evals = np.zeros(nq, np.int64)
    step = (nq + n_chunks - 1) // n_chunks
    for ch in numba.prange(n_chunks):
        hx = HeadIndex(heads, walk, neighbors, groups, entries, seeding)
        visited = np.zeros(heads.shape[0], np.uint32)
        tag = np.uint32(0)
        for i in range(ch * step, min(nq, (ch + 1) * step)):
            tag += np.uint32(1)
            kept[i], evals[i] = select_lists(qh[i], hx, groups, seeds[i], plan, visited, tag, sel_i[i], sel_d[i])
    return sel_i, sel_d, kept, evals


def scan_batch(qs, qh, heads, metric, pv, cb, sel_i, kept, width, filt, dead, bound_k):
    """Batch phase 2: scan the selected lists of every query in parallel (``qs`` scan-space
    queries, ``qh`` head-space queries, ``heads`` the head vectors). Returns (dists
    (nq, width), ids or rows (nq, width), stats (nq, N_STATS)): the top-k (full encoding, ``cb``
    None, width = k) or the re-rank candidates (coded, width = rerank depth; rabitq candidates
    cut to those whose error bound lets them reach the top ``bound_k`` when it is > 0). A plain
    Python function: of the two kernels, an index compiles only the one its encoding uses."""
    nq = qs.shape[0]
    out_d = np.full((nq, width), np.inf, np.float32)
    out_i = np.full((nq, width), -1, np.int64)
    stats = np.zeros((nq, N_STATS), np.int64)
    if cb is None:
        scan_full_batch(qs, metric, pv, sel_i, kept, filt, dead, out_d, out_i, stats)
    else:
        scan_coded_batch(qs, qh, heads, metric, pv, cb, sel_i, kept, filt, dead, bound_k, out_d, out_i, stats)
    return out_d, out_i, stats


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def scan_full_batch(qs, metric, pv, sel_i, kept, filt, dead, out_d, out_i, stats):
    """:func:`scan_batch` of full-vector lists, into ``out_d``/``out_i``/``stats``."""
    for i in numba.prange(qs.shape[0]):
        stats[i, 1] = 4096 * union_pages(pv, sel_i[i], kept[i], NO_EPOCH)
        scan_full(qs[i], metric, pv, sel_i[i], kept[i], filt, dead, out_d[i], out_i[i], stats[i])


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def scan_coded_batch(qs, qh, heads, metric, pv, cb, sel_i, kept, filt, dead, bound_k, out_d, out_i, stats):
    """:func:`scan_batch` of coded lists (sq8 or rabitq, by the type of ``cb``), into
    ``out_d``/``out_i``/``stats``."""
    width = out_d.shape[1]
    for i in numba.prange(qs.shape[0]):
        stats[i, 1] = 4096 * union_pages(pv, sel_i[i], kept[i], NO_EPOCH)
        cands = Candidates(out_d[i], out_i[i], np.zeros(width, np.float32), np.empty(qs.shape[1], np.float32))
        scan_candidates(qs[i], qh[i], metric, pv, cb, heads, sel_i[i], kept[i], filt, dead, cands, stats[i])
        cut_candidates(cb, cands, bound_k)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def full_lists_batch(qs, metric, pv, sel_i, kept, filt, dead, top_d, top_i, stats):
    """Scan full-vector lists (delta lists, label lists) ``sel_i[i, :kept[i]]`` of every query
    into its existing top-k ``top_d[i]``/``top_i[i]`` (replicas and ids already there are not
    inserted twice)."""
    for i in numba.prange(qs.shape[0]):
        stats[i, 1] += 4096 * union_pages(pv, sel_i[i], kept[i], NO_EPOCH)
        scan_full(qs[i], metric, pv, sel_i[i], kept[i], filt, dead, top_d[i], top_i[i], stats[i])


@numba.njit(cache=True, nogil=True)
def prefetch_rows_batch(vv, cand_r, epoch):
    """Request the vector-store pages of every query's candidates (``epoch``: see
    :mod:`spann.io.recent`)."""
    for i in range(cand_r.shape[0]):
        n = 0
        while n < cand_r.shape[1] and cand_r[i, n] >= 0:
            n += 1
        union_row_pages(vv, cand_r[i], n, epoch)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def rerank_batch(qs, metric, vv, cand_r, k, stats):
    """Exact re-rank of every query's candidates; returns (dists (nq, k), ids (nq, k))."""
    nq = qs.shape[0]
    out_d = np.full((nq, k), np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    for i in numba.prange(nq):
        n = 0
        while n < cand_r.shape[1] and cand_r[i, n] >= 0:
            n += 1
        stats[i, 1] += 4096 * union_row_pages(vv, cand_r[i], n, NO_EPOCH)
        rerank(qs[i], metric, vv, cand_r[i], out_d[i], out_i[i], stats[i])
    return out_d, out_i
