"""No output path of any command can destroy an index or an input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import spann
from spann.cli.main import cli
from spann.datasets import synthetic_array, write_vectors


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    x = synthetic_array(3000, 8, seed=3)
    q = synthetic_array(20, 8, seed=3, stream=1, n_hint=3000)
    write_vectors(d / "base.fbin", x)
    write_vectors(d / "q.fbin", q)
    for name in ("a.spann", "b.spann"):
        run("build", d / "base.fbin", d / name, "--metric", "l2", "-q")
    return d, q


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + str(r.exception)
    return r


def refused(r, word="inside"):
    assert r.exit_code != 0, r.output
    assert word in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def searchable(index, q):
    with spann.open(index) as idx:
        r = idx.search(q, 5)
    assert (r.ids >= 0).all()
    return r


def test_build_json_onto_its_own_index_is_refused_and_the_index_survives(two_indexes):
    d, q = two_indexes
    before = snapshot(d / "a.spann")
    refused(run("build", d / "base.fbin", d / "a.spann", "--metric", "l2", "--overwrite",
                "--json", d / "a.spann" / "zarr.json", "-q", ok=False))
    assert snapshot(d / "a.spann") == before
    searchable(d / "a.spann", q)


def test_build_json_into_another_index_is_refused(two_indexes):
    d, q = two_indexes
    before = snapshot(d / "b.spann")
    refused(run("build", d / "base.fbin", d / "c.spann", "--metric", "l2",
                "--json", d / "b.spann" / "zarr.json", "-q", ok=False))
    assert snapshot(d / "b.spann") == before and not (d / "c.spann").exists()
    searchable(d / "b.spann", q)


def test_build_json_onto_the_input_is_refused(two_indexes):
    d, _ = two_indexes
    before = (d / "base.fbin").read_bytes()
    r = run("build", d / "base.fbin", d / "c.spann", "--metric", "l2", "--json", d / "base.fbin", "-q", ok=False)
    refused(r, "input")
    assert (d / "base.fbin").read_bytes() == before and not (d / "c.spann").exists()


def test_index_inside_another_index_is_refused(two_indexes):
    d, _ = two_indexes
    before = snapshot(d / "a.spann")
    refused(run("build", d / "base.fbin", d / "a.spann" / "inner", "--metric", "l2", "-q", ok=False))
    refused(run("export", d / "a.spann", d / "a.spann" / "inner.zip", "-q", ok=False))
    assert snapshot(d / "a.spann") == before


def test_search_eval_gt_outputs_inside_any_index_are_refused(two_indexes):
    d, _ = two_indexes
    before = snapshot(d / "b.spann")
    refused(run("search", d / "a.spann", d / "q.fbin", "-o", d / "b.spann" / "res.ibin", "-q", ok=False))
    refused(run("search", d / "a.spann", d / "q.fbin", "-o", d / "r.ibin", "--json", d / "b.spann" / "zarr.json",
                "-q", ok=False))
    refused(run("gt", d / "base.fbin", d / "q.fbin", "-o", d / "b.spann" / "gt.ibin", "--metric", "l2", "-q",
                ok=False))
    run("gt", d / "base.fbin", d / "q.fbin", "-o", d / "gt.ibin", "--metric", "l2", "-q")
    for opt, name in (("--json", "zarr.json"), ("--csv", "e.csv"), ("--plot", "e.png")):
        refused(run("eval", d / "a.spann", d / "q.fbin", d / "gt.ibin", opt, d / "b.spann" / name, "-q", ok=False))
        refused(run("eval", d / "a.spann", d / "q.fbin", d / "gt.ibin", opt, d / "a.spann" / name, "-q", ok=False))
    assert snapshot(d / "b.spann") == before


def test_directory_outputs_inside_an_index_are_refused(two_indexes, tmp_path):
    d, _ = two_indexes
    before = snapshot(d / "a.spann")
    refused(run("demo", "--dataset", "synthetic", "--workdir", d / "a.spann", "-q", ok=False))
    refused(run("datasets", "prepare", "synthetic", d / "a.spann" / "data", "--n", 100, "--dim", 4, "-q", ok=False))
    assert snapshot(d / "a.spann") == before


def test_zip_index_is_not_an_output(two_indexes):
    d, _ = two_indexes
    run("export", d / "a.spann", d / "a.zip", "-q")
    before = (d / "a.zip").read_bytes()
    r = run("search", d / "a.spann", d / "q.fbin", "-o", d / "r.ibin", "--json", d / "a.zip", "-q", ok=False)
    refused(r, "is an index")
    assert (d / "a.zip").read_bytes() == before


def test_ordinary_outputs_still_work(two_indexes):
    d, _ = two_indexes
    run("search", d / "a.spann", d / "q.fbin", "-o", d / "ok.ibin", "--json", d / "ok.json", "-q")
    assert json.loads((d / "ok.json").read_text())["queries"] == 20
    assert np.fromfile(d / "ok.ibin", dtype="<i4").size > 2


def test_json_option_is_the_same_on_every_command(two_indexes, tmp_path):
    """``--json [FILE|-]``: no value or '-' prints the JSON alone on stdout, FILE writes it."""
    d, q = two_indexes
    assert json.loads(run("info", d / "a.spann", "--json").output)["metric"] == "l2"
    assert json.loads(run("info", d / "a.spann", "--json", "-").output)["metric"] == "l2"
    run("info", d / "a.spann", "--json", tmp_path / "info.json")
    assert json.loads((tmp_path / "info.json").read_text())["metric"] == "l2"
    r = run("verify", d / "a.spann", "--json", "-q")  # a following option is not taken for FILE
    assert json.loads(r.output)["vectors"] == 3000
    run("verify", d / "a.spann", "--json", tmp_path / "v.json", "-q")
    assert json.loads((tmp_path / "v.json").read_text())["vectors"] == 3000
    r = run("search", d / "a.spann", d / "q.fbin", "-o", tmp_path / "r.ibin", "--json", "-q")
    assert json.loads(r.output)["queries"] == 20
    refused(run("info", d / "a.spann", "--json", d / "b.spann" / "zarr.json", ok=False))
    refused(run("verify", d / "a.spann", "--json", d / "a.spann" / "v.json", ok=False))
    for cmd in ("build", "search", "eval", "gt", "info", "verify", "add", "delete"):
        assert "--json [FILE|-]" in run(cmd, "--help").output, cmd


def test_verify_of_a_zip_says_what_to_do(two_indexes, tmp_path):
    d, _ = two_indexes
    run("export", d / "a.spann", tmp_path / "v.zip", "-q")
    r = run("verify", tmp_path / "v.zip", ok=False)
    assert r.exit_code == 1 and "verify reads a local index directory" in r.output
    assert "is a file" not in r.output and len(r.output.strip().splitlines()) == 1
