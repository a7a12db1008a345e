"""Indexes outside a local directory: a zip file, an object store (a loopback S3 server that the
tests start and stop: moto's server mode), and the fetch cache between them and the kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import zarr

import spann
from spann.errors import IndexCorruptError, IndexExistsError, ParameterError, QueryError
from spann.io.publish import ZIP_ALIGN, export_index
from spann.io.sources import ZipStore


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-6)


def _plain_zip(src, dest, compression=zipfile.ZIP_STORED):
    """A zip of an index directory as a user would make it (members not aligned)."""
    with zipfile.ZipFile(dest, "w", compression=compression) as z:
        for root, _dirs, files in os.walk(src):
            for f in sorted(files):
                p = os.path.join(root, f)
                z.write(p, os.path.join("myindex", os.path.relpath(p, src)))  # under one top-level directory
    return dest


# -- zip ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["synth_index", "synth_full"])
def test_exported_zip_is_aligned_mapped_and_searches_like_the_directory(synth, which, request, tmp_path):
    idx = request.getfixturevalue(which)
    q = synth[1][:40]
    z = export_index(idx.path, tmp_path / "i.zip")
    st = ZipStore(z)
    assert st.aligned("") and all(m[0] % ZIP_ALIGN == 0 for m in st.members.values())
    assert set(st.members) == {str(p.relative_to(idx.path)) for p in idx.path.rglob("*")
                               if p.is_file() and p.name != ".spann-lock"}
    st.close()
    with spann.open(z) as zi:
        assert zi.read_only and not zi.fetching  # shards are mapped in place
        _same(idx.search(q, 10), zi.search(q, 10))
        _same(idx.search(q[0], 10), zi.search(q[0], 10))
        assert zi.info()["disk_bytes"] == sum(p.stat().st_size for p in idx.path.rglob("*") if p.is_file())
        with pytest.raises(QueryError, match="read-only"):
            zi.delete([0])
        with pytest.raises(QueryError, match="read-only"):
            zi.add(synth[0][:1])


def test_zarr_python_opens_the_zip(synth_full, tmp_path):
    z = export_index(synth_full.path, tmp_path / "i.zip")
    g = zarr.open_group(zarr.storage.ZipStore(z, mode="r"), mode="r")
    a = g.attrs["spann"]
    gen = g[a["generation_path"]]
    np.testing.assert_array_equal(gen["heads"][:], synth_full.heads)
    h = int(np.argmax(synth_full.counts))
    off, c = int(gen["offsets"][h]), int(gen["counts"][h])
    nb = synth_full.layout.list_bytes(c)
    np.testing.assert_array_equal(g[a["postings_path"]][off:off + nb], synth_full.store.view.u8[off:off + nb])


def test_plain_zip_is_fetched_on_demand(synth, synth_index, tmp_path):
    q = synth[1][:40]
    z = _plain_zip(synth_index.path, tmp_path / "plain.zip")
    with spann.open(z, cache_bytes=0) as zi:
        assert zi.fetching
        r = zi.search(q, 10)
        _same(synth_index.search(q, 10), r)
        one = zi.search(q[3], 10)
        assert one.requests[0] >= one.lists_read[0] > 0  # lists + re-rank pages, nothing cached
        assert zi.cache.resident_bytes == 0
        with pytest.raises(QueryError, match="object-store"):
            zi.get([1])


def test_zip_with_some_members_aligned_is_fetched_whole(synth, synth_index, tmp_path):
    """A hand-made zip where only some arrays happen to be page-aligned: nothing is mapped
    (a mapped postings array beside an unfetched vector store would scan zeros)."""
    src = synth_index.path
    z = tmp_path / "mixed.zip"
    with zipfile.ZipFile(z, "w") as zz:  # postings first and padded to a page; the rest unaligned
        names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
        for k in sorted(names, key=lambda k: not k.startswith("postings/c/")):
            zi = zipfile.ZipInfo(k)
            if k.startswith("postings/c/"):
                at = zz.fp.tell() + 30 + len(k)
                zi.extra = b"\x35\xd9" + ((-(at + 4)) % 4096).to_bytes(2, "little") + bytes((-(at + 4)) % 4096)
            zz.writestr(zi, (src / k).read_bytes())
    st = ZipStore(z)
    assert st.aligned("postings/c/") and not st.aligned("")
    st.close()
    with spann.open(z) as zi:
        assert zi.fetching
        _same(synth_index.search(synth[1][:30], 10), zi.search(synth[1][:30], 10))


def test_compressed_zip_is_refused_in_one_line(synth_index, tmp_path):
    z = _plain_zip(synth_index.path, tmp_path / "deflated.zip", zipfile.ZIP_DEFLATED)
    with pytest.raises(IndexCorruptError, match="compressed") as e:
        spann.open(z)
    assert "\n" not in str(e.value)


def test_zip_export_refuses_to_replace_without_overwrite(synth_index, tmp_path):
    z = export_index(synth_index.path, tmp_path / "i.zip")
    with pytest.raises(IndexExistsError, match="already exists"):
        export_index(synth_index.path, z)
    export_index(synth_index.path, z, overwrite=True)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zz:
        zz.writestr("notes.txt", "mine")
    with pytest.raises(IndexExistsError, match="not a zipped spann index"):
        export_index(synth_index.path, other, overwrite=True)
    assert zipfile.ZipFile(other).namelist() == ["notes.txt"]
    with pytest.raises(ParameterError, match=".zip file or an object-store URL"):
        export_index(synth_index.path, tmp_path / "x.tar")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_build_straight_into_a_zip(synth, tmp_path):
    x, q = synth[0][:4000], synth[1][:20]
    ref = spann.build(x, tmp_path / "d", metric="l2", progress=False)
    zi = spann.build(x, tmp_path / "b.zip", metric="l2", progress=False)
    _same(ref.search(q, 5), zi.search(q, 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.zip", "d"]  # the work directory is gone
    ref.close()
    zi.close()


# -- the fetch cache ---------------------------------------------------------------------------

def test_fetch_cache_stays_within_its_budget_and_results_hold(synth, synth_index, tmp_path):
    q = synth[1]
    z = _plain_zip(synth_index.path, tmp_path / "plain.zip")
    want = synth_index.search(q, 10)
    budget = 300_000
    with spann.open(z, cache_bytes=budget) as zi:
        for a in range(0, q.shape[0], 7):  # many small batches: evictions between them
            _same(synth_index.search(q[a:a + 7], 10), zi.search(q[a:a + 7], 10))
            assert zi.cache.resident_bytes + zi.cache.residue_bytes <= budget
        assert zi.cache.requests > 0
        again = zi.search(q, 10)
        _same(want, again)
        zi.search(q[:1], 10)
        warm = zi.search(q[:1], 10)
        assert warm.requests[0] == 0  # what the last search read is still cached
        zi.evict()
        assert zi.cache.resident_bytes == 0 and zi.search(q[:1], 10).requests[0] > 0


# -- object storage on loopback ----------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (started and stopped here) with a bucket; the AWS_*
    environment points at it."""
    pytest.importorskip("obstore")
    moto_server = pytest.importorskip("moto.server")
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import urllib.request

    import obstore
    from obstore.store import S3Store
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/bkt", method="PUT")).read()  # make bucket
    yield {"env": env, "client": S3Store("bkt", endpoint=env["AWS_ENDPOINT_URL"], client_options={"allow_http": True}),
           "obstore": obstore}
    srv.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("which", ["synth_index", "synth_full"])
def test_s3_index_searches_like_the_local_one(s3, synth, which, request):
    idx = request.getfixturevalue(which)
    q = synth[1][:60]
    url = f"s3://bkt/{which}"
    export_index(idx.path, url)
    with spann.open(url, cache_bytes=0) as r:
        assert r.read_only and r.fetching
        _same(idx.search(q, 10), r.search(q, 10))
        for i in range(5):
            one = r.search(q[i], 10)
            _same(idx.search(q[i], 10), one)
            if which == "synth_full":  # one ranged GET per list read (nothing cached)
                assert one.requests[0] == one.lists_read[0]
            else:  # and one per vector-store page of the re-ranked candidates
                assert one.requests[0] > one.lists_read[0]
            assert one.bytes_fetched[0] > 0
        assert r.info()["disk_bytes"] == sum(p.stat().st_size for p in idx.path.rglob("*") if p.is_file())
    with spann.open(url) as r:  # with the cache: a repeated query fetches nothing
        first = r.search(q[7], 10)
        again = r.search(q[7], 10)
        assert first.requests[0] > 0 and again.requests[0] == 0
        _same(first, again)


def test_s3_build_overwrite_and_damage(s3, synth, tmp_path):
    x, q = synth[0][:3000], synth[1][:10]
    url = "s3://bkt/built"
    r = spann.build(x, url, metric="l2", progress=False)
    ref = spann.build(x, tmp_path / "ref", metric="l2", progress=False)
    _same(ref.search(q, 5), r.search(q, 5))
    r.close()
    with pytest.raises(IndexExistsError, match="already holds an index"):
        spann.build(x, url, metric="l2", progress=False)
    old_reader = spann.open(url, cache_bytes=0)
    r = spann.build(x[:2000], url, metric="l2", progress=False, overwrite=True)
    assert r.n == 2000
    r.close()
    with pytest.raises(IndexCorruptError, match="changed since the index was opened"):
        old_reader.search(q, 5)  # never the new build's bytes under the old metadata
    old_reader.close()
    ob, cl = s3["obstore"], s3["client"]
    keys = [m["path"] for page in ob.list(cl, prefix="built/postings/c/") for m in page]
    ob.delete(cl, keys[0])
    with pytest.raises(IndexCorruptError, match="shard 0 is missing") as e:
        spann.open(url)
    assert "\n" not in str(e.value)
    ob.put(cl, "foreign/data.txt", b"not an index")
    with pytest.raises(IndexExistsError, match="not part of a spann index"):
        export_index(ref.path, "s3://bkt/foreign", overwrite=True)
    # an interrupted export (no root zarr.json) is replaced only with overwrite; nothing else is touched
    ob.delete(cl, "built/zarr.json")
    with pytest.raises(IndexExistsError, match="incomplete spann index"):
        export_index(ref.path, url)
    export_index(ref.path, url, overwrite=True)
    with spann.open(url) as again:
        _same(ref.search(q, 5), again.search(q, 5))
    ob.put(cl, "built/NOTES.md", b"mine")
    with pytest.raises(IndexExistsError, match="not part of a spann index"):
        export_index(ref.path, url, overwrite=True)
    assert bytes(ob.get(cl, "built/NOTES.md").bytes()) == b"mine"
    with pytest.raises(spann.IndexNotFoundError, match="not a spann index"):
        spann.open("s3://bkt/nothing-here")
    ref.close()


def test_cli_on_an_s3_index(s3, synth, synth_full, tmp_path):
    from spann.datasets.formats import read_vectors, write_vectors
    q = synth[1][:20]
    qf = tmp_path / "q.fbin"
    write_vectors(qf, q)
    url = "s3://bkt/cli-index"
    env = {**os.environ, **s3["env"]}
    run = lambda *a: subprocess.run([sys.executable, "-m", "spann.cli.main", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True)
    p = run("export", str(synth_full.path), url, "-q")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "ids.ibin"
    p = run("search", url, str(qf), "-k", "5", "-o", str(out), "-q")
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(read_vectors(out, ids=True), synth_full.search(q, 5).ids)
    p = run("info", url, "--json", "-q")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["n"] == synth_full.n
    p = run("info", "s3://bkt/cli-index", "--storage-option", "bogus", "-q")
    assert p.returncode != 0 and "KEY=VALUE" in p.stderr


# -- a plain web server ------------------------------------------------------------------------

def test_index_over_plain_http_fetches_each_query_s_lists_concurrently(synth, synth_full):
    from spann.bench.range_server import RangeServer
    q = synth[1][:30]
    with RangeServer(synth_full.path, delay_ms=50) as srv:  # the delay keeps concurrent GETs overlapping
        with spann.open(srv.url + "/", cache_bytes=0) as r:
            assert r.fetching and r.info()["disk_bytes"] == -1  # (a web server does not list)
            before = srv.requests
            one = r.search(q[0], 10)
            assert one.lists_read[0] >= 2
            assert srv.requests - before == one.requests[0] == one.lists_read[0]  # one ranged GET per list
            assert srv.max_in_flight > 1  # ... all in flight together
            _same(synth_full.search(q, 10), r.search(q, 10))


def test_base_in_s3_with_storage_options(s3, synth, tmp_path):
    from spann.datasets.formats import write_vectors
    x, q = synth[0][:3000], synth[1][:10]
    write_vectors(tmp_path / "b.fbin", x)
    s3["obstore"].put(s3["client"], "bases/b.fbin", tmp_path / "b.fbin")
    ref = spann.build(x, tmp_path / "ref", metric="l2", progress=False)
    opts = {"region": "us-east-1", "endpoint": s3["env"]["AWS_ENDPOINT_URL"]}
    got = spann.build("s3://bkt/bases/b.fbin", tmp_path / "got", metric="l2", progress=False, storage_options=opts)
    _same(ref.search(q, 5), got.search(q, 5))
    z = spann.build("s3://bkt/bases/b.fbin", tmp_path / "got.zip", metric="l2", progress=False, storage_options=opts)
    _same(ref.search(q, 5), z.search(q, 5))
    with pytest.raises(ParameterError, match="object-store URLs only"):
        spann.build(x, tmp_path / "bad", metric="l2", progress=False, storage_options=opts)
    for i in (ref, got, z):
        i.close()
