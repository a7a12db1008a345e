import json
import logging

import pytest
from click.testing import CliRunner

from spann.bench.peers import PeerUnavailable, make_peer
from spann.bench.runner import run_bench, run_system, summary_table
from spann.cli.main import cli
from spann.datasets import prepare


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench") / "syn"
    prepare("synthetic", d, n=4000, dim=12, n_queries=40, progress=False)
    return d


def test_unknown_or_missing_peer_is_reported():
    with pytest.raises(PeerUnavailable, match="unknown algorithm"):
        make_peer("annoy-3000")


def test_run_system_in_process(small_dataset, tmp_path):
    res = run_system("spann", str(small_dataset), 10, 1, 1, 10, str(tmp_path),
                     sweep=[{"max_postings": 4}, {"max_postings": 64}])
    recs = res["records"]
    assert len(recs) == 2 and recs[1]["recall"] >= recs[0]["recall"] and recs[1]["recall"] > 0.9
    assert all(r["ram_bytes"] is not None and r["index_bytes"] > 0 and r["lists_read"] > 0 for r in recs)
    bf = run_system("bruteforce", str(small_dataset), 10, 1, 1, 5, str(tmp_path))
    assert bf["records"][0]["recall"] == 1.0


def test_run_bench_processes_and_skips(small_dataset, tmp_path, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="spann"):
        out = run_bench(["bruteforce", "nope"], str(small_dataset), latency_queries=5, runs=1, workdir=str(tmp_path))
    assert out[0]["records"][0]["recall"] == 1.0
    assert "unknown algorithm" in out[1]["skipped"]
    table = summary_table(out)
    assert "bruteforce" in table and "skipped" in table
    said = [r.getMessage() for r in caplog.records if r.name == "spann.bench.runner"]
    assert len(said) == 4 and said[0] == "[bench] bruteforce ..." and said[2] == "[bench] nope ..."
    assert said[1].startswith("[bench] bruteforce: built in") and said[3].startswith("[bench] nope: skipped: unknown")
    assert capfd.readouterr() == ("", "")  # logged, not printed


def test_cli_bench_reports_skipped_peer(small_dataset, tmp_path):
    r = CliRunner().invoke(cli, ["bench", str(small_dataset), "--algorithms", "spann,diskann", "--latency-queries", "5",
                                 "--runs", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "spann" in r.output and "0.90" in r.output
    lines = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert any(line.get("system") == "diskann" and ("skipped" in line or "records" in line or "failed" in line)
               for line in lines)
    assert (tmp_path / "o" / "summary.txt").exists()


@pytest.mark.parametrize("name", ["faiss-ivfpqfs", "faiss-ivf-rabitq"])
def test_faiss_compressed_peers_refine_to_high_recall(small_dataset, tmp_path, name):
    pytest.importorskip("faiss")
    res = run_system(name, str(small_dataset), 10, 1, 1, 5, str(tmp_path), peer_kwargs={"nlist": 32},
                     sweep=[{"nprobe": 1, "k_factor": 1}, {"nprobe": 32, "k_factor": 20}])
    lo, hi = res["records"]
    assert hi["recall"] >= 0.95 and hi["recall"] > lo["recall"]


def test_diskann_under_a_wrong_interpreter_fails_in_one_line(small_dataset, tmp_path):
    import sys

    from spann.bench.runner import run_diskann
    res = run_diskann(sys.executable, str(small_dataset), 10, 5, str(tmp_path))  # no diskannpy here
    assert "records" not in res and "\n" not in res["failed"] and "diskann runner" in res["failed"]
    res = run_diskann(str(tmp_path / "no-python"), str(small_dataset), 10, 5, str(tmp_path))
    assert "cannot run" in res["skipped"]


_FAKE_DISKANNPY = '''
import os
import numpy as np

def build_disk_index(data, distance_metric, index_directory, **kw):
    np.save(os.path.join(index_directory, "fake_base.npy"), data)
    open(os.path.join(index_directory, "ann_disk.index"), "wb").close()

class StaticDiskIndex:
    def __init__(self, index_directory, num_threads, num_nodes_to_cache):
        if os.environ.get("FAKE_DISKANN_BROKEN"):
            raise ValueError("index file is corrupt")
        self.x = np.load(os.path.join(index_directory, "fake_base.npy"))
        self.calls = 0

    def search(self, q, k_neighbors, complexity, beam_width):
        self.calls += 1  # the runner's untimed warm-up query is call 1
        if self.calls == int(os.environ.get("FAKE_DISKANN_DIE_AT", "0")):
            os._exit(9)
        d = ((self.x - q) ** 2).sum(1)
        ids = np.argsort(d)[:k_neighbors].astype(np.uint32)
        return ids, d[ids]
'''


def test_diskann_server_answers_blocks_of_queries(small_dataset, tmp_path, monkeypatch):
    """The pipe protocol bench_disk.py interleaves DiskANN with: a stand-in diskannpy (exact search)
    under the runner, so every block must come back with the dataset's exact neighbours."""
    import sys

    from spann.bench.runner import DiskANNServer
    from spann.datasets import load
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "diskannpy.py").write_text(_FAKE_DISKANNPY)
    monkeypatch.setenv("PYTHONPATH", str(fake))
    gt, _ = load(small_dataset).load_gt()
    with DiskANNServer(sys.executable, str(small_dataset), 10, str(tmp_path / "dk")) as server:
        # built here, so the runner reports a build (its duration is a benchmark figure, not checked)
        assert "build_seconds" in server.facts and server.facts["index_bytes"] > 0
        for rows in ([0, 5, 9], [39], list(range(10, 30))):
            lat, ids = server.search(16, rows)
            assert lat.shape == (len(rows),) and (lat > 0).all()
            assert ids.shape == (len(rows), 10) and (ids == gt[rows, :10]).all()
    assert server.returncode == 0
    # the index is reused (no build_seconds); the runner dies on its 5th search (the 4th timed one),
    # in the middle of a block: one line with its exit code, not a broken pipe or a hang
    monkeypatch.setenv("FAKE_DISKANN_DIE_AT", "5")
    with DiskANNServer(sys.executable, str(small_dataset), 10, str(tmp_path / "dk"),
                       log=str(tmp_path / "dk.log")) as server:
        assert "build_seconds" not in server.facts and server.facts["index_bytes"] > 0
        server.search(16, [0, 1])
        with pytest.raises(RuntimeError, match=r"^diskann runner \(exit 9\)"):
            server.search(16, [2, 3, 4])
        with pytest.raises(RuntimeError, match=r"^diskann runner \(exit 9\)"):
            server.search(16, [5])  # asked again after its death: the same line
    assert server.returncode == 9 and (tmp_path / "dk.log").exists()
    monkeypatch.delenv("FAKE_DISKANN_DIE_AT")
    with DiskANNServer(sys.executable, str(small_dataset), 10, str(tmp_path / "dk")) as server:
        server._proc.kill()  # gone between two requests: the write meets a broken pipe
        server._proc.wait()
        with pytest.raises(RuntimeError, match=r"^diskann runner \(exit -9\)"):
            server.search(16, list(range(40)) * 200)
    monkeypatch.setenv("FAKE_DISKANN_BROKEN", "1")
    with pytest.raises(RuntimeError, match=r"diskann runner \(exit 1\): ValueError: index file is corrupt$"):
        DiskANNServer(sys.executable, str(small_dataset), 10, str(tmp_path / "dk"))


def test_block_turns_give_every_configuration_every_query_and_vary_who_goes_first():
    from spann.bench.runner import block_turns
    n_runs, seen, first, after = 6, [], [], set()
    for s, e, order in block_turns(2003, 10, n_runs, seed=3):
        assert sorted(order.tolist()) == list(range(n_runs))
        seen.append((s, e))
        first.append(int(order[0]))
        after.update(zip(order[:-1].tolist(), order[1:].tolist()))
    assert seen[0] == (0, 10) and seen[-1] == (2000, 2003)
    assert all(b[0] == a[1] for a, b in zip(seen, seen[1:]))  # blocks tile the queries
    assert set(first) == set(range(n_runs))  # every configuration opens some block
    assert len(after) > n_runs  # a rotated cycle would give only n_runs successor pairs


def test_summary_does_not_round_a_missed_target_up_to_it():
    """A best recall of 0.98989 misses 0.99: the summary says 0.9898, not 0.990."""
    recs = [{"system": "s", "params": {"m": m}, "k": 10, "recall": r, "latency_mean_ms": 1.0 + m}
            for m, r in ((1, 0.9), (2, 0.98989))]
    table = summary_table([{"system": "s", "records": recs, "build_seconds": 1.0}])
    line = next(ln for ln in table.splitlines() if ln.split()[:2] == ["s", "0.99"])
    assert "not reached; best recall 0.9898" in line
    assert any(ln.split()[:3] == ["s", "0.95", "0.990"] for ln in table.splitlines())  # reached: the point's recall
