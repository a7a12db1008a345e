"""Pages this process asked the kernel to read about a second ago or less: warm queries skip the ask.

A query requests all of its lists' pages at once (``madvise(WILLNEED)`` per run of pages, see
:func:`spann.io.postings.merge_page_runs`). When the index is in the page cache, those calls are
pure overhead: on GloVe-50 they were 0.03-0.09 ms of a 0.25 ms warm query. This table remembers
which pages were requested recently; a run whose every page was requested at most
:data:`WINDOW` epochs (quarter seconds) before the current one, i.e. within 1-1.25 s, is not
requested again. A page is stamped only when it is requested (not when a request is skipped),
so a page in use is re-requested about once a window: if something outside the index drops the
page cache, the cost is at most one window of synchronous page faults.
:meth:`spann.index.Index.evict` and closing a map forget everything, so a cold query after
them requests every page.

The table is direct-mapped and bounded (:data:`SLOTS` int64 entries, 512 KiB, shared by every
open index of the process; nothing per list or per vector): slot ``page % SLOTS`` holds
``page << 20 | epoch`` of the last page requested there, -1 if none. It covers 256 MiB of
distinct pages at a time; on a larger working set pages evict each other's slots and are simply
requested again (a collision only costs a request). Epochs are quarter seconds of the monotonic
clock modulo 2**20 (wrapping every ~3 days; pages are addresses / 4 KiB, < 2**43).
"""

from __future__ import annotations

import time

import numba
import numpy as np

__all__ = ["SLOTS", "WINDOW", "EPOCH_BITS", "RECENT", "NO_ADVICE", "epoch_now", "forget", "run_is_recent",
           "stamp_run"]

SLOTS = 1 << 16
WINDOW = 4              #: epochs (a quarter second each) a requested page counts as resident
EPOCH_BITS = 20
_EPOCH_MASK = (1 << EPOCH_BITS) - 1
NO_ADVICE = -1          #: the epoch argument that means "request nothing"
RECENT = np.full(SLOTS, -1, np.int64)


def epoch_now() -> int:
    """The current epoch (int in [0, 2**20)) to pass to the kernels that request pages."""
    return int(time.monotonic() * 4.0) & _EPOCH_MASK


def forget() -> None:
    """Treat every page as not resident (after the page cache was emptied or a map released)."""
    RECENT.fill(-1)


@numba.njit(cache=True, nogil=True, inline="always")
def run_is_recent(recent, a, b, epoch):
    """All pages a..b (inclusive) were requested at most WINDOW epochs before ``epoch``."""
    mask = recent.shape[0] - 1
    for p in range(a, b + 1):
        e = recent[p & mask]
        if e < 0 or (e >> EPOCH_BITS) != p or ((epoch - (e & _EPOCH_MASK)) & _EPOCH_MASK) > WINDOW:
            return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def stamp_run(recent, a, b, epoch):
    """Record that pages a..b were requested at ``epoch``."""
    mask = recent.shape[0] - 1
    for p in range(a, b + 1):
        recent[p & mask] = (p << EPOCH_BITS) | epoch
