"""spann as an ann-benchmarks algorithm (https://github.com/erikbern/ann-benchmarks).

Copy this directory to ``ann_benchmarks/algorithms/spann/`` of an ann-benchmarks checkout (see
``benchmarks/ann_benchmarks/README.md``). The harness instantiates ``Spann(metric, build_args)``
from ``config.yml``, calls ``fit(X_train)``, then for each query-argument group
``set_query_arguments(max_postings[, rerank])`` followed by ``query(v, n)`` per test vector or
``batch_query(X_test, n)`` + ``get_batch_results()``, reads ``str(algo)`` and
``get_additional()``, and finally ``done()``.

``build_args`` are :class:`spann.BuildParams` fields (``head_ratio``, ``posting_size``,
``encoding``...); ``max_postings`` and ``rerank`` are :class:`spann.SearchParams` fields. Both
are validated when given, so a wrong configuration fails before any data is read.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import numpy as np

import spann

try:
    from ann_benchmarks.algorithms.base.module import BaseANN
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith("ann_benchmarks"):
        raise

    class BaseANN:  # type: ignore[no-redef]
        """STAND-IN, used only where ann-benchmarks is not installed (this repository's tests):
        the methods of ``ann_benchmarks.algorithms.base.module.BaseANN`` with its defaults."""

        def done(self) -> None:
            pass

        def get_memory_usage(self) -> float | None:
            try:
                import psutil
            except ImportError:
                return None
            return psutil.Process().memory_info().rss / 1024

        def fit(self, X: np.ndarray) -> None:
            pass

        def query(self, q: np.ndarray, n: int) -> np.ndarray:
            return np.zeros(0, np.int64)

        def batch_query(self, X: np.ndarray, n: int) -> None:
            self.res = [self.query(q, n) for q in X]

        def get_batch_results(self) -> Any:
            return self.res

        def get_additional(self) -> dict[str, Any]:
            return {}

        def __str__(self) -> str:
            return self.name


#: ann-benchmarks distance -> spann metric (float data sets use these two)
METRICS = {"euclidean": "l2", "angular": "cosine"}


def _format_params(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))


class Spann(BaseANN):
    """A SPANN index built by ``fit`` into a temporary directory, removed by ``done``.

    ``metric``: ``"euclidean"`` or ``"angular"`` (the config's ``@metric``); ``build_args``: a
    dict of :class:`spann.BuildParams` fields (empty: the defaults).
    """

    def __init__(self, metric: str, build_args: dict[str, Any] | None = None):
        if metric not in METRICS:
            raise ValueError(f"spann: ann-benchmarks metric {metric!r} is not supported; "
                             f"use one of {', '.join(METRICS)}")
        self._metric = metric
        self._build_args = dict(build_args or {})
        self._build_params = spann.BuildParams().replace(**self._build_args)  # validates now
        self._query_args: dict[str, Any] = {}
        self._search: dict[str, Any] = {}
        self._dir: str | None = None
        self._index: spann.Index | None = None
        self._reset_stats()
        self.name = f"spann({_format_params(self._build_args)})"

    # -- build -------------------------------------------------------------------------------
    def fit(self, X: np.ndarray) -> None:
        """Build the index of ``X`` (n, d) in a fresh temporary directory and open it."""
        self._close()
        X = np.asarray(X)
        if X.dtype.kind == "f" and X.dtype != np.float32:
            X = X.astype(np.float32)
        self._dir = tempfile.mkdtemp(prefix="spann-annb-")
        self._index = spann.build(np.ascontiguousarray(X), f"{self._dir}/index", metric=METRICS[self._metric],
                                  params=self._build_params)
        self._index.prepare()  # load (or compile) the search kernels before anything is timed

    # -- search ------------------------------------------------------------------------------
    def set_query_arguments(self, max_postings: int, rerank: int = 0) -> None:
        """Posting lists read per query (the recall / speed knob) and the candidates re-ranked
        exactly (0: the encoding's default). Validated here; statistics restart."""
        args = {"max_postings": max_postings, "rerank": rerank}
        spann.SearchParams(**args)  # raises spann.ParameterError for a bad value
        self._query_args = args
        self._search = dict(args)
        self._reset_stats()

    def query(self, q: np.ndarray, n: int) -> np.ndarray:
        """Ids of the ``n`` nearest neighbours of one vector ``q`` (d,)."""
        q = np.asarray(q)
        if q.dtype != np.float32:
            q = q.astype(np.float32)
        r = self._index.search(q, n, **self._search)
        self._record(r)
        ids = r.ids[0]
        return ids[ids >= 0]

    def batch_query(self, X: np.ndarray, n: int) -> None:
        """Search all of ``X`` (nq, d) at once, on the cores spann finds idle."""
        r = self._index.search(np.asarray(X, dtype=np.float32), n, **self._search)
        self._record(r)
        self._batch = r.ids

    def get_batch_results(self) -> list[np.ndarray]:
        """One id array per query of the last :meth:`batch_query` (padding removed)."""
        return [row[row >= 0] for row in self._batch]

    def get_additional(self) -> dict[str, Any]:
        """``dist_comps``: distance evaluations (heads and posting entries) of every query since
        :meth:`set_query_arguments` (ann-benchmarks divides by runs x queries); per query on
        average: posting lists read and bytes of the 4 KiB pages they span; the index's RAM
        (heads, graph, list directory) and disk bytes."""
        nq = max(self._queries, 1)
        out: dict[str, Any] = {"dist_comps": int(self._dist), "mean_lists_read": self._lists / nq,
                               "mean_bytes_read": self._bytes / nq}
        if self._index is not None:
            info = self._index.info()
            out["index_ram_bytes"] = int(info["ram_bytes"])
            out["index_disk_bytes"] = int(info["disk_bytes"])
        return out

    def __str__(self) -> str:
        if not self._query_args:
            return self.name
        return f"spann({_format_params(self._build_args)}; {_format_params(self._query_args)})"

    def done(self) -> None:
        """Close the index and delete its directory."""
        self._close()

    # -- helpers -----------------------------------------------------------------------------
    def _reset_stats(self) -> None:
        self._queries = 0
        self._dist = 0
        self._lists = 0
        self._bytes = 0

    def _record(self, r: spann.SearchResult) -> None:
        self._queries += len(r.ids)
        self._dist += int(r.distance_evals.sum())
        self._lists += int(r.lists_read.sum())
        self._bytes += int(r.bytes_read.sum())

    def _close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
