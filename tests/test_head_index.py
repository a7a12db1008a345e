import numpy as np

from spann.datasets import synthetic_array
from spann.exact import exact_knn
from spann.head_index import beam_search, build_graph, knn_candidates


def test_graph_search_finds_nearest_heads():
    x = synthetic_array(5000, 16, seed=7)
    nb, entries = build_graph(x, degree=24, candidates=48)
    assert nb.shape == (5000, 24) and nb.max() < 5000 and entries.size > 0
    assert ((nb >= 0).sum(1) > 0).all()
    q = synthetic_array(200, 16, seed=7, stream=1, n_hint=5000)
    gi, gd = exact_knn(x, q, 32, "l2")
    vis = np.zeros(5000, np.uint32)
    oi, od = np.empty(32, np.int32), np.empty(32, np.float32)
    hits = first = 0
    for i in range(len(q)):
        n_eval = beam_search(q[i], x, nb, entries, 64, vis, np.uint32(i + 1), oi, od)
        assert 0 < n_eval < 5000
        assert np.all(np.diff(od) >= 0)
        hits += len(np.intersect1d(oi, gi[i]))
        first += oi[0] == gi[i, 0]
    assert hits / (32 * len(q)) > 0.97
    assert first / len(q) > 0.98


def test_partitioned_knn_is_close_to_exact(monkeypatch):
    import spann.head_index as hi
    x = synthetic_array(6000, 8, seed=1)
    monkeypatch.setattr(hi, "EXACT_KNN_MAX", 1000)
    ai, _ = knn_candidates(x, 10)
    ei, _ = exact_knn(x, x, 10, "l2")
    overlap = np.mean([len(np.intersect1d(ai[i], ei[i])) / 10 for i in range(len(x))])
    assert overlap > 0.95
