"""Filtered search: labels stored in the postings (in-scan filter) and label lists of rare
labels (exact scan), against a filtered brute force."""

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.errors import DataError, QueryError
from spann.format.labels import check_filter, check_labels

N, D = 4000, 16
X = synthetic_array(N, D, seed=8)
Q = synthetic_array(40, D, seed=8, stream=1, n_hint=N)
rng = np.random.default_rng(2)
# label 0: half of the vectors; 1..9: ~5 % each; 100..139: 10 vectors each (rare, label lists);
# every vector also carries one of 1000..1003
LAB = np.full((N, 2), -1, np.int64)
LAB[:, 0] = np.where(rng.random(N) < 0.5, 0, rng.integers(1, 10, N))
LAB[:400, 0] = 100 + np.arange(400) % 40
LAB[:, 1] = 1000 + rng.integers(0, 4, N)


def brute(q, k, allowed):
    mask = np.isin(LAB, allowed).any(1)
    ids = np.flatnonzero(mask)
    d = ((q[:, None, :].astype(np.float64) - X[ids][None].astype(np.float64)) ** 2).sum(-1)
    o = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids[o], np.take_along_axis(d, o, 1)


def recall(got, want):
    return np.mean([len(set(g[g >= 0]) & set(w)) / len(w) for g, w in zip(got, want)])


@pytest.fixture(scope="module", params=["full", "sq8"])
def idx(request, tmp_path_factory):
    i = spann.build(X, tmp_path_factory.mktemp("lab") / "i", metric="l2", labels=LAB, encoding=request.param,
                    progress=False)
    yield i
    i.close()


@pytest.mark.parametrize("allowed", [[103], [100, 131], [5], [0], [1001], [5, 1003]])
def test_filtered_search_matches_filtered_brute_force(idx, allowed):
    wi, wd = brute(Q, 10, allowed)
    r = idx.search(Q, 10, filter=allowed)
    got = r.ids[r.ids >= 0]
    assert np.isin(LAB[got], allowed).any(1).all()  # only matching vectors, ever
    full = idx.search(Q, 10, filter=allowed, max_postings=idx.heads.shape[0], pruner=False, rerank=N)
    np.testing.assert_allclose(full.distances[:, :wd.shape[1]], wd, rtol=1e-4, atol=1e-4)
    assert recall(r.ids, wi) >= (1.0 if allowed[0] >= 100 and allowed[0] < 1000 else 0.9)
    one = idx.search(Q[0], 10, filter=allowed)
    np.testing.assert_array_equal(one.ids[0], r.ids[0])


def test_rare_labels_read_their_label_lists(idx):
    r = idx.search(Q, 10, filter=[103])
    assert (r.lists_read == 1).all()  # one label list, no posting list
    assert (r.ids[:, :10] >= 0).all()  # 10 vectors carry label 103
    r = idx.search(Q, 10, filter=[0])
    assert r.lists_read.mean() > idx.search(Q, 10).lists_read.mean()  # a filter reads more lists


def test_unknown_label_returns_nothing(idx):
    r = idx.search(Q[:3], 5, filter=[777])
    assert (r.ids == -1).all() and np.isinf(r.distances).all()


def test_bad_filters_and_labels(idx, tmp_path):
    for bad in ([], [-1], ["a"], [1.5], True):
        with pytest.raises(QueryError):
            idx.search(Q[0], 5, filter=bad)
    with spann.build(X[:500], tmp_path / "n", metric="l2", progress=False) as plain:
        with pytest.raises(QueryError, match="no labels"):
            plain.search(Q[0], 5, filter=[1])
    with pytest.raises(DataError, match="shape"):
        spann.build(X, tmp_path / "b", metric="l2", labels=LAB[:10], progress=False)
    with pytest.raises(DataError, match="integers"):
        check_labels(np.zeros(4, np.float32), 4)
    with pytest.raises(DataError, match="0..2147483647"):
        check_labels(np.array([0, -5, 1, 2]), 4)
    assert check_labels([[3, 1], [], [7]], 3).tolist() == [[3, 1], [-1, -1], [7, -1]]
    assert check_filter(7).tolist() == [7] and check_filter([9, 2, 9]).tolist() == [2, 9]


def test_labels_follow_updates(tmp_path):
    idx = spann.build(X, tmp_path / "u", metric="l2", labels=LAB, encoding="sq8", progress=False)
    new = synthetic_array(300, D, seed=99)
    got = idx.add(new, labels=np.full(300, 555))  # a new label: rare, gets a delta label list
    r = idx.search(new[:10], 3, filter=[555])
    np.testing.assert_array_equal(r.ids[:, 0], got[:10])
    assert np.isin(r.ids, got).all()
    idx.add(new[:5] + 0.5, labels=np.full(5, 103))  # joins a rare base label
    r = idx.search(new[:5] + 0.5, 1, filter=[103])
    assert np.isin(r.ids[:, 0], np.arange(got[-1] + 1, got[-1] + 6)).all()
    victims = np.flatnonzero(LAB[:, 0] == 104)
    idx.delete(victims)
    assert not np.isin(idx.search(Q, 10, filter=[104]).ids, victims).any()
    idx.delete(got[:10])
    assert not np.isin(idx.search(new[:10], 3, filter=[555]).ids, got[:10]).any()
    with pytest.raises(DataError, match="at most 2"):
        idx.add(new[:1], labels=[[1, 2, 3]])
    idx.close()


def test_plain_zarr_reads_labels_and_ids(idx):
    """The README's recipe, with the labels section, on a labelled index."""
    import zarr
    g = zarr.open_group(str(idx.path), mode="r")
    a = g.attrs["spann"]
    lay, gen = a["layout"], g[a["generation_path"]]
    up8 = lambda v: -(-v // 8) * 8  # noqa: E731
    ib, L, A, B = lay["id_bytes"], lay["label_width"], lay["aux_floats"], lay["code_bytes"]
    assert L == 2
    checked = 0
    for h in range(0, int(gen["counts"].shape[0]), 37):
        off, c = int(gen["offsets"][h]), int(gen["counts"][h])
        if c == 0:
            continue
        cod = up8(up8(up8(ib * c) + 4 * L * c) + 4 * A * c)
        raw = g[a["postings_path"]][off:off + cod + c * B]
        ids = raw[:ib * c].view("<i8" if ib == 8 else "<i4").astype(np.int64)
        labels = raw[up8(ib * c):][:4 * L * c].view("<i4").reshape(c, L)
        if lay["encoding"] != "full":  # coded: rows of the vector store -> ids
            ids = np.array([idx._base.vectors.view.i64[(r // idx._base.vectors.view.rows_per_page
                            * idx._base.vectors.view.page_bytes + r % idx._base.vectors.view.rows_per_page
                            * idx._base.vectors.view.row_bytes + idx._base.vectors.view.id_offset) >> 3]
                            for r in ids])
        want = np.sort(LAB[ids], axis=1)[:, ::-1]
        np.testing.assert_array_equal(labels, want)
        checked += c
    assert checked > 100


def test_label_rows_must_be_integers():
    for bad in ([[1, 2], [3, 4.9]], [[1.5], [2]], [[1, 2], [3, "x"]], [[1, 2], [3, None]]):
        with pytest.raises(DataError, match="integers"):
            check_labels(bad, 2)
