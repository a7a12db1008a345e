"""The single-query fast path: same scan-space query as the batch path, same refusals."""

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.errors import QueryError
from spann.kernels.metrics import normalize_rows
from spann.kernels.query_space import single_query_space


def test_matches_normalize_rows_bit_for_bit_and_refuses_what_the_batch_path_refuses():
    rng = np.random.default_rng(0)
    out = np.empty(64, np.float32)
    for _ in range(500):
        q = (rng.standard_normal(64) * rng.uniform(1e-3, 1e3)).astype(np.float32)
        assert single_query_space(q, True, out)
        np.testing.assert_array_equal(out, normalize_rows(q[None])[0])
        assert single_query_space(q, False, out)
        np.testing.assert_array_equal(out, q)
    z = np.zeros(64, np.float32)
    assert single_query_space(z, True, out) and not out.any()  # a zero query stays zero
    for v in (np.nan, np.inf, -np.inf):
        q = np.ones(64, np.float32)
        q[7] = v
        assert not single_query_space(q, True, out)
    assert not single_query_space(np.full(64, 1e18, np.float32), False, out)  # squares overflow float32
    assert single_query_space(np.full(64, 1e18, np.float32), True, out)  # fine once normalised


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_single_queries_answer_as_the_batch_does(tmp_path, metric):
    x = synthetic_array(4000, 24, seed=3)
    q = synthetic_array(30, 24, seed=3, stream=1, n_hint=4000)
    with spann.build(x, tmp_path / "i", metric=metric, progress=False) as idx:
        batch = idx.search(q, 10, threads=1)
        for i in range(len(q)):
            one = idx.search(q[i], 10)
            np.testing.assert_array_equal(one.ids[0], batch.ids[i])
            np.testing.assert_array_equal(one.distances[0], batch.distances[i])
        bad = q[0].copy()
        bad[3] = np.nan
        with pytest.raises(QueryError, match="NaN or Inf"):
            idx.search(bad, 10)
        with pytest.raises(QueryError, match="dimension"):
            idx.search(q[0][:10], 10)
