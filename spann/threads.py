"""numba's thread count for a block of work."""

from __future__ import annotations

import numba

__all__ = ["NumbaThreads"]


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
