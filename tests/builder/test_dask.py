"""The build on a Dask LocalCluster (worker processes): the same index as the local build, also
when a worker is killed during the assignment."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.datasets.formats import write_vectors
from spann.errors import ParameterError

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    x = synthetic_array(24000, 20, seed=5)
    q = synthetic_array(150, 20, seed=5, stream=1, n_hint=24000)
    f = d / "base.fbin"
    write_vectors(f, x)
    return f, x, q


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 worker processes for the module (starting one costs seconds)."""
    from spann.builder.dask import local_cluster
    c, cluster = local_cluster(2)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _equal_indexes(a, b, q):
    np.testing.assert_array_equal(a.heads, b.heads)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    ra, rb = a.search(q, 10), b.search(q, 10)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.distances, rb.distances)
    for p in (a.path / "postings" / "c").iterdir():  # the posting shards are byte for byte the same
        assert p.read_bytes() == (b.path / "postings" / "c" / p.name).read_bytes()


@pytest.mark.parametrize("encoding", ["full", "sq8"])
def test_local_cluster_build_equals_the_local_build(base, client, tmp_path, encoding):
    f, x, q = base
    n = x.shape[0]
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    labels = (np.arange(n) % 5).astype(np.int32)
    local = spann.build(f, tmp_path / "local", metric="l2", progress=False, encoding=encoding, ids=ids, labels=labels)
    client.wait_for_workers(2, timeout=120)
    dist = spann.build(f, tmp_path / "dist", metric="l2", progress=False, encoding=encoding, ids=ids,
                       labels=labels, client=client)
    _equal_indexes(local, dist, q)
    np.testing.assert_array_equal(local.search(q, 5, filter=[2]).ids, dist.search(q, 5, filter=[2]).ids)
    np.testing.assert_array_equal(local.get(ids[:50]), dist.get(ids[:50]))
    assert not list((tmp_path).glob(".dist.building-*"))  # no temporary directory left


def test_out_of_core_heads_on_a_local_cluster_equal_the_local_build(base, client, tmp_path, monkeypatch):
    """The heads clustered bucket by bucket (see spann.builder.partition): rows routed by two
    tasks, each bucket clustered by its own task, the same index as the local build."""
    from spann.builder import partition
    monkeypatch.setattr(partition, "BUCKET_ROWS", 5000)  # the top level is clustered on the client
    f, x, q = base
    kw = {"cluster_sample": 1000, "block_rows": 4096, "progress": False}  # two routing parts
    local = spann.build(f, tmp_path / "local", metric="l2", **kw)
    client.wait_for_workers(2, timeout=120)
    dist = spann.build(f, tmp_path / "dist", metric="l2", client=client, **kw)
    assert local.attrs["stats"]["head_buckets"] >= 4
    assert local.attrs["stats"]["heads"] == dist.attrs["stats"]["heads"] == 1200
    _equal_indexes(local, dist, q)


@pytest.mark.parametrize("point", ["assign:0", "write:0"])
def test_worker_killed_during_a_stage(base, client, tmp_path, point):
    from spann.builder.dask import arm_task_fault
    f, x, q = base
    once = tmp_path / "killed-once"
    client.wait_for_workers(2, timeout=120)
    before = set(client.scheduler_info()["workers"])
    client.run(arm_task_fault, point, str(once))  # read at task time; the nanny restarts a killed worker without it
    try:
        dist = spann.build(f, tmp_path / "dist", metric="l2", progress=False, client=client)
    finally:
        try:
            client.run(arm_task_fault, None)
        except Exception:  # a worker leaving at that moment: the build's own outcome matters
            pass
    assert set(client.scheduler_info()["workers"]) != before  # a worker process was replaced
    assert once.exists()  # a worker really died mid-task (its task ran again elsewhere)
    local = spann.build(f, tmp_path / "local", metric="l2", progress=False)
    _equal_indexes(local, dist, q)


def test_distributed_build_wants_a_file(base, client, tmp_path):
    with pytest.raises(ParameterError, match="vector file every worker"):
        spann.build(base[1], tmp_path / "x", metric="l2", progress=False, client=client)


def test_cli_build_with_workers(base, tmp_path):
    f, x, q = base
    p = subprocess.run([sys.executable, "-m", "spann.cli.main", "build", str(f), str(tmp_path / "i"), "--metric", "l2",
                        "--workers", "2", "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    local = spann.build(f, tmp_path / "local", metric="l2", progress=False)
    with spann.open(tmp_path / "i") as idx:
        _equal_indexes(local, idx, q)
    p = subprocess.run([sys.executable, "-m", "spann.cli.main", "build", str(f), str(tmp_path / "j"), "--metric", "l2",
                        "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", "-q"], capture_output=True, text=True)
    assert p.returncode != 0 and "not both" in p.stderr


def test_base_read_from_a_url(base, client, tmp_path):
    """The base as a URL: the local and the distributed build read it with ranged GETs."""
    from spann.bench.range_server import RangeServer
    from spann.errors import VectorFileError
    f, x, q = base
    local = spann.build(f, tmp_path / "local", metric="l2", progress=False)
    with RangeServer(f.parent) as srv:
        url = f"{srv.url}/{f.name}"
        from_url = spann.build(url, tmp_path / "url", metric="l2", progress=False)
        _equal_indexes(local, from_url, q)
        client.wait_for_workers(2, timeout=120)
        dist = spann.build(url, tmp_path / "dist", metric="l2", progress=False, client=client)
        _equal_indexes(local, dist, q)
        with pytest.raises(VectorFileError, match="no such object"):
            spann.build(f"{srv.url}/missing.fbin", tmp_path / "m", metric="l2", progress=False)
        with pytest.raises(VectorFileError, match="local paths only"):
            spann.build(f"{srv.url}/base.fvecs", tmp_path / "m", metric="l2", progress=False)
