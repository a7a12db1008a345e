"""spann as a big-ann-benchmarks algorithm (https://github.com/harsha-simhadri/big-ann-benchmarks).

Copy this directory to ``neurips23/ood/spann/`` of a big-ann-benchmarks checkout (see
``benchmarks/ann_benchmarks/README.md``). Two classes:

- :class:`Spann`: the NeurIPS'23 out-of-distribution track (``track() == "ood"``), configured by
  ``config.yaml`` beside this file;
- :class:`SpannT2`: the NeurIPS'21 SSD track (``track() == "T2"``), configured by
  ``algos-2021-spann.yaml`` (``run.py --definitions``).

The runner calls ``Spann(metric, build_args)``, then ``load_index(name)`` and, if that finds no
index, ``fit(name)``; for each query-argument group ``set_query_arguments(query_args)`` and
``query(X, k)`` + ``get_results()`` (per run); ``get_additional()``; finally ``done()``.
``index_files_to_store(name)`` names the one file to upload or download: the index is kept as a
page-aligned zip, which spann memory-maps in place.

``build_args``: :class:`spann.BuildParams` fields, plus ``url``, a directory URL holding a
prebuilt ``<index_name()>.zip`` to download when there is none locally. ``query_args``:
:class:`spann.SearchParams` fields plus ``threads`` (search threads; default: the idle cores).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

import spann
from spann.datasets.formats import VectorWriter, open_vectors

try:
    from neurips23.ood.base import BaseOODANN as _Base
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith(("neurips23", "benchmark")):
        raise
    try:
        from benchmark.algorithms.base import BaseANN as _Base
    except ModuleNotFoundError as exc2:
        if not (exc2.name or "").startswith("benchmark"):
            raise

        class _Base:  # type: ignore[no-redef]
            """STAND-IN, used only where big-ann-benchmarks is not installed (this repository's
            tests): the methods of ``benchmark.algorithms.base.BaseANN`` with its defaults."""

            def done(self) -> None:
                pass

            def track(self) -> str:
                raise NotImplementedError()

            def fit(self, dataset: str) -> None:
                raise NotImplementedError()

            def load_index(self, dataset: str) -> bool:
                raise NotImplementedError()

            def index_files_to_store(self, dataset: str) -> list:
                raise NotImplementedError()

            def query(self, X: np.ndarray, k: int) -> None:
                raise NotImplementedError()

            def range_query(self, X: np.ndarray, radius: float) -> None:
                raise NotImplementedError()

            def get_results(self) -> np.ndarray:
                return self.res

            def get_range_results(self) -> Any:
                return self.res

            def get_additional(self) -> dict[str, Any]:
                return {}

            def __str__(self) -> str:
                return self.name

            def get_memory_usage(self) -> float | None:
                try:
                    import psutil
                except ImportError:
                    return None
                return psutil.Process().memory_info().rss / 1024

try:
    from benchmark.datasets import DATASETS
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith("benchmark"):
        raise
    #: STAND-IN registry (name -> dataset factory) where big-ann-benchmarks is not installed
    DATASETS: dict[str, Any] = {}  # type: ignore[no-redef]

#: big-ann-benchmarks distance -> spann metric
METRICS = {"euclidean": "l2", "ip": "ip"}
#: big-ann-benchmarks dtype -> vector file format of its .fbin/.u8bin/.i8bin files
FORMATS = {"float32": "fbin", "uint8": "u8bin", "int8": "i8bin"}
#: build arguments that are not spann.BuildParams fields
WRAPPER_ARGS = ("url",)
#: query arguments that are not spann.SearchParams fields
QUERY_ARGS = ("threads",)


def _dataset(dataset: Any) -> Any:
    """The dataset object of a registered name (``DATASETS[name]()``, as upstream wrappers do),
    or ``dataset`` itself when it is already one."""
    return DATASETS[dataset]() if isinstance(dataset, str) else dataset


class Spann(_Base):
    """A SPANN index per data set and build arguments, kept as
    ``data/indices/<track>/spann/<dataset short name>/<index_name()>.zip`` under the working
    directory (the harness's ``/home/app``).

    ``metric``: the data set's distance, ``"euclidean"`` or ``"ip"`` (the config's ``@metric``);
    ``build_args``: a dict of :class:`spann.BuildParams` fields and optionally ``url``.
    """

    def __init__(self, metric: str, build_args: dict[str, Any] | None = None):
        if metric not in METRICS:
            raise ValueError(f"spann: big-ann-benchmarks distance {metric!r} is not supported; "
                             f"use one of {', '.join(METRICS)}")
        self._metric = metric
        args = dict(build_args or {})
        self._url = args.pop("url", None)
        self._build_args = args
        self._build_params = spann.BuildParams().replace(**args)  # validates now
        self._query_args: dict[str, Any] = {}
        self._search: dict[str, Any] = {}
        self._threads: int | None = None
        self._index: spann.Index | None = None
        self._reset_stats()
        self.name = f"spann({self.index_name()})"

    def track(self) -> str:
        """The NeurIPS'23 out-of-distribution track."""
        return "ood"

    # -- the index's files -------------------------------------------------------------------
    def index_name(self) -> str:
        """Name of the index file (without ``.zip``), from the build arguments."""
        parts = [f"{k}{v}" for k, v in sorted(self._build_args.items())]
        return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(["spann", self._metric, *parts]))

    def create_index_dir(self, ds: Any) -> str:
        """``data/indices/<track>/spann/<short name>`` under the working directory, created."""
        d = os.path.join(os.getcwd(), "data", "indices", self.track(), "spann", ds.short_name())
        os.makedirs(d, mode=0o777, exist_ok=True)
        return d

    def _index_file(self, ds: Any) -> str:
        return os.path.join(self.create_index_dir(ds), self.index_name() + ".zip")

    def index_files_to_store(self, dataset: Any) -> list:
        """``[local directory, index prefix, [component suffixes]]``: the one zip file."""
        return [self.create_index_dir(_dataset(dataset)), self.index_name(), [".zip"]]

    # -- build and load ----------------------------------------------------------------------
    def fit(self, dataset: Any) -> None:
        """Build the index of the data set's base vectors (the whole ``get_dataset_fn()`` file,
        read in blocks; a data set without one is streamed from ``get_dataset_iterator()`` into
        a temporary file first) and open it."""
        ds = _dataset(dataset)
        self._check_distance(ds)
        self._close()
        target = self._index_file(ds)
        fmt = FORMATS.get(str(ds.dtype))
        if fmt is None:
            raise ValueError(f"spann: data type {ds.dtype!r} is not supported; use one of {', '.join(FORMATS)}")
        try:
            fn = ds.get_dataset_fn()
        except (RuntimeError, NotImplementedError):  # no base file: stream the iterator
            fn = None
        if not fn:
            spooled = Path(target).with_name(f".{self.index_name()}.base.{fmt}")
            try:
                with VectorWriter(spooled, ds.d, ds.dtype, fmt) as w:
                    for block in ds.get_dataset_iterator(bs=1 << 16):
                        w.write(block)
                self._build(spooled, target, fmt)
            finally:
                spooled.unlink(missing_ok=True)
        else:
            with open_vectors(fn, fmt) as vf:
                if vf.n < ds.nb or vf.dim != ds.d:
                    raise ValueError(f"spann: {fn} holds {vf.n} x {vf.dim} vectors, the data set {ds.nb} x {ds.d}")
                self._build(fn if vf.n == ds.nb else vf.rows[:ds.nb], target, fmt)  # longer: its first nb
        self._open(target)

    def load_index(self, dataset: Any) -> bool:
        """Open the index built earlier for this data set and these build arguments (downloading
        it from ``url`` first if one was given); False when there is none."""
        ds = _dataset(dataset)
        self._check_distance(ds)
        target = self._index_file(ds)
        if not os.path.exists(target):
            if self._url is None:
                return False
            from benchmark.dataset_io import download_accelerated  # only inside the harness
            download_accelerated(f"{self._url}/{self.index_name()}.zip", target, quiet=True)
        self._close()
        self._open(target)
        return True

    # -- search ------------------------------------------------------------------------------
    def set_query_arguments(self, query_args: dict[str, Any] | None = None) -> None:
        """:class:`spann.SearchParams` fields (``max_postings``, ``prune_eps``, ``ef``,
        ``rerank``...) and ``threads``. Validated here; statistics restart."""
        args = dict(query_args or {})
        threads = args.pop("threads", None)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise ValueError(f"spann: threads must be an integer >= 0, got {threads!r}")
        spann.SearchParams.from_dict(args)  # raises spann.ParameterError for an unknown or bad field
        self._query_args = dict(query_args or {})
        self._search = args
        self._threads = threads
        self._reset_stats()

    def query(self, X: np.ndarray, k: int) -> None:
        """Search the batch ``X`` (nq, d); results in :meth:`get_results`."""
        r = self._index.search(X, k, threads=self._threads, **self._search)
        self._queries += len(r.ids)
        self._dist += int(r.distance_evals.sum())
        self._lists += int(r.lists_read.sum())
        self._bytes += int(r.bytes_read.sum())
        self.res = r.ids

    def range_query(self, X: np.ndarray, radius: float) -> None:
        """Not supported: spann answers k-NN queries only (the range-search data set, ssnpp,
        cannot be run)."""
        raise NotImplementedError("spann answers k-nearest-neighbour queries only; range search is not supported")

    def get_results(self) -> np.ndarray:
        """int64 (nq, k) ids of the last :meth:`query` (-1 where fewer than k were found)."""
        return self.res

    def get_additional(self) -> dict[str, Any]:
        """``dist_comps``: distance evaluations (heads and posting entries) of every query since
        :meth:`set_query_arguments` (the harness divides by runs x queries); ``mean_ssd_ios``:
        4 KiB pages a query's posting lists and re-ranked rows span on average, what it reads
        from the device when nothing is cached; ``mean_lists_read``: posting lists per query."""
        nq = max(self._queries, 1)
        return {"dist_comps": int(self._dist), "mean_ssd_ios": self._bytes / 4096 / nq,
                "mean_lists_read": self._lists / nq}

    def __str__(self) -> str:
        if not self._query_args:
            return self.name
        q = ", ".join(f"{k}={v}" for k, v in sorted(self._query_args.items()))
        return f"spann({self.index_name()}; {q})"

    def done(self) -> None:
        """Close the index (its file stays, for the next run's :meth:`load_index`)."""
        self._close()

    # -- helpers -----------------------------------------------------------------------------
    def _build(self, data: Any, target: str, fmt: str) -> None:
        if isinstance(data, (str, os.PathLike)):  # the file in its data-set format, whatever its extension
            with open_vectors(data, fmt) as vf:
                spann.build(vf, target, metric=METRICS[self._metric], params=self._build_params, overwrite=True).close()
            return
        spann.build(data, target, metric=METRICS[self._metric], params=self._build_params, overwrite=True).close()

    def _check_distance(self, ds: Any) -> None:
        if ds.distance() != self._metric:
            raise ValueError(f"spann: the data set's distance is {ds.distance()!r}, the algorithm was "
                             f"configured for {self._metric!r}")

    def _open(self, path: str) -> None:
        self._index = spann.open(path)
        self._index.prepare()  # load (or compile) the search kernels before anything is timed

    def _reset_stats(self) -> None:
        self._queries = self._dist = self._lists = self._bytes = 0

    def _close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None


class SpannT2(Spann):
    """:class:`Spann` entered in the NeurIPS'21 SSD track (indices under ``data/indices/T2``)."""

    def track(self) -> str:
        return "T2"
