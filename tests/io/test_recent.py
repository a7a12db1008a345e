"""The table of pages requested lately (spann.io.recent), and Index.preload."""

import resource

import numpy as np
import pytest

import spann
from spann.io import osio, recent
from spann.io.postings import merge_page_runs

WRAP = 1 << recent.EPOCH_BITS


def _table():
    return np.full(1 << 8, -1, np.int64)


def _faults() -> int:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_minflt + u.ru_majflt


def test_window_and_wraparound():
    t = _table()
    last = WRAP - 2
    recent.stamp_run(t, 10, 12, last)
    assert recent.run_is_recent(t, 10, 12, last)
    assert recent.run_is_recent(t, 10, 12, (last + recent.WINDOW) % WRAP)  # across the epoch wrap
    assert not recent.run_is_recent(t, 10, 12, (last + recent.WINDOW + 1) % WRAP)
    assert not recent.run_is_recent(t, 10, 13, last)  # page 13 never requested
    assert not recent.run_is_recent(t, 9, 12, last)
    assert 0 <= recent.epoch_now() < WRAP


def test_collision_is_not_resident():
    t = _table()
    recent.stamp_run(t, 5, 5, 7)
    recent.stamp_run(t, 5 + t.shape[0], 5 + t.shape[0], 7)  # same slot, another page: replaces it
    assert not recent.run_is_recent(t, 5, 5, 7)
    assert recent.run_is_recent(t, 5 + t.shape[0], 5 + t.shape[0], 7)


def test_merge_skips_recent_runs_and_counts_every_page():
    """A run requested lately is not requested (nor re-stamped) again; pages are counted alike."""
    t = _table()
    first = np.array([100, 103, 200], np.int64)
    last = np.array([101, 104, 201], np.int64)
    n = merge_page_runs(first, last, 3, t, -1)
    assert n == 2 + 1 + 2 + 2  # 100-104 bridged over page 102 (BRIDGE_PAGES 1), then 200-201
    assert np.all(t == -1)  # -1: nothing requested, nothing stamped
    # pages 100.. x 4096 are not mapped in this process: madvise fails there, harmlessly
    assert merge_page_runs(first, last, 3, t, 3) == n
    stamped = t.copy()
    assert recent.run_is_recent(t, 100, 104, 3) and recent.run_is_recent(t, 200, 201, 3)
    assert merge_page_runs(first, last, 3, t, 4) == n
    np.testing.assert_array_equal(t, stamped)  # skipped: still stamped at epoch 3
    assert merge_page_runs(first, last, 3, t, 3 + recent.WINDOW + 1) == n
    assert not np.array_equal(t, stamped)  # out of the window: requested again


def test_search_stamps_pages_and_evict_forgets(synth_index, synth):
    _, q, *_ = synth
    idx = synth_index
    idx.evict()
    before = idx.search(q[0], 10)
    assert np.count_nonzero(recent.RECENT >= 0) > 0  # the query's list pages were requested
    stamped = recent.RECENT.copy()
    again = idx.search(q[0], 10)  # within the window: nothing requested, same answer
    np.testing.assert_array_equal(before.ids, again.ids)
    if recent.epoch_now() - (stamped[stamped >= 0] & (WRAP - 1)).max() < recent.WINDOW:
        np.testing.assert_array_equal(recent.RECENT, stamped)
    idx.evict()
    assert np.all(recent.RECENT == -1)
    cold = idx.search(q[0], 10)
    np.testing.assert_array_equal(before.ids, cold.ids)
    off = idx.search(q[0], 10, prefetch=False)
    np.testing.assert_array_equal(before.ids, off.ids)


def _searches_fault(idx, q) -> int:
    f0 = _faults()
    for v in q:
        idx.search(v, 10)
    return _faults() - f0


def test_preload_maps_every_page_and_stops_requests(synth_index, synth):
    _, q, *_ = synth
    idx = synth_index
    want = idx.search(q[:20], 10).ids
    idx.search(q[0], 10)  # the single-query path's own first-call allocations, out of the count
    idx.evict()
    assert _searches_fault(idx, q[:20]) > 50  # without preload: every list page faults in
    idx.evict()
    idx.preload()
    recent.forget()
    faults = _searches_fault(idx, q[:20])
    got = np.stack([idx.search(v, 10).ids[0] for v in q[:20]])
    np.testing.assert_array_equal(got, want)
    assert np.all(recent.RECENT == -1)  # preloaded: no page was requested
    assert faults < 20  # every list page already mapped
    idx.evict()  # back to requesting pages
    idx.search(q[0], 10)
    assert np.count_nonzero(recent.RECENT >= 0) > 0


def test_preload_without_populate_touches_pages(synth_index, synth, monkeypatch):
    """Kernels before 5.14 refuse MADV_POPULATE_READ (EINVAL): every page is touched instead."""
    _, q, *_ = synth
    idx = synth_index
    idx.search(q[0], 10)
    monkeypatch.setattr(osio, "MADV_POPULATE_READ", 12345)  # an advice no kernel knows: EINVAL
    idx.evict()
    idx.preload()
    assert _searches_fault(idx, q[:20]) < 20
    idx.evict()


def test_preload_refuses_what_does_not_fit(synth_index, monkeypatch):
    import spann.index as index_mod
    monkeypatch.setattr(index_mod, "_mem_available", lambda: 4096)
    with pytest.raises(spann.OutOfMemoryError, match="preloading needs"):
        synth_index.preload()


def test_preload_does_not_survive_a_new_generation(tmp_path, synth):
    x, q, *_ = synth
    idx = spann.build(x[:3000], tmp_path / "u.spann", metric="l2", progress=False)
    try:
        idx.preload()
        assert idx._planner.preloaded is idx._snap
        idx.add(x[3000:3100])
        assert idx._planner.preloaded is not idx._snap  # its delta lists were never preloaded
        recent.forget()
        idx.search(q[0], 10)
        assert np.count_nonzero(recent.RECENT >= 0) > 0  # so pages are requested again
    finally:
        idx.close()
