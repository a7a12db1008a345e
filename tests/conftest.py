"""Shared fixtures: small synthetic data and indexes built once per session."""

from __future__ import annotations

import pytest

import spann
from spann.datasets import synthetic_array
from spann.exact import exact_knn


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
    """(ids, vectors) of posting list h of an open index, read through its own posting view."""
    v = idx.store.view
    c, o = int(idx.counts[h]), int(idx.offsets[h])
    pay = idx.layout.payload_offset(c)
    p = (o + pay) // v.vec.itemsize
    return v.i64[o // 8: o // 8 + c], v.vec[p:p + c * idx.dim].reshape(c, idx.dim)


@pytest.fixture
def read_list():
    return list_entries
