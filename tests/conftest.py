"""Shared fixtures: small synthetic data and indexes built once per session."""

from __future__ import annotations

import numpy as np
import pytest

import spann
from spann.datasets import synthetic_array
from spann.kernels.exact import exact_knn


@pytest.fixture(scope="session")
def synth():
    """20k x 24 float32 clustered base, 300 queries, exact top-20 (l2)."""
    x = synthetic_array(20000, 24, seed=3)
    q = synthetic_array(300, 24, seed=3, stream=1, n_hint=20000)
    gi, gd = exact_knn(x, q, 20, "l2")
    return x, q, gi, gd


@pytest.fixture(scope="session")
def synth_index(synth, tmp_path_factory):
    x, *_ = synth
    path = tmp_path_factory.mktemp("idx") / "synth.spann"
    idx = spann.build(x, path, metric="l2", progress=False)
    yield idx
    idx.close()


def list_entries(idx, h):
    """(ids int64 (c,), vectors (c, dim), codes uint8 (c, B) or None) of posting list h of an open
    index, decoded with numpy from its byte views (full postings: the vectors themselves; coded:
    the rows the list holds, looked up in the vector store)."""
    lay = idx.layout
    v = idx.store.view
    c, o = int(idx.counts[h]), int(idx.offsets[h])
    raw = v.u8[o:o + lay.list_bytes(c)]
    ids = raw[:lay.id_bytes * c].view("<i8" if lay.id_bytes == 8 else "<i4").astype(np.int64)
    co = lay.codes_offset(c)
    if not lay.coded:
        return ids, raw[co:co + c * lay.code_bytes].view(lay.dtype).reshape(c, lay.dim), None
    codes = raw[co:co + c * lay.code_bytes].reshape(c, lay.code_bytes)
    st = idx.vectors.layout
    vu8 = idx.vectors.view.u8
    offs = (ids // st.rows_per_page) * st.page_bytes + (ids % st.rows_per_page) * st.row_bytes
    vec = np.stack([vu8[r:r + lay.dim * st.row_bytes // st.row_bytes * np.dtype(lay.dtype).itemsize]
                    .view(lay.dtype) for r in offs]) if c else np.zeros((0, lay.dim), lay.dtype)
    uid = np.array([vu8[r + st.id_offset:r + st.id_offset + 8].view("<i8")[0] for r in offs], np.int64)
    return uid, vec, codes


@pytest.fixture
def read_list():
    return list_entries


@pytest.fixture(scope="session")
def synth_full(synth, tmp_path_factory):
    """The synth base indexed with full-precision postings."""
    x, *_ = synth
    path = tmp_path_factory.mktemp("idxf") / "synth-full.spann"
    idx = spann.build(x, path, metric="l2", progress=False, encoding="full")
    yield idx
    idx.close()
