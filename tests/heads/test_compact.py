"""8-bit heads: which indexes keep them, rounding, identical searches, RAM, updates, old formats."""

import json
import shutil

import numpy as np
import pytest

import spann
from spann.codecs import CODECS
from spann.heads.compact import as_head_dtype, head_dtype, to_grid
from spann.heads.graph import beam_search, no_walk_codes, walk_codes
from spann.kernels.exact import exact_knn
from spann.kernels.metrics import METRICS
from spann.tools.verify import verify_index

N, D = 6000, 32


def _u8_base(n=N, d=D, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    lo, hi = (0, 255) if dtype == np.uint8 else (-128, 127)
    centres = rng.integers(lo + 30, hi - 30, (40, d))
    x = centres[rng.integers(0, 40, n)] + rng.normal(0, 10, (n, d))
    return np.clip(np.rint(x), lo, hi).astype(dtype)


@pytest.fixture(scope="module")
def u8_index(tmp_path_factory):
    x = _u8_base()
    idx = spann.build(x, tmp_path_factory.mktemp("c") / "u8.spann", metric="l2", progress=False)
    yield x, idx
    idx.close()


def test_which_indexes_keep_8_bit_heads():
    l2, ip, cos = METRICS["l2"], METRICS["ip"], METRICS["cosine"]
    full, sq8, rabitq = (CODECS[c].rotated_heads for c in ("full", "sq8", "rabitq"))
    assert head_dtype(l2, np.uint8, full) == np.uint8 and head_dtype(l2, np.int8, full) == np.int8
    assert head_dtype(l2, np.uint8, sq8) == np.uint8  # sq8 codes residuals of unrotated heads
    assert head_dtype(l2, np.uint8, rabitq) == np.float32  # rotated heads are not on the data's grid
    assert head_dtype(ip, np.uint8, full) == np.float32  # the inner-product coordinate is real
    assert head_dtype(cos, np.float32, full) == np.float32 and head_dtype(l2, np.float32, full) == np.float32


def test_rounding_to_the_grid():
    v = np.array([[-200.4, -0.5, 0.49, 1.5, 254.6, 300.0]], np.float32)
    np.testing.assert_array_equal(to_grid(v, np.uint8), [[0, 0, 0, 2, 255, 255]])
    np.testing.assert_array_equal(to_grid(v, np.int8), [[-128, 0, 0, 2, 127, 127]])
    assert to_grid(v, np.float32) is v
    out = as_head_dtype(v, np.int8)
    assert out.dtype == np.int8 and out.flags.c_contiguous and out[0, 0] == -128


def test_a_uint8_index_keeps_byte_heads_and_walks_them_exactly(u8_index):
    x, idx = u8_index
    H = idx.heads.shape[0]
    assert idx.heads.dtype == np.uint8 and idx.attrs["format_version"] == 6
    assert walk_codes(idx.heads, min_dim=1).u8.shape[0] == 0  # no separate codes: the walk reads the heads
    # the walk on the byte heads finds what a walk on the same heads as float32 finds, at the same distances
    f32 = idx.heads.astype(np.float32)
    graph = idx._snap.graph  # the unpadded graph searches walk
    q = x[:200].astype(np.float32) + np.random.default_rng(1).normal(0, 2, (200, D)).astype(np.float32)
    same, n = 0, 0
    for i in range(q.shape[0]):
        got = [np.full(16, -1, np.int32), np.zeros(16, np.float32)]
        want = [np.full(16, -1, np.int32), np.zeros(16, np.float32)]
        for heads, out in ((idx.heads, got), (f32, want)):
            beam_search(q[i], heads, graph, idx.entries, 48, np.zeros(H, np.uint32), np.uint32(1), out[0], out[1],
                        no_walk_codes(D))
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
        exact = ((q[i][None].astype(np.float64) - f32[got[0]]) ** 2).sum(1)  # no code: exact distances
        np.testing.assert_allclose(got[1], exact, rtol=1e-5)
        same += int(np.sum(got[0] == want[0]))
        n += 16
    assert same / n > 0.99, same / n


def test_byte_heads_search_verify_and_cost_a_byte_per_coordinate(u8_index, tmp_path):
    x, idx = u8_index
    q = x[:300].astype(np.float32) + np.random.default_rng(2).normal(0, 2, (300, D)).astype(np.float32)
    gi, _ = exact_knn(x.astype(np.float32), q, 10, "l2")
    r = idx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r.ids, gi)])
    assert recall >= 0.9, recall
    assert verify_index(idx.path)["ok"]
    # RAM of indexes whose searches walk the graph (no head groups), as uint8 and as the same values
    # in float32 (float heads plus their byte codes for the walk)
    walk = [spann.build(v, tmp_path / f"{v.dtype}.spann", metric="l2", progress=False, head_groups=0)
            for v in (x, x.astype(np.float32))]
    small, big = (w.info()["ram_bytes_per_head"] for w in walk)
    H, R = walk[0].heads.shape[0], walk[0].neighbors.shape[1]
    assert walk[0].heads.dtype == np.uint8 and walk[0].heads.nbytes == H * D and walk[1].heads.dtype == np.float32
    assert small < D + 4 * R + 32, (small, big)  # heads, graph (unpadded), list directory
    assert big - small > 3.5 * D, (small, big)  # float32 heads and their walk codes: 4 more bytes per coordinate
    for w in walk:
        w.close()


def test_an_int8_build_rounds_its_heads_before_the_graph_and_the_assignment(tmp_path, monkeypatch):
    import spann.builder.pipeline as pipeline
    seen = []
    graph_stage = pipeline.graph_stage

    def spy(heads, *a, **kw):  # the heads every later stage sees
        seen.append(heads.vectors.copy())
        return graph_stage(heads, *a, **kw)

    monkeypatch.setattr(pipeline, "graph_stage", spy)
    x = _u8_base(dtype=np.int8, seed=3)
    with spann.build(x, tmp_path / "i8.spann", metric="l2", progress=False) as idx:
        assert idx.heads.dtype == np.int8
        v = seen[0]
        assert v.dtype == np.float32 and np.array_equal(v, np.rint(v)) and v.min() >= -128 and v.max() <= 127
        np.testing.assert_array_equal(idx.heads, v)  # stored as the graph and the assignment saw them
        assert not np.isin(v.view(np.dtype((np.void, 4 * D))).ravel(),
                           x.astype(np.float32).view(np.dtype((np.void, 4 * D))).ravel()).all()  # centroids, not rows
        r = idx.search(x[:100].astype(np.float32), 1)
        assert np.mean(r.ids[:, 0] == np.arange(100)) > 0.95
    with spann.build(x, tmp_path / "i8ip.spann", metric="ip", progress=False) as idx:
        assert idx.heads.dtype == np.float32  # the inner-product head space is not the data's grid


def test_splits_keep_heads_on_the_grid(tmp_path, monkeypatch):
    import spann.update.apply as apply
    commits = []
    commit = apply._commit

    def spy(index, b):  # the heads an update searches and reassigns with, before they are stored
        commits.append(b.heads.copy())
        return commit(index, b)

    monkeypatch.setattr(apply, "_commit", spy)
    x = _u8_base(n=3000, d=16, seed=5)
    idx = spann.build(x, tmp_path / "s.spann", metric="l2", progress=False, head_ratio=0.02)
    h0 = idx.heads.shape[0]
    rng = np.random.default_rng(9)
    blob = np.clip(x[0] + rng.normal(0, 8, (2500, 16)), 0, 255).astype(np.uint8)  # one dense region
    for part in np.array_split(blob, 5):
        idx.add(part)
    assert idx.attrs["splits"] > 0 and idx.heads.shape[0] > h0
    assert idx.heads.dtype == np.uint8
    assert all(np.array_equal(h, np.rint(h)) for h in commits) and commits[-1].shape[0] > h0
    r = idx.search(blob[:50].astype(np.float32), 1, max_postings=idx.heads.shape[0], pruner=False)
    d = ((blob[:50, None].astype(np.float64) - np.concatenate([x, blob])[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(r.distances[:, 0], d.min(1), rtol=1e-5)
    assert verify_index(idx.path)["ok"]
    idx.close()
    with spann.open(tmp_path / "s.spann") as again:
        assert again.heads.dtype == np.uint8 and again.heads.shape[0] == idx.heads.shape[0]


def test_format_5_float_heads_of_8_bit_data_still_open(u8_index, tmp_path):
    from spann.format.zarr_v3 import write_small_array
    from spann.io.index_files import seal_root
    x, idx = u8_index
    p = tmp_path / "v5.spann"
    shutil.copytree(idx.path, p)
    meta = json.loads((p / "zarr.json").read_text())
    a = meta["attributes"]["spann"]
    heads_dir = p / a["generation_path"] / "heads"
    attrs = json.loads((heads_dir / "zarr.json").read_text())["attributes"]
    shutil.rmtree(heads_dir)
    write_small_array(str(heads_dir), idx.heads.astype(np.float32), attrs)
    a["format_version"] = 6
    (p / "zarr.json").write_text(json.dumps(seal_root(meta)))
    with pytest.raises(spann.IndexCorruptError, match="data type float32 where uint8 is expected"):
        spann.open(p)
    a["format_version"] = 5
    (p / "zarr.json").write_text(json.dumps(seal_root(meta)))
    q = x[:50].astype(np.float32)
    with spann.open(p) as old:
        assert old.heads.dtype == np.float32
        want = idx.search(q, 10)
        got = old.search(q, 10)
        assert np.mean(got.ids == want.ids) > 0.99
