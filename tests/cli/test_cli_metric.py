"""One metric rule: every command that computes distances takes --metric the same way, and
none falls back to a default that can disagree with the index."""

import numpy as np
from click.testing import CliRunner

from spann.cli.main import cli
from spann.datasets import synthetic_array, write_vectors


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + str(r.exception)
    return r


def test_gt_requires_a_metric(tmp_path):
    x = synthetic_array(500, 8, seed=1)
    write_vectors(tmp_path / "b.fbin", x)
    write_vectors(tmp_path / "q.fbin", x[:5])
    r = run("gt", tmp_path / "b.fbin", tmp_path / "q.fbin", "-k", 3, "-o", tmp_path / "g.ibin", ok=False)
    assert r.exit_code == 1 and "--metric is required" in r.output and not (tmp_path / "g.ibin").exists()
    run("gt", tmp_path / "b.fbin", tmp_path / "q.fbin", "-k", 3, "-o", tmp_path / "g.ibin", "--metric", "l2", "-q")
    assert (tmp_path / "g.ibin").exists()


def test_help_says_when_metric_is_required():
    for cmd in (("build",), ("gt",), ("datasets", "register")):
        assert "required unless an ann-benchmarks .hdf5" in " ".join(run(*cmd, "--help").output.split()), cmd


def test_datasets_group_takes_quiet(tmp_path):
    r = run("datasets", "-q", "prepare", "synthetic", tmp_path / "d", "--n", 300, "--dim", 4, "--n-queries", 5)
    assert r.output.strip() == ""


def test_eval_warns_when_the_datasets_metric_is_not_the_indexs(tmp_path):
    run("datasets", "prepare", "synthetic", tmp_path / "d", "--n", 3000, "--dim", 8, "--n-queries", 20,
        "--metric", "cosine", "-q")
    run("build", tmp_path / "d" / "base.fbin", tmp_path / "i.spann", "--metric", "l2", "-q")
    r = run("eval", tmp_path / "i.spann", "--dataset", tmp_path / "d", "--sweep", "max_postings=4", "--runs", 1,
            "--latency-queries", 5)
    assert "warning: dataset" in r.output and "metric cosine, the index uses l2" in r.output
    assert "QPS: batch throughput" in r.output and "warm: the index's pages cached" in r.output  # the legend


def test_verify_and_info_agree_on_the_live_count_after_updates(tmp_path):
    x = synthetic_array(2000, 8, seed=2)
    write_vectors(tmp_path / "b.fbin", x)
    write_vectors(tmp_path / "new.fbin", x[:150] + 0.5)
    run("build", tmp_path / "b.fbin", tmp_path / "i.spann", "--metric", "l2", "-q")
    run("add", tmp_path / "i.spann", tmp_path / "new.fbin", "-q")
    np.save(tmp_path / "del.npy", np.arange(0, 100, dtype=np.int64))
    run("delete", tmp_path / "i.spann", "--ids", tmp_path / "del.npy", "-q")
    info = run("info", tmp_path / "i.spann").output
    assert "live vectors 2,050" in info
    assert "OK (2,050 live vectors, 2,000 built; generation 3" in run("verify", tmp_path / "i.spann").output


def test_warmup_prepares_the_kinds_asked_and_refuses_unknown_ones():
    r = run("warmup", "--dtype", "float32", "--encoding", "sq8", "--metric", "l2")
    assert "float32 l2 sq8: ready" in r.output and "peak RSS" not in r.output
    r = run("warmup", "--encoding", "pq", ok=False)
    assert r.exit_code == 2 and "'pq': expected encodings" in r.output


def test_warmup_leaves_the_build_loggers_level_alone():
    import logging
    before = logging.getLogger("spann.builder").level
    run("warmup", "--dtype", "float32", "--encoding", "full", "--metric", "l2", "-q")
    assert logging.getLogger("spann.builder").level == before


def test_heartbeat_shows_long_silent_work_on_a_terminal_only(monkeypatch, capsys):
    import sys
    import time

    from spann.cli.common import heartbeat
    with heartbeat("compiling", delay=0):  # stderr is not a terminal here: nothing
        time.sleep(0.3)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with heartbeat("compiling", delay=0):
        time.sleep(1.3)
    err = capsys.readouterr().err
    assert "compiling ... 0 s" in err and "compiling ... 1 s" in err and err.endswith("\r\033[K")
