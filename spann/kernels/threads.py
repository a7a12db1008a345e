"""numba's thread count for a block of work."""

from __future__ import annotations

import os
import time

import numba
from threadpoolctl import threadpool_limits

__all__ = ["NumbaThreads", "BuildThreads", "idle_cores", "batch_threads"]


def idle_cores(samples: int = 4, interval: float = 0.00025) -> int | None:
    """The cores this process may use that no other runnable task holds right now: the CPUs of
    its affinity mask minus the mean count of runnable tasks of other processes over ``samples``
    reads of /proc/loadavg less this process's own running threads (numba's workers may still
    spin after a parallel step), ``interval`` seconds apart; at least 1. None where there is no
    /proc/loadavg, or where this process may use only some of the machine's CPUs (a cpuset,
    taskset, a container: /proc/loadavg counts the tasks of every CPU)."""
    try:
        cpus = len(os.sched_getaffinity(0))
        if cpus != os.cpu_count():
            return None
        others = 0
        for i in range(samples):
            others += _runnable_others()
            if i + 1 < samples:
                time.sleep(interval)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(1, min(cpus, round(cpus - others / samples)))


def _runnable_others() -> int:
    """Runnable tasks of other processes now: /proc/loadavg's count less this process's own."""
    with open("/proc/loadavg") as fh:
        return int(fh.read().split()[3].split("/")[0]) - _own_running()


def _own_running() -> int:
    """Threads of this process in state R (running or runnable), this one included."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                n += fh.read().rpartition(")")[2].split()[0] == "R"
        except OSError:  # the thread ended
            pass
    return max(n, 1)


def batch_threads(threads: int | None, nq: int) -> int:
    """Threads for a batch of ``nq`` queries: ``threads`` when given (> 0), else the idle cores
    (a batch on a core another process holds waits for it at every parallel step), or numba's
    thread count where the idle cores cannot be told."""
    if nq <= 1:
        return 1
    if threads:
        return threads
    idle = idle_cores(4 if nq >= 256 else 1)
    return idle if idle is not None else numba.config.NUMBA_NUM_THREADS


class NumbaThreads:
    """Set numba's thread count for a ``with`` block (``n``: None/0 = all cores) and restore it
    after; entering returns the count in use."""

    def __init__(self, n: int | None):
        self.n = max(1, min(n or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS))

    def __enter__(self) -> int:
        self.old = numba.get_num_threads()
        numba.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc) -> None:
        numba.set_num_threads(self.old)


class BuildThreads(NumbaThreads):
    """:class:`NumbaThreads` for a build, with BLAS held to one thread: a BLAS product's
    rounding depends on how many threads split it, and k-means and the head graph must come
    out the same on every machine and every worker of a cluster (same seed, same index).
    The build's parallel work is numba's; BLAS threads bought nothing measurable."""

    def __enter__(self) -> int:
        self._blas = threadpool_limits(1)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._blas.restore_original_limits()
