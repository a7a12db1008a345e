"""How a search of one snapshot runs: the path for its queries, the kernels' arguments, the readers.

Four paths: one unfiltered query through the single-query kernel
(:func:`~spann.search.kernels.search_one`, its compiled entry point and arguments cached per
snapshot, parameters and k), batches through the batch kernels (select, then scan, prefetch,
re-rank in groups of queries), batches read directly (each query on the single-query path, one
direct reader per thread) and filters on rare labels (an exact scan of their label lists). A
:class:`SearchPlanner` belongs to one open index; it holds the per-thread scratch, the direct
readers and the thread pools of direct batches.
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numba
import numpy as np

from spann.errors import ParameterError
from spann.format.layout import BRIDGE_PAGES, PAGE
from spann.io.direct import DirectReader, no_direct
from spann.io.postings import buffer_view, prefetch_lists
from spann.io.recent import NO_ADVICE, RECENT, epoch_now
from spann.io.vector_store import VectorsView, rows_buffer_view
from spann.kernels.metrics import Metric
from spann.kernels.threads import NumbaThreads, batch_threads
from spann.params import SearchParams
from spann.search.breakdown import RecallBreakdown, mark_in_lists, mark_in_rows, page_runs
from spann.search.kernels import (N_STATS, compiled_entry, full_lists_batch, prefetch_rows_batch, rerank_batch,
                                  scan_batch, search_one, select_batch)
from spann.search.result import SearchResult
from spann.search.snapshot import BaseReaders, Snapshot
from spann.search.views import Direct, Lists, Out, Plan, Scratch

__all__ = ["SearchPlanner"]

_new_tuple = tuple.__new__


class _ThreadState(threading.local):
    """Per-thread scratch of the single-query path (graph visited marks)."""

    visited: np.ndarray | None = None
    tag: int = 0
    #: direct reads: (snapshot (weak), lists reader, rows reader or None, lists view, rows view)
    direct: tuple | None = None


class SearchPlanner:
    """Runs the searches of one open index (``path`` for messages) over its build's readers
    ``base``: the index's ``layout``, ``metric``, the codebook the scan kernels take
    (``codebook``; None for full entries) and whether its lists are ``fetching`` (a zip or
    object-store index). ``preloaded``: the snapshot :meth:`spann.Index.preload` put in RAM
    (its searches request no pages)."""

    def __init__(self, path: Any, base: BaseReaders, layout: Any, metric: Metric, codebook: Any, fetching: bool):
        self.path = path
        self.base = base
        self.layout = layout
        self.metric = metric
        self.codebook = codebook
        self.fetching = fetching
        self.dim = layout.dim
        self.dtype = np.dtype(layout.dtype)
        self.preloaded: Snapshot | None = None
        #: re-rank depth as a multiple of k when SearchParams.rerank is 0 (0: the encoding's default;
        #: set from the index's operating points)
        self.rerank_factor = 0.0
        self._no_model = np.zeros(0, np.float64)
        self._no_i32 = np.zeros(0, np.int32)
        self._no_vectors: VectorsView | None = None
        self._local = _ThreadState()
        self._no_direct = no_direct()
        self._direct_readers: "weakref.WeakSet[DirectReader]" = weakref.WeakSet()  # every thread's, closed with us
        self._pools: dict[int, ThreadPoolExecutor] = {}  # threads of batches read directly, by count
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        """Stop the direct batches' threads and close every thread's direct readers (the
        caller waits for the searches in flight first)."""
        with self._pool_lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=True)
        for r in list(self._direct_readers):
            r.close()

    def vectors_view(self) -> VectorsView:
        if self.base.vectors is not None:
            return self.base.vectors.view
        if self._no_vectors is None:  # a typed empty view for full encodings
            u8 = np.zeros(8, np.uint8)
            self._no_vectors = VectorsView(u8=u8, i64=u8.view(np.int64), vec=u8.view(self.dtype), base=np.int64(0),
                                           n=np.int64(0), dim=np.int64(self.dim), rows_per_page=np.int64(1),
                                           page_bytes=np.int64(4096), row_bytes=np.int64(8), id_offset=np.int64(0),
                                           prefetchable=False, recent=RECENT)
        return self._no_vectors

    def _filter_plan(self, snap: "Snapshot", filt: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """(label-directory positions of the filter's labels that exist, the share of live
        vectors matching, whether every such label has a label list)."""
        lab = snap.labels
        vals = lab["values"]
        pos = np.searchsorted(vals, filt)
        ok = pos < vals.shape[0]
        pos, f = pos[ok], filt[ok]
        pos = pos[vals[pos] == f].astype(np.int32)
        share = float(lab["counts"][pos].sum()) / max(snap.live, 1)
        listed = bool(pos.size) and bool(np.all(lab["listed"][pos] > 0))
        return pos, min(share, 1.0), listed

    def _direct_args(self, snap, sizes: tuple[int, int] | None) -> Direct | None:
        """The :class:`~spann.search.views.Direct` of :func:`~spann.search.kernels.search_one`: this
        thread's direct readers of the posting array and the vector store, sized for ``sizes`` (lists, rows read per
        query at most), and the views of ``snap``'s lists and the rows over their buffers; with
        ``sizes`` None, None (read through the page cache)."""
        if sizes is None:  # reads through the page cache
            return None
        vv = self.vectors_view()
        n_lists, n_rows = max(int(sizes[0]), 8), max(int(sizes[1]), 8)
        base = self.base
        if base.postings.fetched or (base.vectors is not None and base.vectors.fetched):
            raise ParameterError(f"{self.path}: direct reads need a local index (a directory or an uncompressed, "
                                 f"page-aligned zip)")
        st = self._local
        cur = st.direct
        list_bytes = snap.direct_list_bytes(n_lists)
        lay = self.layout.coded and self.base.vectors.layout
        row_bytes = n_rows * ((lay.page_bytes if lay else 0) + BRIDGE_PAGES * PAGE)
        if cur is not None and cur[0]() is snap and cur[1].fits(n_lists, list_bytes) and \
                (cur[2] is None or cur[2].fits(n_rows, row_bytes)):
            return Direct(cur[1].reads, (cur[2].reads if cur[2] is not None else self._no_direct), cur[3], cur[4])
        st.direct = None  # until both readers are ready (a reader being replaced is closed first)
        lr = cur[1] if cur is not None and cur[1].source is base.postings.mapped else None
        rr = cur[2] if cur is not None and cur[2] is not None and base.vectors is not None and \
            cur[2].source is base.vectors.mapped else None
        if lr is None or not lr.fits(n_lists, list_bytes):
            if lr is not None and lr.pid == os.getpid():
                lr.close()
            lr = DirectReader(base.postings.mapped, n_lists, 2 * list_bytes)  # room to grow
            self._direct_readers.add(lr)
        if base.vectors is not None and (rr is None or not rr.fits(n_rows, row_bytes)):
            if rr is not None and rr.pid == os.getpid():
                rr.close()
            rr = DirectReader(base.vectors.mapped, 2 * n_rows, 2 * row_bytes)
            self._direct_readers.add(rr)
        pvd = buffer_view(snap.pv, lr.reads.buf)
        vvd = vv if rr is None else rows_buffer_view(vv, rr.reads.buf)
        st.direct = (weakref.ref(snap), lr, rr, pvd, vvd)
        return Direct(lr.reads, (rr.reads if rr is not None else self._no_direct), pvd, vvd)

    def _run_single(self, snap, kernel, mid: tuple, qs, qh, k: int, p: SearchParams, sizes=None):
        """One query through ``kernel`` (search_one or its compiled entry point) with the
        snapshot's arguments ``mid`` (filter, head index, plan, lists; ``sizes``: see
        :meth:`_direct_args`); returns (top_d, top_i, stats, every argument)."""
        st = self._local
        H = snap.heads.shape[0]
        if st.visited is None or st.visited.shape[0] != H:
            st.visited = np.zeros(H, np.uint32)
            st.tag = 0
        st.tag += 1
        if st.tag >= 2**32 - 1:
            st.visited[:] = 0
            st.tag = 1
        top_d = np.empty(k, np.float32)
        top_i = np.empty(k, np.int64)
        stats = np.zeros(N_STATS, np.int64)
        q, h = qs[0], qh[0]
        if not (q.dtype == np.float32 and q.flags.c_contiguous and q.flags.writeable):
            q = np.require(q, np.float32, "CW")
        if not (h.dtype == np.float32 and h.flags.c_contiguous and h.flags.writeable):
            h = np.require(h, np.float32, "CW")
        epoch = epoch_now() if p.prefetch and self.preloaded is not snap else NO_ADVICE
        # the records built as tuple.__new__ does it for a namedtuple, without its Python-level __new__
        args = (q, h) + mid + (_new_tuple(Scratch, (st.visited, np.uint32(st.tag), epoch)),
                               self._direct_args(snap, sizes), _new_tuple(Out, (top_d, top_i, stats)))
        kernel(*args)
        return top_d, top_i, stats, args

    def _search_single(self, snap, plan, qs, qh, k: int, p: SearchParams) -> SearchResult:
        """The latency path: one query, no filter, its kernel and arguments cached in ``plan``."""
        top_d, top_i, stats, _ = self._run_single(snap, plan[0], plan[1], qs, qh, k, p, plan[2])
        return SearchResult(ids=top_i[None], distances=self.metric.report(top_d[None]), lists_read=stats[0:1],
                            bytes_read=stats[1:2], distance_evals=stats[2:3])

    def search(self, snap: Snapshot, qs: np.ndarray, qh: np.ndarray, k: int, p: SearchParams, threads: int | None,
               filt: np.ndarray | None, trace: dict | None = None) -> SearchResult:
        """The k nearest neighbours of ``qs`` / ``qh`` (float32 (nq, dim) / (nq, dim''), see
        :class:`~spann.search.queries.QuerySpace`) in ``snap``, searched with ``p`` on ``threads``
        (batches), among the vectors carrying a label of ``filt`` (int64 (L,) sorted, or None).
        ``trace``: a dict that receives a batch's selected lists (``sel``, ``kept``) and its
        re-rank pool (``pool``, int64 (nq, R) store rows; (nq, 0) for full lists); with it the
        batch kernels run even for one query."""
        if p.direct and qs.shape[0] > 1 and trace is None:
            return self._search_direct_batch(snap, qs, qh, k, p, threads, filt)
        factor = self.rerank_factor  # read once: an operating-points change may land meanwhile
        if filt is None and qs.shape[0] == 1 and trace is None:
            plan = snap.single.get((p, k, factor))
            if plan is not None:
                return self._search_single(snap, plan, qs, qh, k, p)
        pv = snap.pv
        vv = self.vectors_view()
        cb = self.codebook
        H = snap.heads.shape[0]
        model = snap.pruner if (p.pruner and snap.pruner is not None) else self._no_model
        budget = min(p.max_postings, H)
        f32 = self._no_i32
        nq = qs.shape[0]
        if filt is not None:
            pos, share, listed = self._filter_plan(snap, filt)
            if pos.size == 0:  # no live vector carries these labels
                z = np.zeros(nq, np.int64)
                return SearchResult(ids=np.full((nq, k), -1, np.int64), distances=np.full((nq, k), np.inf, np.float32),
                                    lists_read=z, bytes_read=z.copy(), distance_evals=z.copy())
            if listed:
                return self._search_label_lists(snap, qs, k, pos, threads)
            f32 = filt
            # a filter matching a share s of the vectors reads ~1/sqrt(s) times the lists
            budget = min(H, int(np.ceil(budget / np.sqrt(max(share, 1e-4)))))
        m = min(max(2 * budget if model.size else budget, 32), H)  # heads retrieved
        efv = p.effective_ef(m)
        eps = np.float32(min(p.prune_eps, 1e18))
        R = p.effective_rerank(k, self.layout.codec, factor)
        bound_k = k if self.layout.codec.bounded and p.rerank_bound else 0
        code = self.metric.scan_code
        plan = Plan(metric=int(code), ef=int(efv), m=int(m), budget=int(budget), model=model, prune_eps=eps,
                    rerank=int(R), bound_k=int(bound_k))
        dead = snap.dead_keys
        fetching = self.fetching
        if nq == 1 and not fetching and trace is None:
            # every argument's numba type is fixed by the snapshot (its arrays, the index's views,
            # int and float32 scalars, writable contiguous float32 queries): after the first call,
            # the compiled entry point is called directly, with the arguments this snapshot, these
            # parameters and k fix (see _search_single)
            mid = (f32, snap.hx, plan, Lists(pv, cb, vv, snap.dv, dead, snap.delta_dead))
            kind = (model is self._no_model, f32 is self._no_i32, p.direct)  # one compiled entry per argument types
            kernel = snap.kernels.get(kind)
            sizes = (m + budget // 2, R + min(k, R)) if p.direct else None  # lists (early + kept), rows
            if kernel is None:
                top_d, top_i, stats, args = self._run_single(snap, search_one, mid, qs, qh, k, p, sizes)
                snap.kernels[kind] = compiled_entry(search_one, args)
            else:
                top_d, top_i, stats, _ = self._run_single(snap, kernel, mid, qs, qh, k, p, sizes)
                if filt is None:
                    if len(snap.single) > 64:
                        snap.single.clear()
                    snap.single[(p, k, factor)] = (kernel, mid, sizes)
            dists, ids, stt = top_d[None], top_i[None], stats[None]
            req = got = None
        else:
            coded = self.layout.coded
            req = np.zeros(nq, np.int64)  # ranged GETs and bytes of a fetched index's lists and pages
            got = np.zeros(nq, np.int64)
            with NumbaThreads(batch_threads(threads, nq)):
                n_threads = numba.get_num_threads()
                seeds = snap.seeds.for_rows(qh) if snap.groups.centroids.shape[0] == 0 else np.zeros((nq, 0), np.int32)
                n_chunks = max(1, min(nq, n_threads * 8))
                sel_i, _sel_d, kept, evals = select_batch(qh, snap.hx_batch, seeds, plan, n_chunks)
                if trace is not None:
                    trace.update(sel=sel_i, kept=kept, pool=np.full((nq, R if coded else 0), -1, np.int64))
                dists = np.empty((nq, k), np.float32)
                ids = np.empty((nq, k), np.int64)
                stt = np.empty((nq, N_STATS), np.int64)
                # scan in groups; with prefetch, the next group's lists are requested before this
                # group is scanned, so the device works while the CPU scans (a fetched index
                # fetches the whole batch's lists at once instead: all its GETs in flight together)
                prefetch = p.prefetch and not fetching and self.preloaded is not snap
                group = max(16, n_threads * 8) if prefetch else nq
                epoch = epoch_now()
                if prefetch:
                    prefetch_lists(pv, sel_i[:group], kept[:group], epoch)
                for a in range(0, nq, group):
                    b = min(nq, a + group)
                    if fetching:
                        _fetch_lists(self.base.postings, pv, sel_i[a:b], kept[a:b], req[a:b], got[a:b])
                        _fetch_lists(snap.delta_reader, snap.dv, sel_i[a:b], kept[a:b], req[a:b], got[a:b])
                    d_, i_, s_ = scan_batch(qs[a:b], qh[a:b], snap.heads, code, pv, cb, sel_i[a:b], kept[a:b],
                                            R if coded else k, f32, dead, bound_k)
                    if trace is not None and coded:
                        trace["pool"][a:b] = i_
                    if coded and prefetch:
                        prefetch_rows_batch(vv, i_, epoch)
                    if prefetch and b < nq:
                        prefetch_lists(pv, sel_i[b:b + group], kept[b:b + group], epoch)
                    if coded:
                        if fetching:
                            _fetch_rows(self.base.vectors, i_, req[a:b], got[a:b])
                        d_, i_ = rerank_batch(qs[a:b], code, vv, i_, k, s_)
                    if snap.has_delta:
                        full_lists_batch(qs[a:b], code, snap.dv, sel_i[a:b], kept[a:b], f32, snap.delta_dead, d_, i_,
                                         s_)
                    dists[a:b], ids[a:b], stt[a:b] = d_, i_, s_
                stt[:, 2] += evals
        dists = self.metric.report(dists)
        return SearchResult(ids=ids, distances=dists, lists_read=stt[:, 0], bytes_read=stt[:, 1],
                            distance_evals=stt[:, 2], requests=req, bytes_fetched=got)

    def breakdown(self, snap: Snapshot, qs: np.ndarray, qh: np.ndarray, gt: np.ndarray, p: SearchParams,
                  threads: int | None) -> RecallBreakdown:
        """The :class:`~spann.search.breakdown.RecallBreakdown` of a batch search of ``qs`` / ``qh``
        with ``p`` (read through the page cache, on the batch kernels) against the true
        neighbours ``gt`` (int64 (nq, k), C-contiguous)."""
        trace: dict = {}
        nq, k = gt.shape
        res = self.search(snap, qs, qh, k, p.replace(direct=False), threads, None, trace)
        sel, kept, pool = trace["sel"], trace["kept"], trace["pool"]
        vv = self.vectors_view()
        coded = bool(self.layout.coded)
        held = np.zeros((nq, k), np.bool_)
        mark_in_lists(snap.pv, vv, coded, sel, kept, gt, held)
        exact = np.zeros((nq, k), np.bool_)  # delta lists hold full vectors: scored exactly
        mark_in_lists(snap.dv, vv, False, sel, kept, gt, exact)
        if coded:
            mark_in_rows(vv, pool, gt, exact)
        ids = res.ids
        returned = ((ids[:, :, None] == gt[:, None, :]) & (ids[:, :, None] >= 0)).any(2)
        in_pool = (exact if coded else returned).sum(1)
        runs = np.zeros(nq, np.int64)
        page_runs(snap.pv, vv, sel, kept, pool, runs)
        page_runs(snap.dv, vv, sel, kept, pool[:, :0], runs)
        return RecallBreakdown(k=k, in_lists=(held | exact).sum(1), in_pool=in_pool, in_result=returned.sum(1),
                               lists=res.lists_read, runs=runs, rows=(pool >= 0).sum(1))

    def _search_direct_batch(self, snap, qs, qh, k, p, threads, filt) -> SearchResult:
        """A batch read directly: its queries one by one on the single-query path (each
        thread with its own direct readers), in ``threads`` interleaved shares on as many
        threads (0 / None: numba's thread count, one pool of threads per size kept until close;
        filtered batches on one: a label-list search runs parallel kernels, which must not be
        launched from several threads at once)."""
        nq = qs.shape[0]
        n = 1 if filt is not None else max(1, min(nq, threads or numba.config.NUMBA_NUM_THREADS))

        def chunk(c: int) -> list[SearchResult]:
            return [self.search(snap, qs[i:i + 1], qh[i:i + 1], k, p, 1, filt) for i in range(c, nq, n)]

        if n == 1:
            parts = [chunk(0)]
        else:
            with self._pool_lock:
                pool = self._pools.get(n)
                if pool is None:  # kept until close(): its threads keep their readers
                    pool = self._pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="spann-direct")
            futures = [pool.submit(chunk, c) for c in range(n)]
            wait(futures)  # all of them, so none reads after the search returns
            parts = [f.result() for f in futures]
        order = np.argsort(np.concatenate([np.arange(c, nq, n) for c in range(n)]), kind="stable")
        cat = {f: np.concatenate([getattr(r, f) for part in parts for r in part])[order]
               for f in ("ids", "distances", "lists_read", "bytes_read", "distance_evals")}
        return SearchResult(**cat)

    def _search_label_lists(self, snap, qs, k, pos, threads) -> SearchResult:
        """Exact filtered search over the label lists of rare labels (base and delta)."""
        nq = qs.shape[0]
        sel = np.ascontiguousarray(np.broadcast_to(pos, (nq, pos.size)))
        kept = np.full(nq, pos.size, np.int64)
        req = np.zeros(nq, np.int64)
        got = np.zeros(nq, np.int64)
        _fetch_lists(self.base.label_lists, snap.lv, sel, kept, req, got)
        _fetch_lists(snap.dlabel_reader, snap.dlv, sel, kept, req, got)
        dists = np.full((nq, k), np.inf, np.float32)
        ids = np.full((nq, k), -1, np.int64)
        stt = np.zeros((nq, N_STATS), np.int64)
        code = self.metric.scan_code
        with NumbaThreads(batch_threads(threads, nq)):
            full_lists_batch(qs, code, snap.lv, sel, kept, self._no_i32, snap.dead_ids, dists, ids, stt)
            full_lists_batch(qs, code, snap.dlv, sel, kept, self._no_i32, snap.delta_dead, dists, ids, stt)
        return SearchResult(ids=ids, distances=self.metric.report(dists), lists_read=stt[:, 0],
                            bytes_read=stt[:, 1], distance_evals=stt[:, 2], requests=req, bytes_fetched=got)


def _fetch_lists(reader, view, sel: np.ndarray, kept: np.ndarray, req: np.ndarray, got: np.ndarray) -> None:
    """Fetch the lists sel[i, :kept[i]] of a fetched reader (no-op for mapped ones); GETs and
    bytes are added to the first query that needed each list."""
    if reader is None or not reader.fetched:
        return
    nq, m = sel.shape
    mask = (np.arange(m)[None, :] < np.asarray(kept)[:, None]) & (sel >= 0)
    hs = sel[mask].astype(np.int64)
    owners = np.nonzero(mask)[0]
    c = view.counts[hs]
    ne = c > 0
    hs, owners = hs[ne], owners[ne]
    starts = view.offsets[hs]
    r, g = reader.mapped.ensure(hs, starts, starts + reader.layout.list_bytes_array(c[ne]), owners, nq)
    req += r
    got += g


def _fetch_rows(reader, rows: np.ndarray, req: np.ndarray, got: np.ndarray) -> None:
    """Fetch the vector-store pages of candidate rows (int64 (nq, R), -1 padded)."""
    if reader is None or not reader.fetched:
        return
    lay = reader.layout
    mask = rows >= 0
    pages = rows[mask] // lay.rows_per_page
    starts = pages * lay.page_bytes
    ends = np.minimum(starts + lay.page_bytes, lay.total_bytes)
    r, g = reader.mapped.ensure(pages, starts, ends, np.nonzero(mask)[0], rows.shape[0])
    req += r
    got += g
