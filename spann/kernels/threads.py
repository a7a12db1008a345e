"""numba's thread count for a block of work."""

from __future__ import annotations

import numba
from threadpoolctl import threadpool_limits

__all__ = ["NumbaThreads", "BuildThreads"]


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
