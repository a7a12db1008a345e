import os

import pytest

from spann.kernels import threads as T


def test_batch_threads_takes_given_counts_and_one_for_a_single_query():
    assert T.batch_threads(None, 1) == 1 and T.batch_threads(4, 1) == 1
    assert T.batch_threads(3, 1000) == 3


@pytest.mark.parametrize("others, want", [(0, 4), (1, 3), (1.4, 3), (2.6, 1), (7, 1)])
def test_idle_cores_is_the_cpus_no_other_process_runs_on(monkeypatch, others, want):
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(T.os, "cpu_count", lambda: 4)
    seq = iter([others * 2, 0])  # two samples averaging `others`
    monkeypatch.setattr(T, "_runnable_others", lambda: next(seq))
    assert T.idle_cores(samples=2, interval=0) == want
    monkeypatch.setattr(T, "_runnable_others", lambda: 0)
    assert T.batch_threads(None, 1000) == 4


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="Linux /proc only")
def test_idle_cores_reads_this_machine():
    got = T.idle_cores()
    assert 1 <= got <= len(os.sched_getaffinity(0))
    assert T._own_running() >= 1  # this thread


def test_idle_cores_gives_up_when_this_process_has_only_some_cpus(monkeypatch):
    """/proc/loadavg counts every CPU's tasks: with a cpuset it cannot tell our cores' load."""
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(T.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(T, "_runnable_others", lambda: 40)
    assert T.idle_cores() is None
    assert T.batch_threads(None, 1000) == T.numba.config.NUMBA_NUM_THREADS
