"""Kill -9 half-way through a memory-limited build, resume it, compare with an uninterrupted build.

Builds BASE twice with ``spann build --memory-limit LIMIT`` in child processes: once straight
through (timed; peak RSS of the whole child from getrusage), once killed with SIGKILL at
``--kill-at`` of that time and rerun with ``--resume``. Checks that nothing opens as an index
before the resumed build completes, and that both indexes return the same ids for queries
(base rows plus small noise). Prints one JSON record.

Usage:
    spann datasets prepare synthetic /scratch/syn2m --n 2000000 --dim 128 --dtype uint8
    python benchmarks/bench_resume.py /scratch/syn2m/base.u8bin --memory-limit 1G --work /scratch/resume
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-c", "import sys; from spann.cli.main import cli; cli(sys.argv[1:])"]


def build(base: str, target: Path, limit: str, resume: bool = False) -> subprocess.Popen:
    cmd = CLI + ["build", base, str(target), "--metric", "l2", "--memory-limit", limit, "-q"]
    return subprocess.Popen(cmd + (["--resume"] if resume else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("--memory-limit", default="1G")
    ap.add_argument("--kill-at", type=float, default=0.5, help="fraction of the straight build's time")
    ap.add_argument("--work", default="bench-out/resume")
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ref, res = work / "straight.spann", work / "resumed.spann"
    t = time.perf_counter()
    p = build(a.base, ref, a.memory_limit)
    _, status, ru = os.wait4(p.pid, 0)
    straight_s = time.perf_counter() - t
    assert os.waitstatus_to_exitcode(status) == 0, "straight build failed"
    peak = ru.ru_maxrss * 1024
    p = build(a.base, res, a.memory_limit)
    time.sleep(straight_s * a.kill_at)
    p.send_signal(signal.SIGKILL)
    p.wait()
    opened_early = res.exists()
    leftovers = [e for e in os.listdir(work) if e.startswith(".resumed.spann.building-")]
    t = time.perf_counter()
    p = build(a.base, res, a.memory_limit, resume=True)
    _, status, ru2 = os.wait4(p.pid, 0)
    resume_s = time.perf_counter() - t
    assert os.waitstatus_to_exitcode(status) == 0, "resumed build failed"
    import spann
    from spann.datasets.formats import open_vectors
    with open_vectors(a.base) as vf:
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(vf), a.queries, replace=False))
        q = np.clip(vf.take(rows).astype(np.float32) + rng.normal(0, 2, (a.queries, vf.shape[1])), 0,
                    255).astype(np.float32)
    with spann.open(ref) as i1, spann.open(res) as i2:
        r1, r2 = i1.search(q, 10), i2.search(q, 10)
        stats = i2.attrs["stats"]
        rec = {"base": a.base, "memory_limit": a.memory_limit, "straight_s": round(straight_s, 1),
               "straight_peak_rss_mib": round(peak / 2**20), "killed_after_s": round(straight_s * a.kill_at, 1),
               "index_existed_before_resume": opened_early, "leftover_build_dirs": len(leftovers),
               "resume_s": round(resume_s, 1), "resume_peak_rss_mib": round(ru2.ru_maxrss / 1024),
               "resumed": stats["resumed"], "same_ids": bool(np.array_equal(r1.ids, r2.ids)),
               "same_dists": bool(np.allclose(r1.distances, r2.distances))}
    print(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
