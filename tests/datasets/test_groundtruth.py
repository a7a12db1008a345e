import numpy as np
import pytest

from spann.datasets import ground_truth_files, read_vectors, write_vectors
from spann.errors import DataError, ParameterError
from spann.kernels.exact import exact_knn, pairwise_distances


def _data(dtype, n=900, d=12, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        x = rng.integers(0, 256, (n, d)).astype(np.uint8)
    elif dtype == "int8":
        x = rng.integers(-128, 128, (n, d)).astype(np.int8)
    else:
        x = rng.standard_normal((n, d)).astype(np.float32)
    x[50:80] = x[3]  # exact duplicates: ties
    return x


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("dtype", ["float32", "uint8", "int8"])
def test_exact_against_brute_force(metric, dtype):
    x = _data(dtype)
    q = np.vstack([x[3], x[10], _data(dtype, 20, seed=1)]).astype(np.float32)
    k = 50  # > the 30-way tie and > base_block below
    ids, d = exact_knn(x, q, k, metric, base_block=37, query_block=7)
    ref = pairwise_distances(q, x, metric)
    ref_sorted = np.sort(ref, axis=1)[:, :k]
    np.testing.assert_allclose(d, ref_sorted, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(ref_sorted).max()))
    # ids are what their distances say, each row sorted by (distance, id), no duplicates
    np.testing.assert_allclose(np.take_along_axis(ref, ids, 1), d, rtol=1e-5, atol=1e-3)
    assert all(len(set(r)) == k for r in ids)
    for r in range(len(q)):
        key = list(zip(d[r].tolist(), ids[r].tolist()))
        assert key == sorted(key)
    # the 31 copies of x[3] are all at the same distance from q[0] and come first, lowest ids first
    if metric == "l2":
        assert set(ids[0, :31]) == {3, *range(50, 80)}
        np.testing.assert_array_equal(ids[0, :31], sorted(ids[0, :31]))


def test_k_larger_than_base_is_padded():
    x = _data("float32", n=5)
    ids, d = exact_knn(x, x[:2], 8, "l2")
    assert (ids[:, 5:] == -1).all() and np.isinf(d[:, 5:]).all()
    assert (ids[:, :5] >= 0).all()


def test_bad_arguments():
    x = _data("float32")
    with pytest.raises(ParameterError):
        exact_knn(x, x[:2], 0)
    with pytest.raises(DataError, match="dimension|shape"):
        exact_knn(x, x[:2, :5], 3)


@pytest.mark.parametrize("ext", ["ibin", "ivecs", "npy"])
def test_ground_truth_files(tmp_path, ext):
    x = _data("float32", n=3000)
    write_vectors(tmp_path / "base.fbin", x)
    write_vectors(tmp_path / "q.fvecs", x[:40] + 0.01)
    ids_p, dist_p = ground_truth_files(tmp_path / "base.fbin", tmp_path / "q.fvecs", tmp_path / f"gt.{ext}", 10,
                                       "l2", progress=False)
    ids = read_vectors(ids_p, ids=True)
    ref_i, ref_d = exact_knn(x, x[:40] + 0.01, 10, "l2")
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(read_vectors(dist_p), ref_d, rtol=1e-6)
