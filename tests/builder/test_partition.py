"""Heads clustered out of core (:mod:`spann.builder.partition`): every row routed once (the
calibration rows left out), the collection's head count whatever the sample or the memory
limit, bounded lists, every vector placed, the same heads for a seed on any thread count, and
a killed build resumed to the same index."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import spann
from spann.builder import partition
from spann.builder.inputs import array_source
from spann.builder.calibration import calibration_rows
from spann.builder.partition import ROUTE_BLOCK, bucket_heads, bucket_rows, route_part, route_parts
from spann.datasets import synthetic_array
from spann.heads.clustering import MIN_SAMPLE_PER_HEAD, sq_dists
from spann.kernels.metrics import get_metric
from spann.params import BuildParams
from spann.tools.verify import verify_index

N, D = 20000, 16
X = synthetic_array(N, D, seed=8)
Q = synthetic_array(200, D, seed=8, stream=1, n_hint=N)
#: a sample too small for 8 rows per head: 1,000 heads from 1,000 sample rows
OUT_OF_CORE = {"cluster_sample": 1000, "calibration_queries": 400}


@pytest.fixture
def small_buckets(monkeypatch):
    """Buckets of ~4,000 rows, so that 20,000 rows make several."""
    monkeypatch.setattr(partition, "BUCKET_ROWS", 4000)


def test_route_parts_spill_every_row_but_the_held_once_in_row_order(tmp_path):
    n = 2 * ROUTE_BLOCK + 5000
    x = synthetic_array(n, 8, seed=2)
    centers = np.ascontiguousarray(x[[3, 9000, 20000, 36000]], dtype=np.float32)
    held = np.sort(np.random.default_rng(0).choice(n, 700, replace=False)).astype(np.int64)
    m = get_metric("l2")
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    c1 = route_part(array_source(x), m, 0.0, centers, held, (0, 0, n), one)
    parts = route_parts(n, ROUTE_BLOCK)
    assert len(parts) == 3 and all(a % ROUTE_BLOCK == 0 for _, a, _ in parts) and parts[-1][2] == n
    c2 = np.sum([route_part(array_source(x), m, 0.0, centers, held, p, many) for p in parts], axis=0)
    np.testing.assert_array_equal(c1, c2)
    assert c1.sum() == n - held.size
    keep = np.setdiff1d(np.arange(n), held)
    near = np.argmin(sq_dists(x[keep], centers), axis=1)
    for b in range(4):
        want = x[keep[near == b]]
        np.testing.assert_array_equal(bucket_rows(one, b, x.dtype, 8), want)
        np.testing.assert_array_equal(bucket_rows(many, b, x.dtype, 8), want)
    assert not list(many.glob("*.tmp"))


def test_a_bucket_beyond_the_cap_is_clustered_on_a_subsample():
    rows = synthetic_array(6000, 12, seed=4)
    p = BuildParams()
    m = get_metric("l2")
    full = bucket_heads(rows, m, 0.0, 300, 10_000, p, 3)
    sub = bucket_heads(rows, m, 0.0, 300, 1600, p, 3)
    assert full.shape == (300, 12)
    assert sub.shape[0] == 1600 // MIN_SAMPLE_PER_HEAD  # at least 8 clustered rows per head
    np.testing.assert_array_equal(sub, bucket_heads(rows, m, 0.0, 300, 1600, p, 3))  # seeded by (seed, bucket)
    assert not np.array_equal(sub, bucket_heads(rows, m, 0.0, 300, 1600, p, 4))


def _nearest_counts(heads: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.bincount(np.argmin(sq_dists(x, heads), axis=1), minlength=heads.shape[0])


def test_out_of_core_heads_are_the_collections_count_with_bounded_lists(small_buckets, tmp_path):
    with spann.build(X, tmp_path / "ooc", metric="l2", progress=False, **OUT_OF_CORE) as idx:
        st = idx.attrs["stats"]
        assert st["head_buckets"] >= 4
        assert st["heads"] == st["heads_wanted"] == round(N * 0.05)  # the sample alone allows 125
        near = _nearest_counts(np.asarray(idx.heads, np.float32), X)
        assert near.max() <= 4 * N / st["heads"] and (near == 0).mean() < 0.02
        rec_ooc = np.array(idx.operating_points.recall)
    summary = verify_index(tmp_path / "ooc")  # every vector in a list, every checksum right
    assert summary["ok"] and summary["vectors"] == N
    # as good as the heads of one in-RAM clustering of every row (the same count)
    with spann.build(X, tmp_path / "ram", metric="l2", progress=False, cluster_sample=N,
                     calibration_queries=400) as ram:
        assert ram.attrs["stats"]["head_buckets"] == 0 and ram.attrs["stats"]["heads"] == st["heads"]
        rec_ram = np.array(ram.operating_points.recall)
    k = min(rec_ram.size, rec_ooc.size, 8)
    assert np.all(rec_ooc[:k] >= rec_ram[:k] - 0.03), (rec_ooc[:k], rec_ram[:k])


def test_the_head_count_follows_neither_the_sample_nor_the_memory_limit(small_buckets, tmp_path):
    got = []
    for i, kw in enumerate([{"cluster_sample": 1000}, {"cluster_sample": 3000},
                            {"cluster_sample": 1000, "memory_limit": 400 << 20}]):
        with spann.build(X, tmp_path / f"i{i}", metric="l2", progress=False, calibration_queries=0, **kw) as idx:
            got.append((idx.attrs["stats"]["heads"], idx.attrs["stats"]["head_buckets"] > 0))
    assert got == [(1000, True)] * 3


def test_same_heads_for_a_seed_on_any_thread_count(small_buckets, tmp_path):
    a = spann.build(X, tmp_path / "a", metric="l2", progress=False, threads=1, **OUT_OF_CORE)
    b = spann.build(X, tmp_path / "b", metric="l2", progress=False, threads=2, **OUT_OF_CORE)
    c = spann.build(X, tmp_path / "c", metric="l2", progress=False, threads=2, seed=1, **OUT_OF_CORE)
    with a, b, c:
        np.testing.assert_array_equal(a.heads, b.heads)
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.search(Q, 10).ids, b.search(Q, 10).ids)
        assert not np.array_equal(a.heads, c.heads)


def test_the_calibration_rows_are_not_clustered(tmp_path, small_buckets, monkeypatch):
    seen = []
    real = partition.route_part

    def spy(src, metric, max_norm, centers, held, part, directory, progress=None):
        seen.append(held.copy())
        return real(src, metric, max_norm, centers, held, part, directory, progress)

    monkeypatch.setattr(partition, "route_part", spy)
    with spann.build(X, tmp_path / "i", metric="l2", progress=False, **OUT_OF_CORE) as idx:
        want = calibration_rows(N, D, idx.build_params)
    assert len(seen) == 1 and want.size == 400
    np.testing.assert_array_equal(seen[0], want)


CODE = ("import sys, numpy as np, spann; from spann.builder import partition; partition.BUCKET_ROWS = 4000; "
        "spann.build(np.load(sys.argv[1]), sys.argv[2], metric='l2', progress=False, resume=True, "
        "cluster_sample=1000, calibration_queries=400)")


@pytest.mark.parametrize("fault,stages", [("partition", ["sample", "partition"]),
                                          ("heads", ["sample", "partition", "heads"])])
def test_killed_while_clustering_then_resumed_gives_the_same_index(small_buckets, tmp_path, fault, stages):
    np.save(tmp_path / "x.npy", X)
    with spann.build(X, tmp_path / "ref", metric="l2", progress=False, **OUT_OF_CORE) as ref:
        want, want_heads = ref.search(Q, 10).ids, np.array(ref.heads)
    env = {k: v for k, v in os.environ.items() if k != "SPANN_BUILD_FAULT"}
    run = [sys.executable, "-c", CODE, str(tmp_path / "x.npy"), str(tmp_path / "idx")]
    r = subprocess.run(run, env={**env, "SPANN_BUILD_FAULT": fault}, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    r = subprocess.run(run, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with spann.open(tmp_path / "idx") as idx:
        assert idx.attrs["stats"]["resumed"]["stages"] == stages
        np.testing.assert_array_equal(np.array(idx.heads), want_heads)
        np.testing.assert_array_equal(idx.search(Q, 10).ids, want)


def test_assignment_seeded_by_the_entry_tree_places_every_vector_as_well(tmp_path, monkeypatch):
    """Above ENTRY_TREE_MIN entries (10^5+ heads) the assignment seeds its walks from an entry
    tree; forced here at 48 entries, the index is as good as the one seeded from every entry."""
    from spann.heads import graph
    kw = {"metric": "l2", "progress": False, "calibration_queries": 400}
    with spann.build(X, tmp_path / "all", **kw) as ref:
        want = np.array(ref.operating_points.recall)
        assert ref.entries.size < graph.ENTRY_TREE_MIN
    monkeypatch.setattr(graph, "ENTRY_TREE_MIN", 8)
    with spann.build(X, tmp_path / "tree", **kw) as idx:
        got = np.array(idx.operating_points.recall)
    assert verify_index(tmp_path / "tree")["ok"]
    k = min(want.size, got.size, 8)
    assert np.all(np.abs(got[:k] - want[:k]) <= 0.02), (got[:k], want[:k])
