"""The public Index: build, open, search, info."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from spann.errors import ParameterError, QueryError
from spann.params import BuildParams, SearchParams
from spann.encodings import codebook_view
from spann.postings import LocalPostings, prefetch_lists
from spann.search import N_STATS, prefetch_rows_batch, rerank_batch, scan_batch, search_one, select_batch
from spann.vector_store import LocalVectors, VectorsView
from spann.storage import IndexFiles, directory_bytes

__all__ = ["Index", "SearchResult", "build", "open_index"]


@dataclass
class SearchResult:
    """Results of a batch: ``ids`` int64 (nq, k) and ``distances`` float32 (nq, k), ascending,
    -1 / inf padded; per query (int64 (nq,)): ``lists_read`` posting lists, ``bytes_read``
    bytes of the 4 KiB pages those lists span (what a cold query reads from the device),
    ``distance_evals`` (heads + entries)."""

    ids: np.ndarray
    distances: np.ndarray
    lists_read: np.ndarray
    bytes_read: np.ndarray
    distance_evals: np.ndarray

    def __iter__(self):  # ids, distances = index.search(...)
        return iter((self.ids, self.distances))


class _ThreadState(threading.local):
    """Per-thread scratch of the single-query path (graph visited marks)."""

    visited: np.ndarray | None = None
    tag: int = 0


class Index:
    """An opened SPANN index: heads, head graph and the list directory in RAM; posting lists
    memory-mapped from the zarr shards (see :mod:`spann.postings`).

    Thread-safe for searching. Use as a context manager (or call :meth:`close`).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        f = IndexFiles(self.path)
        self.vectors = None
        try:
            self.store = LocalPostings(f.dir_fd, str(self.path), f.postings_path, f.offsets, f.counts, f.layout)
            if f.layout.coded:
                try:
                    self.vectors = LocalVectors(f.dir_fd, str(self.path), f.vectors_path, f.store)
                except BaseException:
                    self.store.close()
                    raise
        finally:
            f.close()
        self.codebook = codebook_view(f.layout.encoding, f.codebook)
        self.pruner = f.pruner
        self._no_model = np.zeros(0, np.float64)
        self.attrs: dict[str, Any] = f.attrs
        self._metric = f.metric
        self.metric: str = f.metric.name
        self.layout = f.layout
        self.dim: int = int(f.attrs["dim"])
        self.n: int = int(f.attrs["n"])
        self.dtype = np.dtype(f.layout.dtype)
        self.build_params = BuildParams.from_dict(f.attrs["params"])
        self.heads = f.heads
        self.neighbors = f.neighbors
        self.entries = f.entries
        self.counts = f.counts
        self.offsets = f.offsets
        self._local = _ThreadState()
        self._state = threading.Condition()
        self._active = 0
        self._closed = False
        self.default_params = SearchParams()
        self._param_cache: dict[tuple, SearchParams] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the maps (waits for searches in flight). Idempotent."""
        with self._state:
            self._closed = True
            while self._active:
                self._state.wait()
            if self.store is not None:
                self.store.close()
                self.store = None
            if self.vectors is not None:
                self.vectors.close()
                self.vectors = None

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _enter(self):
        with self._state:
            if self._closed or self.store is None:
                raise QueryError(f"{self.path}: index is closed")
            self._active += 1
            return self.store

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
    def _params(self, max_postings, prune_eps, ef, rerank, prefetch, pruner) -> SearchParams:
        """SearchParams for these overrides, cached (validation is not free on a 0.1 ms path)."""
        key = (max_postings, prune_eps, ef, rerank, prefetch, pruner)
        try:
            p = self._param_cache.get(key)
        except TypeError:  # unhashable argument: validate (and fail) below
            p = None
        if p is None:
            changes = {k_: v for k_, v in zip(("max_postings", "prune_eps", "ef", "rerank", "prefetch", "pruner"), key)
                       if v is not None}
            p = self.default_params.replace(**changes) if changes else self.default_params
            if len(self._param_cache) > 256:
                self._param_cache.clear()
            self._param_cache[key] = p
        return p

    def _check_queries(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
        if k > self.n:
            raise QueryError(f"k = {k} exceeds the {self.n} vectors in the index")
        with np.errstate(over="ignore", invalid="ignore"):
            qf = np.asarray(q, dtype=np.float32)
            bad = ~np.isfinite(qf).all(1)
        if bad.any():
            raise QueryError(f"query {int(np.flatnonzero(bad)[0])} contains NaN or Inf (or overflows float32)")
        qs, qh = self._metric.query_space(qf)
        if self.layout.encoding == "rabitq":  # heads live in the rotated space (see spann.rabitq)
            qh = np.ascontiguousarray(np.hstack([qs @ self.codebook.rotation, qh[:, self.dim:]]), dtype=np.float32)
        # squared distances must stay finite in float32 (~3.4e38)
        big = float(np.abs(qs).max(initial=0.0))
        if not (np.isfinite(qs).all() and np.isfinite(qh).all()) or big * big * qs.shape[1] > 1e36:
            raise QueryError(f"queries are too large in magnitude for float32 distances (largest |value| {big:.3g})")
        return qs, qh

    def search(self, queries: np.ndarray, k: int = 10, *, max_postings: int | None = None,
               prune_eps: float | None = None, ef: int | None = None, rerank: int | None = None,
               prefetch: bool | None = None, pruner: bool | None = None, threads: int | None = None,
               params: SearchParams | None = None) -> SearchResult:
        """k nearest neighbours of ``queries`` (nq, dim) or (dim,).

        One query takes a low-overhead single-thread path; a batch runs on ``threads`` cores
        (default: all). Returns a :class:`SearchResult` (unpacks as ``ids, distances``).
        """
        if params is not None and not isinstance(params, SearchParams):
            raise ParameterError(f"params must be a spann.SearchParams, got {type(params).__name__}")
        p = params if params is not None else self._params(max_postings, prune_eps, ef, rerank, prefetch, pruner)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 0):
            raise ParameterError(f"threads must be an integer >= 0, got {threads!r}")
        qs, qh = self._check_queries(queries, k)
        store = self._enter()
        try:
            return self._search(store, qs, qh, int(k), p, threads)
        finally:
            self._leave()

    def _vectors_view(self) -> VectorsView:
        if self.vectors is not None:
            return self.vectors.view
        if getattr(self, "_no_vectors", None) is None:  # a typed empty view for full encodings
            u8 = np.zeros(8, np.uint8)
            self._no_vectors = VectorsView(u8=u8, i64=u8.view(np.int64), vec=u8.view(self.dtype), base=np.int64(0),
                                           n=np.int64(0), dim=np.int64(self.dim), rows_per_page=np.int64(1),
                                           page_bytes=np.int64(4096), row_bytes=np.int64(8), id_offset=np.int64(0),
                                           prefetchable=False)
        return self._no_vectors

    def _search(self, store, qs, qh, k, p, threads) -> SearchResult:
        pv = store.view
        vv = self._vectors_view()
        cb = self.codebook
        H = self.heads.shape[0]
        model = self.pruner if (p.pruner and self.pruner is not None) else self._no_model
        budget = min(p.max_postings, H)
        m = min(max(2 * budget if model.size else budget, 32), H)  # heads retrieved
        efv = p.effective_ef(m)
        eps = np.float32(min(p.prune_eps, 1e18))
        R = p.effective_rerank(k, self.layout.encoding)
        code = self._metric.scan_code
        nq = qs.shape[0]
        if nq == 1:
            st = self._local
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
            search_one(qs[0], qh[0], code, self.heads, self.neighbors, self.entries, efv, m, budget, model, eps, pv, cb,
                       vv, R, bool(p.prefetch), st.visited, np.uint32(st.tag), top_d, top_i, stats)
            dists, ids, stt = top_d[None], top_i[None], stats[None]
        else:
            n_threads = threads or numba.config.NUMBA_NUM_THREADS
            n_threads = max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS))
            old = numba.get_num_threads()
            numba.set_num_threads(n_threads)
            coded = self.layout.coded
            try:
                sel_i, _sel_d, kept, evals = select_batch(qh, self.heads, self.neighbors, self.entries, efv, m, budget,
                                                          model, eps, max(1, min(nq, n_threads * 8)))
                dists = np.empty((nq, k), np.float32)
                ids = np.empty((nq, k), np.int64)
                stt = np.empty((nq, N_STATS), np.int64)
                # scan in groups; with prefetch, the next group's lists are requested before this
                # group is scanned, so the device works while the CPU scans
                group = max(16, n_threads * 8) if p.prefetch else nq
                if p.prefetch:
                    prefetch_lists(pv, sel_i[:group], kept[:group])
                for a in range(0, nq, group):
                    b = min(nq, a + group)
                    d_, i_, s_ = scan_batch(qs[a:b], qh[a:b], self.heads, code, pv, cb, sel_i[a:b], kept[a:b], R if coded else k)
                    if coded:
                        if p.prefetch:
                            prefetch_rows_batch(vv, i_)
                    if p.prefetch and b < nq:
                        prefetch_lists(pv, sel_i[b:b + group], kept[b:b + group])
                    if coded:
                        d_, i_ = rerank_batch(qs[a:b], code, vv, i_, k, s_)
                    dists[a:b], ids[a:b], stt[a:b] = d_, i_, s_
                stt[:, 2] += evals
            finally:
                numba.set_num_threads(old)
        dists = self._metric.report(dists)
        return SearchResult(ids=ids, distances=dists, lists_read=stt[:, 0], bytes_read=stt[:, 1],
                            distance_evals=stt[:, 2])

    # -- information ---------------------------------------------------------------------------
    def posting_files(self) -> list[str]:
        """The files a query reads from (posting shards, and vector-store shards when coded)."""
        if self.store is None:
            return []
        return self.store.files() + (self.vectors.files() if self.vectors is not None else [])

    def evict(self) -> None:
        """Drop this index's posting lists from memory and the page cache (cold-cache measurement):
        the next read of every list goes to the device."""
        store = self._enter()
        try:
            store.evict()
            if self.vectors is not None:
                self.vectors.evict()
        finally:
            self._leave()

    def ram_bytes(self) -> int:
        """Bytes the open index holds in RAM: heads, graph, list directory (no per-vector term)."""
        return int(sum(a.nbytes for a in (self.heads, self.neighbors, self.entries, self.counts, self.offsets)))

    def info(self) -> dict[str, Any]:
        """Attributes (metric, dims, build parameters and statistics) plus sizes on disk and in RAM."""
        if self._closed:
            raise QueryError(f"{self.path}: index is closed")
        H = self.heads.shape[0]
        ram = self.ram_bytes()
        return {**self.attrs, "path": str(self.path), "disk_bytes": directory_bytes(self.path), "ram_bytes": ram,
                "ram_bytes_per_head": ram / H, "heads_in_ram": H}

    def __repr__(self) -> str:
        return (f"Index({str(self.path)!r}, metric={self.metric}, n={self.n}, dim={self.dim}, "
                f"heads={self.heads.shape[0]})")


def build(data, index_dir: str | os.PathLike[str], *, metric: str, params: BuildParams | None = None,
          fmt: str | None = None, overwrite: bool = False, progress: bool = True, **param_overrides: Any) -> Index:
    """Build an index from ``data`` (array (n, d) float32/uint8/int8, or a vector file path) and
    open it. Keyword overrides are :class:`BuildParams` fields (``head_ratio=0.1`` ...)."""
    from spann.builder import build_index
    p = params or BuildParams()
    if param_overrides:
        p = p.replace(**param_overrides)
    build_index(data, index_dir, metric=metric, params=p, fmt=fmt, overwrite=overwrite, progress=progress)
    return Index(index_dir)


def open_index(index_dir: str | os.PathLike[str]) -> Index:
    """Open an index built by :func:`build` (or ``spann build``)."""
    return Index(index_dir)
