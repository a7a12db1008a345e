"""The public Index: build, open, search, info."""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from spann.builder.pipeline import build_index
from spann.codecs.encodings import codebook_view
from spann.errors import IndexCorruptError, OutOfMemoryError, ParameterError, QueryError
from spann.format.labels import check_filter
from spann.format.layout import BRIDGE_PAGES, PAGE
from spann.io.direct import DirectReader, no_direct
from spann.io.fetched import FetchCache
from spann.io.index_files import IndexFiles, directory_bytes
from spann.io.postings import buffer_view, prefetch_lists
from spann.io.recent import NO_ADVICE, RECENT, epoch_now, forget
from spann.io.sources import is_url, open_store
from spann.io.vector_store import VectorsView, rows_buffer_view
from spann.kernels.query_space import rotate_query, single_query_space
from spann.kernels.threads import NumbaThreads, batch_threads
from spann.params import BuildParams, SearchParams
from spann.search.snapshot import BaseReaders, Snapshot
from spann.search.views import Direct, Lists, Out, Plan, Scratch
from spann.search.kernels import (N_STATS, compiled_entry, full_lists_batch, prefetch_rows_batch, rerank_batch,
                                  scan_batch, search_one, select_batch)
from spann.update.apply import add, delete, locate

__all__ = ["Index", "SearchResult", "build", "open_index", "DEFAULT_CACHE_BYTES"]

_new_tuple = tuple.__new__

#: RAM kept for the fetched lists of a zip or object-store index
DEFAULT_CACHE_BYTES = 256 << 20


@dataclass
class SearchResult:
    """Results of a batch: ``ids`` int64 (nq, k) and ``distances`` float32 (nq, k), ascending,
    -1 / inf padded; per query (int64 (nq,)): ``lists_read`` posting lists, ``bytes_read``
    bytes of the 4 KiB pages those lists and the re-ranked rows span (what a cold query reads
    from the device; a single query on head groups that requests its lists from the device
    also counts the lists it requested early and then did not keep, see
    :func:`spann.search.kernels.select_lists_early`; with ``direct=True``, the pages requested: a
    page shared by an early and a late request, or a bridged gap, counts each time it is read),
    ``distance_evals`` (heads + entries); for an index in an object store, ``requests``
    (ranged GETs, 0 for what the cache held) and ``bytes_fetched`` (0 for local indexes)."""

    ids: np.ndarray
    distances: np.ndarray
    lists_read: np.ndarray
    bytes_read: np.ndarray
    distance_evals: np.ndarray
    requests: np.ndarray | None = None
    bytes_fetched: np.ndarray | None = None

    def __post_init__(self) -> None:
        nq = self.ids.shape[0]
        if self.requests is None:
            self.requests = np.zeros(nq, np.int64)
        if self.bytes_fetched is None:
            self.bytes_fetched = np.zeros(nq, np.int64)

    def __iter__(self):  # ids, distances = index.search(...)
        return iter((self.ids, self.distances))


class _ThreadState(threading.local):
    """Per-thread scratch of the single-query path (graph visited marks)."""

    visited: np.ndarray | None = None
    tag: int = 0
    #: direct reads: (snapshot (weak), lists reader, rows reader or None, lists view, rows view)
    direct: tuple | None = None


def _mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _UpdateHandle:
    """The narrow view of an open index that :mod:`spann.update` works through: its shape,
    parameters and build-time readers, the current snapshot, and the locks of one exclusive
    batch. Updates see nothing else of the :class:`Index`."""

    def __init__(self, index: "Index"):
        self._ix = index

    path = property(lambda self: self._ix.path)
    dim = property(lambda self: self._ix.dim)
    dtype = property(lambda self: self._ix.dtype)
    n = property(lambda self: self._ix.n)
    layout = property(lambda self: self._ix.layout)
    attrs = property(lambda self: self._ix.attrs)
    build_params = property(lambda self: self._ix.build_params)
    codebook = property(lambda self: self._ix.codebook)
    metric = property(lambda self: self._ix._metric)
    base = property(lambda self: self._ix._base)  # the build's readers: postings, vectors, idmap
    write_lock = property(lambda self: self._ix._write_lock)  # this process's writers, one at a time

    def reload(self) -> bool:
        """Load the latest committed generation (the caller holds ``write_lock``)."""
        return self._ix._refresh_locked()

    def enter(self) -> "Snapshot":
        """The current snapshot, pinned until :meth:`leave`."""
        return self._ix._enter()

    def leave(self) -> None:
        self._ix._leave()


class Index:
    """An opened SPANN index: heads, head graph and the list directory in RAM; posting lists
    memory-mapped from the zarr shards (see :mod:`spann.io.postings`).

    Thread-safe for searching, and for updating (:meth:`add`, :meth:`delete`) while searching:
    each search sees one generation of the index. Use as a context manager (or call
    :meth:`close`).
    """

    def __init__(self, path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self._store = None
        self.path = path
        if is_url(path) or os.path.isfile(path) or (str(path).lower().endswith(".zip")
                                                    and not os.path.isdir(path)):  # read-only
            self._store = open_store(path, storage_options)
            self._store.cache = FetchCache(cache_bytes)
            self.path = self._store.where
        else:
            if storage_options:
                raise ParameterError("storage_options apply to object-store URLs only")
            self.path = Path(path)
        self._root_meta = os.fspath(self.path / "zarr.json") if self._store is None else ""
        self._fetch_lock = threading.Lock()
        for attempt in range(5):  # a writer may retire the generation we are reading: read again
            stamp = self._root_stamp()
            try:
                self._open(stamp)
                break
            except IndexCorruptError:
                if attempt == 4 or self._root_stamp() == stamp:
                    if self._store is not None:
                        self._store.close()
                    raise
            except BaseException:
                if self._store is not None:
                    self._store.close()
                raise
        self._local = _ThreadState()
        self._no_direct = no_direct()
        self._direct_readers: "weakref.WeakSet[DirectReader]" = weakref.WeakSet()  # every thread's, closed with us
        self._pools: dict[int, ThreadPoolExecutor] = {}  # threads of batches read directly, by count
        self._state = threading.Condition()
        self._write_lock = threading.Lock()
        self._active = 0
        self._closed = False
        self._preloaded = None  # the snapshot preload() put in RAM: its searches make no page requests
        self._evictions = 0  # evict() calls, so a preload racing one does not claim its pages
        self._param_cache: dict[tuple, SearchParams] = {}
        self._default_params = SearchParams()

    def _open(self, stamp) -> None:
        f = IndexFiles(self.path, store=self._store)
        try:
            self._base = BaseReaders(f, str(self.path))
            try:
                self._snap = Snapshot(f, self._base, str(self.path))
            except BaseException:
                self._base.close()
                raise
        finally:
            f.close()
        self._stamp = stamp
        #: lists (and vector-store pages) are fetched from the store before a search scans them
        self.fetching: bool = any(r.fetched for r in self._readers(self._snap))
        self.codebook = codebook_view(f.layout.encoding, f.codebook)
        self._scan_codebook = self.codebook if f.layout.coded else None  # what the kernels take: None for full
        self._no_model = np.zeros(0, np.float64)
        self._no_i32 = np.zeros(0, np.int32)
        self._no_i64 = np.zeros(0, np.int64)
        self.attrs: dict[str, Any] = f.attrs
        self._metric = f.metric
        self.metric: str = f.metric.name
        self.layout = f.layout
        self.dim: int = int(f.attrs["dim"])
        self.n: int = int(f.attrs["n"])
        self.dtype = np.dtype(f.layout.dtype)
        self.build_params = BuildParams.from_dict(f.attrs["params"])

    # the current generation's parts (read-only views for callers and tests)
    heads = property(lambda self: self._snap.heads)
    neighbors = property(lambda self: self._snap.neighbors)
    entries = property(lambda self: self._snap.entries)
    pruner = property(lambda self: self._snap.pruner)
    counts = property(lambda self: self._snap.counts)
    offsets = property(lambda self: self._snap.offsets)
    store = property(lambda self: self._base.postings if self._base is not None else None)
    vectors = property(lambda self: self._base.vectors if self._base is not None else None)
    generation = property(lambda self: self._snap.generation)

    def __len__(self) -> int:
        """Live vectors (added ones counted, deleted ones not)."""
        self._maybe_refresh()
        return int(self._snap.live)

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the maps (waits for searches in flight). Idempotent."""
        with self._state:
            self._closed = True
            while self._active:
                self._state.wait()
            for pool in getattr(self, "_pools", {}).values():
                pool.shutdown(wait=True)
            self._pools = {}
            for r in list(getattr(self, "_direct_readers", ())):
                r.close()
            if self._base is not None:
                self._snap.close()
                self._base.close()
                self._base = None
                if self._store is not None:
                    self._store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        """A zip file or object-store index: searched, never updated."""
        return self._store is not None

    @property
    def cache(self):
        """The :class:`spann.io.fetched.FetchCache` of an object-store index (requests, bytes
        fetched, bytes resident), else None."""
        return self._store.cache if self._store is not None else None

    def _root_stamp(self):
        if self._store is not None:
            return "fixed"  # a zip or object-store index is not updated in place
        try:
            st = os.stat(self._root_meta)
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def _maybe_refresh(self) -> None:
        """Pick up a generation committed by another Index or process (one stat per call).
        Never waits: while a writer of this Index holds the lock, the current one serves."""
        if self._root_stamp() != self._stamp and not self._closed:
            if self._write_lock.acquire(blocking=False):
                try:
                    self._refresh_locked()
                finally:
                    self._write_lock.release()

    def refresh(self) -> bool:
        """Load the index's current generation if it changed on disk (updates by another
        process); returns True if it did. A rebuild of the same path is not followed: reopen."""
        with self._write_lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        stamp = self._root_stamp()
        if stamp == self._stamp:
            return False
        try:
            f = IndexFiles(self.path)
        except (IndexCorruptError, OSError):
            return False  # mid-swap or gone: keep serving the generation we have
        try:
            if f.build_id != self._snap.build_id or int(f.attrs.get("generation", 1)) <= self._snap.generation:
                self._stamp = stamp
                return False
            snap = Snapshot(f, self._base, str(self.path))
        except (IndexCorruptError, OSError):
            return False  # its generation was replaced while we read it: the next call retries
        finally:
            f.close()
        self._install(snap, f.attrs, stamp)
        return True

    def _install(self, snap: "Snapshot", attrs: dict, stamp) -> None:
        with self._state:
            if self._closed:
                snap.close()
                return
            self._snap = snap  # searches in flight keep the old one until they end
            self.attrs = attrs
            self._stamp = stamp

    def _enter(self) -> "Snapshot":
        with self._state:
            if self._closed or self._base is None:
                raise QueryError(f"{self.path}: index is closed")
            self._active += 1
            return self._snap

    def _leave(self) -> None:
        with self._state:
            self._active -= 1
            if self._active == 0:
                self._state.notify_all()

    def prepare(self) -> "Index":
        """Compile (or load from numba's cache) every search kernel with one dummy query."""
        q = np.zeros((1, self.dim), np.float32)
        self.search(q[0], 1)
        self.search(np.repeat(q, 2, axis=0), 1, threads=1)
        return self

    # -- search --------------------------------------------------------------------------------
    @property
    def default_params(self) -> SearchParams:
        """The :class:`~spann.SearchParams` a search starts from; keyword overrides change it
        per call. Settable."""
        return self._default_params

    @default_params.setter
    def default_params(self, params: SearchParams) -> None:
        if not isinstance(params, SearchParams):
            raise ParameterError(f"default_params must be a spann.SearchParams, got {type(params).__name__}")
        self._default_params = params
        self._param_cache.clear()  # cached overrides were resolved against the old defaults

    def _params(self, overrides: dict[str, Any]) -> SearchParams:
        """SearchParams for these overrides (None: the default), cached (validation is not free
        on a 0.1 ms path)."""
        key = tuple(overrides.items())
        try:
            p = self._param_cache.get(key)
        except TypeError:  # unhashable argument: validate (and fail) below
            p = None
        if p is None:
            unknown = sorted(set(overrides) - set(SearchParams.__dataclass_fields__))
            if unknown:
                raise ParameterError(f"unknown search parameter {unknown[0]!r}; expected one of "
                                     f"{', '.join(SearchParams.__dataclass_fields__)}")
            changes = {k_: v for k_, v in overrides.items() if v is not None}
            p = self.default_params.replace(**changes) if changes else self.default_params
            if len(self._param_cache) > 256:
                self._param_cache.clear()
            self._param_cache[key] = p
        return p

    def _check_queries(self, queries: np.ndarray, k: int, live: int) -> tuple[np.ndarray, np.ndarray]:
        if (type(queries) is np.ndarray and queries.ndim == 1 and queries.dtype == np.float32
                and queries.shape[0] == self.dim and type(k) is int and 0 < k <= live):
            # one float32 query (the latency path): checks and normalisation in one kernel, the
            # rabitq rotation in another (the numpy steps below would cost more than the search itself)
            qs = np.empty((1, self.dim), np.float32)
            if single_query_space(queries, self._metric.normalize, qs[0]):
                if self.layout.codec.rotated_heads:
                    rot = self.codebook.rotation
                    qh = np.empty((1, rot.shape[1] + int(self._metric.mips)), np.float32)
                    rotate_query(qs[0], rot, qh[0])
                    return qs, qh
                if not self._metric.mips:
                    return qs, qs
                return qs, np.hstack([qs, np.zeros((1, 1), np.float32)])
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise QueryError(f"queries must be a 2-D array (nq, {self.dim}), got shape {q.shape}")
        if q.shape[1] != self.dim:
            raise QueryError(f"queries have dimension {q.shape[1]}, the index has {self.dim}")
        if q.shape[0] == 0:
            raise QueryError("queries are empty (0 rows)")
        if q.dtype.kind not in "fiu" or q.dtype.itemsize > 8:
            raise QueryError(f"queries have dtype {q.dtype}; expected float32, float64, uint8 or int8")
        if self.dtype.kind == "f" and q.dtype.kind in "iu" and self.attrs.get("source_dtype") == "float32":
            raise QueryError(f"queries are {q.dtype} but the index holds float32 vectors")
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        if k > live:
            raise QueryError(f"k = {k} exceeds the {live} vectors in the index")
        with np.errstate(over="ignore", invalid="ignore"):
            qf = np.asarray(q, dtype=np.float32)
            if not (qf.flags.c_contiguous and qf.flags.writeable):  # e.g. mapped queries: a copy (see VectorFile.read)
                qf = np.array(qf, order="C")
            bad = ~np.isfinite(qf).all(1)
        if bad.any():
            raise QueryError(f"query {int(np.flatnonzero(bad)[0])} contains NaN or Inf (or overflows float32)")
        qs, qh = self._metric.query_space(qf)
        if self.layout.codec.rotated_heads:  # heads live in the rotated space (see spann.codecs.rabitq)
            qh = np.ascontiguousarray(np.hstack([qs @ self.codebook.rotation, qh[:, self.dim:]]), dtype=np.float32)
        # squared distances must stay finite in float32 (~3.4e38)
        big = float(np.abs(qs).max(initial=0.0))
        if not (np.isfinite(qs).all() and np.isfinite(qh).all()) or big * big * qs.shape[1] > 1e36:
            raise QueryError(f"queries are too large in magnitude for float32 distances (largest |value| {big:.3g})")
        return qs, qh

    def search(self, queries: np.ndarray, k: int = 10, *, params: SearchParams | None = None, filter=None,
               threads: int | None = None, **overrides: Any) -> SearchResult:
        """k nearest neighbours of ``queries`` (nq, dim) or (dim,).

        One query takes a low-overhead single-thread path; a batch runs on ``threads`` cores
        (default: the cores no other process is running on when the batch starts, at least 1).
        ``filter``: a label or list of labels; only vectors carrying one of them are returned.
        How to search: ``params`` (a :class:`~spann.SearchParams`), or the index's defaults with
        keyword overrides of its fields — ``max_postings``, ``prune_eps``, ``ef``,
        ``rerank``, ``rerank_bound``, ``prefetch``, ``pruner``, ``direct`` (None keeps the
        default). Returns a :class:`SearchResult` (unpacks as ``ids, distances``).
        """
        if params is not None and not isinstance(params, SearchParams):
            raise ParameterError(f"params must be a spann.SearchParams, got {type(params).__name__}")
        if params is not None and any(v is not None for v in overrides.values()):
            raise ParameterError(f"give params or keyword overrides ({', '.join(overrides)}), not both")
        p = params if params is not None else self._params(overrides)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 0):
            raise ParameterError(f"threads must be an integer >= 0, got {threads!r}")
        if p.direct and self.fetching:
            raise ParameterError(f"{self.path}: direct reads need a local index (a directory or an uncompressed, "
                                 f"page-aligned zip)")
        filt = None
        if filter is not None:
            filt = check_filter(filter)
            if self._snap.labels is None:
                raise QueryError(f"{self.path}: the index has no labels to filter on (build it with labels)")
        self._maybe_refresh()
        snap = self._enter()
        try:
            qs, qh = self._check_queries(queries, k, snap.live)
            if self.fetching:  # one search at a time fetches into (and trims) the shared cache
                with self._fetch_lock:
                    try:
                        return self._search(snap, qs, qh, int(k), p, threads, filt)
                    finally:
                        self.cache.trim()
            return self._search(snap, qs, qh, int(k), p, threads, filt)
        finally:
            self._leave()

    def _vectors_view(self) -> VectorsView:
        if self._base.vectors is not None:
            return self._base.vectors.view
        if getattr(self, "_no_vectors", None) is None:  # a typed empty view for full encodings
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
        vv = self._vectors_view()
        n_lists, n_rows = max(int(sizes[0]), 8), max(int(sizes[1]), 8)
        base = self._base
        if base.postings.fetched or (base.vectors is not None and base.vectors.fetched):
            raise ParameterError(f"{self.path}: direct reads need a local index (a directory or an uncompressed, "
                                 f"page-aligned zip)")
        st = self._local
        cur = st.direct
        list_bytes = snap.direct_list_bytes(n_lists)
        lay = self.layout.coded and self._base.vectors.layout
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
        epoch = epoch_now() if p.prefetch and self._preloaded is not snap else NO_ADVICE
        # the records built as tuple.__new__ does it for a namedtuple, without its Python-level __new__
        args = (q, h) + mid + (_new_tuple(Scratch, (st.visited, np.uint32(st.tag), epoch)),
                               self._direct_args(snap, sizes), _new_tuple(Out, (top_d, top_i, stats)))
        kernel(*args)
        return top_d, top_i, stats, args

    def _search_single(self, snap, plan, qs, qh, k: int, p: SearchParams) -> SearchResult:
        """The latency path: one query, no filter, its kernel and arguments cached in ``plan``."""
        top_d, top_i, stats, _ = self._run_single(snap, plan[0], plan[1], qs, qh, k, p, plan[2])
        return SearchResult(ids=top_i[None], distances=self._metric.report(top_d[None]), lists_read=stats[0:1],
                            bytes_read=stats[1:2], distance_evals=stats[2:3])

    def _search(self, snap, qs, qh, k, p, threads, filt) -> SearchResult:
        if p.direct and qs.shape[0] > 1:
            return self._search_direct_batch(snap, qs, qh, k, p, threads, filt)
        if filt is None and qs.shape[0] == 1:
            plan = snap.single.get((p, k))
            if plan is not None:
                return self._search_single(snap, plan, qs, qh, k, p)
        pv = snap.pv
        vv = self._vectors_view()
        cb = self._scan_codebook
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
        R = p.effective_rerank(k, self.layout.codec)
        bound_k = k if self.layout.codec.bounded and p.rerank_bound else 0
        code = self._metric.scan_code
        plan = Plan(metric=int(code), ef=int(efv), m=int(m), budget=int(budget), model=model, prune_eps=eps,
                    rerank=int(R), bound_k=int(bound_k))
        dead = snap.dead_keys
        fetching = self.fetching
        if nq == 1 and not fetching:
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
                    snap.single[(p, k)] = (kernel, mid, sizes)
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
                dists = np.empty((nq, k), np.float32)
                ids = np.empty((nq, k), np.int64)
                stt = np.empty((nq, N_STATS), np.int64)
                # scan in groups; with prefetch, the next group's lists are requested before this
                # group is scanned, so the device works while the CPU scans (a fetched index
                # fetches the whole batch's lists at once instead: all its GETs in flight together)
                prefetch = p.prefetch and not fetching and self._preloaded is not snap
                group = max(16, n_threads * 8) if prefetch else nq
                epoch = epoch_now()
                if prefetch:
                    prefetch_lists(pv, sel_i[:group], kept[:group], epoch)
                for a in range(0, nq, group):
                    b = min(nq, a + group)
                    if fetching:
                        _fetch_lists(self._base.postings, pv, sel_i[a:b], kept[a:b], req[a:b], got[a:b])
                        _fetch_lists(snap.delta_reader, snap.dv, sel_i[a:b], kept[a:b], req[a:b], got[a:b])
                    d_, i_, s_ = scan_batch(qs[a:b], qh[a:b], snap.heads, code, pv, cb, sel_i[a:b], kept[a:b],
                                            R if coded else k, f32, dead, bound_k)
                    if coded and prefetch:
                        prefetch_rows_batch(vv, i_, epoch)
                    if prefetch and b < nq:
                        prefetch_lists(pv, sel_i[b:b + group], kept[b:b + group], epoch)
                    if coded:
                        if fetching:
                            _fetch_rows(self._base.vectors, i_, req[a:b], got[a:b])
                        d_, i_ = rerank_batch(qs[a:b], code, vv, i_, k, s_)
                    full_lists_batch(qs[a:b], code, snap.dv, sel_i[a:b], kept[a:b], f32, snap.delta_dead, d_, i_, s_)
                    dists[a:b], ids[a:b], stt[a:b] = d_, i_, s_
                stt[:, 2] += evals
        dists = self._metric.report(dists)
        return SearchResult(ids=ids, distances=dists, lists_read=stt[:, 0], bytes_read=stt[:, 1],
                            distance_evals=stt[:, 2], requests=req, bytes_fetched=got)

    def _search_direct_batch(self, snap, qs, qh, k, p, threads, filt) -> SearchResult:
        """A batch read directly: its queries one by one on the single-query path (each
        thread with its own direct readers), in ``threads`` interleaved shares on as many
        threads (0 / None: numba's thread count, one pool of threads per size kept until close;
        filtered batches on one: a label-list search runs parallel kernels, which must not be
        launched from several threads at once)."""
        nq = qs.shape[0]
        n = 1 if filt is not None else max(1, min(nq, threads or numba.config.NUMBA_NUM_THREADS))

        def chunk(c: int) -> list[SearchResult]:
            return [self._search(snap, qs[i:i + 1], qh[i:i + 1], k, p, 1, filt) for i in range(c, nq, n)]

        if n == 1:
            parts = [chunk(0)]
        else:
            with self._state:
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
        _fetch_lists(self._base.label_lists, snap.lv, sel, kept, req, got)
        _fetch_lists(snap.dlabel_reader, snap.dlv, sel, kept, req, got)
        dists = np.full((nq, k), np.inf, np.float32)
        ids = np.full((nq, k), -1, np.int64)
        stt = np.zeros((nq, N_STATS), np.int64)
        code = self._metric.scan_code
        with NumbaThreads(batch_threads(threads, nq)):
            full_lists_batch(qs, code, snap.lv, sel, kept, self._no_i32, snap.dead_ids, dists, ids, stt)
            full_lists_batch(qs, code, snap.dlv, sel, kept, self._no_i32, snap.delta_dead, dists, ids, stt)
        return SearchResult(ids=ids, distances=self._metric.report(dists), lists_read=stt[:, 0],
                            bytes_read=stt[:, 1], distance_evals=stt[:, 2], requests=req, bytes_fetched=got)

    # -- ids, vectors and updates ---------------------------------------------------------------
    def get(self, ids) -> np.ndarray:
        """The stored vectors of ``ids`` (int (m,)) as (m, dim) of the index's dtype (cosine:
        unit-normalised float32). An id that is not live raises :class:`QueryError`."""
        if self.fetching:
            raise QueryError(f"{self.path}: get() is not available on an object-store index (search only)")
        self._maybe_refresh()
        snap = self._enter()
        try:
            arr = np.atleast_1d(np.asarray(ids))
            if arr.dtype.kind not in "iu" or arr.ndim != 1:
                raise QueryError(f"ids must be integers (m,), got {arr.dtype} {arr.shape}")
            return locate(_UpdateHandle(self), snap, arr.astype(np.int64), missing="raise")[0]
        finally:
            self._leave()

    def add(self, vectors, ids=None, labels=None) -> np.ndarray:
        """Insert ``vectors`` (m, dim) with ``ids`` (int (m,), new; default: the next free ids)
        and ``labels``; durable and atomic (see :mod:`spann.update.apply`). Returns the ids."""
        self._check_writable()
        return add(_UpdateHandle(self), vectors, ids=ids, labels=labels)

    def delete(self, ids, *, missing_ok: bool = False) -> int:
        """Delete ``ids``; durable and atomic. Unknown ids raise unless ``missing_ok``.
        Returns the number of vectors deleted."""
        self._check_writable()
        return delete(_UpdateHandle(self), ids, missing_ok=missing_ok)

    def _check_writable(self) -> None:
        if self.read_only:
            raise QueryError(f"{self.path}: a zip or object-store index is read-only; update a local copy and export "
                             f"it again (spann export)")

    # -- information ---------------------------------------------------------------------------
    def posting_files(self) -> list[str]:
        """The files a query reads from (posting shards, and vector-store shards when coded)."""
        if self._base is None:
            return []
        return [f for r in self._readers(self._snap) for f in r.files()]

    def _readers(self, snap: "Snapshot") -> list:
        """Every byte-array reader a search of ``snap`` may read: base postings, vector store,
        label lists, the generation's delta readers."""
        return [r for r in (self._base.postings, self._base.vectors, self._base.label_lists, *snap._readers)
                if r is not None]

    def preload(self) -> "Index":
        """Read the index's posting lists and vectors into RAM and map them into this process, so
        that no query waits for the device or takes a page fault: for an index that fits in
        RAM, what a long-running process reaches after enough queries: later queries take no
        page faults and skip the first pass's fault cost (figures: docs/benchmarks.md). Until
        :meth:`evict` or an update installs a new generation, searches then make no page requests
        (``prefetch``): if the system reclaims pages anyway, their reads fault one by one.
        Raises :class:`~spann.errors.OutOfMemoryError` if the mapped bytes exceed the memory
        available (``MemAvailable``). Local indexes only (a fetched one: nothing). Returns the
        index."""
        snap = self._enter()
        try:
            if self.fetching:
                return self
            readers = self._readers(snap)
            need = sum(r.mapped.mapped_bytes for r in readers)
            avail = _mem_available()
            if avail is not None and need > avail:
                raise OutOfMemoryError(f"{self.path}: preloading needs {need / 2**30:.1f} GiB in RAM, "
                                 f"{avail / 2**30:.1f} GiB are available")
            with self._state:
                evictions = self._evictions
            for r in readers:
                r.preload()
            with self._state:
                if self._evictions == evictions and self._snap is snap:
                    self._preloaded = snap
        finally:
            self._leave()
        return self

    def evict(self) -> None:
        """Drop this index's posting lists from memory and the page cache (cold-cache measurement):
        the next read of every list goes to the device."""
        snap = self._enter()
        try:
            if self.cache is not None:
                with self._fetch_lock:
                    self.cache.clear()
            for r in self._readers(snap):
                r.evict()
            with self._state:
                self._evictions += 1
                self._preloaded = None
            forget()  # the pages requested lately are gone: request them again
        finally:
            self._leave()

    def ram_bytes(self) -> int:
        """Bytes the open index holds in RAM: heads, graph, list directories, tombstones and the
        delta's id directory (nothing per base vector)."""
        sn = self._snap
        g = sn.groups
        parts = [sn.heads, sn.walk.u8, sn.neighbors, sn.entries, g.perm, g.starts, g.centroids, g.u8, g.rows, g.norms,
                 sn.counts, sn.offsets, sn.dead_keys, sn.dead_ids, sn.delta_dead, sn.delta_ids, sn.delta_locs,
                 sn.dv.offsets,
                 sn.dv.counts]
        if sn.labels is not None:
            parts += list(sn.labels.values())
        return int(sum(a.nbytes for a in parts))

    def info(self) -> dict[str, Any]:
        """Attributes (metric, dims, build parameters and statistics) plus sizes on disk and in RAM."""
        if self._closed:
            raise QueryError(f"{self.path}: index is closed")
        H = self.heads.shape[0]
        ram = self.ram_bytes()
        disk = directory_bytes(self.path) if self._store is None else self._store.total_bytes()
        return {**self.attrs, "path": str(self.path), "disk_bytes": disk, "ram_bytes": ram,
                "ram_bytes_per_head": ram / H, "heads_in_ram": H, "live": int(self._snap.live)}

    def __repr__(self) -> str:
        return (f"Index({str(self.path)!r}, metric={self.metric}, n={int(self._snap.live)}, dim={self.dim}, "
                f"heads={self.heads.shape[0]})")


def build(data, index_dir: str | os.PathLike[str], *, metric: str, params: BuildParams | None = None,
          fmt: str | None = None, overwrite: bool = False, progress: bool = False, ids=None, labels=None,
          resume: bool = False, storage_options: dict[str, Any] | None = None, client=None,
          **param_overrides: Any) -> Index:
    """Build an index from ``data`` (array (n, d) float32/uint8/int8, or a vector file path) and
    open it. ``ids``: int64 (n,) distinct ids >= 0 (default: row numbers); ``labels``: int
    (n,) or (n, L) labels for filtered search; ``resume``: continue an interrupted build of the
    same data and parameters. ``index_dir`` may be a ``.zip`` file or an object-store URL
    (``storage_options`` for the store). ``client``: a Dask client to build on its cluster
    (``data`` a vector file path the workers can read; see :mod:`spann.builder.dask`). Keyword
    overrides are :class:`BuildParams` fields (``head_ratio=0.1`` ...). ``progress``: show
    progress bars on stderr (off by default: the library prints nothing; its stages are logged
    to the ``spann.builder.pipeline`` logger)."""
    p = params or BuildParams()
    if param_overrides:
        p = p.replace(**param_overrides)
    build_index(data, index_dir, metric=metric, params=p, fmt=fmt, overwrite=overwrite, progress=progress, ids=ids,
                labels=labels, resume=resume, storage_options=storage_options, client=client)
    return Index(index_dir, storage_options=storage_options if is_url(index_dir) else None)


def open_index(index_dir: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
               cache_bytes: int = DEFAULT_CACHE_BYTES) -> Index:
    """Open an index built by :func:`build` (or ``spann build``): a directory, a zip file
    (``spann export``) or an object-store URL (``s3://bucket/prefix``; ``storage_options``
    as for obstore, credentials from the environment by default). ``cache_bytes``: the RAM
    kept for fetched lists of a zip or object-store index (0: fetch on every search)."""
    return Index(index_dir, storage_options=storage_options, cache_bytes=cache_bytes)


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
