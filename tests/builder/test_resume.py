"""``--resume``: a build killed (SIGKILL) at any stage or shard continues from its checkpoints
and gives the same index as an uninterrupted build; nothing that opens as an index exists
before the end; stale or mismatched leftovers are not reused."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import spann
from spann.datasets import synthetic_array

X = synthetic_array(5000, 16, seed=3)
Q = synthetic_array(40, 16, seed=3, stream=1, n_hint=5000)
SMALL = {"shard_bytes": 256 << 10, "chunk_bytes": 64 << 10}  # several shards per array

CODE = ("import sys, numpy as np, spann; spann.build(np.load(sys.argv[1]), sys.argv[2], metric='l2', "
        "encoding='sq8', progress=False, resume=True, shard_bytes=256 << 10, chunk_bytes=64 << 10)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    np.save(d / "x.npy", X)
    with spann.build(X, d / "ref", metric="l2", encoding="sq8", progress=False, **SMALL) as ref:
        want = ref.search(Q, 10).ids
    return d, want


def _run(data_dir, target, fault=None):
    env = {**os.environ}
    if fault:
        env["SPANN_BUILD_FAULT"] = fault
    else:
        env.pop("SPANN_BUILD_FAULT", None)
    return subprocess.run([sys.executable, "-c", CODE, str(data_dir / "x.npy"), str(target)], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("fault,stages", [("sample", ["sample"]), ("heads", ["sample", "heads"]),
                                          ("graph", ["sample", "heads", "graph"]),
                                          ("groups", ["sample", "heads", "graph", "groups"]),
                                          ("assign", ["sample", "heads", "graph", "groups", "assign"]),
                                          ("pruner", ["sample", "heads", "graph", "groups", "assign", "pruner"]),
                                          ("shard:postings:1", None), ("shard:vectors:0", None)])
def test_kill_then_resume_gives_the_same_index(data, tmp_path, fault, stages):
    d, want = data
    target = tmp_path / "idx"
    r = _run(d, target, fault)
    assert r.returncode == -9, r.stderr
    assert not target.exists()  # nothing that opens as an index before the end
    assert [e for e in os.listdir(tmp_path) if e.startswith(".idx.building-")]
    r = _run(d, target)
    assert r.returncode == 0, r.stderr
    with spann.open(target) as idx:
        res = idx.attrs["stats"]["resumed"]
        if stages is None:  # killed while writing: every stage restored, the written shards kept
            assert res["stages"] == ["sample", "heads", "graph", "groups", "assign", "pruner", "truth"] and \
                res["shards"] >= 1
        else:
            assert res["stages"] == stages and res["shards"] == 0
        np.testing.assert_array_equal(idx.search(Q, 10).ids, want)
        with spann.open(d / "ref") as ref:
            assert idx.operating_points == ref.operating_points is not None
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".idx.building-")]


def test_leftovers_of_other_builds_are_not_reused(data, tmp_path):
    d, want = data
    target = tmp_path / "idx"
    assert _run(d, target, "graph").returncode == -9
    # other parameters: the checkpoints do not match, the build starts afresh and removes them
    with spann.build(X, target, metric="l2", encoding="sq8", progress=False, resume=True, seed=1, **SMALL) as idx:
        assert idx.attrs["stats"]["resumed"] is None
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".idx.building-")]
    # without --resume a dead build's directory is removed, not reused
    target2 = tmp_path / "idx2"
    assert _run(d, target2, "assign").returncode == -9
    with spann.build(X, target2, metric="l2", encoding="sq8", progress=False, **SMALL) as idx:
        assert idx.attrs["stats"]["resumed"] is None
        np.testing.assert_array_equal(idx.search(Q, 10).ids, want)
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".idx2.building-")]


def test_cli_resume(data, tmp_path):
    from spann.cli.main import cli
    d, want = data
    target = tmp_path / "c"
    args = ["build", str(d / "x.npy"), str(target), "--metric", "l2", "--encoding", "sq8", "--resume", "--param",
            "shard_bytes=262144", "--param", "chunk_bytes=65536"]
    r = subprocess.run([sys.executable, "-c", "import sys; from spann.cli.main import cli; cli(sys.argv[1:])", *args],
                       env={**os.environ, "SPANN_BUILD_FAULT": "heads"}, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "resuming the interrupted build" in res.output and "restored from the interrupted build" in res.output
    with spann.open(target) as idx:
        np.testing.assert_array_equal(idx.search(Q, 10).ids, want)
