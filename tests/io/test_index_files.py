"""The on-disk format: readable by plain zarr-python, validated at open, old formats refused."""

import json
import os
import shutil

import numpy as np
import pytest
import zarr

import spann
from spann.errors import IndexCorruptError, IndexNotFoundError
from spann.io.index_files import FORMAT_VERSION


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
    assert a["metric"] == "l2" and a["format_version"] == FORMAT_VERSION
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


# -- the root checksum, build ids and exact metadata of every file ------------------------------

@pytest.fixture(scope="module")
def updated(synth, tmp_path_factory):
    """A coded, labelled index (label lists too) after an add and a delete: generation 3."""
    x = synth[0][:3000]
    rng = np.random.default_rng(1)
    labels = np.where(rng.random(3000) < 0.95, rng.integers(0, 3, 3000), rng.integers(3, 30, 3000))
    p = tmp_path_factory.mktemp("upd") / "u.spann"
    with spann.build(x, p, metric="l2", encoding="sq8", labels=labels, progress=False) as idx:
        idx.add(x[:20] + 0.01, labels=np.full(20, 7))
        idx.delete(np.arange(0, 3000, 50))
    return p


def _edit_root(p, **changes):
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["spann"].update(changes)
    (p / "zarr.json").write_text(json.dumps(meta))


def _refused(p, match):
    with pytest.raises(IndexCorruptError, match=match) as e:
        spann.open(p)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_root_checksum_covers_the_commit_record(updated, tmp_path):
    """Each edit that used to change results silently (generation, live, next_id, metric) is
    refused at open, in one line naming the file."""
    from spann.io.index_files import ROOT_CHECKSUM, root_checksum
    meta = json.loads((updated / "zarr.json").read_text())
    a = meta["attributes"]["spann"]
    assert a["format_version"] == FORMAT_VERSION and a["generation"] == 3 and a[ROOT_CHECKSUM] == root_checksum(meta)
    for change in ({"generation": 1, "generation_path": "gen-000001"}, {"live": a["live"] + 1},
                   {"next_id": 1000}, {"metric": "cosine"}, {"layout": {**a["layout"], "label_width": 2}},
                   {"postings_path": "vectors"}, {"params": {**a["params"], "split_factor": 9.0}},
                   {"stats": {}}, {"format_version": 4}):
        p = _copy(updated, tmp_path / f"c{len(os.listdir(tmp_path))}")
        _edit_root(p, **change)
        if "format_version" in change:  # a format-4 root never had the checksum field
            _refused(p, f"format 4 metadata holds a {ROOT_CHECKSUM} field")
        else:
            msg = _refused(p, "root metadata checksum mismatch")
            assert f"{p}/zarr.json" in msg
    p = _copy(updated, tmp_path / "ws")  # formatting alone (what the checksum does not cover) is no change
    (p / "zarr.json").write_text(json.dumps(meta, indent=7))
    with spann.open(p) as idx:
        assert idx.generation == 3


def test_root_keys_are_exact(updated, tmp_path):
    from spann.io.index_files import seal_root
    meta = json.loads((updated / "zarr.json").read_text())
    for how, match in (("rename", "unknown key '#eneration'"), ("drop", "missing key 'splits'"),
                       ("extra", "unknown key 'extra'"), ("top", "unknown key 'consolidated_metadata'")):
        m = json.loads(json.dumps(meta))
        a = m["attributes"]["spann"]
        if how == "rename":
            a["#eneration"] = a.pop("generation")
        elif how == "drop":
            del a["splits"]
        elif how == "extra":
            a["extra"] = 1
        else:
            m["consolidated_metadata"] = None
        p = _copy(updated, tmp_path / how)
        (p / "zarr.json").write_text(json.dumps(m))
        _refused(p, "checksum mismatch" if how != "top" else match)
        (p / "zarr.json").write_text(json.dumps(seal_root(m)))  # resealed: the keys themselves are refused
        _refused(p, match)


def test_older_formats_open_without_a_checksum_and_keep_their_format(updated, tmp_path):
    from click.testing import CliRunner

    from spann.cli.main import cli
    from spann.io.index_files import ROOT_CHECKSUM
    from spann.tools.verify import verify_index
    p = _copy(updated, tmp_path / "v4")
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["spann"]["format_version"] = 4
    del meta["attributes"]["spann"][ROOT_CHECKSUM]
    (p / "zarr.json").write_text(json.dumps(meta))
    with spann.open(p) as idx:
        n = len(idx)
        idx.add(synth_row(idx), labels=[3])
    after = json.loads((p / "zarr.json").read_text())["attributes"]["spann"]
    assert after["format_version"] == 4 and ROOT_CHECKSUM not in after and after["live"] == n + 1
    s = verify_index(p)
    assert s["ok"] and not s["root_checksummed"]
    r = CliRunner().invoke(cli, ["verify", str(p)])
    assert r.exit_code == 0 and "without a checksum of its root metadata" in r.output
    # without a checksum, verify still catches a commit record that disagrees with the data
    _edit_root(p, live=after["live"] + 3)
    with pytest.raises(IndexCorruptError, match=f"says {after['live'] + 3} live vectors"):
        verify_index(p)
    _edit_root(p, live=after["live"], next_id=5)
    with pytest.raises(IndexCorruptError, match="next automatic id 5 is not above"):
        verify_index(p)
    _edit_root(p, next_id=after["next_id"], generation=2)  # the generation must name its directory
    _refused(p, "does not match the generation path")


def synth_row(idx):
    return np.full((1, idx.dim), 0.5, np.float32)


def test_build_ids_are_checked_on_every_array(updated, tmp_path):
    """The byte arrays (postings, vector store, id map, label lists, delta) and the generation
    group carry the build id too; another one is refused at open."""
    gen = json.loads((updated / "zarr.json").read_text())["attributes"]["spann"]["generation_path"]
    for rel in ("postings", "vectors", "idmap", "label_lists", f"{gen}/delta", gen, f"{gen}/dead_ids"):
        p = _copy(updated, tmp_path / rel.replace("/", "_"))
        meta = json.loads((p / rel / "zarr.json").read_text())
        meta["attributes"]["build_id"] = "0" * 32
        (p / rel / "zarr.json").write_text(json.dumps(meta))
        _refused(p, "another build|build_id")


def test_every_array_zarr_json_is_parsed_strictly(updated, tmp_path):
    """A renamed, missing or added key, or a value spann does not write, in any array's
    zarr.json is refused at open."""
    gen = json.loads((updated / "zarr.json").read_text())["attributes"]["spann"]["generation_path"]
    edits = [("postings", lambda m: m.update(configuration=m.pop("codecs")), "raw sharded layout"),
             ("postings", lambda m: m.pop("storage_transformers"), "missing key 'storage_transformers'"),
             ("vectors", lambda m: m["codecs"][0]["configuration"].update(
                 index_location=m["codecs"][0]["configuration"].pop("index_location")[::-1]), "raw sharded layout"),
             ("vectors", lambda m: m["codecs"][0]["configuration"]["index_codecs"][0].update(
                 **{"#onfiguration": m["codecs"][0]["configuration"]["index_codecs"][0].pop("configuration")}),
              "unknown key 'codecs.0.configuration.index_codecs.0.#onfiguration'"),
             ("vectors", lambda m: m["codecs"][0]["configuration"]["codecs"][0].update(configuration={}),
              "unknown key 'codecs.0.configuration.codecs.0.configuration'"),
             ("idmap", lambda m: m.update(dimension_names=None), "unknown key 'dimension_names'"),
             (f"{gen}/dead_ids", lambda m: m.update(dimension_names=None), "unknown key 'dimension_names'"),
             ("label_lists", lambda m: m.update(fill_value=7), "fill_value is 7"),
             (f"{gen}/heads", lambda m: m.update(extra=1), "unknown key 'extra'"),
             (f"{gen}/counts", lambda m: m["chunk_grid"].update(**{"#ame": m["chunk_grid"].pop("name")}),
              "unreadable|unknown key|raw layout"),
             (f"{gen}/offsets", lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[1]), "chunk_shape"),
             (f"{gen}/label_values", lambda m: m.update(zarr_format=3.0), "zarr_format is 3.0"),
             (gen, lambda m: m["attributes"].update(other=1), "unknown key 'attributes.other'")]
    for i, (rel, edit, match) in enumerate(edits):
        p = _copy(updated, tmp_path / f"e{i}")
        meta = json.loads((p / rel / "zarr.json").read_text())
        edit(meta)
        (p / rel / "zarr.json").write_text(json.dumps(meta))
        _refused(p, match)


def test_an_index_directory_named_zip_opens(synth_index, tmp_path):
    p = _copy(synth_index.path, tmp_path / "idx.zip")
    with spann.open(p) as idx:
        assert not idx.read_only and len(idx) == len(synth_index)
        np.testing.assert_array_equal(idx.search(synth_index.heads[:2], 3).ids,
                                      synth_index.search(synth_index.heads[:2], 3).ids)


def _array_dirs(root):
    """The directories of every array in an index (those whose zarr.json says node_type array)."""
    for d, _, files in os.walk(root):
        if "zarr.json" in files and json.loads(open(os.path.join(d, "zarr.json")).read())["node_type"] == "array":
            yield d


def test_zarr_python_reads_what_spann_reads_in_a_built_and_an_updated_index(synth_index, updated):
    """zarr-python writes every array; zarr-python opens the index and reads back what spann's
    own reader reads (a small array, posting bytes, and the update's delta)."""
    from spann.format.zarr_v3 import read_small_array
    for path in (synth_index.path, updated):
        g = zarr.open_group(str(path), mode="r")
        a = g.attrs["spann"]
        gen = a["generation_path"]
        with spann.open(path) as idx:
            offsets = read_small_array(str(path / gen / "offsets"), dtype=np.int64, shape=(None,))
            np.testing.assert_array_equal(g[gen]["offsets"][:], offsets)
            counts = read_small_array(str(path / gen / "counts"), dtype=np.int32, shape=offsets.shape)
            np.testing.assert_array_equal(g[gen]["counts"][:], counts)
            np.testing.assert_array_equal(g[gen]["heads"][:], idx.heads)
            postings = g[a["postings_path"]]
            for h in (0, int(np.argmax(counts))):
                lo, n = int(offsets[h]), idx.layout.list_bytes(int(counts[h]))
                assert n > 0
                np.testing.assert_array_equal(postings[lo:lo + n], idx.store.view.u8[lo:lo + n])
        if path == updated:
            d = g[gen]["delta"]
            assert d.shape[0] > 0 and d[:64].dtype == np.uint8
            np.testing.assert_array_equal(g[gen]["dead_ids"][:], read_small_array(
                str(path / gen / "dead_ids"), dtype=np.int64, shape=(None,)))


def _legacy_meta(meta):
    """An array's zarr.json in its hand-written equivalent form."""
    meta = dict(meta)
    meta.pop("storage_transformers")
    meta["dimension_names"] = None
    codecs = meta["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        codecs = codecs[0]["configuration"]["codecs"]
    codecs[0]["configuration"] = {"endian": "little"}
    return meta


def test_indexes_with_hand_written_array_metadata_open(updated, tmp_path):
    """Both metadata forms open (zarr-python's, and the hand-written equivalent on every
    array at once) with identical results; a mix of both forms inside one file does not."""
    p = _copy(updated, tmp_path / "legacy")
    n = 0
    for d in _array_dirs(p):
        f = os.path.join(d, "zarr.json")
        m = _legacy_meta(json.loads(open(f).read()))
        open(f, "w").write(json.dumps(m, indent=2))
        n += 1
    assert n >= 10
    q = np.random.default_rng(3).random((5, 32)).astype(np.float32)
    with spann.open(updated) as a, spann.open(p) as b:
        ra, rb = a.search(q[:, :a.dim], 10), b.search(q[:, :b.dim], 10)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.distances, rb.distances)
    m = json.loads((p / "postings" / "zarr.json").read_text())
    m["storage_transformers"] = []
    (p / "postings" / "zarr.json").write_text(json.dumps(m))
    _refused(p, "unknown key 'dimension_names'")


def _hand_written_shard(data, shard_bytes, chunk_bytes):
    """A shard file by the zarr v3 sharding spec, written by hand: raw chunks in order, the last
    zero-padded, absent chunks beyond, then the index and its crc32c."""
    from spann.format.zarr_v3 import ABSENT, crc32c
    present = -(-data.size // chunk_bytes)
    index = np.full((shard_bytes // chunk_bytes, 2), ABSENT, dtype="<u8")
    index[:present, 0] = np.arange(present, dtype=np.uint64) * np.uint64(chunk_bytes)
    index[:present, 1] = chunk_bytes
    body = data.tobytes() + bytes(present * chunk_bytes - data.size) + index.tobytes()
    return body + crc32c(index.tobytes()).to_bytes(4, "little")


@pytest.mark.parametrize("used", [0, 1, 4096, 5000, 3 * 4096 + 7, 16 * 4096])
def test_zarr_python_writes_shards_in_spanns_raw_layout(tmp_path, used):
    from spann.format.zarr_v3 import check_shard_index, shard_index_bytes, write_shard
    data = np.random.default_rng(used).integers(0, 256, used, dtype=np.uint8)
    data[:4096 + 10] = 0  # an all-zero chunk is stored, not left absent
    f = tmp_path / "c" / "0"
    size = write_shard(str(f), data, 16 * 4096, 4096)
    raw = f.read_bytes()
    assert size == len(raw) and raw == _hand_written_shard(data, 16 * 4096, 4096)
    n = shard_index_bytes(16 * 4096, 4096)
    assert check_shard_index(raw[-n:], size, 16 * 4096, 4096, "x") == -(-used // 4096) * 4096


def test_the_metadata_spann_accepts_is_what_zarr_python_writes(tmp_path):
    """The readers' templates are zarr-python's output (a zarr upgrade that changes it fails
    here, not at a user's open)."""
    from spann.format.zarr_v3 import postings_meta, small_array_meta, write_postings_meta, write_small_array
    write_postings_meta(str(tmp_path / "p"), 1 << 22, 1 << 20, 1 << 16, {"build_id": "b"})
    assert json.loads((tmp_path / "p" / "zarr.json").read_text()) == postings_meta(1 << 22, 1 << 20, 1 << 16,
                                                                                  {"build_id": "b"})
    for dt in ("float32", "int64", "int32", "uint8"):
        write_small_array(str(tmp_path / dt), np.ones((5, 3), dt), {"build_id": "b"})
        assert json.loads((tmp_path / dt / "zarr.json").read_text()) == small_array_meta((5, 3), np.dtype(dt), 5,
                                                                                        {"build_id": "b"})
