"""Fuzzing (hypothesis, in the test extra): vector-file readers and index opening under mutated
metadata and arrays. Every outcome is either a correct result or a one-line SpannError: no
other exception, no crash, no hang."""

import copy
import json
import re
import shutil

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import spann  # noqa: E402
from spann.datasets import open_vectors, synthetic_array  # noqa: E402
from spann.errors import SpannError  # noqa: E402
from spann.format.zarr_v3 import read_json, write_json, write_small_array  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- vector files -----------------------------------------------------------------------------

_EXT = ["fbin", "u8bin", "i8bin", "ibin", "fvecs", "ivecs", "bvecs", "npy"]


@st.composite
def vector_file_bytes(draw):
    """Plausible-looking headers with random bodies: the readers' edge cases."""
    ext = draw(st.sampled_from(_EXT))
    if ext.endswith("bin"):
        n = draw(st.sampled_from([0, 1, 3, 2**31 - 1, 2**32 - 1]) | st.integers(0, 50))
        d = draw(st.sampled_from([0, 1, 7, 2**31 - 1, 2**32 - 1]) | st.integers(0, 50))
        head = np.array([n, d], "<u4").tobytes()
    elif ext.endswith("vecs"):
        d = draw(st.sampled_from([0, -1, 1, 2**31 - 1]) | st.integers(-5, 50))
        head = np.array([d], "<i4").tobytes()
    else:
        head = draw(st.sampled_from([b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00", b""]))
        hdr = draw(st.sampled_from(["{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
                                    "{'descr': '|O', 'fortran_order': False, 'shape': (2, 2), }",
                                    "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                                    "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }",
                                    "__import__('os').system('echo pwned')", "{'shape': (10**12, 10**12)}"]))
        head += len(hdr).to_bytes(2 if b"\x01" in head[6:7] else 4, "little") + hdr.encode()
    body = draw(st.binary(max_size=300))
    return ext, head + body


@FUZZ
@given(vector_file_bytes())
def test_vector_readers_never_fail_but_with_a_one_line_error(tmp_path_factory, case):
    ext, data = case
    p = tmp_path_factory.mktemp("vf") / f"v.{ext}"
    p.write_bytes(data)
    for ids in (False, True):
        try:
            with open_vectors(p, ids=ids) as vf:
                a = vf.read()
                assert a.ndim == 2 and a.shape == (vf.n, vf.dim)
        except SpannError as e:
            assert str(e) and "\n" not in str(e)


# -- index metadata and arrays ----------------------------------------------------------------

X = synthetic_array(2000, 12, seed=31)
Q = synthetic_array(8, 12, seed=31, stream=1, n_hint=2000)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fz") / "i"
    spann.build(X, d, metric="l2", progress=False, encoding="sq8", head_groups=8).close()  # groups: fuzzed too
    return d


def _open_and_search(path):
    """Opened: a search must run and return ids of the index (or -1). Refused: one line."""
    try:
        with spann.open(path) as idx:
            r = idx.search(Q, 5)
            assert r.ids.shape == (len(Q), 5)
            assert ((r.ids == -1) | ((r.ids >= 0) & (r.ids < len(X)))).all()
            idx.info()
    except SpannError as e:
        assert str(e) and "\n" not in str(e)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=6)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@FUZZ
@given(data=st.data())
def test_mutated_metadata_opens_correctly_or_fails_in_one_line(index_dir, tmp_path_factory, data):
    p = tmp_path_factory.mktemp("m") / "i"
    shutil.copytree(index_dir, p)
    files = ["zarr.json", "postings/zarr.json", "vectors/zarr.json"] + [
        f"gen-000001/{a}/zarr.json" for a in ("heads", "neighbors", "entries", "offsets", "counts", "code_lo",
                                              "head_groups")]
    f = data.draw(st.sampled_from(files))
    meta = read_json(str(p / f))
    paths = [q for q in _paths(meta) if q]
    mutated = copy.deepcopy(meta)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = mutated
        try:
            for k in path[:-1]:
                node = node[k]
            if data.draw(st.booleans()) and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = data.draw(_JSON)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        write_json(str(p / f), mutated)
    except ValueError:  # NaN/inf floats are not JSON: write them raw, as a damaged file would hold
        (p / f).write_text(json.dumps(mutated, allow_nan=True))
    _open_and_search(p)


@FUZZ
@given(data=st.data())
def test_mutated_in_ram_arrays_with_valid_checksums(index_dir, tmp_path_factory, data):
    p = tmp_path_factory.mktemp("a") / "i"
    shutil.copytree(index_dir, p)
    a = read_json(str(p / "zarr.json"))["attributes"]["spann"]
    name = data.draw(st.sampled_from(["heads", "neighbors", "entries", "offsets", "counts", "code_lo", "code_scale",
                                      "pruner", "head_groups"]))
    d = p / a["generation_path"] / name
    from spann.format.zarr_v3 import read_small_array
    meta = read_json(str(d / "zarr.json"))
    arr = read_small_array(str(d), dtype=np.dtype(meta["data_type"]), shape=tuple(None for _ in meta["shape"]))
    flat = arr.reshape(-1).copy()
    how = data.draw(st.sampled_from(["set", "shrink", "grow", "shuffle"]))
    if how == "set" and flat.size:
        i = data.draw(st.integers(0, flat.size - 1))
        v = data.draw(st.sampled_from([-1, 0, 1, 2**31 - 1, -2**31, 10**6, float("nan"), float("inf"), 1e30]))
        with np.errstate(invalid="ignore", over="ignore"):
            flat[i] = np.array(v).astype(flat.dtype) if flat.dtype.kind == "f" or np.isfinite(v) else 0
        new = flat.reshape(arr.shape)
    elif how == "shrink":
        new = arr[: max(0, arr.shape[0] - data.draw(st.integers(1, 3)))]
    elif how == "grow":
        new = np.concatenate([arr, arr[:1]]) if arr.shape[0] else arr
    else:
        new = arr[np.random.default_rng(data.draw(st.integers(0, 99))).permutation(arr.shape[0])]
    shutil.rmtree(d)
    write_small_array(str(d), np.ascontiguousarray(new), {"build_id": a["build_id"]})
    _open_and_search(p)


# -- the HTTP range server ----------------------------------------------------------------------

_RANGE_TEXT = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 3000) | st.just(""), st.integers(0, 3000) | st.just("")),
    st.builds(lambda a: f"bytes=-{a}", st.integers(0, 3000)),
    st.builds(lambda a, b: f"bytes={a}-{b},{b}-", st.integers(0, 3000), st.integers(0, 3000)),
    st.builds(lambda n: "bytes=" + "9" * n + "-", st.integers(15, 5000)),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))


@pytest.fixture(scope="module")
def range_server(tmp_path_factory):
    from spann.bench.range_server import RangeServer
    d = tmp_path_factory.mktemp("rsf")
    (d / "f").write_bytes(bytes(range(256)) * 8)  # 2048 bytes
    with RangeServer(d, timeout=5.0) as srv:
        yield srv


@FUZZ
@given(st.one_of(st.none(), _RANGE_TEXT))
def test_range_server_answers_every_range_header_correctly(range_server, header):
    """200 with the file, 206 with exactly the bytes its Content-Range names, or 416: never a
    dropped connection, a negative length or a body that disagrees with its headers."""
    import http.client
    data = bytes(range(256)) * 8
    c = http.client.HTTPConnection(range_server.url.removeprefix("http://"), timeout=10)
    try:
        c.putrequest("GET", "/f")
        if header is not None:
            c.putheader("Range", header)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
    except http.client.InvalidURL:  # the client itself refuses the header text
        return
    finally:
        c.close()
    assert r.status in (200, 206, 416), (header, r.status)
    assert int(r.getheader("Content-Length")) == len(body)
    if r.status == 200:
        assert body == data
    elif r.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/2048", r.getheader("Content-Range"))
        a, b = int(m.group(1)), int(m.group(2))
        assert 0 <= a <= b < 2048 and body == data[a:b + 1]
    else:
        assert body == b"" and r.getheader("Content-Range") == "bytes */2048"
