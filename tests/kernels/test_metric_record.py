"""What the Metric record says about each metric beyond its scan kernel."""

import numpy as np
import pytest

from spann.kernels.exact import exact_knn, pairwise_distances
from spann.kernels.metrics import METRICS, get_metric


def test_metric_facts():
    got = {m.name: (m.inner_product, m.squared_l2, m.stored_metric, m.normalize) for m in METRICS.values()}
    assert got == {"l2": (False, True, "l2", False), "ip": (True, False, "ip", False),
                   "cosine": (False, False, "l2", True)}


@pytest.mark.parametrize("metric", list(METRICS))
def test_exact_distances_follow_the_metric(metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    q = rng.standard_normal((5, 12)).astype(np.float32)
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    want = {"l2": ((q64[:, None] - x64[None]) ** 2).sum(-1), "ip": -(q64 @ x64.T),
            "cosine": 1 - (q64 @ x64.T) / np.outer(np.linalg.norm(q64, axis=1), np.linalg.norm(x64, axis=1))}[metric]
    d = pairwise_distances(q, x, metric)
    np.testing.assert_allclose(d, want, rtol=1e-6, atol=1e-9)
    ids, dist = exact_knn(x, q, 7, metric)
    np.testing.assert_array_equal(ids, np.argsort(want, axis=1, kind="stable")[:, :7])
    # the stored rows of a metric ranked by its stored_metric rank as the metric does
    m = get_metric(metric)
    ids2, _ = exact_knn(m.stored_rows(x), m.stored_rows(q), 7, m.stored_metric)
    np.testing.assert_array_equal(ids2, ids)
