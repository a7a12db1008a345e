"""Drop-in algorithm classes for ann-benchmarks and big-ann-benchmarks.

They follow those suites' method names (duck-typed, so neither suite has to be installed to use
or test them); copy or import them from an algorithm module of the suite.

ann-benchmarks: ``fit(X)``, ``set_query_arguments(max_postings, prune_eps)``, ``query(v, n)``,
``batch_query(X, n)`` + ``get_batch_results()``, ``get_additional()``, ``done()``, ``__str__``.
big-ann-benchmarks: ``fit(dataset)`` / ``load_index(dataset)`` on a dataset object with
``get_dataset_fn()`` and ``distance()``, ``query(X, k)`` + ``get_results()``,
``set_query_arguments(query_args)``, ``index_files_to_store``, ``get_additional()``.
``get_additional()`` reports mean posting lists, KiB read and distance evaluations per query.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import spann

__all__ = ["AnnBenchmarksSpann", "BigAnnSpann"]

_METRICS = {"euclidean": "l2", "angular": "cosine", "ip": "ip", "dot": "ip", "l2": "l2", "cosine": "cosine"}


class _Base:
    def __init__(self, metric: str, build_params: dict[str, Any] | None = None, index_dir: str | None = None):
        if metric not in _METRICS:
            raise spann.ParameterError(f"metric {metric!r} not supported; use one of {', '.join(_METRICS)}")
        self.metric = _METRICS[metric]
        self.build_params = dict(build_params or {})
        self._own_dir = index_dir is None
        self.index_dir = Path(index_dir or tempfile.mkdtemp(prefix="spann-ab-")) / "index.spann"
        self.index: spann.Index | None = None
        self.search_args: dict[str, Any] = {}
        self._stats: dict[str, float] = {}
        self.name = f"spann({self.build_params})"

    def _record(self, r: spann.SearchResult) -> None:
        self._stats = {"lists_read": float(r.lists_read.mean()), "kib_read": float(r.bytes_read.mean() / 1024),
                       "dist_comps": float(r.distance_evals.mean())}

    def get_additional(self) -> dict[str, float]:
        return dict(self._stats)

    def done(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None
        if self._own_dir:
            shutil.rmtree(self.index_dir.parent, ignore_errors=True)

    def __str__(self) -> str:
        return f"spann(params={self.build_params}, query={self.search_args})"


class AnnBenchmarksSpann(_Base):
    """spann as an ann-benchmarks algorithm (``metric``: "euclidean" or "angular")."""

    def fit(self, X: np.ndarray) -> None:
        if self.index_dir.exists():
            shutil.rmtree(self.index_dir)
        self.index = spann.build(np.asarray(X), self.index_dir, metric=self.metric, progress=False, **self.build_params)
        self.index.prepare()

    def set_query_arguments(self, max_postings: int = 64, prune_eps: float = float("inf")) -> None:
        self.search_args = {"max_postings": int(max_postings), "prune_eps": float(prune_eps)}

    def query(self, v: np.ndarray, n: int) -> np.ndarray:
        r = self.index.search(v, n, **self.search_args)
        self._record(r)
        ids = r.ids[0]
        return ids[ids >= 0]

    def batch_query(self, X: np.ndarray, n: int) -> None:
        r = self.index.search(X, n, **self.search_args)
        self._record(r)
        self._batch = r.ids

    def get_batch_results(self) -> np.ndarray:
        return self._batch


class BigAnnSpann(_Base):
    """spann as a big-ann-benchmarks algorithm (``metric``: "euclidean" or "ip")."""

    def index_name(self) -> str:
        return "index.spann"

    @property
    def index_files_to_store(self) -> list[str]:
        return [str(self.index_dir)]

    def fit(self, dataset) -> None:
        path = dataset.get_dataset_fn()
        if self.index_dir.exists():
            shutil.rmtree(self.index_dir)
        metric = _METRICS.get(getattr(dataset, "distance", lambda: self.metric)(), self.metric)
        spann.build(path, self.index_dir, metric=metric, progress=False, **self.build_params).close()
        self.load_index(dataset)

    def load_index(self, dataset) -> bool:
        if not (self.index_dir / "zarr.json").exists():
            return False
        self.index = spann.open(self.index_dir)
        self.index.prepare()
        return True

    def set_query_arguments(self, query_args: dict[str, Any]) -> None:
        self.search_args = {k: query_args[k] for k in ("max_postings", "prune_eps", "ef",
                                                       "prefetch") if k in query_args}

    def query(self, X: np.ndarray, k: int) -> None:
        r = self.index.search(X, k, **self.search_args)
        self._record(r)
        self.res = r.ids

    def get_results(self) -> np.ndarray:
        return self.res
