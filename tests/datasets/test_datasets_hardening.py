"""Input hardening of ground truth, search outputs, dataset registration/preparation and formats."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import spann
from spann.cli.main import cli
from spann.datasets import load, open_vectors, prepare, read_vectors, register, synthetic_array, write_vectors
from spann.datasets.groundtruth import compute_ground_truth
from spann.datasets.synthetic import SyntheticSpec
from spann.errors import DataError, ParameterError, SpannError, VectorFileError
from spann.kernels.exact import exact_knn

N, D, NQ = 3000, 8, 20


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(r, *msgs, code=None):
    """The command failed with one 'Error:' line holding every msg, and no traceback."""
    assert r.exit_code != 0 if code is None else r.exit_code == code, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    for m in msgs:
        assert m in errors[0], (m, r.output)
    assert "Traceback" not in r.output
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard")
    x = synthetic_array(N, D, seed=4)
    q = synthetic_array(NQ, D, seed=4, stream=1, n_hint=N)
    write_vectors(d / "b.fbin", x)
    write_vectors(d / "q.fbin", q)
    np.save(d / "b.npy", x)
    np.save(d / "q.npy", q)
    return d, x, q


@pytest.fixture(scope="module")
def index(data):
    d, x, _ = data
    with spann.build(x, d / "idx", metric="l2", progress=False):
        pass
    return d / "idx"


def _ann_hdf5(path, x, q, distance, k=10):
    h5py = pytest.importorskip("h5py")
    metric = {"euclidean": "l2", "angular": "cosine"}[distance]
    ids, dists = exact_knn(x, q, k, metric)
    with h5py.File(path, "w") as f:
        f["train"], f["test"] = x, q
        f["neighbors"] = ids.astype(np.int32)
        f["distances"] = np.sqrt(dists) if distance == "euclidean" else dists  # ann-benchmarks conventions
        f.attrs["distance"] = distance
    return ids, dists


def _combined_gt(path, ids, dists, extra=b""):
    with open(path, "wb") as fh:
        fh.write(np.array(ids.shape, "<u4").tobytes())
        fh.write(ids.astype("<i4").tobytes())
        fh.write(dists.astype("<f4").tobytes())
        fh.write(extra)


# 1. NaN in the base of `spann gt`

def test_gt_refuses_a_nan_base_row(data, tmp_path):
    d, x, q = data
    bad = x.copy()
    bad[1234, 3] = np.nan
    write_vectors(tmp_path / "bn.fbin", bad)
    r = run("gt", tmp_path / "bn.fbin", d / "q.fbin", "-k", 10, "-o", tmp_path / "g.ibin", "--metric", "l2", "-q")
    refused(r, "row 1234", "NaN")
    assert not (tmp_path / "g.ibin").exists()
    with pytest.raises(DataError, match="row 7 contains NaN"):
        bad2 = x.copy()
        bad2[7, 0] = np.inf
        compute_ground_truth(bad2, q, 5, "l2", progress=False)


# 2. k > n

def test_gt_refuses_k_above_the_base_size(data, tmp_path):
    d, *_ = data
    r = run("gt", d / "b.fbin", d / "q.fbin", "-k", 5000, "-o", tmp_path / "g.ibin", "--metric", "l2", "-q")
    refused(r, "k = 5000 exceeds the 3000 vectors")
    assert not (tmp_path / "g.ibin").exists()
    r = run("gt", d / "b.fbin", d / "q.fbin", "-k", 3000, "-o", tmp_path / "g.ibin", "--metric", "l2", "-q")
    assert r.exit_code == 0, r.output
    assert (read_vectors(tmp_path / "g.ibin", ids=True) >= 0).all()


# 3. an output that is an input

def test_gt_and_search_never_replace_an_input(data, index, tmp_path):
    d, x, q = data
    for name in ("b.npy", "q.npy", "b.fbin"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    before = {n: (tmp_path / n).read_bytes() for n in ("b.npy", "q.npy", "b.fbin")}
    refused(run("gt", tmp_path / "b.npy", tmp_path / "q.npy", "-o", tmp_path / "b.npy", "-q"),
            "is the input file")
    # the distances file beside the output would replace the base: g.ibin -> g.dist.fbin
    (tmp_path / "g.dist.fbin").write_bytes(before["b.fbin"])
    refused(run("gt", tmp_path / "g.dist.fbin", tmp_path / "q.npy", "-o", tmp_path / "g.ibin", "-q"),
            "is the input file")
    refused(run("gt", tmp_path / "b.npy", tmp_path / "q.npy", "-o", tmp_path / "g.ibin", "--json",
                tmp_path / "q.npy", "-q"), "is the input file")
    refused(run("search", index, tmp_path / "q.npy", "-o", tmp_path / "q.npy", "-q"), "is the input file")
    # same file by another name (a hard link)
    os.link(tmp_path / "q.npy", tmp_path / "alias.npy")
    refused(run("search", index, tmp_path / "alias.npy", "-o", tmp_path / "q.npy", "-q"), "is the input file")
    refused(run("search", index, tmp_path / "q.npy", "-o", index / "out.ibin", "-q"), "inside the input")
    for n, b in before.items():
        assert (tmp_path / n).read_bytes() == b, n
    assert (tmp_path / "g.dist.fbin").read_bytes() == before["b.fbin"]
    assert not (tmp_path / "g.ibin").exists() and not (index / "out.ibin").exists()


# 4. no directories created; outputs checked before work

def test_outputs_in_missing_directories_are_refused_up_front(data, index, tmp_path):
    d, *_ = data
    missing = tmp_path / "nodir"
    cases = [("search", index, d / "q.fbin", "-o", missing / "o.ibin"),
             ("search", index, d / "q.fbin", "-o", tmp_path / "o.ibin", "--json", missing / "s.json"),
             ("gt", d / "b.fbin", d / "q.fbin", "-k", 5, "-o", missing / "g.ibin"),
             ("gt", d / "b.fbin", d / "q.fbin", "-k", 5, "-o", tmp_path / "g.ibin", "--json", missing / "s.json")]
    for args in cases:
        refused(run(*args, "-q"), "does not exist")
        assert not missing.exists(), args
        assert not (tmp_path / "o.ibin").exists() and not (tmp_path / "g.ibin").exists(), args
    for cmd in (("gt", d / "b.fbin"), ("search", index)):  # ids cannot go to a float file: refused before work
        refused(run(*cmd, d / "q.fbin", "-k", 5, "-o", tmp_path / "o.fbin", "-q"), "ids are written as")
        assert not (tmp_path / "o.fbin").exists()
    r = run("search", index, d / "q.fbin", "-o", tmp_path / "o.ibin", "--json", tmp_path / "s.json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text())["queries"] == NQ


# 5. ground truth checked at registration

def test_register_refuses_float_and_out_of_range_ground_truth(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path / "home"))
    d, x, q = data
    base = ["datasets", "register", "mine", "--base", d / "b.fbin", "--queries", d / "q.fbin", "--metric", "l2"]
    refused(run(*base, "--gt", d / "q.fbin"), "must hold integer ids", "float32")
    ids, dists = exact_knn(x, q, 10, "l2")
    for bad_id, pos in ((N, (3, 4)), (-2, (5, 0)), (2**31 - 1, (19, 9))):
        g = ids.astype(np.int32)
        g[pos] = bad_id
        write_vectors(tmp_path / "bad.ibin", g)
        refused(run(*base, "--gt", tmp_path / "bad.ibin"), f"row {pos[0]} holds id {bad_id}", f"[-1, {N})")
    g = ids.astype(np.int32)
    g[:, -1] = -1  # -1 = no neighbour is fine
    write_vectors(tmp_path / "ok.ibin", g)
    write_vectors(tmp_path / "ok.dist.fbin", dists)
    refused(run(*base, "--gt", tmp_path / "ok.ibin", "--gt-distances", tmp_path / "ok.ibin"), "not vectors")
    refused(run(*base, "--gt", tmp_path / "ok.ibin", "--gt-distances", d / "q.fbin"), "has shape")
    assert not (tmp_path / "home" / "datasets.json").exists()
    r = run(*base, "--gt", tmp_path / "ok.ibin", "--gt-distances", tmp_path / "ok.dist.fbin")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(load("mine").load_gt()[0], g)


# 6. ann-benchmarks HDF5

def test_register_hdf5_path_dataset_suffix(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path / "home"))
    _, x, q = data
    f = tmp_path / "f.hdf5"
    ids, _ = _ann_hdf5(f, x, q, "euclidean")
    r = run("datasets", "register", "h", "--base", f"{f}:train", "--queries", f"{f}:test", "--gt", f"{f}:neighbors")
    assert r.exit_code == 0, r.output
    m = load("h")
    assert (m.metric, m.n_base, m.n_queries, m.gt_k) == ("l2", N, NQ, 10)
    np.testing.assert_array_equal(m.load_queries(), q)
    np.testing.assert_array_equal(m.load_gt()[0], ids)
    refused(run("datasets", "register", "h2", "--base", f"{tmp_path / 'nope.hdf5'}:train", "--queries",
                f"{f}:test", "--metric", "l2"), "nope.hdf5: no such file", code=2)


def test_register_bare_hdf5_uses_test_neighbors_distances_and_its_metric(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path / "home"))
    _, x, q = data
    for distance, metric in (("euclidean", "l2"), ("angular", "cosine")):
        f = tmp_path / f"{distance}.hdf5"
        ids, dists = _ann_hdf5(f, x, q, distance)
        for extra in ([], ["--queries", f, "--gt", f]):
            r = run("datasets", "register", distance, "--base", f, *extra)
            assert r.exit_code == 0, r.output
            m = load(distance)
            assert m.metric == metric and m.n_base == N
            np.testing.assert_array_equal(m.load_queries(), q)  # test, not train
            gi, gd = m.load_gt()
            np.testing.assert_array_equal(gi, ids)
            np.testing.assert_allclose(gd, dists, rtol=1e-4, atol=1e-5)  # in spann's convention
    f = tmp_path / "angular.hdf5"
    refused(run("datasets", "register", "z", "--base", f, "--metric", "l2"),
            "says distance=angular (cosine), --metric l2 given")
    assert run("datasets", "register", "z", "--base", f, "--metric", "angular").exit_code == 0
    refused(run("datasets", "register", "z", "--base", f"{f}:train",
                "--queries", f, "--metric", "cosine"), "ambiguous", f"{f}:test")
    with pytest.raises(ParameterError, match="--queries is required"):
        register("z", f"{f}:train", metric="cosine")


def test_gt_and_search_use_the_hdf5_distance(data, index, tmp_path):
    _, x, q = data
    f = tmp_path / "angular.hdf5"
    ids, _ = _ann_hdf5(f, x, q, "angular")
    r = run("gt", f"{f}:train", f"{f}:test", "-k", 10, "-o", tmp_path / "g.ibin", "-q")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(read_vectors(tmp_path / "g.ibin", ids=True), ids)  # cosine, not l2
    refused(run("gt", f"{f}:train", f"{f}:test", "-k", 10, "-o", tmp_path / "g2.ibin", "--metric", "l2", "-q"),
            "says distance=angular (cosine), --metric l2 given")
    refused(run("search", index, f"{f}:test", "-o", tmp_path / "o.ibin", "-q"),
            "says distance=angular (cosine)", "uses metric l2")
    assert not (tmp_path / "g2.ibin").exists() and not (tmp_path / "o.ibin").exists()


# 7. big-ann-benchmarks combined ground truth

def test_combined_ground_truth_files(data, index, tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path / "home"))
    d, x, q = data
    ids, dists = exact_knn(x, q, 10, "l2")
    for name in ("gt.bin", "gt.ibin", "bigann-gt"):
        _combined_gt(tmp_path / name, ids, dists)
        with open_vectors(tmp_path / name, ids=True) as g:
            np.testing.assert_array_equal(g.read(), ids)
            np.testing.assert_allclose(np.asarray(g.distances), dists)
    _combined_gt(tmp_path / "odd.ibin", ids, dists, extra=b"\0" * 4)
    with pytest.raises(VectorFileError, match="trailing bytes"):
        open_vectors(tmp_path / "odd.ibin", ids=True)
    with pytest.raises(VectorFileError, match="trailing bytes"):
        open_vectors(tmp_path / "gt.bin")  # as vectors, the layout is not a float file
    r = run("datasets", "register", "big", "--base", d / "b.fbin", "--queries", d / "q.fbin", "--metric", "l2",
            "--gt", tmp_path / "gt.bin")
    assert r.exit_code == 0, r.output
    gi, gd = load("big").load_gt()
    np.testing.assert_array_equal(gi, ids)
    np.testing.assert_allclose(gd, dists)
    refused(run("datasets", "register", "odd", "--base", d / "b.fbin", "--queries", d / "q.fbin", "--metric", "l2",
                "--gt", tmp_path / "odd.ibin"), "trailing bytes")
    r = run("eval", index, d / "q.fbin", tmp_path / "gt.bin", "--sweep", "max_postings=4", "--runs", 1,
            "--latency-queries", 5, "--json", tmp_path / "e.json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())[0]["recall"] > 0.5
    r = run("eval", index, "--dataset", "big", "--sweep", "max_postings=4", "--runs", 1,
            "--latency-queries", 5, "--json", tmp_path / "e2.json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e2.json").read_text())[0]["distance_recall"] is not None


# 8. prepare: seed range, disk space, temporaries

def test_prepare_refuses_negative_seed_and_too_big_outputs(tmp_path):
    refused(run("datasets", "prepare", "synthetic", tmp_path / "s", "--seed", -1), "0<=x<=4294967295", code=2)
    with pytest.raises(ParameterError, match="seed must be an integer"):
        SyntheticSpec(4, seed=-1)
    r = run("datasets", "prepare", "synthetic", tmp_path / "s", "--n", 10**12, "-q")
    refused(r, "needs about", "free")
    assert list(tmp_path.iterdir()) == []


def test_prepare_removes_its_temporaries_on_interrupt(tmp_path, monkeypatch):
    from spann.datasets import registry as reg

    def interrupted(directory, **_):
        (directory / "base.fbin").write_bytes(b"\0" * 64)
        raise KeyboardInterrupt

    monkeypatch.setitem(reg.BUILTIN, "synthetic", reg._Builtin("synthetic", "", "l2", interrupted))
    with pytest.raises(KeyboardInterrupt):
        prepare("synthetic", tmp_path / "s", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_prepare_removes_its_temporaries_on_sigterm(tmp_path):
    code = ("import sys, time\n"
            "from spann.datasets import registry as r\n"
            "def slow(directory, **_):\n"
            "    (directory / 'base.fbin').write_bytes(b'x' * 4096)\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n"
            "r.BUILTIN['synthetic'] = r._Builtin('synthetic', '', 'l2', slow)\n"
            "r.prepare('synthetic', sys.argv[1], progress=False)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        assert any(e.name.startswith(".s.tmp-") for e in tmp_path.iterdir())
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert list(tmp_path.iterdir()) == []


def test_prepare_removes_stale_temporaries_of_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours = tmp_path / f".s.tmp-{dead.pid}"
    ours.mkdir()
    (ours / ".spann-prepare").write_text(f"{dead.pid}\n")
    (ours / "base.fbin").write_bytes(b"\0" * 64)
    foreign = tmp_path / f".s.tmp-{dead.pid + 1}"  # no marker: not ours, left alone
    foreign.mkdir()
    m = prepare("synthetic", tmp_path / "s", n=1000, dim=4, n_queries=5, progress=False)
    assert m.n_base == 1000
    assert not ours.exists() and foreign.exists()
    assert sorted(e.name for e in tmp_path.iterdir()) == sorted([foreign.name, "s"])


# 9. registry file and names

@pytest.mark.parametrize("content, msg", [("[1, 2]", "must be a JSON object, got a JSON array"),
                                          ('{"x": 3}', "entry 'x' is not a JSON object"),
                                          ('{"x": {"base": "b"}}', "entry 'x' is not a valid dataset record"),
                                          ("{", "unreadable dataset registry")])
def test_bad_registry_file_is_a_one_line_error(tmp_path, monkeypatch, content, msg):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path))
    p = tmp_path / "datasets.json"
    p.write_text(content)
    refused(run("datasets", "list"), str(p), msg)
    refused(run("eval", tmp_path / "idx", "--dataset", "x"), str(p), msg)
    with pytest.raises(SpannError, match="must be a JSON object|not a JSON object|not a valid|unreadable"):
        load("x")


def test_registry_must_be_a_regular_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path))
    os.mkfifo(tmp_path / "datasets.json")  # reading it would block forever
    code = "import sys; sys.argv = ['spann', 'datasets', 'list']; from spann.cli.main import main; main()"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SPANN_HOME": str(tmp_path)})
    assert p.returncode == 1 and "not a regular file" in p.stderr and "Traceback" not in p.stderr, p.stderr
    os.unlink(tmp_path / "datasets.json")
    (tmp_path / "datasets.json").mkdir()
    refused(run("datasets", "list"), "not a regular file")


def test_registered_names_are_validated(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path / "home"))
    d, *_ = data
    base = ["--base", d / "b.fbin", "--queries", d / "q.fbin", "--metric", "l2"]
    for bad in ("", "../../etc/x", ".hidden", "a/b", "x" * 101, "sp ace"):
        refused(run("datasets", "register", bad, *base), "invalid dataset name")
    assert not (tmp_path / "home" / "datasets.json").exists()
    for good in ("glove-100-angular", "my_set.v2", "x" * 100):
        assert run("datasets", "register", good, *base).exit_code == 0
    assert set(json.loads((tmp_path / "home" / "datasets.json").read_text())) == {
        "glove-100-angular", "my_set.v2", "x" * 100}


def test_build_takes_and_checks_the_hdf5_distance(tmp_path):
    h5py = pytest.importorskip("h5py")
    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    f = tmp_path / "ab.hdf5"
    with h5py.File(f, "w") as h:
        h.create_dataset("train", data=x)
        h.attrs["distance"] = "angular"
    r = CliRunner().invoke(cli, ["build", f"{f}:train", str(tmp_path / "i"), "--metric", "l2", "-q"])
    assert r.exit_code != 0 and "distance=angular" in r.output and not (tmp_path / "i").exists()
    r = CliRunner().invoke(cli, ["build", f"{f}:train", str(tmp_path / "i"), "-q", "--json", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a.json").read_text())["metric"] == "cosine"
