"""Operating points: measured at build, stored, used by the default search and by ``recall=``."""

import json

import numpy as np
import pytest

import spann
from spann.errors import ParameterError, QueryError
from spann.kernels.exact import exact_knn
from spann.search.operating_points import (DEFAULT_RECALL, OperatingPoints, budget_ladder, calibration_queries,
                                           recall_excluding)
from spann.tools.eval import recall_at_k

K = 10


def _points(recall, mps=None, factor=0.0):
    mps = mps or list(range(1, len(recall) + 1))
    return OperatingPoints(k=10, queries=100, max_postings=tuple(mps), recall=tuple(recall),
                           lists=tuple(float(m) for m in mps), kib=tuple(8.0 * m for m in mps), rerank_factor=factor)


# -- the curve and its lookups ----------------------------------------------------------------------
def test_lookup_interpolates_between_measured_points_and_rounds_up():
    p = _points([0.5, 0.8, 0.9, 0.96], mps=[1, 4, 8, 16])
    assert p.max_postings_for(0.5) == 1
    assert p.max_postings_for(0.9) == 8
    assert p.max_postings_for(0.85) == 6  # halfway between 4 (0.8) and 8 (0.9), in log(lists): 5.66
    assert p.max_postings_for(0.93) == 12  # 8 * 2 ** 0.5 = 11.3
    assert p.max_postings_for(0.96) == 16
    assert p.max_postings_for(0.99) == 16  # beyond the curve: its best point
    assert not p.reaches(0.99) and p.reaches(0.96)
    flat = _points([0.5, 0.9, 0.931, 0.932, 0.929], mps=[1, 4, 8, 16, 32])
    assert flat.max_postings_for(0.95) == 8  # where the curve flattens near its best, not its last point


def test_a_dip_in_the_measured_curve_does_not_count_as_reaching_the_target():
    p = _points([0.5, 0.91, 0.89, 0.95])  # noise: 0.91 at 2, then 0.89 at 3
    assert p.max_postings_for(0.9) == 4  # the curve stays above 0.9 only from the last point
    assert p.max_postings_for(0.85) == 2


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, float("nan"), "0.9", True, None])
def test_recall_targets_are_checked(bad):
    with pytest.raises(ParameterError, match="recall must be a number in"):
        _points([0.5, 0.9]).max_postings_for(bad)


def test_round_trip_and_malformed_points():
    p = _points([0.5, 0.8, 0.9], factor=1.5)
    q = OperatingPoints.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p and q.rerank_for(10) == 15 and q.rerank_for(20) == 30 and _points([0.5]).rerank_for(10) == 0
    assert q.rerank_for(1) == 15  # measured at k = 10: a smaller k keeps that pool
    for bad in ({}, {**p.to_dict(), "recall": [0.5, 0.8]}, {**p.to_dict(), "max_postings": [1, 1, 2]},
                {**p.to_dict(), "recall": [0.5, 0.8, 1.5]}, {**p.to_dict(), "rerank_factor": 0.5}):
        with pytest.raises(ParameterError):
            OperatingPoints.from_dict(bad)


def test_ladder_and_query_counts():
    lad = budget_ladder(1000)
    assert lad[:8] == list(range(1, 9)) and lad[-1] == 1000 and all(b > a for a, b in zip(lad, lad[1:]))
    assert all(b <= round(a * (1.25 if a < 64 else 1.5)) + 1 for a, b in zip(lad[7:], lad[8:]))
    assert budget_ladder(5) == [1, 2, 3, 4, 5]
    assert calibration_queries(1999, 128, 1000) == 0 and calibration_queries(10**6, 128, 0) == 0
    assert calibration_queries(5000, 128, 1000) == 500 and calibration_queries(10**6, 128, 1000) == 1000
    assert calibration_queries(2 * 10**7, 128, 1000) == 1000 and calibration_queries(10**8, 128, 1000) == 200
    assert calibration_queries(10**7, 768, 1000) == 333 and calibration_queries(10**9, 128, 1000) == 200
    assert calibration_queries(10**6, 128, 5000) == 5000  # a limit above the default is honoured


def test_recall_excluding_drops_the_query_row_from_both_sides():
    truth = np.array([[7, 1, 2, 3], [0, 4, 5, 6]])  # query 0 is row 7, query 1 is not a base row
    found = np.array([[7, 1, 3, 9], [4, 0, 8, 9]])
    r = recall_excluding(found, truth, np.array([7, -1]), 2)
    np.testing.assert_allclose(r, [0.5, 1.0])  # {1, 3} vs {1, 2}; {4, 0} vs {0, 4}


# -- measured at build ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["full", "sq8", "rabitq"])
def built(request, synth, tmp_path_factory):
    x, q, gi, _ = synth
    path = tmp_path_factory.mktemp("op") / f"{request.param}.spann"
    idx = spann.build(x, path, metric="l2", encoding=request.param)
    yield idx, x, q, gi
    idx.close()


def test_build_stores_points_and_the_default_search_uses_them(built):
    idx, x, q, gi = built
    p = idx.operating_points
    assert p is not None and p.queries == calibration_queries(len(x), x.shape[1], 1000) and p.k == K
    assert idx.attrs["stats"]["operating_points"] == p.to_dict()
    assert "operating_points" in idx.attrs["stats"]["seconds"]
    # one-bit codes of 24 dimensions lose a little even with the deepest pool
    assert p.recall[-1] >= {"full": 0.995, "sq8": 0.99, "rabitq": 0.97}[idx.layout.encoding]
    assert p.recall[0] < p.recall[-1] and p.lists[0] < p.lists[-1]
    assert idx.default_params.max_postings == p.max_postings_for(DEFAULT_RECALL)
    assert (p.rerank_factor > 0) == (idx.layout.coded)
    # the stored curve is what a search measures: its own queries (rows of the base, themselves left out)
    rows = np.random.default_rng(0).choice(len(x), 300, replace=False)
    truth, _ = exact_knn(x, x[rows], K + 1, "l2")
    m = p.max_postings[len(p.max_postings) // 2]
    found = idx.search(x[rows], K + 1, max_postings=m).ids
    got = recall_excluding(found, truth, rows.astype(np.int64), K).mean()
    assert abs(got - p.recall[len(p.max_postings) // 2]) < 0.04


def test_recall_target_picks_its_point_and_lands_near_it(built):
    idx, x, q, gi = built
    p = idx.operating_points
    # the synthetic queries come from the base's distribution: the measured curve holds for them
    for target in (0.85, 0.95):
        res = idx.search(q, K, recall=target, threads=1)
        want = idx.search(q, K, max_postings=p.max_postings_for(target), threads=1)
        np.testing.assert_array_equal(res.ids, want.ids)
        assert recall_at_k(res.ids, gi, K) >= target - 0.05
    lo, hi = idx.search(q, K, recall=0.8), idx.search(q, K, recall=0.99)
    assert lo.lists_read.mean() < hi.lists_read.mean()
    assert recall_at_k(hi.ids, gi, K) > recall_at_k(lo.ids, gi, K)


def test_recall_is_refused_with_max_postings_or_params(built):
    idx, *_ = built
    q = np.zeros(idx.dim, np.float32)
    with pytest.raises(ParameterError, match="not both"):
        idx.search(q, K, recall=0.9, max_postings=8)
    with pytest.raises(ParameterError, match="not both"):
        idx.search(q, K, recall=0.9, params=spann.SearchParams())
    with pytest.raises(ParameterError, match="recall must be"):
        idx.search(q, K, recall=1.5)


def test_coded_indexes_use_their_learned_rerank_depth(built):
    idx, x, q, gi = built
    if not idx.layout.coded:
        pytest.skip("full lists re-rank nothing")
    stored = idx.operating_points
    b = idx.recall_breakdown(q, gi, K, max_postings=16, threads=1)
    assert (b.rows <= stored.rerank_for(K)).all()
    one = idx.search(q[0], K, max_postings=16)  # the single-query path caches its plan
    try:
        for factor in (4.0, 7.0):  # depths unlike any encoding's default (15 / 30)
            idx.operating_points = OperatingPoints.from_dict({**stored.to_dict(), "rerank_factor": factor})
            depth = int(factor * K)
            b = idx.recall_breakdown(q, gi, K, max_postings=16, rerank_bound=False, threads=1)
            assert b.rows.max() == depth  # the batch path's pool
            # the single-query path, after its plan was cached with the old depth
            again = idx.search(q[0], K, max_postings=16, rerank_bound=False)
            want = idx.search(q[0], K, max_postings=16, rerank_bound=False, rerank=depth)
            np.testing.assert_array_equal(again.ids, want.ids)
            assert again.distance_evals[0] == want.distance_evals[0]
            # k below the measured 10 keeps the pool of 10
            small = idx.recall_breakdown(q, gi[:, :3], 3, max_postings=16, rerank_bound=False, threads=1)
            assert small.rows.max() == depth
    finally:
        idx.operating_points = stored
    np.testing.assert_array_equal(idx.search(q[0], K, max_postings=16).ids, one.ids)


def test_calibrate_with_own_queries_and_install(built):
    idx, x, q, gi = built
    stored = idx.operating_points
    mine = idx.calibrate(q, gi, K, threads=1)
    assert mine.queries == len(q) and mine.recall[-1] >= 0.97
    try:
        idx.operating_points = mine
        assert idx.default_params.max_postings == mine.max_postings_for(DEFAULT_RECALL)
        # measured on these queries: each point is exactly what a search at it returns
        for j in range(0, len(mine.max_postings), 3):
            got = recall_at_k(idx.search(q, K, max_postings=mine.max_postings[j], threads=1).ids, gi, K)
            assert got == pytest.approx(mine.recall[j], abs=1e-9)
        assert recall_at_k(idx.search(q, K, recall=0.9, threads=1).ids, gi, K) >= 0.9 - 1e-9
    finally:
        idx.operating_points = stored
    with pytest.raises(QueryError, match="at least 20 queries"):
        idx.calibrate(q[:5], gi[:5])
    with pytest.raises(QueryError, match="integer ground truth"):
        idx.calibrate(q, gi[:, :5])
    with pytest.raises(ParameterError, match="OperatingPoints or None"):
        idx.operating_points = {"k": 10}


def test_calibration_queries_are_left_out_of_the_clustering_sample(synth):
    from spann.builder.calibration import calibration_rows
    from spann.builder.stages import sample_stage
    from spann.builder.inputs import as_vector_source
    from spann.kernels.metrics import get_metric
    x, *_ = synth
    params = spann.BuildParams(cluster_sample=5000)
    held = calibration_rows(len(x), x.shape[1], params)
    s = sample_stage(as_vector_source(x), get_metric("l2"), params)
    assert held.size == calibration_queries(len(x), x.shape[1], 1000) and s.ids.size == 5000
    assert not np.isin(s.ids, held).any() and np.unique(s.ids).size == 5000
    everything = sample_stage(as_vector_source(x), get_metric("l2"), params.replace(cluster_sample=10**6))
    np.testing.assert_array_equal(everything.ids, np.setdiff1d(np.arange(len(x)), held))


def test_no_calibration_queries_no_points(synth, tmp_path):
    x, q, gi, _ = synth
    with spann.build(x[:5000], tmp_path / "none.spann", metric="l2", calibration_queries=0) as idx:
        assert idx.operating_points is None and "operating_points" not in idx.attrs["stats"]
        assert idx.default_params == spann.SearchParams()
        with pytest.raises(ParameterError, match="no operating points"):
            idx.search(q[0], K, recall=0.9)


def test_points_follow_user_ids_and_survive_updates(synth, tmp_path):
    x, q, gi, _ = synth
    ids = np.arange(len(x), dtype=np.int64)[::-1] * 3 + 1000
    with spann.build(x, tmp_path / "rows.spann", metric="l2", encoding="sq8") as rows:
        by_row = rows.operating_points
    with spann.build(x, tmp_path / "ids.spann", metric="l2", ids=ids, encoding="sq8") as idx:
        p = idx.operating_points
        # the same index under other ids: measured in the users' ids (the query's own id left
        # out), the curve is the row-id build's exactly
        assert p == by_row
        res = idx.search(q, K, recall=0.95, threads=1)
        assert recall_at_k(res.ids, ids[gi], K) >= 0.9
        idx.add(x[:10] + 0.01, ids=np.arange(10))
        assert idx.attrs["generation"] == 2
    with spann.open(tmp_path / "ids.spann") as again:
        assert again.operating_points == p
