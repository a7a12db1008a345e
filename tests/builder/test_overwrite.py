"""--overwrite replaces a spann index and nothing else (issue: it used to delete any directory)."""

import numpy as np
import pytest
from click.testing import CliRunner

import spann
from spann.cli.main import cli
from spann.datasets import synthetic_array, write_vectors
from spann.errors import IndexExistsError


def test_cli_overwrite_refuses_a_directory_that_is_not_an_index(tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    write_vectors(v / "b.fbin", synthetic_array(2000, 8, seed=1))
    (v / "notes.txt").write_text("x")
    before = sorted(p.name for p in v.iterdir())
    r = CliRunner().invoke(cli, ["build", str(v / "b.fbin"), str(v), "--metric", "l2", "--overwrite", "-q"])
    assert r.exit_code != 0
    assert "not a spann index" in r.output and "refusing" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in v.iterdir()) == before
    assert (v / "notes.txt").read_text() == "x"


def test_library_overwrite_refuses_non_index_paths(tmp_path):
    x = synthetic_array(2000, 8, seed=1)
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep.txt").write_text("keep")
    with pytest.raises(IndexExistsError, match="not a spann index"):
        spann.build(x, d, metric="l2", overwrite=True, progress=False)
    assert (d / "keep.txt").read_text() == "keep"
    f = tmp_path / "file"
    f.write_text("data")
    with pytest.raises(IndexExistsError, match="not a spann index directory"):
        spann.build(x, f, metric="l2", overwrite=True, progress=False)
    assert f.read_text() == "data"
    with pytest.raises(FileExistsError):  # the builtin still catches it
        spann.build(x, d, metric="l2", progress=False)


def test_overwrite_replaces_an_index_but_not_one_holding_foreign_files(tmp_path):
    x = synthetic_array(2000, 8, seed=1)
    p = tmp_path / "i.spann"
    spann.build(x, p, metric="l2", progress=False).close()
    spann.build(x[:1500], p, metric="l2", overwrite=True, progress=False).close()
    with spann.open(p) as idx:
        assert idx.n == 1500
    (p / "mine.npy").write_bytes(b"user data")
    with pytest.raises(IndexExistsError, match="mine.npy"):
        spann.build(x, p, metric="l2", overwrite=True, progress=False)
    assert (p / "mine.npy").read_bytes() == b"user data"
    with spann.open(p) as idx:
        assert idx.n == 1500
    assert sorted(q.name for q in tmp_path.iterdir()) == ["i.spann"]  # no temporary left behind
    assert np.isfinite(x).all()
