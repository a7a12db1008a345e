"""Run several ANN systems on one dataset in one invocation, each in its own child process.

Each system is built ("fit") and swept in a fresh spawned process, so its memory is measured
the same way for everyone: growth of the child's anonymous RSS from just before ``fit`` to the
end of its sweep (index + search structures, not the interpreter or the loaded queries). Same
data, same k, same thread count, single-query latencies on the same queries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import select
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spann.bench import diskann_runner
from spann.bench.peers import PeerUnavailable, make_peer
from spann.datasets import load
from spann.tools.eval import EvalRecord, operating_point, recall_at_k

__all__ = ["run_system", "run_bench", "run_diskann", "DiskANNServer", "block_turns", "summary_table", "rss_anon_bytes"]

logger = logging.getLogger(__name__)


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (RssAnon, bytes): heap and arrays, not mapped files."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _measure(peer, queries: np.ndarray, gt: np.ndarray, k: int, point: dict[str, Any], threads: int, runs: int,
             latency_queries: int, cold: bool) -> EvalRecord:
    peer.set_query_arguments(**point)
    peer.batch_query(queries[: min(256, len(queries))], k, threads)  # warm-up
    best, ids = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        ids = peer.batch_query(queries, k, threads)
        best = min(best, time.perf_counter() - t)
    extra = peer.get_additional()
    rec = recall_at_k(np.asarray(ids), gt, k)
    nl = min(latency_queries, len(queries))
    peer.query(queries[0], k)
    lat = np.empty(nl)
    for j, i in enumerate(np.linspace(0, len(queries) - 1, num=nl).astype(np.int64)):
        if cold:
            peer.index.evict()
        t = time.perf_counter()
        peer.query(queries[i], k)
        lat[j] = time.perf_counter() - t
    lat *= 1e3
    if cold:
        extra = peer.get_additional() or extra
    return EvalRecord(system=peer.name + ("-cold" if cold else ""), params=dict(point), k=k, recall=rec,
                      latency_mean_ms=float(lat.mean()), latency_p50_ms=float(np.median(lat)),
                      latency_p95_ms=float(np.percentile(lat, 95)), latency_p99_ms=float(np.percentile(lat, 99)),
                      qps=len(queries) / best, threads=threads, lists_read=extra.get("lists_read"),
                      kib_read=extra.get("kib_read"), distance_evals=extra.get("distance_evals"), cold=cold)


def run_system(name: str, dataset: str, k: int, threads: int, runs: int, latency_queries: int, workdir: str,
               peer_kwargs: dict[str, Any] | None = None, sweep: Sequence[dict[str, Any]] | None = None,
               cold_queries: int = 0) -> dict[str, Any]:
    """Fit and sweep one system in this process; returns a plain dict (records as dicts)."""
    out: dict[str, Any] = {"system": name}
    try:
        peer = make_peer(name, **(peer_kwargs or {}))
    except PeerUnavailable as e:
        return {**out, "skipped": str(e)}
    m = load(dataset)
    q = m.load_queries()
    gt, _ = m.load_gt()
    work = Path(workdir) / name
    work.mkdir(parents=True, exist_ok=True)
    peer.warm_up(work)
    base_rss = rss_anon_bytes()
    t = time.perf_counter()
    peer.fit(str(m.path("base")), m.metric, work)
    out["build_seconds"] = time.perf_counter() - t
    import resource  # POSIX only: Windows has no resource module
    out["build_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    recs = [_measure(peer, q, gt, k, p, threads, runs, latency_queries, False) for p in (sweep or peer.sweep())]
    if cold_queries and name == "spann":
        cs = np.linspace(0, len(q) - 1, num=min(cold_queries, len(q))).astype(np.int64)
        for p in (sweep or peer.sweep()):
            recs.append(_measure(peer, q[cs], gt[cs], k, {**p, "prefetch": True}, threads, 1, len(cs), True))
    ram = rss_anon_bytes() - base_rss
    disk = peer.index_bytes()
    for r in recs:
        r.ram_bytes = ram
        r.index_bytes = disk
        r.extra["build_seconds"] = out["build_seconds"]
    out["records"] = [r.to_dict() for r in recs]
    peer.done()
    return out


def run_diskann(python: str, dataset: str, k: int, latency_queries: int, workdir: str,
                sweep: str = "10,16,20,30,40,60,80", extra_args: Sequence[str] = (),
                index_dir: str | None = None) -> dict[str, Any]:
    """DiskANN built and measured by :mod:`spann.bench.diskann_runner` under another interpreter
    (``python``: a venv with numpy==1.25.* and diskannpy==0.7.0). Every DiskANN query reads with
    O_DIRECT, so its records are cold ones. The index is built in ``index_dir`` (default
WORKDIR/diskann) unless one is there. Returns a :func:`run_system`-shaped dict."""
    m = load(dataset)
    wd = Path(index_dir) if index_dir else Path(workdir) / "diskann"
    cmd = [python, diskann_runner.__file__, "--base", str(m.path("base")), "--queries", str(m.path("queries")),
           "--gt", str(m.path("gt")), "--workdir", str(wd), "--metric", m.metric, "--k", str(k), "--sweep", sweep,
           "--latency-queries", str(latency_queries), *extra_args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        return {"system": "diskann", "skipped": f"cannot run {python}: {e.strerror}"}
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1:] or [f"exit code {res.returncode}"]
        return {"system": "diskann", "failed": f"diskann runner: {tail[0]}", "traceback": res.stderr[-4000:]}
    dk = json.loads(res.stdout)
    recs = [EvalRecord(system="diskann-cold", params={**dk["params"], **r["params"]}, k=k, recall=r["recall"],
                       latency_mean_ms=r["latency_mean_ms"], latency_p50_ms=r["latency_p50_ms"],
                       latency_p99_ms=r["latency_p99_ms"], index_bytes=dk["index_bytes"], cold=True,
                       extra={"build_seconds": dk.get("build_seconds")}).to_dict() for r in dk["records"]]
    return {"system": "diskann", "build_seconds": dk.get("build_seconds") or float("nan"), "records": recs,
            "pq_bytes_per_vector": dk.get("pq_bytes_per_vector")}


class DiskANNServer:
    """DiskANN answering single queries on request, in its own interpreter
    (:mod:`spann.bench.diskann_runner` ``--serve``), so a benchmark can interleave its queries with
    another system's block by block instead of measuring the two an hour apart on a shared disk.

    ``python`` is a venv with numpy==1.25.* and diskannpy==0.7.0; ``dataset`` a prepared dataset
    directory (its queries file is what :meth:`search`'s rows index); ``k`` the neighbours per
    query; ``extra_args`` more runner options (``--pq-bytes``, ``--beam``, ...). The index is built
    in ``index_dir`` unless one is there. ``facts`` holds ``index_bytes``, ``pq_bytes_per_vector``,
    ``params`` and, when it was built here, ``build_seconds``. The runner's own output goes to
    ``log`` (a path; a temporary file if None). Latencies are timed inside the runner, around each
    ``search`` call, so the pipe is not in them. Raises RuntimeError (one line, with the runner's
    exit code and last message) when the runner cannot start, dies, or does not answer a request
    within ``timeout`` seconds."""

    def __init__(self, python: str, dataset: str, k: int, index_dir: str, extra_args: Sequence[str] = (),
                 log: str | None = None, timeout: float = 600.0) -> None:
        m = load(dataset)
        cmd = [python, diskann_runner.__file__, "--serve", "--base", str(m.path("base")),
               "--queries", str(m.path("queries")), "--gt", str(m.path("gt")), "--workdir", str(index_dir),
               "--metric", m.metric, "--k", str(k), *extra_args]
        # the runner's chatter goes to a file: a pipe left unread would block it
        self._log = open(log, "w+b") if log else tempfile.TemporaryFile("w+b")
        self.timeout = timeout
        self.returncode: int | None = None
        self._tail = ""
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                          text=True, bufsize=1)
        except OSError as e:
            self._log.close()
            raise RuntimeError(f"cannot run {python}: {e.strerror}") from None
        self.facts: dict[str, Any] = self._reply(timeout=None)  # a build may take an hour

    def _died(self, why: str = "") -> RuntimeError:
        """Stop the runner and say why in one line: its exit code and the last line it logged."""
        if self._proc.poll() is None:
            self._proc.kill()
        self.close()
        return RuntimeError(f"diskann runner (exit {self.returncode}{why}): {self._tail or 'no message'}")

    def _reply(self, timeout: float | None) -> dict[str, Any]:
        if timeout is not None:
            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            if not ready:
                raise self._died(f", no answer in {timeout:g} s")
        line = self._proc.stdout.readline()
        if not line.endswith("\n"):  # end of file, or a reply cut short by the runner's death
            raise self._died()
        return json.loads(line)

    def search(self, L: int, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the dataset's queries, one at a time with search list size ``L``: their
        latencies (float64 ms, shape (len(rows),)) and ids (int64, shape (len(rows), k))."""
        if self._log.closed:  # closed, or died on an earlier request: the same line again
            raise RuntimeError(f"diskann runner (exit {self.returncode}): {self._tail or 'closed'}")
        try:
            self._proc.stdin.write(json.dumps({"L": int(L), "rows": [int(r) for r in rows]}) + "\n")
            self._proc.stdin.flush()
        except OSError:  # the runner is gone (BrokenPipeError)
            raise self._died() from None
        r = self._reply(self.timeout)
        return np.asarray(r["latency_ms"], np.float64), np.asarray(r["ids"], np.int64)

    def close(self) -> None:
        """End the runner (it exits when its stdin closes), reap it and close the pipes and log;
        ``returncode`` is then its exit status. Idempotent."""
        if self._log.closed:
            return
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self.returncode = self._proc.returncode
        self._log.seek(0)
        lines = self._log.read().decode("utf-8", "replace").strip().splitlines()
        self._tail = lines[-1].strip() if lines else ""
        self._log.close()

    def __enter__(self) -> "DiskANNServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def block_turns(n_queries: int, block: int, n_runs: int, seed: int = 0):
    """Turns for configurations that share a query sample: yields ``(start, end, order)`` per block
    of ``block`` queries, ``order`` a permutation of ``range(n_runs)`` (int64, shape (n_runs,)),
    drawn anew per block from ``seed``, so the first query after a switch between configurations
    (cold CPU caches, another process waking up) and a shared machine's drift within a block fall on
    every configuration alike. A fixed cycle, rotated, would always put the same configuration
    after the same other one."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_queries, block):
        yield start, min(start + block, n_queries), rng.permutation(n_runs)


def _child(conn, args: tuple, kwargs: dict, quiet: bool = False) -> None:
    os.dup2(2, 1)  # a peer's C++ chatter (faiss "resizing ...") must not reach the parent's stdout
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    try:
        conn.send(run_system(*args, **kwargs))
    except BaseException as e:  # report, never hang the parent
        conn.send({"system": args[0], "failed": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    finally:
        conn.close()


def run_bench(algorithms: Sequence[str], dataset: str, *, k: int = 10, threads: int = 1, runs: int = 3,
              latency_queries: int = 2000, workdir: str = "bench-work", cold_queries: int = 0,
              peer_kwargs: dict[str, dict[str, Any]] | None = None, diskann_python: str | None = None,
              quiet: bool = True) -> list[dict[str, Any]]:
    """Each algorithm in its own spawned process, one after another; returns their results.
    With ``diskann_python``, DiskANN runs under that interpreter (see :func:`run_diskann`).
    Each system's start and outcome are logged (INFO) to the ``spann.bench.runner`` logger;
    ``quiet=False`` lets the child processes' own output (a peer's C++ messages) through to
    stderr."""
    ctx = mp.get_context("spawn")
    results = []
    for name in algorithms:
        logger.info("[bench] %s ...", name)
        if name == "diskann" and diskann_python:
            res = run_diskann(diskann_python, dataset, k, latency_queries, workdir)
            _log_result(name, res)
            results.append(res)
            continue
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(child, (name, dataset, k, threads, runs, latency_queries, workdir),
                                             {"peer_kwargs": (peer_kwargs or {}).get(name),
                                              "cold_queries": cold_queries}, quiet))
        p.start()
        child.close()
        try:
            res = parent.recv()
        except EOFError:
            res = {"system": name, "failed": f"process died (exit code {p.exitcode})"}
        p.join()
        _log_result(name, res)
        results.append(res)
    return results


def _log_result(name: str, res: dict[str, Any]) -> None:
    if "skipped" in res:
        logger.info("[bench] %s: skipped: %s", name, res["skipped"])
    elif "failed" in res:
        logger.warning("[bench] %s: FAILED: %s", name, res["failed"])
    else:
        logger.info("[bench] %s: built in %.1fs, %d operating points", name, res["build_seconds"],
                    len(res["records"]))


def summary_table(results: Sequence[dict[str, Any]], targets: Sequence[float] = (0.90, 0.95, 0.99)) -> str:
    """Operating points per system at each recall target: the lowest mean latency reaching it."""
    names = set(EvalRecord.__dataclass_fields__)
    lines = [f"{'system':<18} {'target':>6} {'recall':>7} {'params':<24} {'p50 ms':>8} {'mean ms':>8} {'p99 ms':>8} "
             f"{'QPS':>9} {'RAM MiB':>8} {'disk MiB':>9} {'build s':>8}"]
    for res in results:
        if "records" not in res:
            lines.append(f"{res['system']:<18} {'skipped' if 'skipped' in res else 'failed'}: "
                         f"{res.get('skipped') or res.get('failed')}")
            continue
        recs = [EvalRecord(**{k_: v for k_, v in r.items() if k_ in names}) for r in res["records"]]
        for system in dict.fromkeys(r.system for r in recs):
            mine = [r for r in recs if r.system == system]
            for tgt in targets:
                op = operating_point(mine, tgt)
                if op is None:  # rounded down: 0.98989 is not shown as the 0.990 it missed
                    best = np.floor(max(r.recall for r in mine) * 1e4) / 1e4
                    lines.append(f"{system:<18} {tgt:>6.2f}   (not reached; best recall {best:.4f})")
                    continue
                params = ",".join(f"{k_}={v}" for k_, v in op.params.items() if k_ != "prefetch")
                disk = "-" if op.index_bytes is None else f"{op.index_bytes / 2**20:.0f}"
                ram = "-" if op.ram_bytes is None else f"{op.ram_bytes / 2**20:.1f}"
                lines.append(f"{system:<18} {tgt:>6.2f} {op.recall:>7.3f} {params:<24} {op.latency_p50_ms:>8.3f} "
                             f"{op.latency_mean_ms:>8.3f} {op.latency_p99_ms:>8.3f} {op.qps:>9,.0f} {ram:>8} {disk:>9} "
                             f"{res['build_seconds']:>8.1f}")
    return "\n".join(lines)
