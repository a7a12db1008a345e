"""The on-disk format: readable by plain zarr-python, validated at open, old formats refused."""

import json
import os
import shutil

import numpy as np
import pytest
import zarr

import spann
from spann.errors import IndexCorruptError, IndexNotFoundError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def read_list_with_zarr(path, h):
    """The README's recipe, verbatim: list h through plain zarr-python -> (ids, vectors, codes)."""
    g = zarr.open_group(str(path), mode="r")
    a = g.attrs["spann"]
    lay, gen = a["layout"], g[a["generation_path"]]
    off, c = int(gen["offsets"][h]), int(gen["counts"][h])
    up8 = lambda v: -(-v // 8) * 8  # noqa: E731  (sections start 8-byte aligned)
    ib, L, A, B = lay["id_bytes"], lay["label_width"], lay["aux_floats"], lay["code_bytes"]
    cod = up8(up8(up8(ib * c) + 4 * L * c) + 4 * A * c)
    raw = g[a["postings_path"]][off:off + cod + c * B]
    ids = raw[:ib * c].view("<i8" if ib == 8 else "<i4").astype("<i8")
    codes = raw[cod:cod + c * B].reshape(c, B)
    if lay["encoding"] == "full":
        return ids, codes.view(lay["dtype"]).reshape(c, lay["dim"]), None
    # coded: ids are rows of the vector store; a row is [vector][pad to 8][int64 id]
    dt, D = np.dtype(lay["dtype"]), lay["dim"]
    rb = up8(D * dt.itemsize) + 8
    rpp, pb = max(1, 4096 // rb), (4096 if rb <= 4096 else -(-rb // 4096) * 4096)
    store = g[a["vectors_path"]]
    starts = [(r // rpp) * pb + (r % rpp) * rb for r in ids]
    recs = [store[o:o + rb] for o in starts]
    vecs = np.stack([r[:D * dt.itemsize].view(dt) for r in recs])
    return np.array([r[rb - 8:].view("<i8")[0] for r in recs]), vecs, codes


@pytest.mark.parametrize("which", ["synth_index", "synth_full"])
def test_plain_zarr_reads_what_search_scans(synth, which, read_list, request):
    idx = request.getfixturevalue(which)
    x = synth[0]
    H = idx.heads.shape[0]
    for h in list(range(0, H, 97)) + [int(np.argmax(idx.counts))]:
        zi, zv, zc = read_list_with_zarr(idx.path, h)
        fi, fv, fc = read_list(idx, h)
        np.testing.assert_array_equal(zi, fi)
        np.testing.assert_array_equal(zv, fv)
        np.testing.assert_array_equal(zv, x[zi])
        if zc is not None:
            np.testing.assert_array_equal(zc, fc)
    g = zarr.open_group(str(idx.path), mode="r")
    a = g.attrs["spann"]
    gen = g[a["generation_path"]]
    np.testing.assert_array_equal(gen["heads"][:], idx.heads)
    np.testing.assert_array_equal(gen["neighbors"][:], idx.neighbors)
    assert a["metric"] == "l2" and a["format_version"] == 4
    assert g[a["postings_path"]].metadata.codecs[0].__class__.__name__ == "ShardingCodec"


def test_old_format_is_refused_in_one_line(synth_index, tmp_path):
    d = _copy(synth_index.path, tmp_path / "v1")
    meta = json.loads((d / "zarr.json").read_text())
    meta["attributes"]["spann"]["format_version"] = 1
    (d / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match=r"format 1 is not supported.*rebuild") as e:
        spann.open(d)
    assert "\n" not in str(e.value)


def test_missing_and_damaged_parts(synth_index, tmp_path):
    good = synth_index.path
    gen = json.loads((good / "zarr.json").read_text())["attributes"]["spann"]["generation_path"]
    with pytest.raises(IndexNotFoundError):
        spann.open(tmp_path / "nothing")
    with pytest.raises(IndexNotFoundError, match="not a spann index"):
        spann.open(tmp_path)
    # a flipped byte in a shard index -> checksum error
    d = _copy(good, tmp_path / "crc")
    shard = d / "postings" / "c" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match="checksum"):
        spann.open(d)
    # a flipped byte in an in-RAM array -> checksum error (every chunk carries a crc32c)
    d = _copy(good, tmp_path / "crc2")
    chunk = d / gen / "entries" / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[0] ^= 0x01
    chunk.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match="checksum"):
        spann.open(d)
    # missing shard
    d = _copy(good, tmp_path / "noshard")
    os.remove(d / "postings" / "c" / "0")
    with pytest.raises(IndexCorruptError, match="missing"):
        spann.open(d)
    # missing head graph
    d = _copy(good, tmp_path / "nograph")
    shutil.rmtree(d / gen / "neighbors")
    with pytest.raises(IndexCorruptError, match="neighbors"):
        spann.open(d)
    # truncated shard
    d = _copy(good, tmp_path / "trunc")
    shard = d / "postings" / "c" / "0"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(IndexCorruptError):
        spann.open(d)
    # an interrupted build (no attributes yet) does not open as an index
    d = _copy(good, tmp_path / "noattrs")
    meta = json.loads((d / "zarr.json").read_text())
    meta["attributes"] = {}
    (d / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(IndexNotFoundError, match="not a complete"):
        spann.open(d)


def test_arrays_of_another_build_are_refused(synth, tmp_path):
    x = synth[0][:3000]
    a = spann.build(x, tmp_path / "a", metric="l2", progress=False)
    b = spann.build(x, tmp_path / "b", metric="l2", progress=False)
    a.close()
    b.close()
    gen = json.loads((tmp_path / "a" / "zarr.json").read_text())["attributes"]["spann"]["generation_path"]
    shutil.rmtree(tmp_path / "a" / gen / "counts")
    shutil.copytree(tmp_path / "b" / gen / "counts", tmp_path / "a" / gen / "counts")
    with pytest.raises(IndexCorruptError, match="another build"):
        spann.open(tmp_path / "a")
