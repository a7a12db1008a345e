"""Direct reads (O_DIRECT + Linux AIO, spann.io.direct): the bytes the map holds, the mapped
path's results, errors instead of wrong answers."""

import os
import sys

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.io.direct import DirectReader, direct_landed, direct_poll, direct_reset, direct_submit, direct_wait

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_DIRECT and Linux AIO")


@pytest.fixture(scope="module")
def data():
    x = synthetic_array(6000, 96, seed=11)
    q = synthetic_array(40, 96, seed=11, stream=1, n_hint=6000)
    return x, q


@pytest.fixture(scope="module", params=["sq8", "rabitq", "full"])
def index(request, data, tmp_path_factory):
    """A small index of each encoding, its postings in shards of 64 KiB (direct runs must not
    cross shard files)."""
    x, _ = data
    path = tmp_path_factory.mktemp("direct") / request.param
    idx = spann.build(x, path, metric="l2", progress=False, encoding=request.param, shard_bytes=1 << 16,
                      chunk_bytes=1 << 12)
    yield idx
    idx.close()


@pytest.mark.parametrize("index", ["sq8"], indirect=True)
def test_direct_reads_land_the_mapped_bytes(index):
    """Random byte ranges of the posting array (many shards; near ranges merged into one run):
    each lands where ``pos`` says, equal to the map's bytes; ``direct_landed`` turns true as
    completions are collected."""
    m = index._base.postings.mapped
    assert len(m.shard_files) > 2
    r = DirectReader(m, 64, 4 << 20)
    dr = r.reads
    rng = np.random.default_rng(0)
    try:
        for _trial in range(20):
            n = int(rng.integers(1, 40))
            starts = rng.integers(0, m.total // 8, n).astype(np.int64) * 8
            shard_end = (starts // m.shard_bytes + 1) * m.shard_bytes
            lens = np.minimum(rng.integers(0, 9000, n), shard_end - starts).astype(np.int64)
            have = np.array([sum(f[3] for f in m.shard_files if f[0] == st) for st in starts // m.shard_bytes])
            lens = np.minimum(lens, np.maximum(have - starts % m.shard_bytes, 0))  # inside the shards' data
            pos = np.empty(n, np.int64)
            direct_reset(dr)
            total = direct_submit(dr, starts, lens, n, pos)
            assert total % 4096 == 0 and total >= lens.sum() - 4096 * n
            while dr.state[2] > 0:
                direct_poll(dr, True)
            direct_wait(dr)
            for j in range(n):
                if lens[j] == 0:
                    assert pos[j] == -1
                    continue
                assert direct_landed(dr, pos[j])
                np.testing.assert_array_equal(dr.buf[pos[j]:pos[j] + lens[j]], m.u8[starts[j]:starts[j] + lens[j]])
    finally:
        r.close()


def test_direct_searches_return_the_mapped_results(index, data):
    """Single queries read directly (lists scanned as they land, early re-rank rows) return the
    mapped path's ids and distances; bytes_read counts about the mapped pages; a batch with
    direct=True returns the batch results."""
    _, q = data
    H = index.heads.shape[0]
    for mp in (4, 16, H):
        for i in range(len(q)):
            a = index.search(q[i], 10, max_postings=mp)
            b = index.search(q[i], 10, max_postings=mp, direct=True)
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.distances, b.distances)
            assert a.lists_read[0] == b.lists_read[0]
            # the same pages, but for gaps bridged across a shard end (mapped) and pages shared by
            # lists requested in the two steps (direct)
            assert b.bytes_read[0] > 0 and abs(b.bytes_read[0] - a.bytes_read[0]) <= 2 * 4096 * (a.lists_read[0] + 10)
    batch = index.search(q, 10, max_postings=16)
    d = index.search(q, 10, max_postings=16, direct=True, threads=2)
    np.testing.assert_array_equal(batch.ids, d.ids)
    np.testing.assert_allclose(batch.distances, d.distances, rtol=1e-6)


def test_a_shard_cut_short_after_opening_raises_instead_of_answering(data, tmp_path):
    """A shard file truncated under an open index: direct reads come back short and the search
    raises OSError (the map would deliver SIGBUS); once the file is whole again, the same
    thread's reader answers as before."""
    x, q = data
    idx = spann.build(x, tmp_path / "t", metric="l2", progress=False, encoding="sq8", shard_bytes=1 << 16,
                      chunk_bytes=1 << 12)
    try:
        path = idx._base.postings.mapped.shard_files[-1][1]
        H = idx.heads.shape[0]
        every = {"max_postings": H, "pruner": False, "prune_eps": float("inf"), "direct": True}
        want = idx.search(q[0], 10, **every)  # every list, the last shard's too
        assert want.lists_read[0] == H
        with open(path, "rb") as fh:
            whole = fh.read()
        os.truncate(path, 4096)
        with pytest.raises(OSError, match="short"):
            idx.search(q[0], 10, **every)
        with open(path, "r+b") as fh:
            fh.write(whole)
        again = idx.search(q[0], 10, **every)
        np.testing.assert_array_equal(again.ids, want.ids)
        np.testing.assert_array_equal(again.distances, want.distances)
    finally:
        idx.close()


def test_shard_files_replaced_after_opening_are_refused(data, tmp_path):
    """Direct reads open the shard files by path at the first direct query: a file replaced
    since the index was opened (another inode) is refused, not read at the old offsets."""
    import shutil
    x, q = data
    spann.build(x, tmp_path / "r", metric="l2", progress=False, encoding="sq8", shard_bytes=1 << 16,
                chunk_bytes=1 << 12).close()
    with spann.open(tmp_path / "r") as idx:
        path = idx._base.postings.mapped.shard_files[0][1]
        shutil.copyfile(path, path + ".new")
        os.replace(path + ".new", path)
        with pytest.raises(spann.SpannError, match="replaced since the index was opened"):
            idx.search(q[0], 10, direct=True)
        idx.search(q[0], 10)  # the map still reads the files it mapped
