"""Every input file the CLI opens is checked to be a regular file first (one helper for vectors,
ids, labels and ground truth): a FIFO never blocks a command. Bad option values and export
destinations are refused in one line, before anything is written."""

import os
import signal

import pytest
from click.testing import CliRunner

import spann
from spann.cli.main import cli
from spann.datasets import synthetic_array, write_vectors

N, DIM = 1500, 8


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + str(r.exception)
    return r


def one_line_error(r, msg, code=1):
    assert r.exit_code == code, (r.exit_code, r.output)
    errs = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errs) == 1 and msg in errs[0], r.output
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    x = synthetic_array(N, DIM, seed=7)
    write_vectors(d / "base.fbin", x)
    write_vectors(d / "q.fbin", x[:10] + 0.01)
    write_vectors(d / "two.fbin", x[:2] + 0.5)
    run("build", d / "base.fbin", d / "idx", "--metric", "l2", "-q")
    for name in ("ids.npy", "labels.npy", "ids.ibin", "ids.i8bin", "v.fbin", "v.npy", "gt.ibin"):
        os.mkfifo(d / f"fifo-{name}")
    return d


@pytest.fixture
def watchdog():
    """A command that blocks fails the test after 30 s instead of hanging it."""
    def boom(*_a):
        raise TimeoutError("a command blocked")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_fifos_are_refused_in_one_line_and_never_block(files, watchdog, tmp_path):
    d = files
    f = lambda name: d / f"fifo-{name}"  # noqa: E731
    build = ["build", d / "base.fbin", tmp_path / "b", "--metric", "l2", "-q"]
    cases = [(build + ["--ids", f("ids.npy")]), (build + ["--ids", f("ids.ibin")]), (build + ["--ids", f("ids.i8bin")]),
             (build + ["--labels", f("labels.npy")]),
             ["build", f("v.fbin"), tmp_path / "b", "--metric", "l2", "-q"],
             ["build", f("v.npy"), tmp_path / "b", "--metric", "l2", "-q"],
             ["add", d / "idx", d / "two.fbin", "--ids", f("ids.npy")],
             ["add", d / "idx", d / "two.fbin", "--ids", f("ids.i8bin")],
             ["add", d / "idx", d / "two.fbin", "--labels", f("labels.npy")],
             ["add", d / "idx", f("v.fbin")],
             ["delete", d / "idx", "--ids", f("ids.npy")],
             ["delete", d / "idx", "--ids", f("ids.ibin")],
             ["search", d / "idx", f("v.fbin"), "-o", tmp_path / "r.ibin", "-q"],
             ["eval", d / "idx", d / "q.fbin", f("gt.ibin"), "--runs", "1", "--latency-queries", "1", "-q"]]
    for args in cases:
        one_line_error(run(*args, ok=False), "not a regular file")
    assert not (tmp_path / "b").exists() and not (tmp_path / "r.ibin").exists()
    with spann.open(d / "idx") as idx:
        assert len(idx) == N and idx.generation == 1  # nothing above changed the index


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Infinity", "1e400", "1e30G"])
def test_memory_limit_that_is_not_a_finite_size_is_a_usage_error(files, tmp_path, value):
    r = run("build", files / "base.fbin", tmp_path / "b", "--metric", "l2", "-q", "--memory-limit", value, ok=False)
    one_line_error(r, "--memory-limit", code=2)
    assert not (tmp_path / "b").exists()


def test_export_into_its_own_index_is_refused(files, tmp_path):
    d = files
    before = sorted(os.listdir(d / "idx"))
    one_line_error(run("export", d / "idx", d / "idx" / "inner.zip", ok=False), "inside the index")
    one_line_error(run("export", d / "idx", d / "idx" / "gen-000001" / "x.zip", ok=False), "inside the index")
    assert sorted(os.listdir(d / "idx")) == before


def test_export_of_a_directory_that_is_not_an_index_writes_nothing_into_it(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    one_line_error(run("export", src, tmp_path / "out.zip", ok=False), "not a spann index")
    assert os.listdir(src) == ["a.jpg"] and not (tmp_path / "out.zip").exists()
    (src / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')  # a plain zarr group
    one_line_error(run("export", src, tmp_path / "out.zip", ok=False), "not a complete spann index")
    assert sorted(os.listdir(src)) == ["a.jpg", "zarr.json"]


def test_an_index_directory_named_zip_is_searched_and_updated(files, tmp_path):
    import shutil
    p = tmp_path / "idx.zip"
    shutil.copytree(files / "idx", p)
    run("search", p, files / "q.fbin", "-o", tmp_path / "r.ibin", "-q")
    run("add", p, files / "two.fbin", "-q")
    run("verify", p)
    assert (tmp_path / "r.ibin").stat().st_size > 8
    with spann.open(p) as idx:
        assert not idx.read_only and len(idx) == N + 2
