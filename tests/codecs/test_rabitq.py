"""RaBitQ one-bit codes: the estimator, its error bound, and search through rabitq postings."""

import numpy as np
import pytest

import spann
from spann.codecs.rabitq import (bound_cut, encode, error_bound, estimate, popcount64, prepare_list_query,
                                 random_rotation)
from spann.datasets import synthetic_array
from spann.kernels.exact import exact_knn, pairwise_distances
from spann.tools.eval import recall_at_k


def test_rotation_is_orthonormal_and_padded():
    rot = random_rotation(50, seed=3)
    assert rot.shape == (50, 64) and rot.dtype == np.float32
    np.testing.assert_allclose(rot @ rot.T, np.eye(50), atol=1e-5)  # rows orthonormal: norms kept
    assert not np.allclose(rot, random_rotation(50, seed=4))


def test_popcount64_counts_bits():
    import numba

    @numba.njit
    def pc(a):
        return np.array([popcount64(v) for v in a])

    v = np.random.default_rng(0).integers(-2**63, 2**63 - 1, 500, dtype=np.int64)
    want = [bin(int(x) & (2**64 - 1)).count("1") for x in v]
    np.testing.assert_array_equal(pc(v), want)
    assert pc(np.array([-1, 0], np.int64)).tolist() == [64, 0]


@pytest.mark.parametrize("dim", [100, 768])
def test_estimator_is_unbiased_within_its_error_bound(dim):
    """<u, q'> estimated from one bit per dimension: errors centred on 0 and, for >= 99 % of the
    entries, inside RaBitQ's bound sqrt(1 - a^2) / a * eps0 / sqrt(Dp - 1) (a = <o_bar, u>,
    eps0 = 1.9 as in the paper) plus the 4-bit query quantisation's share."""
    rng = np.random.default_rng(dim)
    n = 4000
    c = rng.standard_normal(dim).astype(np.float32)
    x = (c + rng.standard_normal((n, dim))).astype(np.float32)
    q = (c + rng.standard_normal(dim)).astype(np.float32)
    rot = random_rotation(dim, seed=1)
    dp = rot.shape[1]
    codes, aux = encode(x, np.repeat(c[None], n, 0), rot)
    assert codes.shape == (n, dp // 8) and aux.shape == (n, 2)
    np.testing.assert_allclose(aux[:, 0], np.linalg.norm(x - c, axis=1), rtol=1e-5)
    words = codes.view(np.int64).reshape(n, dp // 64)
    planes = np.empty((4, dp // 64), np.int64)
    nq, lo, w, s = prepare_list_query((q @ rot).astype(np.float32), (c @ rot).astype(np.float32), planes, True)
    assert abs(nq - np.linalg.norm(q - c)) < 1e-3 * nq
    est = np.array([estimate(words[i], planes, lo, w, s, dp) for i in range(n)]) / aux[:, 1]
    u = (x - c) / aux[:, :1]
    true = u @ ((q - c) / np.linalg.norm(q - c))
    err = est - true
    a = aux[:, 1].astype(np.float64)
    bound = np.sqrt(1 - a * a) / a * 1.9 / np.sqrt(dp - 1) + 2 * w
    assert np.mean(np.abs(err) <= bound) >= 0.99
    kernel = np.array([error_bound(np.float32(v), dp, np.float32(w)) for v in aux[:, 1]])  # what search uses
    np.testing.assert_allclose(kernel, (bound - 2 * w) + 1.9 * w / np.sqrt(12) / a, rtol=1e-4)
    assert np.mean(np.abs(err) <= kernel) >= 0.95  # EPS0 = 1.9: about two standard deviations
    assert abs(err.mean()) < 3 * err.std() / np.sqrt(n) + 1e-3  # unbiased
    assert 0.7 < a.mean() < 0.9  # <o_bar, u> concentrates near sqrt(2 / pi) ~ 0.8
    assert err.std() < 1.0 / np.sqrt(dp)  # theory: ~ sqrt(1 - a^2) / a / sqrt(Dp) ~ 0.75 / sqrt(Dp)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_rabitq_search_is_exact_at_full_depth_and_matches_batch(tmp_path, metric):
    """Read every list and re-rank every candidate: the results are the exact k nearest (the
    codes only order candidates). Re-ranking 100 candidates: recall@10 >= 0.9 on 40-d clusters
    (one bit per dimension is coarse at low dimension; the auto encoding keeps sq8 there)."""
    x = synthetic_array(8000, 40, seed=5)
    if metric == "ip":
        x = x * np.random.default_rng(0).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32)
    q = synthetic_array(60, 40, seed=5, stream=1, n_hint=8000)
    gi, gd = exact_knn(x, q, 10, metric)
    with spann.build(x, tmp_path / "r", metric=metric, progress=False, encoding="rabitq") as idx:
        assert idx.layout.encoding == "rabitq" and idx.heads.shape[1] == 64 + (metric == "ip")
        H = idx.heads.shape[0]
        r = idx.search(q, 10, max_postings=H, pruner=False, rerank=len(x), threads=2)
        np.testing.assert_array_equal(np.sort(r.ids, 1), np.sort(gi, 1))
        true = np.take_along_axis(pairwise_distances(q, x, metric), r.ids, 1)
        np.testing.assert_allclose(r.distances, true, rtol=1e-3, atol=1e-4)
        qs1, qh1 = idx._queries.prepare(q[0], 10, idx._snap.live)  # one query: the rotation kernel
        qs2, qh2 = idx._queries.prepare(q[:1], 10, idx._snap.live)  # a batch: numpy / BLAS
        assert qh1.shape == qh2.shape
        np.testing.assert_allclose(qh1, qh2, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(qs1, qs2)
        batch = idx.search(q, 10, rerank=100)
        one = np.vstack([idx.search(v, 10, rerank=100).ids for v in q])
        np.testing.assert_array_equal(one, batch.ids)
        assert recall_at_k(batch.ids, gi, 10) >= 0.9


def test_rabitq_index_reopens_with_the_same_results(tmp_path):
    x = synthetic_array(5000, 70, seed=9)
    q = synthetic_array(30, 70, seed=9, stream=1, n_hint=5000)
    with spann.build(x, tmp_path / "r", metric="l2", progress=False, encoding="rabitq") as idx:
        a = idx.search(q, 5)
    with spann.open(tmp_path / "r") as idx:
        b = idx.search(q, 5)
        assert idx.info()["layout"]["encoding"] == "rabitq"
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


def test_bound_cut_keeps_exactly_the_candidates_that_can_reach_the_top_k():
    rng = np.random.default_rng(4)
    for _ in range(200):
        n, cap, k = int(rng.integers(0, 30)), 32, int(rng.integers(1, 8))
        d = np.sort(rng.uniform(0, 1, n)).astype(np.float32)
        e = rng.uniform(0, 0.2, n).astype(np.float32)
        r = rng.permutation(1000)[:n].astype(np.int64)
        cd, ce, cr = (np.full(cap, np.inf, np.float32), np.zeros(cap, np.float32), np.full(cap, -1, np.int64))
        cd[:n], ce[:n], cr[:n] = d, e, r
        kept = bound_cut(cd, ce, cr, k)
        if n <= k:
            want = np.ones(n, bool)
        else:
            want = d - e <= np.sort(d + e)[k - 1]
        assert kept == want.sum()
        np.testing.assert_array_equal(cr[:kept], r[want])  # survivors in their order
        np.testing.assert_array_equal(cd[:kept], d[want])
        assert (cr[kept:] == -1).all() and np.isinf(cd[kept:]).all()
        if n > k:  # the k best estimates always survive (a d - e <= d + e)
            assert set(r[:k]) <= set(cr[:kept])


def test_rerank_bound_reranks_fewer_candidates_at_the_same_recall(tmp_path):
    """768-d clusters: the error bound drops candidates that cannot reach the top 10 (few on
    isotropic synthetic clusters, whose neighbours are nearly equidistant); the top 10 stays."""
    x = synthetic_array(6000, 768, seed=2)
    q = synthetic_array(40, 768, seed=2, stream=1, n_hint=6000)
    gi, _ = exact_knn(x, q, 10, "l2")
    # the graph walk (no head groups): a cold query then requests no lists early
    with spann.build(x, tmp_path / "b", metric="l2", progress=False, encoding="rabitq", head_groups=0) as idx:
        full = idx.search(q, 10, max_postings=16, rerank=100, rerank_bound=False)
        cut = idx.search(q, 10, max_postings=16, rerank=100)
        one = np.vstack([idx.search(v, 10, max_postings=16, rerank=100).ids for v in q])
        np.testing.assert_array_equal(one, cut.ids)
        assert (cut.distance_evals <= full.distance_evals).all()
        assert (cut.distance_evals < full.distance_evals).sum() >= 10  # fewer rows re-ranked for many queries
        assert recall_at_k(cut.ids, gi, 10) >= recall_at_k(full.ids, gi, 10) - 0.01
        # from the device (one row per page here), a single query requests the rows of its best
        # 10 candidates once half its lists are scanned: the results stay, and with 10
        # candidates in all, early rows that later lists push out are read and counted
        assert idx._planner.vectors_view().prefetchable and idx.layout.encoding == "rabitq"
        ten = idx.search(q, 10, max_postings=16, rerank=10)
        extra = 0
        for i, v in enumerate(q):
            idx.evict()
            c = idx.search(v, 10, max_postings=16, rerank=10)
            np.testing.assert_array_equal(c.ids[0], ten.ids[i])
            np.testing.assert_array_equal(c.distances[0], ten.distances[i])
            assert 0 <= c.bytes_read[0] - ten.bytes_read[i] <= 3 * 10 * 4096  # its page, bridged gaps either side
            extra += c.bytes_read[0] > ten.bytes_read[i]
        assert extra >= 4, extra


def test_build_measures_head_search_in_the_index_head_space(tmp_path, monkeypatch):
    """The build's pruner stage selects heads as a search of the built index does: on the
    rotated heads (rabitq keeps them rotated) with rotated sample queries, so the head search
    it decides on and fits the pruner to is the one searches run."""
    import spann.builder.stages as stages
    seen = []
    real = stages.select_batch

    def spy(qh, hx, *a):
        seen.append((np.array(qh), np.array(hx.heads)))
        return real(qh, hx, *a)

    monkeypatch.setattr(stages, "select_batch", spy)  # the pruner stage's head search
    x = synthetic_array(12000, 40, seed=3)
    with spann.build(x, tmp_path / "r", metric="l2", encoding="rabitq", progress=False, head_groups=64) as idx:
        assert seen
        rot = np.asarray(idx.codebook.rotation, np.float64)  # (40, Dp), orthonormal rows
        for qh, heads in seen:
            np.testing.assert_array_equal(heads, idx.heads)  # the stored (rotated) heads
            q = (qh.astype(np.float64) @ rot.T).astype(np.float32)  # back to the data space
            _, qh2 = idx._queries.prepare(q, 1, idx._snap.live)  # rotated as a search rotates it
            np.testing.assert_allclose(qh2, qh, atol=1e-4)


def test_candidates_keep_each_rows_smallest_estimate_whatever_the_scan_order():
    """Replicas of a row carry their own estimates: the candidates are the best rows by their
    smallest estimate, whatever order the lists are scanned in (direct reads scan them as they
    land)."""
    from spann.kernels.topk import topk_insert_unique_with
    rng = np.random.default_rng(4)
    for _ in range(200):
        rows = rng.integers(0, 40, 120)
        d = rng.random(120).astype(np.float32)
        R = 12
        outs = []
        for order in (np.arange(120), rng.permutation(120)):
            cd, cr, ce = np.full(R, np.inf, np.float32), np.full(R, -1, np.int64), np.zeros(R, np.float32)
            for t in order:
                topk_insert_unique_with(cd, cr, ce, d[t], rows[t], d[t] * 2)
            outs.append((cd, cr, ce))
        best = {}
        for r, v in zip(rows, d):
            best[r] = min(best.get(r, np.inf), v)
        want = sorted(best.items(), key=lambda kv: kv[1])[:R]
        for cd, cr, ce in outs:
            np.testing.assert_array_equal(cr, [r for r, _ in want])
            np.testing.assert_array_equal(cd, [v for _, v in want])
            np.testing.assert_array_equal(ce, cd * 2)
