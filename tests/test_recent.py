"""The table of pages requested lately (spann.recent): windows, collisions, and its use by search."""

import numpy as np

from spann import recent
from spann.postings import merge_page_runs


def _table():
    return np.full(1 << 8, -1, np.int64)


def test_window_and_wraparound():
    t = _table()
    recent.stamp_run(t, 10, 12, 65534)
    assert recent.run_is_recent(t, 10, 12, 65534)
    assert recent.run_is_recent(t, 10, 12, (65534 + recent.WINDOW) & 0xFFFF)  # across the epoch wrap
    assert not recent.run_is_recent(t, 10, 12, (65534 + recent.WINDOW + 1) & 0xFFFF)
    assert not recent.run_is_recent(t, 10, 13, 65534)  # page 13 never requested
    assert not recent.run_is_recent(t, 9, 12, 65534)


def test_collision_is_not_resident():
    t = _table()
    recent.stamp_run(t, 5, 5, 7)
    recent.stamp_run(t, 5 + t.shape[0], 5 + t.shape[0], 7)  # same slot, another page: replaces it
    assert not recent.run_is_recent(t, 5, 5, 7)
    assert recent.run_is_recent(t, 5 + t.shape[0], 5 + t.shape[0], 7)


def test_merge_counts_pages_whatever_is_skipped():
    """Skipping a recent run changes the requests made, never the pages counted."""
    t = _table()
    first = np.array([100, 103, 200], np.int64)
    last = np.array([101, 104, 201], np.int64)
    n = merge_page_runs(first, last, 3, t, -1)
    assert n == 2 + 1 + 2 + 2  # 100-104 bridged over page 102 (BRIDGE_PAGES 1), then 200-201
    assert np.all(t == -1)  # -1: nothing requested, nothing stamped
    # 0 is an address no file is mapped at: madvise fails with ENOMEM there, harmlessly
    assert merge_page_runs(first, last, 3, t, 3) == n
    assert recent.run_is_recent(t, 100, 104, 3) and recent.run_is_recent(t, 200, 201, 3)
    assert merge_page_runs(first, last, 3, t, 4) == n


def test_search_stamps_pages_and_evict_forgets(synth_index, synth):
    _, q, *_ = synth
    idx = synth_index
    recent.forget()
    before = idx.search(q[0], 10)
    assert np.count_nonzero(recent.RECENT >= 0) > 0  # the query's list pages were requested
    again = idx.search(q[0], 10)  # within the window: nothing requested, same answer
    np.testing.assert_array_equal(before.ids, again.ids)
    idx.evict()
    assert np.all(recent.RECENT == -1)
    cold = idx.search(q[0], 10)
    np.testing.assert_array_equal(before.ids, cold.ids)
    off = idx.search(q[0], 10, prefetch=False)
    np.testing.assert_array_equal(before.ids, off.ids)


def test_preload_maps_every_page_and_stops_requests(synth_index, synth):
    import resource
    _, q, *_ = synth
    idx = synth_index
    want = idx.search(q[:20], 10).ids
    idx.evict()
    idx.preload()
    recent.forget()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    got = np.stack([idx.search(v, 10).ids[0] for v in q[:20]])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    np.testing.assert_array_equal(got, want)
    assert np.all(recent.RECENT == -1)  # preloaded: no page was requested
    assert faults < 20  # every list page already mapped (a few faults from Python's own heap)
    idx.evict()  # back to requesting pages
    idx.search(q[0], 10)
    assert np.count_nonzero(recent.RECENT >= 0) > 0
