"""The public Index: build, open, search, info."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from spann.distances import METRIC_CODES
from spann.errors import ParameterError, QueryError
from spann.metrics import normalize_rows, result_distances_from_l2
from spann.params import BuildParams, SearchParams
from spann.search import prefetch_lists, scan_batch, search_one, select_batch
from spann.storage import IndexFiles, PostingStore, directory_bytes

__all__ = ["Index", "SearchResult", "build", "open_index"]


@dataclass
class SearchResult:
    """Results of a batch: ``ids`` int64 (nq, k) and ``distances`` float32 (nq, k), ascending,
    -1 / inf padded; per-query ``lists_read``, ``bytes_read``, ``distance_evals`` (int64 (nq,))."""

    ids: np.ndarray
    distances: np.ndarray
    lists_read: np.ndarray
    bytes_read: np.ndarray
    distance_evals: np.ndarray

    def __iter__(self):  # ids, distances = index.search(...)
        return iter((self.ids, self.distances))


class Index:
    """An opened SPANN index: heads, head graph, posting counts and ids in RAM; posting vectors
    memory-mapped from the zarr shards.

    Use as a context manager (or call :meth:`close`) to release the maps.
    """

    def __init__(self, path: str | os.PathLike[str], *, ids_in_ram: bool = True):
        self.path = Path(path)
        f = IndexFiles(self.path)
        self.attrs: dict[str, Any] = f.attrs
        self.metric: str = f.attrs["metric"]
        self.dim: int = int(f.attrs["dim"])
        self.n: int = int(f.attrs["n"])
        self.dtype = np.dtype(f.attrs["dtype"])
        self.build_params = BuildParams.from_dict(f.attrs["params"])
        self.heads = f.head_vectors
        self.head_ids = f.head_ids
        self.head_ext = f.head_ext
        self.neighbors = f.neighbors
        self.entries = f.entries
        self.counts = f.counts
        H = self.heads.shape[0]
        if (self.heads.shape != (H, self.dim) or self.head_ids.shape != (H,) or self.counts.shape != (H,)
                or self.neighbors.shape[0] != H or self.neighbors.max(initial=-1) >= H
                or self.entries.size == 0 or self.entries.max() >= H):
            from spann.errors import IndexCorruptError
            raise IndexCorruptError(f"{self.path}: index arrays have inconsistent shapes")
        self.store = PostingStore(self.path, self.counts, self.dim, ids_in_ram=ids_in_ram)
        self._metric_code = METRIC_CODES[self.metric]
        self._lock = threading.Lock()
        self._visited = np.zeros(H, np.uint32)
        self._zero_ext = np.zeros(1, np.float32)
        self._tag = np.uint32(0)
        self.default_params = SearchParams()
        self._param_cache: dict[tuple, SearchParams] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prepare(self) -> "Index":
        """Compile (or load from numba's cache) every search kernel with one dummy query."""
        q = np.asarray(self.heads[:1], dtype=np.float32)
        self.search(q, 1)
        self.search(np.repeat(q, 2, axis=0), 1, threads=1)
        self.search(q, 1, prefetch=True)
        return self

    # -- search --------------------------------------------------------------------------------
    def _params(self, max_postings, prune_eps, ef, prefetch) -> SearchParams:
        """SearchParams for these overrides, cached (validation is not free on a 0.1 ms path)."""
        key = (max_postings, prune_eps, ef, prefetch)
        p = self._param_cache.get(key)
        if p is None:
            changes = {k_: v for k_, v in zip(("max_postings", "prune_eps", "ef", "prefetch"), key) if v is not None}
            p = self.default_params.replace(**changes) if changes else self.default_params
            if len(self._param_cache) > 256:
                self._param_cache.clear()
            self._param_cache[key] = p
        return p

    def _check_queries(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.store is None:
            raise QueryError(f"{self.path}: index is closed")
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise QueryError(f"queries must be a 2-D array (nq, {self.dim}), got shape {q.shape}")
        if q.shape[1] != self.dim:
            raise QueryError(f"queries have dimension {q.shape[1]}, the index has {self.dim}")
        if q.dtype.kind not in "fiu" or q.dtype.itemsize > 8:
            raise QueryError(f"queries have dtype {q.dtype}; expected float32, float64, uint8 or int8")
        if self.dtype.kind == "f" and q.dtype.kind in "iu" and self.attrs.get("source_dtype") == "float32":
            raise QueryError(f"queries are {q.dtype} but the index holds float32 vectors")
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        if k > self.n:
            raise QueryError(f"k = {k} exceeds the {self.n} vectors in the index")
        qf = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(qf.sum()) and not np.isfinite(qf).all():
            bad = int(np.flatnonzero(~np.isfinite(qf).all(1))[0])
            raise QueryError(f"query {bad} contains NaN or Inf")
        if self.metric == "cosine":
            if qf.shape[0] == 1:
                nrm = float(np.sqrt(np.dot(qf[0], qf[0])))
                qf = qf / nrm if nrm > 0 else qf
            else:
                qf = normalize_rows(qf)
        q_ext = self._zero_ext if qf.shape[0] == 1 else np.zeros(qf.shape[0], np.float32)
        return qf, q_ext, q

    def search(self, queries: np.ndarray, k: int = 10, *, max_postings: int | None = None,
               prune_eps: float | None = None, ef: int | None = None, prefetch: bool | None = None,
               threads: int | None = None, params: SearchParams | None = None) -> SearchResult:
        """k nearest neighbours of ``queries`` (nq, dim) or (dim,).

        One query takes a low-overhead single-thread path; a batch runs on ``threads`` cores
        (default: all). Returns a :class:`SearchResult` (unpacks as ``ids, distances``).
        """
        p = params or self._params(max_postings, prune_eps, ef, prefetch)
        if threads is not None and threads < 0:
            raise ParameterError(f"threads must be >= 0, got {threads}")
        qf, q_ext, _ = self._check_queries(queries, k)
        m = min(p.max_postings, self.heads.shape[0])
        efv = max(p.effective_ef(), m)
        eps = np.float32(min(p.prune_eps, 1e18))
        s = self.store
        common = (self.heads, self.head_ext, self.head_ids, self.neighbors, self.entries)
        nq = qf.shape[0]
        if nq == 1 and not p.prefetch:
            top_d = np.empty(k, np.float32)
            top_i = np.empty(k, np.int64)
            stats = np.zeros(3, np.int64)
            with self._lock:
                self._tag = np.uint32(self._tag + 1)
                if self._tag == 0:
                    self._visited[:] = 0
                    self._tag = np.uint32(1)
                search_one(qf[0], q_ext[0], self._metric_code, *common, efv, m, eps, self.counts,
                           s.list_shard, s.vec_off, s.id_off, s.vec_views, s.id_views, self._visited, self._tag,
                           top_d, top_i, stats)
            dists, ids, st = top_d[None], top_i[None], stats[None]
        else:
            n_threads = threads or numba.config.NUMBA_NUM_THREADS
            n_threads = max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS))
            old = numba.get_num_threads()
            numba.set_num_threads(n_threads)
            try:
                # phase 1 (heads) for a group of queries, optionally prefetch all their lists,
                # then phase 2 (scan); without prefetch one group holds the whole batch
                dists = np.empty((nq, k), np.float32)
                ids = np.empty((nq, k), np.int64)
                st = np.empty((nq, 3), np.int64)
                group = max(1, n_threads * 4) if p.prefetch else nq
                for a in range(0, nq, group):
                    b = min(nq, a + group)
                    sel_i, sel_d, kept, evals = select_batch(qf[a:b], q_ext[a:b], self.heads, self.head_ext,
                                                             self.neighbors, self.entries, efv, m, eps,
                                                             max(1, min(b - a, n_threads * 8)))
                    if p.prefetch:
                        prefetch_lists(sel_i, kept, self.counts, s)
                    d_, i_, st_ = scan_batch(qf[a:b], self._metric_code, self.heads, self.head_ids, sel_i,
                                             sel_d, kept, self.counts, s.list_shard, s.vec_off, s.id_off,
                                             s.vec_views, s.id_views, k)
                    st_[:, 2] += evals
                    dists[a:b], ids[a:b], st[a:b] = d_, i_, st_
            finally:
                numba.set_num_threads(old)
        if self.metric == "cosine":
            dists = result_distances_from_l2(dists, self.metric)
        return SearchResult(ids=ids, distances=dists, lists_read=st[:, 0], bytes_read=st[:, 1],
                            distance_evals=st[:, 2])

    # -- information ---------------------------------------------------------------------------
    def posting_files(self) -> list[Path]:
        return self.store.files() if self.store is not None else []

    def evict(self) -> None:
        """Drop this index's posting lists from memory and the page cache (cold-cache measurement):
        the next read of every list goes to the device."""
        if self.store is not None:
            self.store.drop_cache()

    def info(self) -> dict[str, Any]:
        """Attributes (metric, dims, build parameters and statistics) plus sizes on disk and in RAM."""
        ram = sum(a.nbytes for a in (self.heads, self.head_ids, self.head_ext, self.neighbors, self.entries,
                                     self.counts)) + self.store.ram_bytes()
        return {**self.attrs, "path": str(self.path), "disk_bytes": directory_bytes(self.path),
                "ram_bytes": int(ram)}

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


def open_index(index_dir: str | os.PathLike[str], *, ids_in_ram: bool = True) -> Index:
    """Open an index built by :func:`build` (or ``spann build``).

    ``ids_in_ram``: copy the posting ids (4 bytes per stored vector) into RAM so a cold query
    reads one range per posting list instead of two; False keeps them memory-mapped too.
    """
    return Index(index_dir, ids_in_ram=ids_in_ram)
