import math

import numpy as np

from spann.datasets import synthetic_array
from spann.heads.clustering import balanced_kmeans, capacity_assign, select_heads


def test_capacity_assign_respects_cap_and_prefers_nearest():
    rng = np.random.default_rng(0)
    d = rng.random((1000, 7)).astype(np.float32)
    lab = capacity_assign(d, 150)
    assert np.bincount(lab, minlength=7).max() <= 150
    # with room for everyone, everyone gets its nearest
    np.testing.assert_array_equal(capacity_assign(d, 1000), d.argmin(1))


def test_balanced_kmeans_balances_skewed_data():
    x = synthetic_array(30000, 16, seed=2)  # uneven mixture
    rng = np.random.default_rng(0)
    for k, slack in [(32, 0.2), (10, 0.0)]:
        lab, cen = balanced_kmeans(x, k, slack=slack, rng=rng)
        sizes = np.bincount(lab, minlength=k)
        assert sizes.max() <= math.ceil(len(x) / k * (1 + slack))
        assert sizes.max() / sizes.mean() <= 1 + slack + 1e-3
        assert cen.shape == (k, 16)


def test_select_heads_are_balanced_centroids_in_tree_order():
    x = synthetic_array(20000, 12, seed=4)
    heads = select_heads(x, 2000, branching=16, slack=0.2, seed=0)
    assert heads.dtype == np.float32 and heads.shape[1] == 12 and 1900 <= heads.shape[0] <= 2000
    assert np.isfinite(heads).all()
    from spann.kernels.exact import exact_knn
    near, _ = exact_knn(heads, x, 1, "l2")
    sizes = np.bincount(near[:, 0], minlength=heads.shape[0])
    # centroids: every head is the nearest head of some vectors, and no cell is a hub
    assert (sizes > 0).mean() > 0.98
    assert sizes.max() <= 6 * sizes.mean()
    # depth-first order: consecutive heads are much nearer than random pairs
    step = np.linalg.norm(heads[1:] - heads[:-1], axis=1).mean()
    rnd = np.linalg.norm(heads[np.random.default_rng(0).permutation(len(heads))] - heads, axis=1).mean()
    assert step < 0.8 * rnd
