"""Users' ids, get, add, delete, splits, durability and searches during updates."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.errors import DataError, QueryError
from spann.tools.verify import verify_index

N, D = 3000, 16
X = synthetic_array(N, D, seed=5)
Q = synthetic_array(30, D, seed=5, stream=1, n_hint=N)
IDS = (np.random.default_rng(1).permutation(10 * N)[:N] * 3 + 11).astype(np.int64)


def brute(vecs, ids, q, k):
    d = ((q[:, None, :].astype(np.float64) - vecs[None].astype(np.float64)) ** 2).sum(-1)
    o = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids[o], np.take_along_axis(d, o, 1)


def exhaustive(idx, q, k):
    """Search reading every list and re-ranking every candidate: equals brute force."""
    return idx.search(q, k, max_postings=idx.heads.shape[0], pruner=False, rerank=4 * N)


def same_neighbours(got_ids, got_d, want_ids, want_d):
    """Equal up to ties: the distances agree and the ids agree where distances are distinct."""
    np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-4)
    agree = np.mean(got_ids == want_ids)
    assert agree > 0.99, agree


@pytest.fixture(params=["full", "sq8", "rabitq"])
def idx(request, tmp_path):
    i = spann.build(X, tmp_path / "i", metric="l2", ids=IDS, encoding=request.param, progress=False,
                    head_ratio=0.05)
    yield i
    i.close()


def test_ids_round_trip(idx):
    assert len(idx) == N
    r = exhaustive(idx, X[:20], 1)
    np.testing.assert_array_equal(r.ids[:, 0], IDS[:20])
    np.testing.assert_array_equal(idx.get(IDS[[5, 0, 7]]), X[[5, 0, 7]])
    with pytest.raises(QueryError, match="not in the index"):
        idx.get([IDS.max() + 1])
    wi, wd = brute(X, IDS, Q, 10)
    r = exhaustive(idx, Q, 10)
    same_neighbours(r.ids, r.distances, wi, wd)


def test_bad_ids_refused(tmp_path):
    dup = IDS.copy()
    dup[7] = dup[3]
    with pytest.raises(DataError, match="more than once"):
        spann.build(X, tmp_path / "a", metric="l2", ids=dup, progress=False)
    with pytest.raises(DataError, match="shape"):
        spann.build(X, tmp_path / "b", metric="l2", ids=IDS[:-1], progress=False)
    neg = IDS.copy()
    neg[0] = -4
    with pytest.raises(DataError, match="must be in"):
        spann.build(X, tmp_path / "c", metric="l2", ids=neg, progress=False)
    with pytest.raises(DataError, match="integers"):
        spann.build(X, tmp_path / "d", metric="l2", ids=IDS.astype(np.float64), progress=False)
    assert not any(p.name in "abcd" for p in tmp_path.iterdir())


def test_add_delete_equal_brute_force_over_the_live_set(idx):
    rng = np.random.default_rng(3)
    new = synthetic_array(900, D, seed=77)
    got = idx.add(new[:300])  # default ids: after the largest
    assert got[0] == IDS.max() + 1 and len(idx) == N + 300
    with pytest.raises(DataError, match="already in the index"):
        idx.add(new[300:302], ids=[IDS[0], 10**9])
    new_ids = np.arange(10**9, 10**9 + 600)
    idx.add(new[300:], ids=new_ids)
    gone = np.concatenate([rng.choice(IDS, 400, replace=False), got[:50], new_ids[:50]])
    assert idx.delete(gone) == gone.size
    with pytest.raises(QueryError, match="not in the index"):
        idx.delete(gone[:3])
    assert idx.delete(gone[:3], missing_ok=True) == 0
    vecs = np.concatenate([X, new])
    ids = np.concatenate([IDS, got, new_ids])
    live = ~np.isin(ids, gone)
    assert len(idx) == live.sum()
    wi, wd = brute(vecs[live], ids[live], Q, 10)
    r = exhaustive(idx, Q, 10)
    same_neighbours(r.ids, r.distances, wi, wd)
    one = idx.search(Q[3], 10, max_postings=idx.heads.shape[0], pruner=False, rerank=4 * N)
    np.testing.assert_array_equal(one.ids[0], r.ids[3])
    np.testing.assert_array_equal(idx.get(new_ids[100:103]), new[400:403])
    with pytest.raises(QueryError):
        idx.get(gone[:1])
    # a deleted id can come back with a new vector
    idx.add(new[:1] + 5, ids=gone[:1])
    np.testing.assert_array_equal(idx.get(gone[:1]), new[:1] + 5)
    # everything survives reopening, and verify reads it all
    with spann.open(idx.path) as again:
        assert len(again) == live.sum() + 1
        r2 = exhaustive(again, Q, 10)
        np.testing.assert_array_equal(r2.ids, exhaustive(idx, Q, 10).ids)
    assert verify_index(idx.path)["ok"]


def test_growth_splits_lists_and_search_stays_exact(tmp_path):
    idx = spann.build(X, tmp_path / "s", metric="l2", encoding="sq8", progress=False, head_ratio=0.02)
    h0 = idx.heads.shape[0]
    rng = np.random.default_rng(9)
    blob = (rng.standard_normal((2500, D)) * 0.05 + X[0]).astype(np.float32)  # one dense region
    for part in np.array_split(blob, 5):
        idx.add(part)
    assert idx.attrs["splits"] > 0 and idx.heads.shape[0] > h0
    vecs = np.concatenate([X, blob])
    ids = np.arange(len(vecs))
    q = np.concatenate([Q, blob[:20] + 0.01])
    wi, wd = brute(vecs, ids, q, 10)
    r = exhaustive(idx, q, 10)
    same_neighbours(r.ids, r.distances, wi, wd)
    # with the default budget the dense region is still found
    r = idx.search(blob[:50] + 0.001, 1)
    assert np.mean(r.ids[:, 0] == np.arange(N, N + 50)) > 0.9
    assert verify_index(idx.path)["ok"]
    idx.close()


def test_bad_updates_refused(idx):
    with pytest.raises(DataError, match="shape"):
        idx.add(np.zeros((3, D + 1), np.float32))
    with pytest.raises(DataError, match="NaN"):
        idx.add(np.full((2, D), np.nan, np.float32))
    with pytest.raises(DataError, match="without labels"):
        idx.add(X[:2], labels=[1, 2])
    with pytest.raises(DataError, match="more than once"):
        idx.add(X[:2], ids=[5, 5])
    assert len(idx) == N and idx.generation == 1


_WRITER = r"""
import sys, numpy as np, spann
idx = spann.open(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
i = 0
while True:
    idx.add(rng.standard_normal((200, {D})).astype(np.float32), ids=np.arange(10**9 + 200 * i, 10**9 + 200 * (i + 1)))
    print(i, flush=True)
    i += 1
"""


def test_kill_during_updates_leaves_a_consistent_index(tmp_path):
    p = tmp_path / "k"
    spann.build(X, p, metric="l2", encoding="sq8", progress=False).close()
    for delay in (0.3, 1.1, 2.3):
        with spann.open(p) as before:
            n0 = len(before)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER.replace("{D}", str(D)), str(p), str(int(delay * 10))],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(delay + 2.0)  # imports and compilation, then some batches
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].split()
        proc.wait()
        with spann.open(p) as idx:
            n = len(idx)
            assert (n - n0) % 200 == 0 and (n - n0) // 200 in (len(out), len(out) + 1)
            assert np.isin(np.arange(10**9, 10**9 + 200 * (len(out))), idx._snap.delta_ids).all() or len(out) == 0
            r = idx.search(Q, 5)
            assert (r.ids >= 0).all()
        assert verify_index(p)["ok"]
        assert [e for e in os.listdir(p) if e.startswith("gen-")].__len__() <= 2
    with spann.open(p) as idx:
        idx.add(X[:5] + 1)  # the next writer removes what a killed one left
        assert [e for e in os.listdir(p) if e.startswith("gen-")] == [idx.attrs["generation_path"]]


def test_searches_during_updates_see_live_ids(tmp_path):
    idx = spann.build(X, tmp_path / "t", metric="l2", encoding="sq8", progress=False)
    rng = np.random.default_rng(4)
    deleted: set[int] = set()
    added: set[int] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer():
        try:
            for b in range(6):
                new = rng.standard_normal((300, D)).astype(np.float32)
                ids = np.arange(10**6 + 300 * b, 10**6 + 300 * (b + 1))
                with lock:  # known before a search can see them
                    added.update(ids.tolist())
                idx.add(new, ids=ids)
                victims = rng.choice(np.arange(N), 100, replace=False)
                victims = np.array([v for v in victims if v not in deleted])
                idx.delete(victims)
                with lock:
                    deleted.update(victims.tolist())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            stop.set()

    def reader(seed):
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                with lock:
                    dead_before = set(deleted)
                q = Q[r.integers(len(Q), size=r.integers(1, 4))]
                res = idx.search(q if len(q) > 1 else q[0], 10)
                got = res.ids[res.ids >= 0].tolist()
                with lock:
                    known = added | set(range(N))
                assert all(g in known for g in got)
                assert not (set(got) & dead_before)
                assert (res.ids >= 0).all()
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=reader, args=(s,)) for s in range(8)] + [threading.Thread(target=writer)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not errors, errors[0]
    assert len(idx) == N + len(added) - len(deleted)
    idx.close()


def test_another_process_sees_updates(tmp_path):
    p = tmp_path / "x"
    spann.build(X, p, metric="l2", encoding="full", progress=False).close()
    reader = spann.open(p)
    assert len(reader) == N
    code = (f"import numpy as np, spann; i = spann.open({str(p)!r}); "
            f"i.add(np.full((1, {D}), 50.0, np.float32), ids=[10**12]); i.delete([0, 1])")
    subprocess.run([sys.executable, "-c", code], check=True)
    r = reader.search(np.full(D, 50.0, np.float32), 1)
    assert r.ids[0, 0] == 10**12 and len(reader) == N - 1
    assert not np.isin([0, 1], exhaustive(reader, X[:2], 3).ids).any()
    reader.close()


def test_delta_tombstones_then_readd(tmp_path):
    idx = spann.build(X, tmp_path / "d", metric="l2", encoding="sq8", progress=False)
    far = np.full((3, D), 40.0, np.float32) + np.arange(3, dtype=np.float32)[:, None]
    idx.add(far, ids=[7_000, 7_001, 7_002])
    gen = idx.generation
    old = idx.attrs["delta_path"]
    ino = os.stat(idx.path / old / "c" / "0").st_ino
    idx.delete([7_001, 5])  # one delta id, one base id: tombstones only, the delta is not rewritten
    assert idx.generation == gen + 1 and idx._snap.delta_dead.tolist() == [7_001]
    new = idx.attrs["delta_path"]
    assert new != old and os.stat(idx.path / new / "c" / "0").st_ino == ino  # linked, not rewritten
    r = idx.search(far[1], 3)
    assert 7_001 not in r.ids and len(idx) == N + 1
    with pytest.raises(QueryError):
        idx.get([7_001])
    idx.add(far[1:2] + 100, ids=[7_001])  # back, with a new vector; the add purges the tombstone
    assert idx._snap.delta_dead.size == 0
    np.testing.assert_array_equal(idx.get([7_001]), far[1:2] + 100)
    assert idx.search(far[1] + 100, 1).ids[0, 0] == 7_001
    assert 7_001 not in idx.search(far[1], 3).ids
    assert verify_index(idx.path)["ok"]
    idx.close()


@pytest.mark.parametrize("metric,enc,dtype", [("ip", "sq8", np.float32), ("cosine", "rabitq", np.float32),
                                              ("l2", "full", np.uint8), ("ip", "rabitq", np.float32)])
def test_updates_for_every_metric_and_dtype(tmp_path, metric, enc, dtype):
    rng = np.random.default_rng(12)
    if dtype == np.uint8:
        base = rng.integers(0, 255, (2000, D)).astype(np.uint8)
        new = rng.integers(0, 255, (400, D)).astype(np.uint8)
    else:
        base = synthetic_array(2000, D, seed=3)
        new = synthetic_array(400, D, seed=4) * 1.3  # larger norms than the build saw (ip)
    idx = spann.build(base, tmp_path / "m", metric=metric, encoding=enc, progress=False)
    got = idx.add(new)
    idx.delete(np.arange(0, 2000, 7))
    ids = np.concatenate([np.arange(2000), got])
    vecs = np.concatenate([base, new]).astype(np.float64)
    live = ~np.isin(ids, np.arange(0, 2000, 7))
    q = np.concatenate([new[:10], base[1:11]]).astype(np.float32)
    qq = q.astype(np.float64)
    if metric == "l2":
        d = ((qq[:, None] - vecs[None]) ** 2).sum(-1)
    elif metric == "ip":
        d = -(qq @ vecs.T)
    else:
        d = 1 - (qq / np.linalg.norm(qq, axis=1, keepdims=True)) @ (vecs / np.linalg.norm(vecs, axis=1,
                                                                                            keepdims=True)).T
    d[:, ~live] = np.inf
    want = np.sort(d, axis=1)[:, :5]
    r = idx.search(q, 5, max_postings=idx.heads.shape[0], pruner=False, rerank=3000)
    np.testing.assert_allclose(r.distances, want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max())))
    assert not np.isin(r.ids, np.arange(0, 2000, 7)).any()
    if dtype == np.uint8:
        np.testing.assert_array_equal(idx.get(got[:3]), new[:3])
    with pytest.raises(DataError):
        idx.add(new.astype(np.float32) + 0.5 if dtype == np.uint8 else new[:, :3])
    idx.close()


def test_interrupt_right_after_the_commit_point_keeps_the_new_generation(tmp_path, monkeypatch):
    import spann.io.index_writer as W
    idx = spann.build(X[:500], tmp_path / "c", metric="l2", progress=False)

    sync = W._fsync_dir

    def boom(p):
        if Path(p) == tmp_path / "c":  # the index directory: synced once, right after its root was replaced
            raise KeyboardInterrupt
        sync(p)

    monkeypatch.setattr(W, "_fsync_dir", boom)  # a signal arriving just after the root was replaced
    with pytest.raises(KeyboardInterrupt):
        idx.add(X[:3] + 1, ids=[10**6, 10**6 + 1, 10**6 + 2])
    monkeypatch.undo()
    idx.close()
    with spann.open(tmp_path / "c") as again:
        assert again.generation == 2 and len(again) == 503
        np.testing.assert_array_equal(again.get([10**6]), X[:1] + 1)


def test_lists_that_cannot_split_do_not_grow_the_head_index(tmp_path):
    idx = spann.build(X, tmp_path / "dup", metric="l2", encoding="sq8", progress=False)
    h0 = idx.heads.shape[0]
    for _ in range(4):
        idx.add(np.repeat(X[:1], 300, 0))  # duplicates: no 2-means separates them
    assert idx.heads.shape[0] <= h0 + 16  # a few legitimate splits, then the duplicates' list stays whole
    rng = np.random.default_rng(0)
    for _ in range(3):  # tight clusters that the replica rules keep whole
        c = X[rng.integers(N, size=10)]
        idx.add((np.repeat(c, 40, 0) + rng.standard_normal((400, D)) * 0.01).astype(np.float32))
    assert idx.heads.shape[0] <= h0 + 16 + 3 * 16
    r = exhaustive(idx, X[:5], 3)
    assert (r.ids >= 0).all()
    idx.close()


def test_id_range_limits(tmp_path):
    idx = spann.build(X[:300], tmp_path / "r", metric="l2", progress=False)
    with pytest.raises(DataError, match="must be in"):
        idx.add(X[:1], ids=np.array([2**63 - 1]))
    idx.add(X[:1], ids=np.array([2**63 - 2]))
    with pytest.raises(DataError, match="no automatic ids left"):
        idx.add(X[1:2])
    assert len(idx) == 301
    idx.close()


def test_query_on_a_head_reads_every_list_asked_for(tmp_path):
    idx = spann.build(X, tmp_path / "h", metric="l2", encoding="full", progress=False)
    q = idx.heads[3].copy()  # distance 0 to its nearest head
    r = idx.search(q, 10, max_postings=idx.heads.shape[0], pruner=False)
    assert (r.ids >= 0).all() and r.lists_read[0] > 1
    idx.close()


def test_automatic_ids_lie_above_every_stored_id(tmp_path):
    """Automatic ids start above the largest stored id whatever next_id says (a format-4 root,
    which has no checksum, edited down), and are checked against the live ids."""
    import json

    import spann.update.apply as U
    from spann.errors import IndexCorruptError
    p = tmp_path / "a"
    spann.build(X[:500], p, metric="l2", ids=IDS[:500], progress=False).close()
    with spann.open(p) as idx:
        idx.add(X[:2] + 1, ids=[10**7, 10**7 + 5])

    def next_id_3():
        meta = json.loads((p / "zarr.json").read_text())
        a = meta["attributes"]["spann"]
        a["format_version"], a["next_id"] = 4, 3
        a.pop("metadata_crc32c", None)
        (p / "zarr.json").write_text(json.dumps(meta))

    next_id_3()
    with spann.open(p) as idx:
        new = idx.add(X[10:13] + 2)
        assert new.tolist() == [10**7 + 6, 10**7 + 7, 10**7 + 8]
        np.testing.assert_array_equal(idx.get(new), X[10:13] + 2)
        np.testing.assert_array_equal(idx.get([10**7]), X[:1] + 1)
    next_id_3()
    with spann.open(p) as idx, pytest.MonkeyPatch.context() as mp:
        mp.setattr(U, "_largest_id", lambda index, snap: int(IDS[0]) - 1)  # as if the id map were damaged
        with pytest.raises(IndexCorruptError, match=f"automatic id {int(IDS[0])} is already in the index"):
            idx.add(X[:1])
        assert len(idx) == 505


def test_a_stale_temporary_root_file_is_removed_by_the_next_update(tmp_path):
    """A writer killed between writing zarr.json.tmp-<pid> and the rename leaves that file; the
    next update (holding the writers' lock) removes it, and opening ignores it."""
    p = tmp_path / "t"
    spann.build(X[:500], p, metric="l2", progress=False).close()
    stale = p / "zarr.json.tmp-999999"
    stale.write_text("{half a write")
    with spann.open(p) as idx:
        assert len(idx) == 500
        idx.add(X[:1] + 1)
    assert not stale.exists()
    assert not [e for e in os.listdir(p) if ".tmp-" in e]


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from spann.format.zarr_v3 import write_json

    def fail(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_json(str(tmp_path / "zarr.json"), {"a": 1})
    assert os.listdir(tmp_path) == []
