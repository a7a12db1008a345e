"""The one writer of the format: a build's IndexWriter and an update's GenerationWriter share
how arrays, shards and their checksums are written; a generation is committed by the root."""

import json
import os

import numpy as np
import pytest
import zarr

import spann
from spann.io.index_files import read_root
from spann.io.index_writer import GenerationWriter, IndexWriter, writer_lock


def _writer_for(path):
    attrs, _ = read_root(str(path), path=str(path / "zarr.json"))
    return attrs, GenerationWriter(path, attrs)


def test_a_generation_is_written_beside_the_current_one_and_committed_by_the_root(synth, tmp_path):
    spann.build(synth[0][:400], tmp_path / "i", metric="l2", progress=False).close()
    p = tmp_path / "i"
    attrs, w = _writer_for(p)
    assert w.generation == 2 and w.gen_dir == p / "gen-000002" and w.gen_dir.is_dir()
    data = np.arange(10_000, dtype=np.uint8)
    written = w.write_bytes("delta", data, 12_288, 4096, 1024)
    assert written > 0 and sorted(os.listdir(w.gen_dir / "delta" / "c")) == ["0", "1", "2"]
    assert [r[0] for r in w.crcs["delta"].values()] == [4096, 4096, 10_000 - 8192]
    for name in os.listdir(w.previous):
        if name != "zarr.json":
            w.link_previous(name)
    # the new shards are valid zarr, with the build's id, before anything is committed
    a = zarr.open_array(str(w.gen_dir / "delta"), mode="r")
    np.testing.assert_array_equal(a[:10_000], data)
    assert a.attrs["build_id"] == attrs["build_id"]
    assert read_root(str(p), path=str(p / "zarr.json"))[0]["generation"] == 1  # not yet committed
    w.commit({**attrs, "delta_path": None, "delta_labels_path": None, "heads_now": 0, "splits": 0})
    new, _ = read_root(str(p), path=str(p / "zarr.json"))
    assert new["generation"] == 2 and new["generation_path"] == "gen-000002"
    assert new["updates_crc32c"]["delta"] == w.crcs["delta"]
    assert not (p / "gen-000001").exists()  # the previous generation is gone once the root moved on


def test_an_aborted_generation_leaves_the_index_as_it_was(synth, tmp_path):
    spann.build(synth[0][:400], tmp_path / "i", metric="l2", progress=False).close()
    p = tmp_path / "i"
    before = (p / "zarr.json").read_bytes()
    _, w = _writer_for(p)
    w.write_array("dead_ids", np.arange(5, dtype=np.int64))
    w.abort()
    assert not w.gen_dir.exists() and (p / "zarr.json").read_bytes() == before
    with spann.open(p) as idx:
        assert idx.generation == 1 and len(idx) == 400


def test_orphans_of_an_interrupted_batch_are_removed_by_the_next(synth, tmp_path):
    spann.build(synth[0][:400], tmp_path / "i", metric="l2", progress=False).close()
    p = tmp_path / "i"
    (p / "gen-000002").mkdir()
    (p / "gen-000002" / "junk").write_bytes(b"x")
    (p / "zarr.json.tmp-abc").write_text("{}")
    with writer_lock(p):
        _, w = _writer_for(p)
        assert sorted(os.listdir(w.gen_dir)) == [] and not (p / "zarr.json.tmp-abc").exists()
        w.abort()


def test_a_build_and_an_update_write_byte_arrays_the_same_way(synth, tmp_path):
    """Same bytes, same geometry -> the same shard files and records from either writer."""
    data = np.random.default_rng(0).integers(0, 256, 9000, dtype=np.uint8)
    b = IndexWriter(tmp_path / "built")
    b.write_bytes("x", data, 12_288, 4096, 1024)
    spann.build(synth[0][:400], tmp_path / "i", metric="l2", progress=False).close()
    _, g = _writer_for(tmp_path / "i")
    g.write_bytes("x", data, 12_288, 4096, 1024)
    assert b.crcs["x"] == g.crcs["x"]
    for s in ("0", "1", "2"):
        assert (b.bytes_dir("x") / "c" / s).read_bytes() == (g.bytes_dir("x") / "c" / s).read_bytes()
    meta_b = json.loads((b.bytes_dir("x") / "zarr.json").read_text())
    meta_g = json.loads((g.bytes_dir("x") / "zarr.json").read_text())
    meta_b["attributes"].pop("build_id"), meta_g["attributes"].pop("build_id")
    assert meta_b == meta_g
    b.abort()
    g.abort()
    assert not b.tmp.exists()


def test_a_checkpointed_shard_is_recorded_for_a_resumed_build(tmp_path):
    w = IndexWriter(tmp_path / "r", fingerprint="f")
    w.begin_array("x", 8192, 4096, 1024)
    w.write_shard("x", 0, np.ones(4096, np.uint8))
    assert w.shard_done("x", 0) > 0 and w.shard_done("x", 1) == 0
    with pytest.raises(KeyError):
        w.write_shard("never_begun", 0, np.ones(8, np.uint8))
    w.abort()
