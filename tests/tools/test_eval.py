import numpy as np
import pytest

from spann.errors import DataError
from spann.tools.eval import (EvalRecord, distance_recall, evaluate, operating_point, pareto_front, parse_sweep,
                              read_jsonl, recall_at_k, tie_aware_recall, write_jsonl)


def test_recall_hand_cases():
    gt = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(np.array([[1, 2, 9], [8, 7, 6]]), gt, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert recall_at_k(np.array([[3, 2, 1], [-1, -1, -1]]), gt, 3) == pytest.approx(0.5)
    with pytest.raises(DataError, match="duplicate"):
        recall_at_k(np.array([[1, 1, 2], [5, 6, 7]]), gt, 3)
    # -1 padding repeated is not a duplicate
    assert recall_at_k(np.array([[1, -1, -1], [5, 6, 7]]), gt, 3) == pytest.approx((1 / 3 + 1) / 2)


def test_tie_aware_recall():
    gt = np.array([[10, 11, 12, 13]])
    gd = np.array([[0.1, 0.2, 0.2, 0.5]])
    res = np.array([[10, 12]])  # 12 ties with 11 at the 2nd place: counts
    assert recall_at_k(res, gt, 2) == 0.5
    assert tie_aware_recall(res, gt, gd, 2) == 1.0
    assert tie_aware_recall(np.array([[10, 13]]), gt, gd, 2) == 0.5


def test_distance_recall():
    gd = np.array([[1.0, 2.0, 3.0]])
    assert distance_recall(np.array([[1.0, 2.0005, 3.5]]), gd, 2) == 1.0
    assert distance_recall(np.array([[1.0, 2.01, 3.5]]), gd, 2) == 0.5


def _rec(system, recall, qps, lat=1.0, mp=0):
    return EvalRecord(system=system, params={"max_postings": mp}, k=10, recall=recall, qps=qps, latency_mean_ms=lat)


def test_pareto_and_operating_point(tmp_path):
    rs = [_rec("a", 0.8, 1000, 0.1, 8), _rec("a", 0.9, 500, 0.2, 16), _rec("a", 0.85, 400, 0.3, 12),
          _rec("a", 0.97, 100, 1.0, 64)]
    front = pareto_front(rs)
    assert [r.params["max_postings"] for r in front] == [8, 16, 64]
    assert operating_point(rs, 0.95).params["max_postings"] == 64
    assert operating_point(rs, 0.84).params["max_postings"] == 16
    assert operating_point(rs, 0.99) is None
    write_jsonl(rs, tmp_path / "r.jsonl")
    back = read_jsonl(tmp_path / "r.jsonl")
    assert [r.recall for r in back] == [r.recall for r in rs]


def test_parse_sweep():
    pts = parse_sweep(["max_postings=8,16", "prune_eps=0.5,inf"])
    assert len(pts) == 4 and {"max_postings": 16, "prune_eps": float("inf")} in pts
    with pytest.raises(ValueError):
        parse_sweep(["max_postings"])


def test_evaluate_on_small_index(synth, synth_index):
    _, q, gi, gd = synth
    recs = evaluate(synth_index, q, gi, 10, sweep=[{"max_postings": m} for m in (1, 4, 16, 64)], gt_dists=gd,
                    runs=1, latency_queries=30)
    rec = [r.recall for r in recs]
    assert rec[-1] >= 0.9 and rec[-1] > rec[0]
    assert all(b >= a - 0.01 for a, b in zip(rec, rec[1:]))  # monotone up to noise
    for r in recs:
        assert r.latency_p50_ms <= r.latency_p99_ms and r.qps > 0 and r.lists_read <= 2 * r.params["max_postings"]
        assert r.tie_recall >= r.recall - 1e-9 and r.index_bytes > 0
    cold = evaluate(synth_index, q[:20], gi[:20], 10, sweep=[{"max_postings": 8, "prefetch": True}], runs=1,
                    latency_queries=5, cold=True)
    assert cold[0].cold and cold[0].recall > 0.5


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from spann.tools.eval import plot_recall_qps
    p = plot_recall_qps([_rec("a", 0.8, 1000), _rec("a", 0.9, 500), _rec("b", 0.85, 700)], tmp_path / "p.png")
    assert p.stat().st_size > 1000
