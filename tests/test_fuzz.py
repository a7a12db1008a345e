"""Fuzzing (hypothesis, in the test extra): vector-file readers and index opening under mutated
metadata and arrays. Every outcome is either a correct result or a one-line SpannError: no
other exception, no crash, no hang."""

import copy
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import spann  # noqa: E402
from spann.datasets import open_vectors, synthetic_array  # noqa: E402
from spann.errors import SpannError  # noqa: E402
from spann.format.zarr_v3 import read_json, write_json, write_small_array  # noqa: E402
from spann.tools.verify import verify_index  # noqa: E402

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


# -- targeted metadata edits of an updated index ------------------------------------------------
#
# Every numeric digit (in numbers and in strings: build ids, checksums) and every key name of
# every zarr.json of an index that took updates (a split, adds with labels, deletes of base and
# delta vectors) is edited, one at a time. Each edit must be refused in one line when the index
# is opened or searched, or by `spann verify`, or leave everything a user sees identical
# (search results, filtered search, get, len, and the commit record behind the next add).
# "Silent wrong" (opened, verified, something differs) must never happen. CI runs a
# deterministic sample spread over every file (SPANN_FUZZ_EDITS, default 600 edits: each digit
# replaced by one other digit, each key's first character made '#'); SPANN_FUZZ_EDITS=all runs
# every digit replaced by each of the 9 others and every key renamed three ways, and prints
# the figures (run with -s).

XU = synthetic_array(2400, 12, seed=41)
QU = synthetic_array(12, 12, seed=41, stream=1, n_hint=2400)
OUTCOMES = ("error at open", "caught by verify", "no effect", "silent wrong")


@pytest.fixture(scope="module")
def updated_index(tmp_path_factory):
    """sq8 (vector store), head groups, labels (with label lists), then updates: an add that
    splits lists, labelled adds, deletes of base and delta ids."""
    d = tmp_path_factory.mktemp("fzu") / "i"
    rng = np.random.default_rng(5)
    labels = np.where(rng.random(len(XU)) < 0.97, rng.integers(0, 4, len(XU)), rng.integers(4, 40, len(XU)))
    spann.build(XU, d, metric="l2", progress=False, encoding="sq8", head_groups=8, labels=labels).close()
    with spann.open(d) as idx:
        blob = (rng.standard_normal((400, 12)) * 0.02 + XU[0]).astype(np.float32)
        added = idx.add(blob, labels=rng.integers(0, 50, len(blob)))
        idx.delete(np.concatenate([np.arange(0, 2400, 37), added[::9]]))
        idx.add(XU[:40] + 0.01, labels=rng.integers(0, 50, 40))
    return d


def _observe(idx):
    """Everything a user sees of an open index, as comparable values."""
    r = idx.search(QU, 10)
    f = idx.search(QU, 5, filter=[7, 21, 44])
    ids = np.array([1, 2, 3, 2398, int(r.ids[0, 0])], np.int64)
    return (len(idx), idx.generation, idx.metric, int(idx.attrs["next_id"]), r.ids.tolist(), r.distances.tolist(),
            f.ids.tolist(), f.distances.tolist(), idx.get(ids).tolist())


def _one_line(e):
    assert str(e) and "\n" not in str(e), repr(e)


def _classify(path, baseline):
    try:
        with spann.open(path) as idx:
            seen = _observe(idx)
    except SpannError as e:
        _one_line(e)
        return "error at open"
    try:
        verify_index(path)
    except SpannError as e:
        _one_line(e)
        return "caught by verify"
    return "no effect" if seen == baseline else "silent wrong"


def metadata_edits(root: Path, exhaustive: bool = False) -> list[tuple[str, int, bytes, bytes]]:
    """(file, byte offset, bytes replaced, replacement) for every digit and every key name of
    every zarr.json under ``root``: a digit becomes another digit (``exhaustive``: each of the
    9 others), a key's first character becomes '#' (``exhaustive``: also upper-cased, and the
    key loses its last character)."""
    out = []
    for f in sorted(str(p.relative_to(root)) for p in root.rglob("zarr.json")):
        text = (root / f).read_bytes()
        for i, c in enumerate(text):
            if 48 <= c <= 57:
                shifts = range(1, 10) if exhaustive else [1 + i % 9]
                out += [(f, i, bytes([c]), bytes([48 + (c - 48 + k) % 10])) for k in shifts]
        for m in re.finditer(rb'"([^"\\]+)"\s*:', text):
            key, at = m.group(1), m.start(1)
            out.append((f, at, key[:1], b"#"))
            if exhaustive:
                if key[:1].upper() != key[:1]:
                    out.append((f, at, key[:1], key[:1].upper()))
                out.append((f, at, key, key[:-1]))
    return out


def run_edits(index_dir: Path, work: Path, edits) -> tuple[Counter, list]:
    """Apply each edit to a copy of the index (restored after each), classify; returns the
    outcome counts and the silent-wrong edits."""
    p = work / "i"
    shutil.copytree(index_dir, p)
    with spann.open(p) as idx:
        baseline = _observe(idx)
    counts: Counter = Counter()
    silent = []
    for f, at, old, new in edits:
        orig = (p / f).read_bytes()
        assert orig[at:at + len(old)] == old
        (p / f).write_bytes(orig[:at] + new + orig[at + len(old):])
        try:
            outcome = _classify(p, baseline)
        finally:
            (p / f).write_bytes(orig)
        counts[outcome] += 1
        if outcome == "silent wrong":
            silent.append((f, at, orig[max(0, at - 30):at + 10]))
    return counts, silent


def test_metadata_edit_campaign(updated_index, tmp_path):
    want = os.environ.get("SPANN_FUZZ_EDITS", "600")
    edits = metadata_edits(updated_index, exhaustive=want == "all")
    files = {e[0] for e in edits}
    assert {"zarr.json", "postings/zarr.json", "vectors/zarr.json", "idmap/zarr.json",
            "label_lists/zarr.json"} <= files
    assert any(f.endswith("/delta/zarr.json") for f in files) and any("delta_labels" in f for f in files)
    if want != "all":  # a deterministic sample spread over every file
        rng = np.random.default_rng(0)
        by_file = {f: [e for e in edits if e[0] == f] for f in sorted(files)}
        per = max(1, int(want) // len(by_file))
        edits = [e for f in sorted(by_file) for e in
                 (by_file[f] if len(by_file[f]) <= per else
                  [by_file[f][i] for i in sorted(rng.choice(len(by_file[f]), per, replace=False))])]
    counts, silent = run_edits(updated_index, tmp_path, edits)
    print(f"\nmetadata edits: {len(edits)} tried in {len(files)} files: "
          + ", ".join(f"{o} {counts[o]}" for o in OUTCOMES))
    assert not silent, silent[:5]
    assert sum(counts.values()) == len(edits)


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
