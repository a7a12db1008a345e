"""CLI: build with --ids/--labels, search --filter, add, delete (and their one-line refusals)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import spann
from spann.cli.main import cli
from spann.datasets import read_vectors, synthetic_array, write_vectors

N, DIM = 3000, 16


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + str(r.exception)
    return r


def one_line_error(r, msg, code=1):
    """A refusal: exit ``code``, the message on a single ``Error:`` line, no traceback."""
    assert r.exit_code == code, (r.exit_code, r.output)
    errs = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errs) == 1 and msg in errs[0], r.output
    assert "Traceback" not in r.output
    if code == 1:  # a SpannError: nothing but that line
        assert r.output.strip() == errs[0], r.output


def write_ibin(path, ids, dtype):
    """A big-ann id file: int32 n, int32 1, then n ids of ``dtype``."""
    ids = np.asarray(ids, dtype)
    with open(path, "wb") as fh:
        np.array([ids.size, 1], "<i4").tofile(fh)
        ids.tofile(fh)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An index of N x DIM vectors with user ids (row * 10 + 5) and two labels per row at most."""
    d = tmp_path_factory.mktemp("cli_updates")
    x = synthetic_array(N, DIM, seed=11)
    rows = np.arange(N)
    ids = rows * 10 + 5
    labels = np.stack([rows % 20, np.where(rows % 2 == 0, 100 + rows % 3, -1)], axis=1)
    write_vectors(d / "base.fbin", x)
    write_vectors(d / "q.fbin", x[:40] + 0.01)
    np.save(d / "ids.npy", ids)
    np.save(d / "labels.npy", labels)
    run("build", d / "base.fbin", d / "idx", "--metric", "l2", "--ids", d / "ids.npy", "--labels", d / "labels.npy",
        "-q")
    return d, x, dict(zip(ids.tolist(), (set(r[r >= 0].tolist()) for r in labels)))


def test_help():
    for cmd in ("add", "delete"):
        assert "Usage" in run(cmd, "--help").output
    for cmd, opts in (("build", ("--ids", "--labels")), ("search", ("--filter",))):
        out = run(cmd, "--help").output
        assert all(o in out for o in opts)


def test_build_with_ids_and_labels_then_filtered_search(built):
    d, x, labels_of = built
    run("search", d / "idx", d / "q.fbin", "-k", 10, "-o", d / "all.npy", "-q")
    res = np.load(d / "all.npy")
    assert res[:, 0].tolist() == [r * 10 + 5 for r in range(40)]  # users' ids, the query's own row first
    for filt, want in (("7,9", {7, 9}), ("101", {101}), ("7, 100", {7, 100})):
        run("search", d / "idx", d / "q.fbin", "-k", 10, "-o", d / "f.ibin", "--filter", filt,
            "--json", d / "f.json", "-q")
        got = read_vectors(d / "f.ibin", ids=True)
        assert got.shape == (40, 10) and (got >= 0).all()  # every filter matches >= 150 vectors
        assert all(labels_of[int(i)] & want for i in got.ravel()), filt
        assert json.loads((d / "f.json").read_text())["filter"] == [int(v) for v in filt.split(",")]
    run("search", d / "idx", d / "q.fbin", "-k", 5, "-o", d / "none.npy", "--filter", "12345", "-q")
    assert (np.load(d / "none.npy") == -1).all()  # no vector carries it
    out = run("info", d / "idx").output
    assert f"live vectors {N:,}" in out


def test_add_then_delete(built, tmp_path):
    d, x, _ = built
    idx_dir = tmp_path / "idx"
    shutil.copytree(d / "idx", idx_dir)
    new = synthetic_array(50, DIM, seed=12) + 5.0  # far from the base: their own neighbours
    write_vectors(tmp_path / "new.fbin", new)
    write_ibin(tmp_path / "new.ibin", np.arange(50) + 10**6, "<i4")
    np.save(tmp_path / "new_labels.npy", np.full(50, 555))
    r = run("add", idx_dir, tmp_path / "new.fbin", "--ids", tmp_path / "new.ibin",
            "--labels", tmp_path / "new_labels.npy")
    assert f"added 50 vectors (ids 1000000..1000049) to {idx_dir}: {N + 50:,} live" in r.output
    r = run("add", idx_dir, tmp_path / "new.fbin", "--json", "-q")  # no ids: the next free ones
    auto = json.loads(r.output)
    assert auto["added"] == 50 and auto["live"] == N + 100 and auto["first_id"] > 10**6 + 49
    with spann.open_index(idx_dir) as idx:
        assert len(idx) == N + 100
        np.testing.assert_allclose(idx.get(np.arange(3) + 10**6), new[:3], rtol=1e-6)
    run("search", idx_dir, tmp_path / "new.fbin", "-k", 5, "-o", tmp_path / "r.npy", "--filter", "555", "-q")
    got = np.load(tmp_path / "r.npy")
    assert ((got >= 10**6) & (got < 10**6 + 50)).all() and got[:, 0].tolist() == list(range(10**6, 10**6 + 50))

    write_ibin(tmp_path / "del.i8bin", [5, 15, 10**6, 10**6 + 1], "<i8")  # two base rows, two added
    r = run("delete", idx_dir, "--ids", tmp_path / "del.i8bin")
    assert f"deleted 4 vectors from {idx_dir}: {N + 96:,} live" in r.output
    np.save(tmp_path / "del2.npy", np.array([[25], [15]]))  # (m, 1); 15 is gone already
    r = run("delete", idx_dir, "--ids", tmp_path / "del2.npy", "--missing-ok")
    assert f"deleted 1 vectors (1 not in the index) from {idx_dir}: {N + 95:,} live" in r.output
    with spann.open_index(idx_dir) as idx:
        assert len(idx) == N + 95
        with pytest.raises(spann.QueryError):
            idx.get([15])
        ids, _ = idx.search(x[:3], 3)
        assert 5 not in ids and 15 not in ids and 25 not in ids
    assert f"live vectors {N + 95:,}" in run("info", idx_dir).output


def test_refusals_are_one_line(built, tmp_path):
    d, x, _ = built
    base = ["build", d / "base.fbin", tmp_path / "b", "--metric", "l2", "-q"]
    np.save(tmp_path / "short.npy", np.arange(N - 1))
    np.save(tmp_path / "dup.npy", np.r_[np.arange(N - 1), 7])
    np.save(tmp_path / "float.npy", np.arange(N, dtype=np.float32))
    np.save(tmp_path / "neg.npy", np.arange(N) - 1)
    np.save(tmp_path / "lab_short.npy", np.zeros(N + 1, np.int64))
    np.save(tmp_path / "lab_float.npy", np.zeros(N, np.float64))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    write_ibin(tmp_path / "short.ibin", np.arange(N - 1), "<i4")
    (tmp_path / "trunc.i8bin").write_bytes(np.array([N, 1], "<i4").tobytes() + np.arange(N, dtype="<i4").tobytes())
    bad = [(["--ids", tmp_path / "short.npy"], f"{N - 1:,} ids for {N:,} vectors"),
           (["--ids", tmp_path / "short.ibin"], f"{N - 1:,} ids for {N:,} vectors"),
           (["--ids", tmp_path / "dup.npy"], "id 7 appears more than once"),
           (["--ids", tmp_path / "float.npy"], "ids must be integers, got dtype float32"),
           (["--ids", tmp_path / "neg.npy"], "must be in 0.."),
           (["--ids", tmp_path / "junk.npy"], "not a readable .npy array"),
           (["--ids", tmp_path / "trunc.i8bin"], "int64 ids"),
           (["--ids", d / "base.fbin"], "id files are .npy, .ibin (int32) or .i8bin (int64)"),
           (["--labels", tmp_path / "lab_short.npy"], f"{N + 1:,} rows for {N:,} vectors"),
           (["--labels", tmp_path / "lab_float.npy"], "labels must be integers")]
    for extra, msg in bad:
        one_line_error(run(*base, *extra, ok=False), msg)
        assert not (tmp_path / "b").exists()
    one_line_error(run(*base, "--ids", tmp_path / "nope.npy", ok=False), "does not exist", code=2)

    search = ["search", d / "idx", d / "q.fbin", "-o", tmp_path / "o.ibin", "-q", "--filter"]
    for filt in ("-1", "7,-2", "1.5", "a", "", "7,,9", "99999999999"):
        one_line_error(run(*search, filt, ok=False), "Invalid value for '--filter'", code=2)
    run("build", d / "base.fbin", tmp_path / "plain", "--metric", "l2", "-q")  # no labels
    r = run("search", tmp_path / "plain", d / "q.fbin", "-o", tmp_path / "o.ibin", "--filter", "1", ok=False)
    one_line_error(r, "no labels to filter on")

    np.save(tmp_path / "unknown.npy", np.array([5, 7]))  # 5 is a user id; 7 is not
    r = run("delete", d / "idx", "--ids", tmp_path / "unknown.npy", ok=False)
    one_line_error(r, "id 7 is not in the index")
    assert "--missing-ok" in r.output
    one_line_error(run("delete", d / "idx", ok=False), "Missing option '--ids'", code=2)
    write_vectors(tmp_path / "one.fbin", x[:2])
    np.save(tmp_path / "taken.npy", np.array([1, 5]))  # 5 is in the index
    one_line_error(run("add", d / "idx", tmp_path / "one.fbin", "--ids", tmp_path / "taken.npy", ok=False),
                   "id 5 is already in the index")
    one_line_error(run("add", d / "idx", tmp_path / "one.fbin", "--ids", tmp_path / "short.npy", ok=False),
                   f"{N - 1:,} ids for 2 vectors")
    write_vectors(tmp_path / "narrow.fbin", x[:2, :8])
    one_line_error(run("add", d / "idx", tmp_path / "narrow.fbin", ok=False), "shape (m, 16)")
    with spann.open_index(d / "idx") as idx:
        assert len(idx) == N and idx.generation == 1  # nothing above changed the index
