"""A scikit-learn estimator over a spann index: :class:`SpannNeighbors`.

``SpannNeighbors(n_neighbors=5).fit(X)`` builds a spann index of ``X`` and answers
``kneighbors`` / ``kneighbors_graph`` / ``transform`` the way scikit-learn's
:class:`~sklearn.neighbors.NearestNeighbors` and :class:`~sklearn.neighbors.KNeighborsTransformer`
do, so it drops into a :class:`~sklearn.pipeline.Pipeline` in front of any estimator that takes a
precomputed sparse neighbours graph (``Isomap(metric="precomputed")``, ``TSNE(metric="precomputed")``,
``SpectralClustering(affinity="precomputed_nearest_neighbors")``, ``DBSCAN(metric="precomputed")``).

Distances follow scikit-learn's conventions, not spann's (``Index.search`` reports squared L2):

==============  =================  ==============================================================
``metric``      spann index        distance reported
==============  =================  ==============================================================
l2, euclidean   l2                 ``||q - x||`` (the square root of what the index reports), as
                                   sklearn's ``euclidean``
sqeuclidean     l2                 ``||q - x||^2``, as sklearn's ``sqeuclidean``
cosine          cosine             ``1 - cos(q, x)``, as sklearn's ``cosine`` (a zero vector:
                                   ``||x||^2 / 2`` = 0.5 against unit rows where sklearn says 1)
ip              ip                 ``-q.x``; no sklearn counterpart, and negative: not a valid
                                   precomputed distance for Isomap, TSNE or DBSCAN
==============  =================  ==============================================================

Distances are float64 (the index computes them in float32): scikit-learn's neighbours estimators
return float64 for float64 data, and the estimators that take a precomputed graph work in float64
(converting a float32 graph would reorder each row's entries by column). Indices are int64 row
numbers of the data given to :meth:`SpannNeighbors.fit`.

scikit-learn is an optional dependency: ``pip install "spann-ann[sklearn]"``. ``import spann``
does not import it.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np

try:
    import scipy.sparse as sp
    from joblib import effective_n_jobs
    from sklearn import get_config
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.utils.validation import check_is_fitted
except ImportError as e:  # one line that says what to install
    raise ImportError('spann.sklearn needs scikit-learn: pip install "spann-ann[sklearn]"') from e

try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # scikit-learn < 1.6
    def _validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)

from spann.errors import IndexNotFoundError
from spann.index import Index, build, open_index
from spann.params import BuildParams, SearchParams

__all__ = ["SpannNeighbors"]

#: metric parameter -> (spann metric, scikit-learn's name of the distance reported)
_METRICS = {
    "l2": ("l2", "euclidean"),
    "euclidean": ("l2", "euclidean"),
    "sqeuclidean": ("l2", "sqeuclidean"),
    "cosine": ("cosine", "cosine"),
    "ip": ("ip", "ip"),
}
_MODES = ("distance", "connectivity")
#: the dtypes an index stores as given (anything else is converted to float32)
_FIT_DTYPES = [np.float32, np.uint8, np.int8]
#: the most posting lists a search may read (SearchParams.max_postings)
_MAX_POSTINGS = 65536
#: queries searched (and training rows read back) at a time: bounds the memory of large inputs
_BLOCK = 8192


def _release(index: Index, tmpdir: str | None) -> None:
    """Close an estimator's index; remove its directory when the estimator made it."""
    try:
        index.close()
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _sparse(data: np.ndarray, ind: np.ndarray, n_cols: int):
    """CSR graph (rows of ``ind``'s length, ``n_cols`` columns) of the row-major (nq, k)
    ``data`` / ``ind``, as the sparse interface scikit-learn is configured for (``spmatrix``
    unless ``sklearn.set_config(sparse_interface="sparray")``)."""
    nq, k = ind.shape
    indptr = np.arange(0, nq * k + 1, k)
    cls = sp.csr_array if get_config().get("sparse_interface", "spmatrix") == "sparray" else sp.csr_matrix
    return cls((data.ravel(), ind.ravel(), indptr), shape=(nq, n_cols))


class SpannNeighbors(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """k nearest neighbours from a spann index, with scikit-learn's neighbours API.

    One class plays both of scikit-learn's roles: ``kneighbors`` / ``kneighbors_graph`` as
    :class:`~sklearn.neighbors.NearestNeighbors`, ``transform`` / ``fit_transform`` as
    :class:`~sklearn.neighbors.KNeighborsTransformer` (a sparse distance graph for estimators
    with ``metric="precomputed"``). Search is approximate: ``max_postings`` trades time for
    recall (see :class:`spann.SearchParams`).

    Parameters
    ----------
    n_neighbors : int, default=5
        Neighbours per query of ``kneighbors`` and ``kneighbors_graph``; ``transform`` in mode
        ``"distance"`` returns ``n_neighbors + 1`` per sample, itself included (as
        KNeighborsTransformer does).
    metric : {"l2", "euclidean", "sqeuclidean", "cosine", "ip"}, default="l2"
        The distance (see the module's table): ``l2`` and ``euclidean`` are the Euclidean
        distance, ``sqeuclidean`` its square, ``cosine`` ``1 - cos``, ``ip`` the negative
        inner product.
    mode : {"distance", "connectivity"}, default="distance"
        What ``transform`` puts in the graph: distances, or ones.
    index_dir : str or os.PathLike, default=None
        Local directory of the index, created by ``fit`` (an existing spann index there is
        replaced; anything else is refused). None: a temporary directory owned by the
        estimator, removed when the estimator is refitted or garbage-collected. Estimators
        sharing a directory (clones in a grid search) replace each other's index: leave it None
        there. Only an estimator fitted with ``index_dir`` can be pickled.
    max_postings : int, default=None
        Posting lists each query reads (None: the index's default, its operating point for
        recall@10 0.95 measured at build; 32 without one). Raising it raises
        recall; at least the number of lists (``index_.heads.shape[0]``) reads them all.
    build_params : dict, default=None
        :class:`spann.BuildParams` fields for the build, e.g. ``{"encoding": "full"}``.
    n_jobs : int, default=None
        Threads of the build and of searches; -1: all cores. None: spann's defaults (the build
        uses every core, a search the cores no other process is busy on). A ``"threads"`` entry
        of ``build_params`` takes precedence for the build.

    Attributes
    ----------
    index_ : spann.Index
        The open index (owned by the estimator: closed when it is refitted or collected).
    effective_metric_ : str
        The distance reported: ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"`` or ``"ip"``.
    n_features_in_ : int
        Features of the data seen by ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of a DataFrame seen by ``fit`` (when they are all strings).
    n_samples_fit_ : int
        Rows of the data seen by ``fit``.

    Notes
    -----
    Pickling (``pickle``, ``copy.deepcopy``, joblib) stores the index's path, not the index:
    unpickling reopens the directory and fails if it is gone or holds another build. An
    estimator fitted in a temporary directory (``index_dir=None``) refuses to be pickled, since
    its directory disappears with it. Unfitted estimators pickle freely.
    """

    def __init__(self, n_neighbors: int = 5, *, metric: str = "l2", mode: str = "distance",
                 index_dir: str | os.PathLike[str] | None = None, max_postings: int | None = None,
                 build_params: dict[str, Any] | None = None, n_jobs: int | None = None):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.mode = mode
        self.index_dir = index_dir
        self.max_postings = max_postings
        self.build_params = build_params
        self.n_jobs = n_jobs

    # -- parameters ----------------------------------------------------------------------------
    def _check_params(self) -> tuple[BuildParams, dict[str, Any], int | None]:
        """(build parameters, search overrides, threads) of the current parameters; raises
        ValueError / TypeError for a bad one."""
        k = self.n_neighbors
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"n_neighbors must be an integer, got {k!r}")
        if k < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {k}")
        if self.metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(_METRICS)}, got {self.metric!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be 'distance' or 'connectivity', got {self.mode!r}")
        if self.index_dir is not None:
            if not isinstance(self.index_dir, (str, os.PathLike)):
                raise TypeError(f"index_dir must be a path or None, got {type(self.index_dir).__name__}")
            where = os.fspath(self.index_dir)
            if "://" in where or where.lower().endswith(".zip"):
                raise ValueError(f"index_dir must be a local directory, got {where!r}")
        threads = None if self.n_jobs is None else int(effective_n_jobs(self.n_jobs))
        bp = self.build_params or {}
        if not isinstance(bp, dict):
            raise TypeError(f"build_params must be a dict of spann.BuildParams fields, got {type(bp).__name__}")
        if threads is not None and "threads" not in bp:
            bp = {**bp, "threads": threads}
        params = BuildParams().replace(**bp) if bp else BuildParams()  # ParameterError is a ValueError
        search = {} if self.max_postings is None else {"max_postings": self.max_postings}
        SearchParams(**search)  # validated now rather than at the first query
        return params, search, threads

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, X, y=None) -> "SpannNeighbors":
        """Build the index of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data, n_samples >= 2. float32, uint8 and int8 are indexed as they are,
            anything else as float32. No NaN or inf; no sparse input.
        y : Ignored

        Returns
        -------
        self : SpannNeighbors
        """
        params, _, _ = self._check_params()
        self._close_index()
        X = _validate_data(self, X, dtype=_FIT_DTYPES, order="C", ensure_min_samples=2)
        tmpdir = None
        if self.index_dir is None:
            tmpdir = tempfile.mkdtemp(prefix="spann-sklearn-")
            path = os.path.join(tmpdir, "index")
        else:
            path = os.fspath(self.index_dir)
        try:
            index = build(X, path, metric=_METRICS[self.metric][0], params=params, overwrite=True)
        except BaseException:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        self._set_index(index, tmpdir)
        self.effective_metric_ = _METRICS[self.metric][1]
        self.n_samples_fit_ = int(X.shape[0])
        self._n_features_out = self.n_samples_fit_
        return self

    def _set_index(self, index: Index, tmpdir: str | None) -> None:
        self.index_ = index
        self._tmpdir = tmpdir
        self._finalizer = weakref.finalize(self, _release, index, tmpdir)

    def _close_index(self) -> None:
        """Close the current index (and remove a temporary directory); the estimator is unfitted."""
        fin = self.__dict__.pop("_finalizer", None)
        if fin is not None:
            fin()
        for name in ("index_", "_tmpdir", "effective_metric_", "n_samples_fit_", "_n_features_out"):
            self.__dict__.pop(name, None)

    def __sklearn_is_fitted__(self) -> bool:
        return "index_" in self.__dict__

    # -- queries -------------------------------------------------------------------------------
    def _search(self, Q: np.ndarray, k: int, search: dict[str, Any], threads: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(distances float32 (nq, k) as reported by the index, ids int64 (nq, k)) of queries
        ``Q`` (nq, n_features). A query whose lists held fewer than k vectors is searched
        again reading every list, so every row is full."""
        ix = self.index_
        res = ix.search(Q, k, threads=threads, **search)
        dist, ids = res.distances, res.ids
        short = np.flatnonzero((ids < 0).any(axis=1))
        if short.size:
            every = min(int(ix.heads.shape[0]), _MAX_POSTINGS)
            again = ix.search(Q[short], k, threads=threads, max_postings=every, pruner=False, prune_eps=math.inf)
            dist[short], ids[short] = again.distances, again.ids
            if (ids < 0).any():
                raise RuntimeError(f"fewer than {k} neighbours found in {every} posting lists")
        return dist, ids

    def kneighbors(self, X=None, n_neighbors: int | None = None, return_distance: bool = True):
        """The nearest neighbours of each query.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Queries. None: the training rows, each without itself (a row the search did not
            return, crowded out by duplicates at distance 0, drops its farthest neighbour).
        n_neighbors : int, default=None
            Neighbours per query (None: ``self.n_neighbors``); at most n_samples_fit_ (fewer
            than n_samples_fit_ when X is None).
        return_distance : bool, default=True
            Return the distances too.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors), float64
            Distances (see the module's table), ascending; only with ``return_distance``.
        neigh_ind : ndarray of shape (n_queries, n_neighbors), int64
            Row numbers of the neighbours in the training data.
        """
        check_is_fitted(self)
        if n_neighbors is None:
            n_neighbors = self.n_neighbors
        elif isinstance(n_neighbors, bool) or not isinstance(n_neighbors, numbers.Integral):
            raise TypeError(f"n_neighbors must be an integer, got {n_neighbors!r}")
        elif n_neighbors <= 0:
            raise ValueError(f"Expected n_neighbors > 0. Got {n_neighbors}")
        n_neighbors = int(n_neighbors)
        _, search, threads = self._check_params()
        query_is_train = X is None
        n_fit = self.n_samples_fit_
        if query_is_train:
            n_queries = n_fit
            k = n_neighbors + 1  # the row itself comes back too; dropped below
        else:
            X = _validate_data(self, X, reset=False, dtype=np.float32, order="C")
            n_queries = X.shape[0]
            k = n_neighbors
        if k > n_fit:
            rule = "n_neighbors < n_samples_fit" if query_is_train else "n_neighbors <= n_samples_fit"
            raise ValueError(f"Expected {rule}, but n_neighbors = {n_neighbors}, n_samples_fit = {n_fit}, "
                             f"n_samples = {n_queries}")
        dist = np.empty((n_queries, k), np.float32)
        ind = np.empty((n_queries, k), np.int64)
        for a in range(0, n_queries, _BLOCK):
            b = min(n_queries, a + _BLOCK)
            # the training rows are read back from the index: the estimator keeps no copy of X
            Q = self.index_.get(np.arange(a, b)) if query_is_train else X[a:b]
            dist[a:b], ind[a:b] = self._search(Q, k, search, threads)
        dist = dist.astype(np.float64)
        if self.effective_metric_ == "euclidean":  # the index reports squared distances
            np.sqrt(np.maximum(dist, 0, out=dist), out=dist)
        if query_is_train:
            # drop each row's own entry; a row that did not find itself (duplicates at distance 0
            # crowded it out, or the search missed it) drops its farthest neighbour instead
            keep = ind != np.arange(n_queries)[:, None]
            keep[keep.all(axis=1), -1] = False
            ind = ind[keep].reshape(n_queries, n_neighbors)
            dist = dist[keep].reshape(n_queries, n_neighbors)
        return (dist, ind) if return_distance else ind

    def kneighbors_graph(self, X=None, n_neighbors: int | None = None, mode: str = "connectivity"):
        """The k-neighbours graph of the queries.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Queries; None: the training rows, each without itself.
        n_neighbors : int, default=None
            Neighbours per query (None: ``self.n_neighbors``).
        mode : {"connectivity", "distance"}, default="connectivity"
            Graph values: ones, or the distances.

        Returns
        -------
        graph : sparse matrix of shape (n_queries, n_samples_fit_), CSR, float64
            ``graph[i, j]``: the weight of the edge from query i to training row j; n_neighbors
            stored values per row.
        """
        check_is_fitted(self)
        if mode not in _MODES:
            raise ValueError(f'Unsupported mode, must be one of "connectivity", or "distance" but got "{mode}" '
                             f'instead')
        if mode == "connectivity":
            ind = self.kneighbors(X, n_neighbors, return_distance=False)
            data = np.ones(ind.shape)
        else:
            data, ind = self.kneighbors(X, n_neighbors, return_distance=True)
        return _sparse(data, ind, self.n_samples_fit_)

    def transform(self, X):
        """The neighbours graph of ``X``, as KNeighborsTransformer makes it.

        Parameters
        ----------
        X : array-like of shape (n_samples_transform, n_features)

        Returns
        -------
        Xt : sparse matrix of shape (n_samples_transform, n_samples_fit_), CSR, float64
            Mode ``"distance"``: the ``n_neighbors + 1`` nearest training rows of each sample
            with their distances; a training sample comes first, as its own neighbour at
            distance 0, which is what estimators taking ``metric="precomputed"`` expect. Mode
            ``"connectivity"``: the ``n_neighbors`` nearest, with ones.
        """
        check_is_fitted(self)
        add_one = self.mode == "distance"
        return self.kneighbors_graph(X, mode=self.mode, n_neighbors=self.n_neighbors + add_one)

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``: the graph of the training data (shape (n_samples,
        n_samples), CSR, float64)."""
        return self.fit(X).transform(X)

    # -- pickling ------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: BaseEstimator's is the instance's own __dict__
        index = state.pop("index_", None)
        state.pop("_finalizer", None)
        if index is not None:
            if state.get("_tmpdir") is not None:
                raise TypeError(  # what pickle raises for an object it cannot pickle
                    "a SpannNeighbors fitted in a temporary directory (index_dir=None) cannot be pickled: its index "
                    "is removed with it; fit it with index_dir=... to pickle it")
            state["_index_path"] = os.path.abspath(index.path)
            state["_build_id"] = index.attrs.get("build_id")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = state.pop("_index_path", None)
        build_id = state.pop("_build_id", None)
        super().__setstate__(state)
        if path is None:
            return
        try:
            index = open_index(path)
        except (OSError, ValueError) as e:
            raise IndexNotFoundError(f"the index of this SpannNeighbors cannot be reopened: {e}") from e
        if index.attrs.get("build_id") != build_id:
            index.close()
            raise IndexNotFoundError(f"{path}: holds another index than the one this SpannNeighbors was fitted "
                                         f"with (the directory was rebuilt); fit it again")
        self._set_index(index, None)
