import json

import numpy as np
import pytest
from click.testing import CliRunner

import spann
from spann import __version__
from spann.cli.main import cli
from spann.datasets import read_vectors, synthetic_array, write_vectors
from spann.kernels.exact import exact_knn


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    x = synthetic_array(8000, 16, seed=9)
    q = synthetic_array(50, 16, seed=9, stream=1, n_hint=8000)
    write_vectors(d / "base.fbin", x)
    write_vectors(d / "q.fbin", q)
    return d, x, q


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + str(r.exception)
    return r


def test_version_and_help():
    assert __version__ in run("--version").output
    for cmd in ("build", "search", "info", "eval", "gt", "demo", "datasets"):
        assert "Usage" in run(cmd, "--help").output


def test_gt_build_search_info_eval(files):
    d, x, q = files
    run("gt", d / "base.fbin", d / "q.fbin", "-k", 20, "-o", d / "gt.ibin", "--metric", "l2", "-q")
    gi = read_vectors(d / "gt.ibin", ids=True)
    np.testing.assert_array_equal(gi, exact_knn(x, q, 20, "l2")[0])
    assert (d / "gt.dist.fbin").exists()

    r = run("build", d / "base.fbin", d / "idx", "--metric", "l2", "--json", d / "build.json", "-q")
    summary = json.loads((d / "build.json").read_text())
    assert summary["stats"]["heads"] > 0 and summary["params"]["encoding"] == "sq8"
    assert summary["params"]["replica_count"] == 6  # resolved by encoding

    run("search", d / "idx", d / "q.fbin", "-k", 10, "-o", d / "res.ibin", "--max-postings", 32, "--json",
        d / "s.json", "-q")
    res = read_vectors(d / "res.ibin", ids=True)
    assert res.shape == (50, 10)
    assert (res[:, :, None] == gi[:, None, :10]).any(2).mean() > 0.9
    assert json.loads((d / "s.json").read_text())["mean_lists_read"] <= 2 * 32  # the pruner reads up to 2x
    run("search", d / "idx", d / "q.fbin", "-k", 10, "-o", d / "res_d.ibin", "--max-postings", 32, "--direct", "-q")
    np.testing.assert_array_equal(read_vectors(d / "res_d.ibin", ids=True), res)  # O_DIRECT reads, same answers

    out = run("info", d / "idx").output
    assert "heads" in out and "replicas/vector" in out
    assert json.loads(run("info", d / "idx", "--json").output)["metric"] == "l2"

    r = run("eval", d / "idx", d / "q.fbin", d / "gt.ibin", "--sweep", "max_postings=2,16", "--prune-eps", "0.5,inf",
            "--runs", 1, "--latency-queries", 10, "--json", d / "e.json", "--csv", d / "e.csv", "-q")
    recs = json.loads((d / "e.json").read_text())
    assert len(recs) == 4
    assert {(r_["params"]["max_postings"], r_["params"]["prune_eps"]) for r_ in recs} == {
        (2, 0.5), (2, float("inf")), (16, 0.5), (16, float("inf"))}
    for r_ in recs:
        assert 0 <= r_["recall"] <= 1 and r_["qps"] > 0 and r_["latency_p99_ms"] >= r_["latency_p50_ms"]
        assert "max_postings" in r_["params"] and "prune_eps" in r_["params"]
    assert "recall" in r.output and "QPS" in r.output
    assert (d / "e.csv").read_text().startswith("system")


def test_recall_targets_from_the_command_line(files, tmp_path):
    d, x, q = files
    idx = tmp_path / "idx"
    run("build", d / "base.fbin", idx, "--metric", "l2", "-q")
    with spann.open(idx) as ix:
        points = ix.operating_points
        want = ix.search(q, 10, recall=0.9).ids
        default_mp = ix.default_params.max_postings
    run("search", idx, d / "q.fbin", "-k", 10, "-o", tmp_path / "r.npy", "--recall", 0.9, "--json", tmp_path / "s.json",
        "-q")
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), want)
    run("search", idx, d / "q.fbin", "-k", 10, "-o", tmp_path / "r5.npy", "--recall", 0.5, "--json",
        tmp_path / "s5.json", "-q")
    low = json.loads((tmp_path / "s5.json").read_text())["mean_lists_read"]
    assert points.max_postings_for(0.5) < points.max_postings_for(0.9)
    assert low < json.loads((tmp_path / "s.json").read_text())["mean_lists_read"]  # the target reached the search
    out = run("info", idx).output
    assert f"the default search reads max_postings={default_mp}" in out
    assert f"{points.max_postings[-1]:>12} {points.recall[-1]:>9.4f}" in out  # the stored curve, every point
    for bad, msg in ((["--recall", 0], "0<x<=1"), (["--recall", 1.5], "0<x<=1"),
                     (["--recall", 0.9, "--max-postings", 8], "not both")):
        r = run("search", idx, d / "q.fbin", "-o", tmp_path / "b.npy", *bad, ok=False)
        assert r.exit_code != 0 and msg in r.output, r.output
    gt = exact_knn(x, q, 10, "l2")[0]
    np.save(tmp_path / "gt.npy", gt)
    run("eval", idx, d / "q.fbin", tmp_path / "gt.npy", "--sweep", "recall=0.8,0.95", "--runs", 1,
        "--latency-queries", 5, "--json", tmp_path / "e.json", "-q")
    recs = json.loads((tmp_path / "e.json").read_text())
    picked = [points.max_postings_for(0.8), points.max_postings_for(0.95)]
    assert [r_["params"]["max_postings"] for r_ in recs] == picked
    with spann.open(idx) as ix:  # what each point searched with
        for r_, mp in zip(recs, picked):
            res = ix.search(q, 10, max_postings=mp)
            assert r_["lists_read"] == pytest.approx(res.lists_read.mean())
    r = run("eval", idx, d / "q.fbin", tmp_path / "gt.npy", "--sweep", "recall=0.9", "--sweep", "max_postings=4",
            ok=False)
    assert r.exit_code != 0 and "not both" in r.output


def test_errors_are_one_line(files, tmp_path):
    d, x, q = files
    (tmp_path / "empty.fbin").write_bytes(b"")
    r = run("build", tmp_path / "empty.fbin", tmp_path / "i", "--metric", "l2", ok=False)
    assert r.exit_code != 0 and "file is empty" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "i").exists()
    write_vectors(tmp_path / "q8.fbin", q[:, :8])
    r = run("search", d / "idx", tmp_path / "q8.fbin", "-o", tmp_path / "o.ibin", ok=False)
    assert r.exit_code != 0 and "dimension 8" in r.output
    r = run("search", tmp_path / "nope", d / "q.fbin", "-o", tmp_path / "o.ibin", ok=False)
    assert r.exit_code != 0 and "no such index" in r.output
    r = run("build", d / "base.fbin", tmp_path / "j", "--metric", "cosine", "--head-ratio", "0.9", ok=False)
    assert r.exit_code != 0
    r = run("gt", d / "base.fbin", d / "q.fbin", "-o", tmp_path / "g.txt", ok=False)
    assert r.exit_code != 0 and "extension" in r.output


def test_datasets_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("SPANN_HOME", str(tmp_path / "home"))
    assert "glove-50" in run("datasets", "list").output
    run("datasets", "prepare", "synthetic", tmp_path / "s", "--n", 2000, "--dim", 8, "--n-queries", 10, "-q")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["n_base"] == 2000
    run("datasets", "register", "mine", "--base", tmp_path / "s" / m["base"], "--queries",
        tmp_path / "s" / m["queries"], "--metric", "l2")
    assert "mine" in run("datasets", "list").output


def test_build_params_aliases_and_early_refusals(files, tmp_path):
    d, x, q = files
    r = run("build", d / "base.fbin", tmp_path / "a", "--metric", "euclidean", "--param", "kmeans_iters=3",
            "--param", "head_ratio=0.1", "--encoding", "full", "--json", tmp_path / "a.json", "-q")
    attrs = json.loads((tmp_path / "a.json").read_text())
    assert attrs["metric"] == "l2" and attrs["params"]["kmeans_iters"] == 3 and attrs["params"]["head_ratio"] == 0.1
    assert attrs["params"]["encoding"] == "full"
    bad = [(["--param", "no_such=1"], "unknown BuildParams parameter 'no_such'"),
           (["--param", "kmeans_iters"], "name=value"),
           (["--param", "head_ratio=2"], "head_ratio must be in (0, 0.5]"),
           (["--seed", "-1"], "-1 is not in the range"),
           (["--metric", "hamming"], "metric must be one of"),
           (["--json", tmp_path / "nodir" / "o.json"], "does not exist")]
    for extra, msg in bad:
        args = ["build", d / "base.fbin", tmp_path / "b", *(["--metric", "l2"] if "--metric" not in extra else []),
                *extra]
        r = run(*args, ok=False)
        assert r.exit_code != 0 and msg in r.output, (extra, r.output)
        assert "Traceback" not in r.output and not (tmp_path / "b").exists()


def test_eval_refuses_bad_input_before_work_and_keeps_stdout_json(files, tmp_path):
    d, x, q = files
    run("gt", d / "base.fbin", d / "q.fbin", "-k", 20, "-o", tmp_path / "gt.ibin", "--metric", "l2", "-q")
    run("build", d / "base.fbin", tmp_path / "i", "--metric", "l2", "-q")
    base = ["eval", tmp_path / "i", d / "q.fbin"]
    bad = [([d / "q.fbin"], "ground truth must hold integer ids"),
           ([tmp_path / "gt.ibin", "--sweep", "foo=1"], "unknown SearchParams parameter 'foo'"),
           ([tmp_path / "gt.ibin", "--sweep", "threads=2"], "unknown SearchParams parameter 'threads'"),
           ([tmp_path / "gt.ibin", "--sweep", "max_postings=1.5"], "max_postings must be an integer"),
           ([tmp_path / "gt.ibin", "--plot", tmp_path / "o.txt"], "name it *.png"),
           ([tmp_path / "gt.ibin", "--json", tmp_path / "no" / "o.json"], "does not exist")]
    for extra, msg in bad:
        r = run(*base, *extra, ok=False)
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output, (extra, r.output)
    r = CliRunner().invoke(cli, [str(a) for a in base + [tmp_path / "gt.ibin", "--json", "-",
                                                                         "--sweep", "max_postings=4,8", "--runs", "1",
                                                                         "--latency-queries", "5"]])
    assert r.exit_code == 0, r.stderr
    recs = json.loads(r.stdout)  # stdout is the JSON alone; the table went to stderr
    assert [rec["params"]["max_postings"] for rec in recs] == [4, 8] and "recall" in r.stderr


def test_broken_pipe_is_not_an_error(files, tmp_path):
    import subprocess
    import sys
    d, *_ = files
    code = "import sys; sys.argv = ['spann', 'datasets', 'list']; from spann.cli.main import main; main()"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the writer writes
    err = p.stderr.read().decode()
    assert p.wait() == 1 and err == "", err  # click's convention for EPIPE: exit 1, nothing printed


def test_search_reaches_every_search_parameter(files, tmp_path):
    d, x, q = files
    run("build", d / "base.fbin", tmp_path / "i", "--metric", "l2", "--encoding", "sq8", "-q")
    outs = {}
    for name, extra in {"default": [], "no-pruner": ["--no-pruner", "--max-postings", "2"],
                        "rerank": ["--rerank", "200", "--max-postings", "2", "--no-pruner"]}.items():
        run("search", tmp_path / "i", d / "q.fbin", "-o", tmp_path / f"{name}.ibin", "--json",
            tmp_path / f"{name}.json",
            "-q", *extra)
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert outs["no-pruner"]["mean_lists_read"] <= 2 < outs["default"]["mean_lists_read"]
    # a deeper re-rank reads more vector-store rows, and evaluates more distances, on the same lists
    assert outs["rerank"]["mean_lists_read"] == outs["no-pruner"]["mean_lists_read"]
    assert outs["rerank"]["mean_distance_evals"] > outs["no-pruner"]["mean_distance_evals"]


def test_search_loads_only_the_kernels_of_its_own_path(files, tmp_path, monkeypatch):
    """A batch search warms up on its first queries through the same path, not through
    Index.prepare (which would also compile the single-query kernel)."""
    import spann
    d, x, q = files
    run("build", d / "base.fbin", tmp_path / "i", "--metric", "l2", "-q")
    calls = []
    real = spann.Index.search

    def search(self, queries, k=10, **kw):
        calls.append(np.asarray(queries).shape)
        return real(self, queries, k, **kw)

    def no_prepare(self):
        raise AssertionError("spann search must not compile every path")

    monkeypatch.setattr(spann.Index, "search", search)
    monkeypatch.setattr(spann.Index, "prepare", no_prepare)
    run("search", tmp_path / "i", d / "q.fbin", "-o", tmp_path / "r.ibin", "-q")
    assert calls == [(2, 16), (50, 16)]  # the warm-up takes the batch path too
    write_vectors(tmp_path / "one.fbin", q[:1])
    calls.clear()
    run("search", tmp_path / "i", tmp_path / "one.fbin", "-o", tmp_path / "r1.ibin", "-q")
    assert calls == [(1, 16), (1, 16)]
