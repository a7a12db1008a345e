"""The searchable parts of an index directory, opened once: what :class:`spann.Index` serves
from, and what a build measures its finished index with (before it is published)."""

from __future__ import annotations

from typing import Any

import numpy as np

from spann.codecs.encodings import codebook_view
from spann.io.index_files import IndexFiles
from spann.io.osio import release_free_heap
from spann.params import SearchParams
from spann.search.breakdown import RecallBreakdown
from spann.search.planner import SearchPlanner
from spann.search.queries import QuerySpace
from spann.search.result import SearchResult
from spann.search.snapshot import BaseReaders, Snapshot

__all__ = ["IndexReader"]


class IndexReader:
    """An index at ``path`` (or in ``store``) opened for searching: its build's readers
    (``base``), the current generation (``snap``), the codebook, the query transforms
    (``queries``) and the :class:`~spann.search.planner.SearchPlanner`; ``attrs`` are its root
    attributes. :meth:`search` and :meth:`breakdown` search the snapshot it opened."""

    def __init__(self, path: Any, store=None):
        f = IndexFiles(path, store=store)
        try:
            self.base = BaseReaders(f, str(path))
            try:
                self.snap = Snapshot(f, self.base, str(path))
            except BaseException:
                self.base.close()
                raise
        finally:
            f.close()
        #: lists (and vector-store pages) are fetched from the store before a search scans them
        self.fetching: bool = any(r.fetched for r in self.base.readers(self.snap))
        self.codebook = codebook_view(f.layout.encoding, f.codebook)
        self.attrs: dict[str, Any] = f.attrs
        self.metric = f.metric
        self.layout = f.layout
        self.dim = int(f.attrs["dim"])
        self.dtype = np.dtype(f.layout.dtype)
        rotation = self.codebook.rotation if f.layout.codec.rotated_heads else None
        self.queries = QuerySpace(self.dim, self.dtype, f.metric, rotation,
                                  float_source=f.attrs.get("source_dtype") == "float32")
        self.planner = SearchPlanner(path, self.base, f.layout, f.metric,
                                     self.codebook if f.layout.coded else None,  # what the kernels take
                                     self.fetching)
        release_free_heap()  # the open's temporaries

    def search(self, queries: np.ndarray, k: int, threads: int | None = None, **params: Any) -> SearchResult:
        """A search of ``queries`` (nq, dim) in the opened generation with the default
        :class:`~spann.SearchParams` changed by ``params``."""
        qs, qh = self.queries.prepare(queries, k, self.snap.live)
        return self.planner.search(self.snap, qs, qh, int(k), SearchParams(**params), threads, None)

    def breakdown(self, queries: np.ndarray, gt: np.ndarray, k: int, threads: int | None = None,
                  **params: Any) -> RecallBreakdown:
        """The recall breakdown (see :mod:`spann.search.breakdown`) of a batch search against
        the true neighbours ``gt`` (int64 (nq, k))."""
        qs, qh = self.queries.prepare(queries, k, self.snap.live)
        return self.planner.breakdown(self.snap, qs, qh, np.ascontiguousarray(gt[:, :k], np.int64),
                                      SearchParams(**params), threads)

    def close(self) -> None:
        self.planner.close()
        self.snap.close()
        self.base.close()

    def __enter__(self) -> "IndexReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
