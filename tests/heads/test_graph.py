import numpy as np
import pytest

from spann.datasets import synthetic_array
from spann.heads.graph import adjacency, beam_search, build_graph, knn_candidates, no_walk_codes, walk_codes
from spann.kernels.exact import exact_knn


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
        n_eval = beam_search(q[i], x, nb, entries, 64, vis, np.uint32(i + 1), oi, od, no_walk_codes(16))
        assert 0 < n_eval < 5000
        assert np.all(np.diff(od) >= 0)
        hits += len(np.intersect1d(oi, gi[i]))
        first += oi[0] == gi[i, 0]
    assert hits / (32 * len(q)) > 0.97
    assert first / len(q) > 0.98


def test_the_unpadded_graph_holds_the_same_edges_and_walks_the_same():
    x = synthetic_array(3000, 16, seed=8)
    nb, entries = build_graph(x, degree=24, candidates=48)
    adj = adjacency(nb)
    deg = (nb >= 0).sum(1)
    assert adj.ptr.dtype == np.int32 and adj.ids.dtype == np.int32 and adj.ids.size == deg.sum() < nb.size
    assert np.array_equal(np.diff(adj.ptr), deg)
    assert np.array_equal(adj.padded(24), nb)  # each row's neighbours in order, then -1
    q = synthetic_array(100, 16, seed=8, stream=1, n_hint=3000)
    vis = np.zeros(3000, np.uint32)
    a = [np.empty(16, np.int32), np.empty(16, np.float32)]
    b = [np.empty(16, np.int32), np.empty(16, np.float32)]
    for i in range(len(q)):
        ea = beam_search(q[i], x, nb, entries, 32, vis, np.uint32(2 * i + 1), a[0], a[1], no_walk_codes(16))
        eb = beam_search(q[i], x, adj, entries, 32, vis, np.uint32(2 * i + 2), b[0], b[1], no_walk_codes(16))
        assert ea == eb and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_walk_on_byte_codes_returns_the_nearest_heads_with_exact_distances():
    x = synthetic_array(5000, 192, seed=11)
    nb, entries = build_graph(x, degree=24, candidates=48)
    wc = walk_codes(x)
    assert wc.u8.shape == x.shape and wc.u8.dtype == np.uint8  # 192 >= WALK_CODES_MIN_DIM
    assert walk_codes(x[:, :16]).u8.shape[0] == 0  # narrow heads walk on float32
    decoded = wc.lo + wc.step * wc.u8.astype(np.float32)
    assert np.abs(decoded - x).max() <= 0.5001 * wc.step.max()
    q = synthetic_array(200, 192, seed=11, stream=1, n_hint=5000)
    gi, _ = exact_knn(x, q, 32, "l2")
    vis = np.zeros(5000, np.uint32)
    oi, od = np.empty(32, np.int32), np.empty(32, np.float32)
    ri, rd = np.empty(32, np.int32), np.empty(32, np.float32)
    hits = same = 0
    for i in range(len(q)):
        beam_search(q[i], x, nb, entries, 64, vis, np.uint32(2 * i + 1), oi, od, wc)
        beam_search(q[i], x, nb, entries, 64, vis, np.uint32(2 * i + 2), ri, rd, no_walk_codes(192))
        exact = ((x[oi] - q[i]) ** 2).sum(1)
        np.testing.assert_allclose(od, exact, rtol=1e-4, atol=1e-4)  # re-scored on the float32 heads
        assert np.all(np.diff(od) >= 0)
        hits += len(np.intersect1d(oi, gi[i]))
        same += len(np.intersect1d(oi, ri))
    assert hits / (32 * len(q)) > 0.95
    assert same / (32 * len(q)) > 0.95


def test_partitioned_knn_is_close_to_exact(monkeypatch):
    import spann.heads.graph as hi
    x = synthetic_array(6000, 8, seed=1)
    monkeypatch.setattr(hi, "EXACT_KNN_MAX", 1000)
    ai, _ = knn_candidates(x, 10)
    ei, _ = exact_knn(x, x, 10, "l2")
    overlap = np.mean([len(np.intersect1d(ai[i], ei[i])) / 10 for i in range(len(x))])
    assert overlap > 0.95


def _separated_clusters(n_clusters=150, per=40, dim=32, seed=3):
    """Well-separated Gaussian blobs with i.i.d. centres: no coarse structure to route by."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10.0, size=(n_clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n_clusters * per)] + rng.normal(0, 1.0, (n_clusters * per, dim))
    return x.astype(np.float32), centres


def test_graph_is_navigable_on_separated_clusters(monkeypatch):
    """A kNN graph has no edges between far clusters; the Vamana pass, entries spread through
    the heads and the reachability repair must still route every walk to its cluster (the
    partitioned kNN path, as at 10^5+ heads)."""
    import spann.heads.graph as hi
    monkeypatch.setattr(hi, "EXACT_KNN_MAX", 1000)
    x, centres = _separated_clusters()
    order = np.argsort(np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), 1), kind="stable")
    x = np.ascontiguousarray(x[order])  # heads come clustered in head order, as select_heads emits them
    nb, entries = build_graph(x, degree=16, candidates=32)
    seen = np.zeros(x.shape[0], np.bool_)
    hi._mark_reachable(nb, entries.astype(np.int64), seen, np.empty(x.shape[0], np.int64))
    assert seen.all()
    rng = np.random.default_rng(9)
    q = (x[rng.choice(x.shape[0], 300, replace=False)] + rng.normal(0, 0.5, (300, x.shape[1]))).astype(np.float32)
    full = hi.head_search_recall(x, nb, entries, q, k=8, ef=32)
    assert full > 0.92  # 48 entries for 150 clusters: most walks must cross clusters on the graph
    # without the Vamana pass (same entries) and with a handful of entries many walks end in
    # another cluster (measured 0.76 and 0.67 here)
    nb0, e0 = build_graph(x, degree=16, candidates=32, refine=False)
    assert hi.head_search_recall(x, nb0, e0, q, k=8, ef=32) < full - 0.1
    nb0, e0 = build_graph(x, degree=16, candidates=32, refine=False, n_entries=8)
    assert hi.head_search_recall(x, nb0, e0, q, k=8, ef=32) < 0.8


def test_spread_entries_cover_the_head_order():
    from spann.heads.graph import default_entry_count, spread_entries
    e = spread_entries(10_000, 100)
    assert e.dtype == np.int32 and e.size == 100 and np.all(np.diff(e) == 100) and e[0] == 50
    assert spread_entries(5, 100).tolist() == [0, 1, 2, 3, 4]
    assert default_entry_count(1000) == 48 and default_entry_count(500_000) == 3906
    assert default_entry_count(10**8) == 4096


def _reachable(nb, entries):
    import spann.heads.graph as hi
    seen = np.zeros(nb.shape[0], np.bool_)
    hi._mark_reachable(nb, np.asarray(entries, np.int64), seen, np.empty(nb.shape[0], np.int64))
    return seen


def test_repair_links_islands_even_when_rows_are_full():
    """Two islands whose rows are full (every head links to all others of its island) and
    entries in only one: the repair links the other island, overwriting no repair link."""
    import spann.heads.graph as hi
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (9, 8)).astype(np.float32)
    b = (rng.normal(0, 1, (9, 8)) + 50).astype(np.float32)
    c = (rng.normal(0, 1, (9, 8)) - 50).astype(np.float32)
    x = np.concatenate([a, b, c])
    nb = np.full((27, 8), -1, np.int32)
    for g in range(3):
        ids = np.arange(9 * g, 9 * g + 9)
        for i in ids:
            nb[i] = ids[ids != i]
    entries = np.array([0], np.int32)
    assert _reachable(nb, entries).sum() == 9
    added = hi._connect(x, nb, entries, entries.astype(np.int64), 16)
    assert added == 2 and _reachable(nb, entries).all()
    assert hi._connect(x, nb, entries, entries.astype(np.int64), 16) == 0


@pytest.mark.parametrize("n", [2, 5, 20, 300])
def test_small_graphs_are_valid_and_reachable(n):
    x = synthetic_array(n, 8, seed=n)
    nb, entries = build_graph(x, degree=8, candidates=16)
    assert nb.shape == (n, 8) and nb.dtype == np.int32 and entries.dtype == np.int32
    assert nb.max() < n and nb.min() >= -1 and not (nb == np.arange(n)[:, None]).any()
    assert 0 < entries.size <= n and _reachable(nb, entries).all()


def test_same_seed_same_graph():
    x = synthetic_array(3000, 16, seed=4)
    a = build_graph(x, degree=16, candidates=32, seed=5)
    b = build_graph(x, degree=16, candidates=32, seed=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_entry_seeds_are_the_nearest_entries():
    from spann.heads.graph import ALL_ENTRIES_MAX, SEEDS, EntrySeeds
    x = synthetic_array(5000, 16, seed=2)
    q = synthetic_array(50, 16, seed=2, stream=1, n_hint=5000)
    few = np.arange(0, 5000, 5000 // ALL_ENTRIES_MAX, dtype=np.int32)[:ALL_ENTRIES_MAX]
    assert ALL_ENTRIES_MAX >= few.size and np.array_equal(EntrySeeds(x, few).for_rows(q), np.tile(few, (50, 1)))
    many = np.arange(0, 5000, 10, dtype=np.int32)
    got = EntrySeeds(x, many).for_rows(q)
    want, _ = exact_knn(x[many], q, SEEDS, "l2")
    assert got.shape == (50, SEEDS)
    assert all(set(g) == set(many[w]) for g, w in zip(got, want))
    seeds = EntrySeeds(x, many)
    for i in range(5):  # one row takes the kernel path: the same entries
        one = seeds.for_rows(np.ascontiguousarray(q[i:i + 1], dtype=np.float32))
        assert one.shape == (1, SEEDS) and set(one[0]) == set(got[i])


def test_entry_tree_seeds_are_near_entries_and_start_walks_as_well():
    from spann.heads.assign import assign_block
    from spann.heads.graph import ENTRY_TREE_MIN, SEEDS, EntrySeeds, EntryTree, entry_seeds, spread_entries
    x = synthetic_array(30000, 16, seed=6)
    nb, _ = build_graph(x, degree=24, candidates=48)
    entries = spread_entries(30000, 1500)
    q = synthetic_array(2000, 16, seed=6, stream=1, n_hint=30000)
    tree = EntryTree(x, entries)
    got = tree.for_rows(q)
    assert got.shape == (2000, SEEDS) and np.isin(got, entries).all()
    np.testing.assert_array_equal(got, EntryTree(x, entries).for_rows(q))  # deterministic
    d = ((q[:, None, :] - x[got]) ** 2).sum(-1)
    assert np.all(np.diff(d, axis=1) >= -1e-3)  # nearest first
    best, _ = exact_knn(x[entries], q, 1, "l2")
    assert np.mean(got[:, 0] == entries[best[:, 0]]) > 0.9  # the exact nearest entry, mostly
    assert isinstance(entry_seeds(x, entries), EntryTree) and entries.size >= ENTRY_TREE_MIN
    assert isinstance(entry_seeds(x, entries[:ENTRY_TREE_MIN - 1]), EntrySeeds)
    # an assignment walk from the tree's seeds finds the nearest head as often as from every entry's
    nearest, _ = exact_knn(x, q, 1, "l2")
    found = []
    for seeds in (tree.for_rows(q), EntrySeeds(x, entries).for_rows(q)):
        rep, _, _ = assign_block(q, x, nb, seeds, 32, 32, 4, np.float32(0.5), np.float32(1.3), np.float32(0.0), 4)
        found.append(np.mean(rep[:, 0] == nearest[:, 0]))
    assert found[0] >= found[1] - 0.01 and found[1] > 0.95, found


def test_a_single_query_seeded_from_its_nearest_entry_groups_walks_as_well():
    from spann.heads.graph import (ENTRY_SEARCH_PROBE, SEEDS, EntrySeeds, EntryTree, entry_seeds, nearest_entries,
                                   no_entry_groups, seed_entries, spread_entries)
    x = synthetic_array(30000, 16, seed=6)
    nb, _ = build_graph(x, degree=24, candidates=48)
    entries = spread_entries(30000, 1500)
    q = synthetic_array(500, 16, seed=6, stream=1, n_hint=30000)
    tree = entry_seeds(x, entries)
    eg = tree.groups
    G = eg.centers.shape[0]
    assert isinstance(tree, EntryTree) and eg.probe == ENTRY_SEARCH_PROBE < G
    assert np.array_equal(np.sort(eg.entries), np.sort(entries)) and eg.starts[-1] == entries.size
    everyone = eg._replace(probe=G)  # every group: the nearest entries of all
    nearest, _ = exact_knn(x, q, 1, "l2")
    vis = np.zeros(30000, np.uint32)
    oi, od = np.empty(8, np.int32), np.empty(8, np.float32)
    found = np.zeros(2)
    for i in range(len(q)):
        got = seed_entries(q[i], eg, entries, SEEDS)
        assert got.shape == (SEEDS,) and np.isin(got, entries).all()
        d = ((x[got] - q[i]) ** 2).sum(1)
        assert np.all(np.diff(d) >= -1e-3)  # nearest first
        full = seed_entries(q[i], everyone, entries, SEEDS)
        assert np.array_equal(full, nearest_entries(q[i], tree.rows, tree.sorted_entries, SEEDS))
        for j, seeds in enumerate((got, full)):
            beam_search(q[i], x, nb, seeds, 32, vis, np.uint32(2 * i + j + 1), oi, od, no_walk_codes(16))
            found[j] += oi[0] == nearest[i, 0]
    assert found[0] >= found[1] - 0.01 * len(q) and found[1] > 0.95 * len(q), found
    # few entries: one group of all of them; very few: no rows, every entry is a seed
    small = EntrySeeds(x, entries[:500])
    assert small.groups.centers.shape[0] == 1 and small.groups.probe == 1
    assert np.array_equal(seed_entries(q[0], small.groups, small.entries, SEEDS),
                          nearest_entries(q[0], small.rows, small.entries, SEEDS))
    assert np.array_equal(seed_entries(q[0], no_entry_groups(16), entries[:5], SEEDS), entries[:5])


def test_entry_rows_keep_the_heads_dtype():
    """8-bit heads keep 8-bit entry rows (a quarter of the float32 bytes) and seed as the same
    heads in float32 do."""
    from spann.heads.graph import EntrySeeds, EntryTree, seed_entries, spread_entries
    x8 = synthetic_array(20000, 16, seed=7, dtype="uint8")
    xf = x8.astype(np.float32)
    q = synthetic_array(300, 16, seed=7, stream=1, n_hint=20000, dtype="uint8").astype(np.float32)
    for entries in (spread_entries(20000, 1200), spread_entries(20000, 300), spread_entries(20000, 40)):
        for kind in (EntryTree, EntrySeeds):
            if kind is EntryTree and entries.size < 64:
                continue
            s8, sf = kind(x8, entries), kind(xf, entries)
            assert s8.groups.rows.dtype == np.uint8 and sf.groups.rows.dtype == np.float32
            np.testing.assert_array_equal(s8.for_rows(q), sf.for_rows(q))
            for i in range(0, 300, 37):
                np.testing.assert_array_equal(seed_entries(q[i], s8.groups, entries, 16),
                                              seed_entries(q[i], sf.groups, entries, 16))
