"""Search through the posting view: cold equals warm, hub lists are searched whole."""

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.kernels.exact import exact_knn
from spann.tools.eval import recall_at_k


def test_cold_search_returns_exactly_what_warm_does(synth, synth_index):
    """Evicted before each query, a single query returns what a warm batch does; its page bytes
    are the batch's plus the rows it requested early (the best k candidates after half the
    lists) that did not stay among the candidates."""
    _, q, _, _ = synth
    warm = synth_index.search(q[:40], 10, max_postings=16)
    one = [synth_index.search(q[i], 10, max_postings=16, prefetch=False) for i in range(40)]
    cold_one = []
    for i in range(40):
        synth_index.evict()
        cold_one.append(synth_index.search(q[i], 10, max_postings=16, prefetch=True))
    synth_index.evict()
    cold_batch = synth_index.search(q[:40], 10, max_postings=16, prefetch=True, threads=2)
    for i in range(40):
        np.testing.assert_array_equal(one[i].ids[0], warm.ids[i])
        np.testing.assert_array_equal(cold_one[i].ids[0], warm.ids[i])
        np.testing.assert_array_equal(cold_one[i].distances[0], warm.distances[i])
        assert 0 <= cold_one[i].bytes_read[0] - warm.bytes_read[i] <= 3 * 10 * 4096  # a page, bridged gaps either side
    np.testing.assert_array_equal(cold_batch.ids, warm.ids)
    np.testing.assert_array_equal(cold_batch.bytes_read, warm.bytes_read)


@pytest.mark.parametrize("encoding", ["full", "sq8"])
def test_hub_list_is_stored_and_searched_whole(tmp_path, read_list, monkeypatch, encoding):
    base = synthetic_array(20000, 16, seed=8)
    hub = np.repeat(base[:1], 6000, axis=0)  # 6,000 copies of one vector
    x = np.vstack([base, hub])
    # heads clustered from the base alone (as when a region fills up after the heads were made):
    # one head's list then takes every copy
    import spann.builder.pipeline as b
    orig = b.sample_stage

    def base_only(src, metric, params, progress=False):
        s = orig(src, metric, params, progress)
        keep = s.ids < 20000
        return b.Sample(rows=s.rows[keep], ids=s.ids[keep], max_norm=s.max_norm)

    monkeypatch.setattr(b, "sample_stage", base_only)
    with spann.build(x, tmp_path / "h", metric="l2", progress=False, encoding=encoding) as idx:
        counts = idx.counts
        assert counts.max() >= 50 * counts.mean()
        h = int(np.argmax(counts))
        ids, vec, _ = read_list(idx, h)
        np.testing.assert_array_equal(vec, x[ids])
        copies = set(range(20000, 26000)) | {0}
        assert copies <= set(ids.tolist())
        r = idx.search(base[0], 6001, max_postings=4)
        assert set(r.ids[0].tolist()) == copies and (r.distances[0] == 0).all()
        q = synthetic_array(200, 16, seed=8, stream=1, n_hint=20000)
        gi, _ = exact_knn(x, q, 10, "l2")
        assert recall_at_k(idx.search(q, 10).ids, gi, 10) >= 0.9


def test_threads_search_concurrently(synth, synth_index):
    from concurrent.futures import ThreadPoolExecutor
    _, q, _, _ = synth
    ref = synth_index.search(q[:64], 10)
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda i: synth_index.search(q[i], 10).ids[0], range(64)))
    np.testing.assert_array_equal(np.stack(got), ref.ids)
