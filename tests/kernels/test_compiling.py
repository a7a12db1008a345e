"""compiling(): what numba is compiling right now, seen from another thread."""

import threading
import time

import numba
import numpy as np

from spann.kernels.compiling import compiling, watch_compiles


def test_a_compile_is_seen_while_it_runs_and_not_after():
    watch_compiles()
    watch_compiles()  # idempotent: one listener

    @numba.njit
    def fresh_kernel(x):  # not cached: compiles on the first call
        s = 0.0
        for i in range(x.shape[0]):
            s += np.sin(x[i]) * np.cos(x[i])
        return s

    seen = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            now = compiling()
            if now is not None:
                seen.append(now)
            time.sleep(0.0005)

    t = threading.Thread(target=poll)
    t.start()
    try:
        fresh_kernel(np.arange(10.0))
    finally:
        done.set()
        t.join()
    assert seen, "the compile was never seen"
    assert any("fresh_kernel" in c.kernel for c in seen)
    assert all(c.seconds >= 0 for c in seen)
    assert compiling() is None
    fresh_kernel(np.arange(5.0))  # compiled already: no compile under way afterwards either
    assert compiling() is None
