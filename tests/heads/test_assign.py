import numpy as np

from spann.heads.assign import select_replicas


def _run(x, heads, cand, eps, rng_factor, R=8):
    heads = np.asarray(heads, np.float32)
    d = np.array([((x - heads[c]) ** 2).sum() for c in cand], np.float32)
    order = np.argsort(d)
    ci, cd = np.asarray(cand, np.int32)[order], d[order]
    oi, od = np.full(R, -1, np.int32), np.full(R, np.inf, np.float32)
    n = select_replicas(ci, cd, heads, R, np.float32(eps), np.float32(rng_factor), oi, od)
    return list(oi[:n])


def test_closure_rule():
    x = np.array([0.0, 0.0], np.float32)
    heads = [[1.0, 0.0], [0.0, 1.1], [0.0, -1.5], [-3.0, 0.0]]  # distances 1, 1.1, 1.5, 3
    # rng_factor huge: the RNG rule never fires, only closure decides
    assert _run(x, heads, [0, 1, 2, 3], eps=0.05, rng_factor=1e6) == [0]
    assert _run(x, heads, [0, 1, 2, 3], eps=0.15, rng_factor=1e6) == [0, 1]
    assert _run(x, heads, [0, 1, 2, 3], eps=0.6, rng_factor=1e6) == [0, 1, 2]
    assert _run(x, heads, [0, 1, 2, 3], eps=10, rng_factor=1e6) == [0, 1, 2, 3]
    assert _run(x, heads, [0, 1, 2, 3], eps=10, rng_factor=1e6, R=2) == [0, 1]


def test_rng_rule():
    x = np.array([0.0, 0.0], np.float32)
    # c0 at distance 1; c1 just behind c0 (same direction): c0 covers it; c2 on the other side
    heads = [[1.0, 0.0], [1.3, 0.1], [-1.2, 0.0]]
    assert _run(x, heads, [0, 1, 2], eps=10, rng_factor=1.0) == [0, 2]
    # a large rng_factor makes the rule permissive (SPTAG: rng_factor * d(c_i, c_j) < d(x, c_j) skips)
    assert _run(x, heads, [0, 1, 2], eps=10, rng_factor=100.0) == [0, 2, 1]


def test_nearest_head_always_kept():
    x = np.array([5.0, 5.0], np.float32)
    heads = [[0.0, 0.0], [5.0, 4.0]]
    assert _run(x, heads, [0, 1], eps=0.0, rng_factor=1.0)[0] == 1
