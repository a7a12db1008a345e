"""spann.sklearn: scikit-learn's estimator checks, results equal to NearestNeighbors', the graphs
downstream estimators take, pickling and the optional import."""

from __future__ import annotations

import gc
import inspect
import os
import pickle
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.cluster import DBSCAN, SpectralClustering  # noqa: E402
from sklearn.datasets import make_blobs, make_swiss_roll  # noqa: E402
from sklearn.manifold import TSNE, Isomap  # noqa: E402
from sklearn.metrics import pairwise_distances  # noqa: E402
from sklearn.neighbors import KNeighborsTransformer, NearestNeighbors  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.utils.estimator_checks import check_estimators_pickle, parametrize_with_checks  # noqa: E402

from spann.errors import IndexNotFoundError  # noqa: E402
from spann.sklearn import SpannNeighbors  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: scikit-learn's checks that cannot pass, with the reason
EXPECTED_FAILED = {
    "check_estimators_pickle": "fitted in a temporary directory (index_dir=None), the estimator refuses to be "
                               "pickled; test_pickle_with_index_dir runs this check with an index_dir",
}

#: every list read: exact neighbours on well-separated data
EXACT = {"max_postings": 65536}


@pytest.fixture(scope="module")
def blobs():
    """(base float32 (240, 8), queries float32 (20, 8)): six well-separated clusters."""
    x, _ = make_blobs(n_samples=260, centers=6, n_features=8, cluster_std=1.0, random_state=0)
    x = x.astype(np.float32)
    return x[:240], x[240:]


def _check_name(check) -> str:
    return check.func.__name__ if isinstance(check, partial) else check.__name__


if "expected_failed_checks" in inspect.signature(parametrize_with_checks).parameters:  # scikit-learn >= 1.6
    _checks = parametrize_with_checks([SpannNeighbors()], expected_failed_checks=lambda est: EXPECTED_FAILED)
    _mark_old = False
else:
    _checks = parametrize_with_checks([SpannNeighbors()])
    _mark_old = True


@_checks
def test_sklearn_estimator_checks(estimator, check, request):
    if _mark_old and _check_name(check) in EXPECTED_FAILED:
        request.applymarker(pytest.mark.xfail(reason=EXPECTED_FAILED[_check_name(check)], strict=True))
    check(estimator)


@pytest.mark.parametrize("readonly", [False, True])
def test_pickle_with_index_dir(tmp_path, readonly):
    check_estimators_pickle("SpannNeighbors", SpannNeighbors(index_dir=tmp_path / "ix"), readonly_memmap=readonly)


def assert_same_neighbours(d, i, ref_d, ref_i, true_d):
    """``(d, i)`` are the neighbours ``(ref_d, ref_i)`` up to ties: distances equal, and every id
    returned at position j truly lies at the reference's j-th distance (``true_d``: float64
    distances of the returned ids); the ids themselves differ only where distances tie."""
    np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(true_d, ref_d, rtol=1e-5, atol=1e-6)
    assert np.mean(i == ref_i) > 0.99


@pytest.mark.parametrize("metric", ["l2", "euclidean", "sqeuclidean", "cosine"])
def test_equals_nearest_neighbors(blobs, metric):
    x, q = blobs
    sk_metric = "euclidean" if metric == "l2" else metric
    est = SpannNeighbors(n_neighbors=7, metric=metric, **EXACT).fit(x)
    x64 = x.astype(np.float64)  # the float64 reference: float32 sklearn misorders some near ties
    ref = NearestNeighbors(n_neighbors=7, metric=sk_metric).fit(x64)
    for queries in (q, None):
        d, i = est.kneighbors(queries)
        rd, ri = ref.kneighbors(None if queries is None else queries.astype(np.float64))
        assert d.dtype == np.float64 and i.dtype == np.int64 and i.shape == (len(x) if queries is None else 20, 7)
        every = pairwise_distances(x64 if queries is None else queries.astype(np.float64), x64, metric=sk_metric)
        true_d = np.take_along_axis(every, i, 1)
        assert_same_neighbours(d, i, rd, ri, true_d)
    assert np.array_equal(est.kneighbors(q, n_neighbors=3, return_distance=False), ref.kneighbors(q, 3)[1])


def test_inner_product(blobs):
    x, q = blobs
    d, i = SpannNeighbors(n_neighbors=5, metric="ip", **EXACT).fit(x).kneighbors(q)
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(i, want)
    np.testing.assert_allclose(d, -np.take_along_axis(q @ x.T, want, 1), rtol=1e-5)
    # the training rows: a row need not be its own nearest neighbour under ip, and is left out all the same
    i = SpannNeighbors(n_neighbors=5, metric="ip", **EXACT).fit(x).kneighbors(return_distance=False)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(i, np.argsort(-s, axis=1, kind="stable")[:, :5])


def test_short_results_are_searched_again(blobs):
    """With one list read, a query's list holds fewer than 100 vectors: those rows are searched
    again over every list, so every row is full (and exact)."""
    x, q = blobs
    est = SpannNeighbors(n_neighbors=100, max_postings=1).fit(x)
    assert (est.index_.search(q, 100, max_postings=1).ids < 0).any()
    d, i = est.kneighbors(q)
    rd, ri = NearestNeighbors(n_neighbors=100).fit(x.astype(np.float64)).kneighbors(q.astype(np.float64))
    np.testing.assert_allclose(d, rd, rtol=1e-4, atol=1e-5)


def test_defaults_find_the_neighbours(blobs):
    """Default search parameters on data this small read every list anyway."""
    x, q = blobs
    i = SpannNeighbors(n_neighbors=10).fit(x).kneighbors(q, return_distance=False)
    ri = NearestNeighbors(n_neighbors=10).fit(x).kneighbors(q, return_distance=False)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(i, ri)]) >= 9.9


def test_uint8_data_is_indexed_as_is(blobs):
    x, q = blobs
    xu = (x - x.min()).astype(np.uint8)
    est = SpannNeighbors(n_neighbors=4, **EXACT).fit(xu)
    assert est.index_.dtype == np.uint8
    d, _ = est.kneighbors(q)
    rd, _ = NearestNeighbors(n_neighbors=4).fit(xu).kneighbors(q)
    np.testing.assert_allclose(d, rd, rtol=1e-4)


def test_graphs(blobs):
    x, q = blobs
    n = len(x)
    est = SpannNeighbors(n_neighbors=5, **EXACT).fit(x)
    ref = KNeighborsTransformer(n_neighbors=5).fit(x)
    g = est.transform(x)  # each sample its own first neighbour, at distance 0, plus 5 others
    assert g.format == "csr" and g.shape == (n, n) and g.dtype == np.float64
    assert np.all(np.diff(g.indptr) == 6)
    assert np.all(g.diagonal() == 0) and np.all(g.indices[::6] == np.arange(n))
    np.testing.assert_allclose(g.toarray(), ref.transform(x).toarray(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(est.fit_transform(x).toarray(), g.toarray())
    c = SpannNeighbors(n_neighbors=5, mode="connectivity", **EXACT).fit(x).transform(q)
    assert c.shape == (20, n) and np.all(np.diff(c.indptr) == 5) and np.all(c.data == 1)
    kg = est.kneighbors_graph()  # the training rows without themselves, ones
    assert kg.shape == (n, n) and kg.diagonal().sum() == 0 and np.all(kg.data == 1)
    assert np.array_equal(kg.toarray(), NearestNeighbors(n_neighbors=5).fit(x).kneighbors_graph().toarray())
    dg = est.kneighbors_graph(q, n_neighbors=3, mode="distance")
    np.testing.assert_allclose(dg.toarray(), ref.kneighbors_graph(q, 3, mode="distance").toarray(), rtol=1e-4)
    assert est.get_feature_names_out()[0] == "spannneighbors0" and len(est.get_feature_names_out()) == n


def test_duplicates_drop_one_row_each():
    x = np.repeat(np.arange(10, dtype=np.float32)[:, None] * [1, 2], 3, axis=0)  # every row three times
    d, i = SpannNeighbors(n_neighbors=2, **EXACT).fit(x).kneighbors()
    assert not np.any(i == np.arange(30)[:, None]) and np.all(d == 0)
    assert np.all(i // 3 == np.arange(30)[:, None] // 3)


def test_isomap_pipeline():
    """A pipeline with Isomap on the precomputed graph embeds as Isomap on KNeighborsTransformer's."""
    x = make_swiss_roll(n_samples=300, noise=0.05, random_state=0)[0].astype(np.float32)

    def embed(first):
        return make_pipeline(first, Isomap(n_neighbors=10, n_components=2, metric="precomputed")).fit_transform(x)

    emb = embed(SpannNeighbors(n_neighbors=10, mode="distance", **EXACT))
    ref = embed(KNeighborsTransformer(n_neighbors=10, mode="distance"))
    assert emb.shape == (300, 2)
    np.testing.assert_allclose(np.abs(emb), np.abs(ref), rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_clustering_on_the_graph(blobs):
    x, _ = blobs
    truth = make_blobs(n_samples=260, centers=6, n_features=8, cluster_std=1.0, random_state=0)[1][:240]
    graph = SpannNeighbors(n_neighbors=10).fit_transform(x)
    labels = SpectralClustering(n_clusters=6, affinity="precomputed_nearest_neighbors", n_neighbors=10,
                                random_state=0).fit_predict(graph)
    assert _agreement(labels, truth) == 1.0
    labels = DBSCAN(eps=3.0, min_samples=5, metric="precomputed").fit_predict(graph)
    assert _agreement(labels, truth) > 0.9


def test_tsne_pipeline(blobs):
    x, _ = blobs
    tsne = TSNE(n_components=2, metric="precomputed", init="random", perplexity=3, max_iter=250, random_state=0)
    emb = make_pipeline(SpannNeighbors(n_neighbors=10), tsne).fit_transform(x)
    assert emb.shape == (len(x), 2) and np.isfinite(emb).all()


def _agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of samples whose label is the majority label of their true cluster."""
    return sum(np.bincount(labels[truth == t] + 1).max() for t in np.unique(truth)) / len(truth)


def test_pickling(blobs, tmp_path):
    x, q = blobs
    with pytest.raises(TypeError, match="index_dir"):
        pickle.dumps(SpannNeighbors().fit(x))
    assert pickle.loads(pickle.dumps(SpannNeighbors(n_neighbors=3))).get_params()["n_neighbors"] == 3
    est = SpannNeighbors(n_neighbors=4, index_dir=tmp_path / "ix").fit(x)
    blob = pickle.dumps(est)
    assert len(blob) < 10_000  # the path, not the index
    copy = pickle.loads(blob)
    assert copy.index_ is not est.index_ and copy.n_samples_fit_ == len(x)
    np.testing.assert_array_equal(copy.kneighbors(q)[1], est.kneighbors(q)[1])
    est.fit(x[:100])  # the directory now holds another build
    with pytest.raises(IndexNotFoundError, match="rebuilt"):
        pickle.loads(blob)
    blob = pickle.dumps(est)
    est.index_.close()
    copy.index_.close()
    shutil.rmtree(tmp_path / "ix")
    with pytest.raises(IndexNotFoundError, match="cannot be reopened"):
        pickle.loads(blob)


def test_temporary_directory_is_removed(blobs):
    x, _ = blobs
    est = SpannNeighbors().fit(x)
    first = Path(est.index_.path)
    assert first.is_dir()
    est.fit(x)
    assert not first.exists() and Path(est.index_.path).is_dir()
    second = Path(est.index_.path)
    del est
    gc.collect()
    assert not second.exists() and not second.parent.exists()


def test_index_dir_is_kept_and_replaced(blobs, tmp_path):
    x, _ = blobs
    where = tmp_path / "ix"
    est = SpannNeighbors(index_dir=where).fit(x)
    est.fit(x[:50])  # replaces its own index
    assert est.index_.n == 50
    del est
    gc.collect()
    assert (where / "zarr.json").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a spann index"):
        SpannNeighbors(index_dir=tmp_path / "other").fit(x)


@pytest.mark.parametrize("params, error, match", [
    ({"metric": "manhattan"}, ValueError, "metric must be one of"),
    ({"mode": "weights"}, ValueError, "mode must be"),
    ({"n_neighbors": 0}, ValueError, "n_neighbors must be >= 1"),
    ({"n_neighbors": 2.5}, TypeError, "n_neighbors must be an integer"),
    ({"build_params": {"head_ratio": 2.0}}, ValueError, "head_ratio"),
    ({"build_params": {"no_such": 1}}, ValueError, "no_such"),
    ({"max_postings": 0}, ValueError, "max_postings"),
    ({"index_dir": "s3://bucket/ix"}, ValueError, "local directory"),
    ({"n_jobs": 0}, ValueError, "n_jobs"),
])
def test_bad_parameters(blobs, params, error, match):
    with pytest.raises(error, match=match):
        SpannNeighbors(**params).fit(blobs[0])


def test_bad_queries(blobs):
    x, q = blobs
    est = SpannNeighbors(n_neighbors=3).fit(x[:10])
    with pytest.raises(ValueError, match="n_neighbors < n_samples_fit"):
        est.kneighbors(n_neighbors=10)
    with pytest.raises(ValueError, match="n_neighbors <= n_samples_fit"):
        est.kneighbors(q, n_neighbors=11)
    assert est.kneighbors(q, n_neighbors=10)[1].shape == (20, 10)
    with pytest.raises(ValueError, match="Expected n_neighbors > 0"):
        est.kneighbors(q, n_neighbors=0)
    with pytest.raises(ValueError, match="Unsupported mode"):
        est.kneighbors_graph(q, mode="weights")
    with pytest.raises(ValueError, match="2 is required"):
        SpannNeighbors().fit(x[:1])


def test_n_jobs(blobs):
    x, q = blobs
    est = SpannNeighbors(n_neighbors=4, n_jobs=1, **EXACT).fit(x)
    assert est.index_.build_params.threads == 1
    assert np.array_equal(est.kneighbors(q)[1], est.set_params(n_jobs=-1).kneighbors(q)[1])


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_import_spann_does_not_import_sklearn():
    p = _run("import sys, spann; print('sklearn' in sys.modules)")
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


def test_missing_sklearn_says_what_to_install():
    p = _run("import sys; sys.modules['sklearn'] = None\nimport spann.sklearn")
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last == 'ImportError: spann.sklearn needs scikit-learn: pip install "spann-ann[sklearn]"', p.stderr


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start: scikit-learn\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    ns: dict = {}
    exec(compile(code, "README scikit-learn quick start", "exec"), ns)
    assert ns["ind"].shape == (1000, 10) and ns["emb"].shape == (1000, 2)
    assert not (ns["ind"] == np.arange(1000)[:, None]).any()  # kneighbors() leaves each row itself out
