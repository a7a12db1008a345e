"""Head groups: labels, the in-RAM group order, the group scan, and their place in an index."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.errors import IndexCorruptError
from spann.format.zarr_v3 import read_json, read_small_array, write_json, write_small_array
from spann.heads.groups import (COVERAGE_MARGIN, code_dot, default_group_count, group_labels, group_of_heads,
                                group_search, head_groups, nearest_group, no_head_groups, probes_for)
from spann.kernels.exact import exact_knn


def _exact_heads(heads, q, m):
    gi, gd = exact_knn(heads, q, m, "l2")
    return gi, gd


@pytest.fixture(scope="module")
def heads():
    return synthetic_array(3000, 40, seed=5)


def test_group_count_and_labels(heads):
    assert default_group_count(3000) == round(4 * np.sqrt(3000))
    assert default_group_count(10) == 0 and default_group_count(40000) == 0  # too few / too many: the walk
    lab = group_labels(heads, 64)
    assert lab.shape == (3000,) and lab.dtype == np.int32 and lab.min() >= 0 and lab.max() < 64
    assert np.bincount(lab).max() <= 2 * 3000 / 64 + 1  # balanced: no group over twice the mean


def test_group_order_and_centroids(heads):
    lab = group_labels(heads, 50)
    hg = head_groups(heads, lab)
    C = hg.centroids.shape[0]
    assert np.array_equal(np.sort(hg.perm), np.arange(3000))
    assert hg.starts[0] == 0 and hg.starts[-1] == 3000 and np.all(np.diff(hg.starts) > 0)
    for g in range(C):
        members = hg.perm[hg.starts[g]:hg.starts[g + 1]]
        assert len(set(lab[members].tolist())) == 1  # one stored group each
        np.testing.assert_allclose(hg.centroids[g], heads[members].mean(0), rtol=1e-4, atol=1e-5)
    # the byte codes are the heads in group order
    np.testing.assert_allclose(hg.lo + hg.step * hg.u8, heads[hg.perm], atol=float(hg.step.max()))
    assert hg.rows.shape[0] == 0
    # a code's distance in the multiply-add form the scan uses: |q - lo|^2 + norm - 2 <(q - lo) step, code>
    q = heads[:20] + 0.05
    decoded = hg.lo + hg.step * hg.u8.astype(np.float32)
    for v in q:
        qq = ((v - hg.lo) * hg.step).astype(np.float32)
        scan = np.array([hg.norms[t] - 2 * code_dot(qq, hg.u8[t]) for t in range(3000)]) + np.sum((v - hg.lo) ** 2)
        np.testing.assert_allclose(scan, np.sum((decoded - v) ** 2, 1), rtol=1e-4, atol=1e-3)
    narrow = head_groups(np.ascontiguousarray(heads[:, :8]), lab)  # below 32 dims: float rows, no codes
    assert narrow.u8.shape[0] == 0 and np.array_equal(narrow.rows, heads[narrow.perm, :8])
    assert narrow.norms.shape == (0,)


def test_heads_added_later_join_their_nearest_group(heads):
    lab = group_labels(heads[:2900], 40)
    hg = head_groups(heads, lab)  # 100 heads past the labels (an updated index's splits)
    assert np.array_equal(np.sort(hg.perm), np.arange(3000))
    pos = np.empty(3000, np.int64)
    pos[hg.perm] = np.arange(3000)
    group = np.searchsorted(hg.starts, pos, side="right") - 1
    for h in range(2900, 3000):
        d = ((hg.centroids - heads[h]) ** 2).sum(1)
        assert d[group[h]] <= d.min() * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("dim", [40, 8])
def test_scan_of_every_group_is_exact(heads, dim):
    """ef >= H / 2 scans every group: the m heads found are the exact m nearest, exact distances."""
    x = np.ascontiguousarray(heads[:, :dim])
    hg = head_groups(x, group_labels(x, 60))
    q = synthetic_array(30, dim, seed=5, stream=1, n_hint=3000)
    gi, gd = _exact_heads(x, q, 20)
    assert probes_for(1500, 60, 3000) == 60
    for i in range(len(q)):
        oi, od = np.empty(20, np.int32), np.empty(20, np.float32)
        n_eval = group_search(q[i], x, hg, 1500, oi, od)
        assert n_eval >= 3000
        np.testing.assert_allclose(od, gd[i], rtol=1e-4, atol=1e-4)
        assert np.array_equal(np.sort(oi), np.sort(gi[i])) or np.allclose(np.sort(od), np.sort(gd[i]), rtol=1e-4)
        np.testing.assert_allclose(od, ((x[oi] - q[i]) ** 2).sum(1), rtol=1e-4, atol=1e-4)


def test_default_probes_find_most_nearest_heads(heads):
    hg = head_groups(heads, group_labels(heads, default_group_count(3000)))
    q = synthetic_array(200, 40, seed=5, stream=1, n_hint=3000)
    gi, _ = _exact_heads(heads, q, 32)
    rec = []
    for i in range(len(q)):
        oi, od = np.empty(32, np.int32), np.empty(32, np.float32)
        group_search(q[i], heads, hg, 40, oi, od)
        assert np.all(np.diff(od) >= 0) and oi[0] >= 0
        rec.append(len(set(oi.tolist()) & set(gi[i].tolist())) / 32)
    assert np.mean(rec) > 0.9, np.mean(rec)


def test_empty_groups_mean_the_walk():
    g = no_head_groups(7)
    assert g.centroids.shape == (0, 7) and head_groups(np.zeros((5, 7), np.float32), None).centroids.shape[0] == 0


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory):
    x = synthetic_array(12000, 24, seed=8)
    d = tmp_path_factory.mktemp("hg")
    a = spann.build(x, d / "groups", metric="l2", progress=False, head_groups=96)
    b = spann.build(x, d / "walk", metric="l2", progress=False, head_groups=0)
    yield x, a, b
    a.close()
    b.close()


def test_index_with_and_without_groups(two_indexes):
    x, a, b = two_indexes
    assert a.attrs["head_groups"] == a.attrs["stats"]["head_groups"] == 96  # asked for: kept
    assert a._snap.groups.centroids.shape[0] == a.attrs["head_groups"] and a._snap.walk.u8.shape[0] == 0
    assert b.attrs["head_groups"] == 0 and b._snap.groups.centroids.shape[0] == 0
    assert np.array_equal(a.heads, b.heads)  # the same heads: only how searches find them differs
    q = synthetic_array(200, 24, seed=8, stream=1, n_hint=12000)
    gi, _ = exact_knn(x, q, 10, "l2")
    for idx in (a, b):
        one = np.vstack([idx.search(v, 10).ids for v in q])
        batch = idx.search(q, 10, threads=2)
        assert np.array_equal(one, batch.ids)  # the single-query kernel and the batch agree
        rec = np.mean([len(set(r) & set(g)) / 10 for r, g in zip(one.tolist(), gi.tolist())])
        assert rec > 0.9, rec
    # every list read: both find the exact neighbours
    H = a.heads.shape[0]
    for idx in (a, b):
        r = idx.search(q[:20], 10, max_postings=H, pruner=False)
        assert np.array_equal(np.sort(r.ids, 1), np.sort(gi[:20], 1))
    assert a.ram_bytes() > 0 and a.info()


def test_bad_head_groups_are_refused_in_one_line(two_indexes, tmp_path):
    _, a, _ = two_indexes
    p = shutil.copytree(a.path, tmp_path / "c")
    meta = read_json(str(p / "zarr.json"))["attributes"]["spann"]
    d = p / meta["generation_path"] / "head_groups"
    C = meta["head_groups"]
    bad = np.full(a.heads.shape[0], C, np.int32)  # a group past the count
    shutil.rmtree(d)
    write_small_array(str(d), bad, {"build_id": meta["build_id"]})
    with pytest.raises(IndexCorruptError, match="head groups .* out of range") as e:
        spann.open(p)
    assert "\n" not in str(e.value)
    shutil.rmtree(d)
    write_small_array(str(d), np.zeros(a.heads.shape[0] - 1, np.int32), {"build_id": meta["build_id"]})
    with pytest.raises(IndexCorruptError, match="head groups hold .* labels, the metadata says") as e:
        spann.open(p)  # a truncated label array: not taken for heads added by splits
    assert "\n" not in str(e.value)
    shutil.rmtree(d)
    with pytest.raises(IndexCorruptError, match="head_groups is missing"):
        spann.open(p)


@pytest.fixture(scope="module")
def split_base(tmp_path_factory):
    """An index with head groups and long lists (split tests copy it)."""
    x = synthetic_array(12000, 24, seed=8)
    d = tmp_path_factory.mktemp("split") / "base"
    spann.build(x, d, metric="l2", progress=False, head_groups=96, head_ratio=0.02).close()
    return x, d


def test_splits_relabel_the_heads_they_move_and_add(split_base, tmp_path):
    x, base = split_base
    idx = spann.open(shutil.copytree(base, tmp_path / "s"))
    h0 = idx.heads.shape[0]
    heads0 = idx.heads.copy()
    blob = (np.random.default_rng(9).standard_normal((2500, 24)) * 0.05 + x[0]).astype(np.float32)
    for part in np.array_split(blob, 5):
        idx.add(part)
    H = idx.heads.shape[0]
    assert idx.attrs["splits"] > 0 and H > h0
    assert idx.attrs["head_group_labels"] == H  # every head's label stored, the new ones too
    gen = idx.path / idx.attrs["generation_path"] / "head_groups"
    stored = read_small_array(str(gen), dtype=np.int32, shape=(None,))
    assert stored.shape == (H,)
    with spann.open(idx.path) as again:
        hg = again._snap.groups
        labels = group_of_heads(hg)
        # opening keeps the partition the update stored (numbers may close up over emptied groups)
        pairs = np.unique(np.stack([labels, stored]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
        moved = np.flatnonzero(np.any(again.heads[:h0] != heads0, axis=1))
        assert moved.size > 0
        # a head a split moved or added joined its nearest group (by the centroids of the
        # snapshot it split in: the final ones differ a little)
        split_heads = np.concatenate([moved, np.arange(h0, H)])
        near = nearest_group(hg, again.heads[split_heads])
        assert np.mean(near == labels[split_heads]) >= 0.85
        c = np.asarray(hg.centroids, np.float64)
        d = ((again.heads[split_heads, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
        rank = (d < d[np.arange(len(split_heads)), labels[split_heads]][:, None]).sum(1)
        assert (rank <= 1).all()  # the others: the second nearest by the final centroids
        # the blob's region is found through the groups
        r = again.search(blob[:50] + 0.001, 1, max_postings=32)  # a region the build never measured
        assert np.mean(r.ids[:, 0] == np.arange(12000, 12050)) > 0.9
    idx.close()


def test_build_parameter_is_checked():
    from spann.errors import ParameterError
    with pytest.raises(ParameterError, match="head_groups"):
        spann.BuildParams(head_groups=-2)
    assert spann.BuildParams(head_groups=0).head_groups == 0


def test_auto_keeps_groups_only_where_they_cover_as_many_neighbours(tmp_path):
    """-1 (the default): the build measures, on sample queries, the share of their 10 neighbours
    that the first lists each head search selects hold, and keeps the groups unless the walk's
    hold more by COVERAGE_MARGIN."""
    x = synthetic_array(12000, 40, seed=9)
    with spann.build(x, tmp_path / "auto", metric="l2", progress=False) as idx:
        st = idx.attrs["stats"]
        cw, cg = st["head_search_covered_walk"], st["head_search_covered_groups"]
        assert 0.3 < cw <= 1 and 0.3 < cg <= 1
        kept = cg >= cw - COVERAGE_MARGIN
        assert (idx.attrs["head_groups"] > 0) == kept == (idx._snap.groups.centroids.shape[0] > 0)
        assert (idx._snap.walk.u8.shape[0] == 0) == kept


def test_early_requests_leave_the_selection_unchanged(two_indexes):
    """A query from the device requests its best heads' lists after the EARLY_GROUPS nearest
    groups (select_lists_early): the heads it then selects are exactly select_lists' ones, and
    the early heads are the pool's best so far."""
    from spann.io.recent import epoch_now
    from spann.search.kernels import select_lists, select_lists_early
    from spann.search.views import Plan
    x, a, _ = two_indexes
    snap = a._snap
    q = synthetic_array(100, 24, seed=8, stream=2, n_hint=12000)
    _, qh = a._queries.prepare(q, 10, snap.live)
    H = snap.heads.shape[0]
    vis = np.zeros(H, np.uint32)
    budget, m, ef = 16, 32, 40
    model = snap.pruner if snap.pruner is not None else np.zeros(0)
    n_early_seen = 0
    for i in range(len(q)):
        si, sd = np.empty(m, np.int32), np.empty(m, np.float32)
        plan = Plan(metric=0, ef=ef, m=m, budget=budget, model=model, prune_eps=np.float32(1e18), rerank=0, bound_k=0)
        kept, ev = select_lists(qh[i], snap.hx, snap.hx.groups, snap.seeds.entries, plan, vis, np.uint32(i + 1), si, sd)
        ei = np.empty(budget // 2, np.int32)
        si2, sd2 = np.empty(m, np.int32), np.empty(m, np.float32)
        kept2, ev2, n_early, got = select_lists_early(qh[i], snap.hx, plan, si2, sd2, snap.pv, None,
                                                      snap.pv.offsets, epoch_now(), ei)
        assert kept2 == kept and ev2 == ev and got == 0  # through the page cache: nothing read directly
        np.testing.assert_array_equal(si2, si)
        np.testing.assert_array_equal(sd2, sd)
        assert n_early == budget // 2 and len(set(ei.tolist())) == n_early
        n_early_seen += len(set(ei.tolist()) & set(si[:kept].tolist()))
    assert n_early_seen > 0.8 * len(q) * (budget // 2)  # the early heads are mostly among the final ones


def test_cold_single_queries_agree_with_warm_ones(two_indexes):
    """Evicted before each query (the early request path) or preloaded (no requests): the same
    results; the cold query's page bytes count the early-requested lists it did not keep."""
    x, a, _ = two_indexes
    assert a._snap.pv.prefetchable  # a local index: cold single queries take the early path
    q = synthetic_array(30, 24, seed=8, stream=3, n_hint=12000)
    # prune_eps 0 keeps the nearest list only: 7 of the 8 lists requested early are not kept
    params = [dict(max_postings=16), dict(max_postings=16, prune_eps=0.0)]
    cold = []
    for v in q:
        for kw in params:
            a.evict()
            cold.append(a.search(v, 10, **kw))
    a.preload()
    try:
        warm = [a.search(v, 10, **kw) for v in q for kw in params]
    finally:
        a.evict()
    extra = 0
    for c, w in zip(cold, warm):
        np.testing.assert_array_equal(c.ids, w.ids)
        np.testing.assert_array_equal(c.distances, w.distances)
        assert c.lists_read[0] == w.lists_read[0]
        assert c.bytes_read[0] >= w.bytes_read[0]
        extra += c.bytes_read[0] > w.bytes_read[0]
    assert extra >= len(q) // 2, extra  # the pruned queries' early lists are counted


def test_format_3_index_with_groups_opens_updates_and_reopens(split_base, tmp_path):
    """An index of the previous format (head groups, no head_group_labels attribute) opens,
    takes updates that split lists, and reopens with every head's group stored."""
    x, base = split_base
    p = shutil.copytree(base, tmp_path / "s")
    meta = read_json(str(p / "zarr.json"))
    a = meta["attributes"]["spann"]
    a["format_version"] = 3
    del a["head_group_labels"], a["metadata_crc32c"]  # neither existed in format 3
    write_json(str(p / "zarr.json"), meta)
    q = synthetic_array(20, 24, seed=8, stream=4, n_hint=12000)
    with spann.open(p) as old:
        before = old.search(q, 10).ids
        h0 = old.heads.shape[0]
        blob = (np.random.default_rng(9).standard_normal((2500, 24)) * 0.05 + x[0]).astype(np.float32)
        for part in np.array_split(blob, 5):
            old.add(part)
        assert old.attrs["splits"] > 0
    with spann.open(p) as again:
        H = again.heads.shape[0]
        assert H > h0 and again.attrs["head_group_labels"] == H
        assert again.attrs["format_version"] == 3 and "metadata_crc32c" not in again.attrs  # kept as it was
        assert again._snap.groups.perm.shape[0] == H
        r = again.search(blob[:50] + 0.001, 1, max_postings=32)  # a region the build never measured
        assert np.mean(r.ids[:, 0] == np.arange(12000, 12050)) > 0.9
        far = again.search(q, 10).ids  # queries far from the blob: their results are unchanged
        assert np.mean(far == before) > 0.9
