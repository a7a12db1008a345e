"""The recall breakdown: lists >= pool >= result, each checked against what it counts."""

import numpy as np
import pytest

import spann
from spann.errors import QueryError
from spann.kernels.exact import exact_knn
from spann.tools.eval import evaluate, recall_at_k

K = 10


@pytest.fixture(scope="module", params=["full", "sq8", "rabitq"])
def built(request, synth, tmp_path_factory):
    x, q, _, _ = synth
    path = tmp_path_factory.mktemp("bd") / f"{request.param}.spann"
    idx = spann.build(x[:8000], path, metric="l2", encoding=request.param)
    gt, _ = exact_knn(x[:8000], q, K, "l2")
    yield idx, q, gt
    idx.close()


def _selected(idx, q, k, **overrides):
    """The lists a batch search selects and its re-rank pool, as the planner records them."""
    p = idx.default_params.replace(**overrides)
    qs, qh = idx._queries.prepare(q, k, len(idx))
    trace = {}
    idx._planner.search(idx._snap, qs, qh, k, p, 1, None, trace)
    return trace


@pytest.mark.parametrize("mp", [2, 8, 32])
def test_shares_add_up_and_the_last_is_the_searchs_recall(built, mp):
    idx, q, gt = built
    b = idx.recall_breakdown(q, gt, K, max_postings=mp, threads=1)
    res = idx.search(q, K, max_postings=mp, threads=1)
    assert (b.in_result <= b.in_pool).all() and (b.in_pool <= b.in_lists).all() and (b.in_lists <= K).all()
    assert b.shares()["result"] == recall_at_k(res.ids, gt, K)
    np.testing.assert_array_equal(b.lists, res.lists_read)
    pages = res.bytes_read // 4096
    assert (b.runs >= 1).all() and (b.runs <= pages).all()  # a run is at least a page
    if idx.layout.coded:
        depth = idx.default_params.effective_rerank(K, idx.layout.codec, idx.operating_points.rerank_factor)
        assert (b.rows > 0).all() and (b.rows <= depth).all()  # the depth the build measured
    else:
        assert (b.rows == 0).all() and (b.in_pool == b.in_result).all()  # full lists: the scan is exact


def test_in_lists_counts_the_true_neighbours_the_selected_lists_hold(built, read_list):
    idx, q, gt = built
    b = idx.recall_breakdown(q, gt, K, max_postings=2, threads=1)
    tr = _selected(idx, q, K, max_postings=2)
    want = np.zeros(len(q), np.int64)
    for i in range(len(q)):
        ids = np.concatenate([read_list(idx, int(h))[0] for h in tr["sel"][i, :tr["kept"][i]]])
        want[i] = np.isin(gt[i], ids).sum()
    np.testing.assert_array_equal(b.in_lists, want)
    assert 0 < b.in_lists.mean() < K  # 2 lists hold some of the neighbours, not all


def test_every_list_holds_every_neighbour(built):
    idx, q, gt = built
    H = idx.heads.shape[0]
    b = idx.recall_breakdown(q[:50], gt[:50], K, max_postings=H, pruner=False, prune_eps=float("inf"), threads=1)
    assert (b.in_lists == K).all()


def test_runs_count_separate_page_ranges(built):
    """One list read per query: its pages are one run, plus one per group of re-ranked rows
    that lie apart."""
    idx, q, gt = built
    b = idx.recall_breakdown(q, gt, K, max_postings=1, pruner=False, threads=1)
    if not idx.layout.coded:
        np.testing.assert_array_equal(b.runs, (b.lists > 0).astype(np.int64))
    else:
        assert (b.runs >= 2).all() and (b.runs <= 1 + b.rows).all()


def test_a_shallow_pool_loses_what_the_codes_misjudge(built):
    idx, q, gt = built
    if idx.layout.encoding != "rabitq":
        pytest.skip("1-bit codes misjudge enough to show it")
    b = idx.recall_breakdown(q, gt, K, max_postings=32, rerank=K, rerank_bound=False, threads=1)
    assert b.in_pool.sum() < b.in_lists.sum()  # the codes dropped true neighbours from the pool
    assert (b.rows <= K).all()


def test_updates_deltas_and_tombstones(synth, tmp_path):
    """After adds (delta lists, scored exactly) and deletes, the shares still add up against
    the live vectors' neighbours and the last is the search's recall."""
    x, q, _, _ = synth
    with spann.build(x[:6000], tmp_path / "u", metric="l2", encoding="sq8") as idx:
        idx.add(x[6000:7000], ids=np.arange(6000, 7000))
        idx.delete(np.arange(100))
        gt, _ = exact_knn(x[100:7000], q, K, "l2")
        gt = gt + 100
        b = idx.recall_breakdown(q, gt, K, max_postings=16, threads=1)
        res = idx.search(q, K, max_postings=16, threads=1)
        assert (b.in_result <= b.in_pool).all() and (b.in_pool <= b.in_lists).all()
        assert b.shares()["result"] == recall_at_k(res.ids, gt, K)
        assert b.shares()["result"] > 0.5


def test_bad_ground_truth_is_refused(built):
    idx, q, gt = built
    with pytest.raises(QueryError, match="a row per query"):
        idx.recall_breakdown(q, gt[:-1], K)
    with pytest.raises(QueryError, match=">= 10 ids"):
        idx.recall_breakdown(q, gt[:, :5], K)
    with pytest.raises(QueryError, match="integer ids"):
        idx.recall_breakdown(q, gt.astype(np.float32), K)


def test_evaluate_reports_the_breakdown(built):
    idx, q, gt = built
    recs = evaluate(idx, q[:100], gt[:100], K, sweep=[{"max_postings": 4}, {"max_postings": 16}], runs=1,
                    latency_queries=10)
    for r in recs:
        assert r.recall_lists >= r.recall_pool >= r.recall
        assert r.runs_read >= 1 and r.rows_read is not None
    assert recs[1].recall_lists >= recs[0].recall_lists


def test_tables_show_the_breakdown_columns_only_when_measured(built):
    from spann.cli.eval_cmd import format_table, legend
    idx, q, gt = built
    with_bd = evaluate(idx, q[:50], gt[:50], K, runs=1, latency_queries=5)
    without = evaluate(idx, q[:50], gt[:50], K, runs=1, latency_queries=5, breakdown=False)
    assert without[0].recall_lists is None and without[0].runs_read is None
    assert "in lists" in format_table(with_bd) and "in lists" not in format_table(without)
    assert "in pool" in legend(K, False, 1) and "in pool" not in legend(K, False, 1, breakdown=False)
