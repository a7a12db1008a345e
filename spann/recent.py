"""Pages this process asked the kernel to read within the last second: warm queries skip the ask.

A query requests all of its lists' pages at once (``madvise(WILLNEED)`` per run of pages, see
:func:`spann.postings.merge_page_runs`). When the index is in the page cache, those calls are
pure overhead: on GloVe-50 they were 0.03-0.09 ms of a 0.25 ms warm query. This table remembers
which pages were requested recently; a run whose every page was requested within
:data:`WINDOW` epochs is not requested again. A page is stamped only when it is requested (not
when a request is skipped), so a page is re-requested at least once per window: if something
outside the index drops the page cache, the cost is at most one window of synchronous page faults.
:meth:`spann.index.Index.evict` forgets everything, so a cold query after it requests every page.

The table is direct-mapped and bounded (:data:`SLOTS` int64 entries, 512 KiB, shared by every
open index of the process; nothing per list or per vector): slot ``page % SLOTS`` holds
``page << 16 | epoch`` of the last page requested there, -1 if none. A collision only costs a
request. Epochs are quarter seconds of the monotonic clock, modulo 2**16.
"""

from __future__ import annotations

import time

import numba
import numpy as np

__all__ = ["SLOTS", "WINDOW", "RECENT", "NO_ADVICE", "epoch_now", "forget", "run_is_recent", "stamp_run"]

SLOTS = 1 << 16
WINDOW = 4              #: epochs (a quarter second each) a requested page counts as resident
NO_ADVICE = -1          #: the epoch argument that means "request nothing"
RECENT = np.full(SLOTS, -1, np.int64)


def epoch_now() -> int:
    """The current epoch (int in [0, 2**16)) to pass to the kernels that request pages."""
    return int(time.monotonic() * 4.0) & 0xFFFF


def forget() -> None:
    """Treat every page as not resident (after the page cache was emptied)."""
    RECENT.fill(-1)


@numba.njit(cache=True, nogil=True, inline="always")
def run_is_recent(recent, a, b, epoch):
    """All pages a..b (inclusive) were requested within WINDOW epochs of ``epoch``."""
    mask = recent.shape[0] - 1
    for p in range(a, b + 1):
        e = recent[p & mask]
        if e < 0 or (e >> 16) != p or ((epoch - (e & 0xFFFF)) & 0xFFFF) > WINDOW:
            return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def stamp_run(recent, a, b, epoch):
    """Record that pages a..b were requested at ``epoch``."""
    mask = recent.shape[0] - 1
    for p in range(a, b + 1):
        recent[p & mask] = (p << 16) | epoch
