"""The public Index: build, open, search, info."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from spann.builder.pipeline import build_index
from spann.datasets.vector_file import VectorFile
from spann.errors import IndexCorruptError, OutOfMemoryError, ParameterError, QueryError
from spann.format.labels import check_filter
from spann.io.fetched import FetchCache
from spann.io.index_files import IndexFiles, directory_bytes
from spann.io.osio import release_free_heap
from spann.io.recent import forget
from spann.io.sources import is_url, open_store
from spann.params import BuildParams, SearchParams
from spann.search.breakdown import RecallBreakdown
from spann.search.reader import IndexReader
from spann.search.operating_points import DEFAULT_RECALL, OperatingPoints, check_recall, measure_operating_points
from spann.search.result import SearchResult
from spann.search.snapshot import Snapshot
from spann.update.apply import add, delete, locate

__all__ = ["Index", "SearchResult", "build", "open_index", "DEFAULT_CACHE_BYTES"]

#: RAM kept for the fetched lists of a zip or object-store index
DEFAULT_CACHE_BYTES = 256 << 20


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
        self._state = threading.Condition()
        self._write_lock = threading.Lock()
        self._active = 0
        self._closed = False
        self._evictions = 0  # evict() calls, so a preload racing one does not claim its pages
        self._param_cache: dict[tuple, SearchParams] = {}
        self._default_params = SearchParams()
        self._points: OperatingPoints | None = None
        self._recall_points: dict[float, int] = {}
        stored = (self.attrs.get("stats") or {}).get("operating_points")
        if stored is not None:
            try:
                self.operating_points = OperatingPoints.from_dict(stored)
            except ParameterError as e:
                self.close()
                raise IndexCorruptError(f"{self.path}: {e}") from None

    def _open(self, stamp) -> None:
        r = IndexReader(self.path, store=self._store)
        self._base, self._snap, self._planner, self._queries = r.base, r.snap, r.planner, r.queries
        self._stamp = stamp
        #: lists (and vector-store pages) are fetched from the store before a search scans them
        self.fetching: bool = r.fetching
        self.codebook = r.codebook
        self.attrs: dict[str, Any] = r.attrs
        self._metric = r.metric
        self.metric: str = r.metric.name
        self.layout = r.layout
        self.dim: int = r.dim
        self.n: int = int(r.attrs["n"])
        self.dtype = r.dtype
        self.build_params = BuildParams.stored(r.attrs["params"])

    # the current generation's parts (read-only views for callers and tests)
    heads = property(lambda self: self._snap.heads)
    neighbors = property(lambda self: self._snap.neighbors, doc="The head graph, int32 (H, R), -1 padded (a copy; "
                         "the index holds it unpadded)")
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
            if getattr(self, "_planner", None) is not None:
                self._planner.close()
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
        release_free_heap()  # the new generation's temporaries
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
        """Compile (or load from numba's cache) the search kernels this generation uses, with one
        dummy query and a batch of two (the delta-list scan of batches compiles with the first
        batch after an update adds delta lists)."""
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

    @property
    def operating_points(self) -> OperatingPoints | None:
        """The index's measured recall per list budget (:class:`~spann.OperatingPoints`; None
        for an index built without calibration queries): ``recall=`` picks from them and the
        default search is their point for recall@10 :data:`~spann.search.operating_points.DEFAULT_RECALL`.
        Settable (e.g. to the result of :meth:`calibrate`); setting them resets
        :attr:`default_params` to that point."""
        return self._points

    @operating_points.setter
    def operating_points(self, points: OperatingPoints | None) -> None:
        if points is not None and not isinstance(points, OperatingPoints):
            raise ParameterError(f"operating_points must be spann.OperatingPoints or None, got {type(points).__name__}")
        self._points = points
        self._recall_points: dict[float, int] = {}  # target -> max_postings, for these points
        self._planner.rerank_factor = points.rerank_factor if points is not None else 0.0
        self.default_params = SearchParams(max_postings=points.max_postings_for(DEFAULT_RECALL)) \
            if points is not None else SearchParams()

    def calibrate(self, queries: np.ndarray, gt_ids: np.ndarray, k: int = 10, *,
                  threads: int | None = None) -> OperatingPoints:
        """Measure this index's operating points with your own ``queries`` (nq, dim) and their
        true neighbours ``gt_ids`` (int (nq, >= k), in the index's ids): recall@``k`` at each
        list budget, and for coded entries the re-rank depth. Use it when your queries differ
        from the base (the build calibrates with base rows); install the result with
        ``index.operating_points = points`` (for this handle: keep ``points.to_dict()`` to
        restore it with :meth:`OperatingPoints.from_dict`). Local indexes only."""
        if self.fetching:
            raise QueryError(f"{self.path}: calibration reads lists in place: it needs a local index")
        k = int(k)
        gt = np.asarray(gt_ids)
        q = np.asarray(queries)
        if gt.ndim != 2 or gt.dtype.kind not in "iu" or gt.shape[1] < k or q.ndim != 2 or gt.shape[0] != q.shape[0]:
            raise QueryError(f"calibration needs queries (nq, {self.dim}) and integer ground truth (nq, >= {k}); "
                             f"got {q.shape} and {gt.dtype} {gt.shape}")
        if q.shape[0] < 20:
            raise QueryError(f"calibration needs at least 20 queries, got {q.shape[0]}")

        def search(qq, kk, **p):
            return self.search(qq, kk, threads=threads, **p)

        def breakdown(qq, g, kk, **p):
            return self.recall_breakdown(qq, g, kk, threads=threads, **p)

        # every search of the measurement that depends on the re-rank depth names it
        return measure_operating_points(search, breakdown, q, gt.astype(np.int64), None,
                                        int(self.heads.shape[0]), bool(self.layout.coded), k=k)

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

    def _resolve(self, params: SearchParams | None, threads: int | None, overrides: dict[str, Any]) -> SearchParams:
        """The SearchParams of a call (``params`` or the defaults with ``overrides``), with
        ``threads`` checked."""
        if params is not None and not isinstance(params, SearchParams):
            raise ParameterError(f"params must be a spann.SearchParams, got {type(params).__name__}")
        if params is not None and any(v is not None for v in overrides.values()):
            raise ParameterError(f"give params or keyword overrides ({', '.join(overrides)}), not both")
        recall = overrides.pop("recall", None)
        if recall is not None:
            check_recall(recall)
            if params is not None or overrides.get("max_postings") is not None:
                raise ParameterError("give recall or max_postings (or params), not both")
            if self._points is None:
                raise ParameterError(f"{self.path}: the index has no operating points to pick a recall from (built "
                                     f"with calibration_queries=0, or by an older spann): give max_postings, or "
                                     f"measure them with Index.calibrate")
            mp = self._recall_points.get(recall)
            if mp is None:
                mp = self._recall_points[recall] = self._points.max_postings_for(recall)
            overrides = {**overrides, "max_postings": mp}
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 0):
            raise ParameterError(f"threads must be an integer >= 0, got {threads!r}")
        return params if params is not None else self._params(overrides)

    def search(self, queries: np.ndarray, k: int = 10, *, params: SearchParams | None = None, filter=None,
               threads: int | None = None, **overrides: Any) -> SearchResult:
        """k nearest neighbours of ``queries`` (nq, dim) or (dim,).

        One query takes a low-overhead single-thread path; a batch runs on ``threads`` cores
        (default: the cores no other process is running on when the batch starts, at least 1).
        ``filter``: a label or list of labels; only vectors carrying one of them are returned.
        How to search: ``params`` (a :class:`~spann.SearchParams`), or the index's defaults with
        keyword overrides of its fields — ``max_postings``, ``prune_eps``, ``ef``,
        ``rerank``, ``rerank_bound``, ``prefetch``, ``pruner``, ``direct`` (None keeps the
        default). ``recall=0.95``: instead of ``max_postings``, the fewest lists whose measured
        recall@10 reaches that target (see :attr:`operating_points`). Returns a
        :class:`SearchResult` (unpacks as ``ids, distances``).
        """
        p = self._resolve(params, threads, overrides)
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
            qs, qh = self._queries.prepare(queries, k, snap.live)
            if self.fetching:  # one search at a time fetches into (and trims) the shared cache
                with self._fetch_lock:
                    try:
                        return self._planner.search(snap, qs, qh, int(k), p, threads, filt)
                    finally:
                        self.cache.trim()
            return self._planner.search(snap, qs, qh, int(k), p, threads, filt)
        finally:
            self._leave()

    def recall_breakdown(self, queries: np.ndarray, gt_ids: np.ndarray, k: int = 10, *,
                         params: SearchParams | None = None, threads: int | None = None,
                         **overrides: Any) -> RecallBreakdown:
        """Where a batch search of ``queries`` (nq, dim) loses recall against their true
        neighbours ``gt_ids`` (int (nq, >= k), in the index's ids): per query, how many of the
        true top-k the selected lists hold, the re-rank pool keeps and the result returns, and
        the lists, page runs (device requests) and rows it reads; see
        :mod:`spann.search.breakdown`. Search parameters as for :meth:`search` (read through
        the page cache on the batch kernels, whatever ``direct`` says). Local indexes only."""
        p = self._resolve(params, threads, overrides)
        if self.fetching:
            raise QueryError(f"{self.path}: the recall breakdown reads lists in place: it needs a local index")
        gt = np.asarray(gt_ids)
        if gt.ndim != 2 or gt.dtype.kind not in "iu":
            raise QueryError(f"ground truth must be integer ids (nq, k), got {gt.dtype} {gt.shape}")
        self._maybe_refresh()
        snap = self._enter()
        try:
            qs, qh = self._queries.prepare(queries, k, snap.live)
            if gt.shape[0] != qs.shape[0] or gt.shape[1] < k:
                raise QueryError(f"ground truth {gt.shape} must have a row per query ({qs.shape[0]}) and >= {k} ids")
            return self._planner.breakdown(snap, qs, qh, np.ascontiguousarray(gt[:, :k], np.int64), p, threads)
        finally:
            self._leave()

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
        return [f for r in self._base.readers(self._snap) for f in r.files()]

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
            readers = self._base.readers(snap)
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
                    self._planner.preloaded = snap
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
            for r in self._base.readers(snap):
                r.evict()
            with self._state:
                self._evictions += 1
                self._planner.preloaded = None
            forget()  # the pages requested lately are gone: request them again
        finally:
            self._leave()

    def ram_bytes(self) -> int:
        """Bytes the open index holds in RAM: heads, graph, list directories, tombstones and the
        delta's id directory (nothing per base vector)."""
        return self._snap.ram_bytes()

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
          overwrite: bool = False, progress: bool = False, ids=None, labels=None, resume: bool = False,
          storage_options: dict[str, Any] | None = None, client=None, **param_overrides: Any) -> Index:
    """Build an index from ``data`` and open it. ``data``: an array (n, d) float32/uint8/int8,
    a vector file path (its format from its extension), or a :class:`~spann.datasets.VectorFile`
    (``spann.datasets.open_vectors(path, fmt)`` names the format of any file; the build reads
    it from its path). ``ids``: int64 (n,) distinct ids >= 0 (default: row numbers);
    ``labels``: int (n,) or (n, L) labels for filtered search; ``resume``: continue an
    interrupted build of the same data and parameters. ``index_dir`` may be a ``.zip`` file or
    an object-store URL (``storage_options`` for the store). ``client``: a Dask client to build
    on its cluster (``data`` a vector file the workers can read; see
    :mod:`spann.builder.dask`). Keyword overrides are :class:`BuildParams` fields
    (``head_ratio=0.1`` ...). ``progress``: show progress bars on stderr (off by default: the
    library prints nothing; its stages are logged to the ``spann.builder.pipeline`` logger)."""
    p = params or BuildParams()
    if param_overrides:
        p = p.replace(**param_overrides)
    fmt = None
    if isinstance(data, VectorFile):  # read again from its path, in its format (Dask workers open it too)
        data, fmt = data.path, data.fmt
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

