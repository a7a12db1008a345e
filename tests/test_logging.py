"""The library prints nothing by default (messages are ``spann.*`` log records, progress bars
only when asked); the command line shows both on stderr unless ``-q``."""

import logging
import subprocess
import sys

from click.testing import CliRunner

import spann
from spann.cli.main import cli
from spann.datasets import synthetic_array, write_vectors
from spann.kernels.exact import exact_knn
from spann.tools.eval import evaluate

X = synthetic_array(3000, 16, seed=5)
Q = synthetic_array(30, 16, seed=5, stream=1, n_hint=3000)
STAGES = ("sample", "heads", "graph", "groups", "assign", "encoding", "pruner", "plan", "write")

SILENT = """
import os
import sys
import numpy as np
import spann
from spann.datasets import synthetic_array
from spann.tools.eval import evaluate
x = synthetic_array(3000, 16, seed=5)
q = synthetic_array(30, 16, seed=5, stream=1, n_hint=3000)
with spann.build(x, sys.argv[1], metric="l2") as idx:
    ids, _ = idx.search(q, 10)
    evaluate(idx, q, ids, 10, runs=1, latency_queries=5)
os.mkdir(os.path.join(os.path.dirname(sys.argv[1]), ".i.building-other"))  # not ours: a warning, left alone
spann.build(x, sys.argv[1], metric="l2", overwrite=True, resume=True).close()
"""


def test_library_prints_nothing_by_default(tmp_path, capfd):
    with spann.build(X, tmp_path / "i", metric="l2") as idx:
        ids, _ = idx.search(Q, 10)
        gt = exact_knn(X, Q, 10, "l2")[0]
        recs = evaluate(idx, Q, gt, 10, runs=1, latency_queries=5)
    assert recs[0].recall > 0.8
    assert capfd.readouterr() == ("", "")


def test_library_prints_nothing_in_a_fresh_interpreter(tmp_path):
    """No logging configured, no pytest capture: not a line on stdout or stderr (no progress
    bar, no stage line, not even a logged warning)."""
    r = subprocess.run([sys.executable, "-c", SILENT, str(tmp_path / "i")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", "")


def test_build_logs_its_stages_under_spann(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="spann"):
        spann.build(X, tmp_path / "i", metric="l2", encoding="sq8").close()
        (tmp_path / ".i.building-other").mkdir()  # not a build of ours: left alone, with a warning
        spann.build(X, tmp_path / "i", metric="l2", encoding="sq8", overwrite=True, resume=True).close()
    assert caplog.records and all(r.name.startswith("spann.") for r in caplog.records)
    stage_lines = [r.getMessage() for r in caplog.records
                   if r.name == "spann.builder.pipeline" and r.levelno == logging.INFO]
    for name in STAGES:
        assert any(m.startswith(f"{name}: ") and "peak RSS" in m for m in stage_lines), (name, stage_lines)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("building 3000 x 16 float32 (l2)") and "'encoding': 'sq8'" in m for m in debug)
    said = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("spann.io.index_writer", logging.INFO, "nothing to resume: building from the start") in said
    assert ("spann.io.index_writer", logging.WARNING, f"{tmp_path / '.i.building-other'} looks like the temporary "
            "directory of another build; left alone") in said


def _build_cli(tmp_path, *flags):
    write_vectors(tmp_path / "base.fbin", X)
    return CliRunner().invoke(cli, ["build", str(tmp_path / "base.fbin"), str(tmp_path / "i"), "--metric", "l2",
                                    "--overwrite", *flags])


def _handlers():
    log = logging.getLogger("spann")
    return log.level, [type(h).__name__ for h in log.handlers]


def test_cli_shows_stage_lines_on_stderr_by_default(tmp_path):
    before = _handlers()
    r = _build_cli(tmp_path)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # stdout stays for machine-readable output
    lines = r.stderr.splitlines()
    for name in STAGES:
        assert any(ln.startswith(f"{name}: ") and "s, peak RSS" in ln for ln in lines), (name, r.stderr)
    assert any(ln.startswith("time ") for ln in lines)  # the build summary
    assert "debug" not in r.stderr
    assert _handlers() == before  # the command's handler is gone with it


def test_cli_quiet_shows_nothing_and_debug_more(tmp_path):
    r = _build_cli(tmp_path, "-q")
    assert r.exit_code == 0, r.output
    assert (r.stdout, r.stderr) == ("", "")
    with spann.open(tmp_path / "i") as idx:
        assert len(idx) == X.shape[0]

    r = _build_cli(tmp_path, "--debug", "--json", "-")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("{") and "debug" not in r.stdout  # JSON alone on stdout
    assert "debug spann.builder.pipeline: building 3000 x 16 float32 (l2)" in r.stderr
    assert "info spann.builder.pipeline: heads: " in r.stderr


def test_cli_quiet_still_shows_errors(tmp_path):
    (tmp_path / "empty.fbin").write_bytes(b"")
    r = CliRunner().invoke(cli, ["build", str(tmp_path / "empty.fbin"), str(tmp_path / "i"), "--metric", "l2", "-q"])
    assert r.exit_code != 0 and r.stdout == "" and "file is empty" in r.stderr
