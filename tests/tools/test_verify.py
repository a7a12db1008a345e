"""A damaged index: refused at open when metadata or in-RAM arrays lie, never a crash at search,
and ``spann verify`` finds damage in the mapped data that opening does not read."""

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import spann
from spann.cli.main import cli
from spann.datasets import synthetic_array
from spann.errors import IndexCorruptError, ParameterError, QueryError
from spann.format.zarr_v3 import read_json, write_json, write_small_array
from spann.io.index_files import ROOT_CHECKSUM, seal_root
from spann.tools.verify import verify_index

X = synthetic_array(3000, 16, seed=21)
Q = synthetic_array(40, 16, seed=21, stream=1, n_hint=3000)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    out = {}
    for enc in ("full", "sq8", "rabitq"):
        spann.build(X, d / enc, metric="l2", progress=False, encoding=enc).close()
        out[enc] = d / enc
    return out


def _copy(src, tmp_path, name="c"):
    return shutil.copytree(src, tmp_path / name)


def _attrs(path):
    return read_json(str(path / "zarr.json"))["attributes"]["spann"]


def _rewrite(path, name, data):
    """Replace in-RAM array ``name`` by ``data`` with a valid checksum and the right build id."""
    a = _attrs(path)
    d = path / a["generation_path"] / name
    shutil.rmtree(d)
    write_small_array(str(d), data, {"build_id": a["build_id"]})


def _posting_bytes(path):
    return path / "postings" / "c" / "0"


@pytest.mark.parametrize("enc", ["full", "sq8", "rabitq"])
def test_verify_passes_on_a_sound_index(built, enc):
    s = verify_index(built[enc])
    assert s["ok"] and s["vectors"] == len(X) and s["shards_checksummed"] >= 1
    r = CliRunner().invoke(cli, ["verify", str(built[enc])])
    assert r.exit_code == 0 and "OK" in r.output


@pytest.mark.parametrize("enc", ["full", "sq8"])
def test_verify_finds_a_flipped_data_bit_that_open_does_not_read(built, enc, tmp_path):
    p = _copy(built[enc], tmp_path)
    f = _posting_bytes(p)
    b = bytearray(f.read_bytes())
    b[100] ^= 0x10
    f.write_bytes(bytes(b))
    with spann.open(p) as idx:
        idx.search(Q, 10)  # opens and searches: the data is mapped, not read at open
    with pytest.raises(IndexCorruptError, match="postings/c/0: data checksum mismatch"):
        verify_index(p)
    r = CliRunner().invoke(cli, ["verify", str(p)])
    assert r.exit_code == 1 and "checksum mismatch" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("enc", ["sq8", "rabitq"])
def test_store_rows_out_of_range_never_crash_a_search(built, enc, tmp_path):
    """Every posting entry's row set to 10^9 (valid structure, bytes with no per-entry check):
    search skips them (no segfault, no ZeroDivisionError), verify names the damage."""
    p = _copy(built[enc], tmp_path)
    with spann.open(p) as idx:
        lay, offsets, counts = idx.layout, idx.offsets.copy(), idx.counts.copy()
    raw = np.fromfile(_posting_bytes(p), np.uint8)
    for o, c in zip(offsets, counts):
        raw[o:o + 4 * c].view("<i4")[:] = 10**9
        if enc == "rabitq":  # and zero factors: a division by zero in a careless kernel
            ao = o + lay.aux_offset(int(c))
            raw[ao:ao + 8 * c] = 0
    raw.tofile(_posting_bytes(p))
    with spann.open(p) as idx:
        r = idx.search(Q, 10)
        assert (r.ids == -1).all()
        one = idx.search(Q[0], 10)
        assert (one.ids == -1).all()
    with pytest.raises(IndexCorruptError, match="(store rows|ids) outside 0..2999"):
        verify_index(p)


def test_overlapping_lists_with_valid_checksums_are_refused_at_open(built, tmp_path):
    for enc in ("full", "sq8", "rabitq"):
        p = _copy(built[enc], tmp_path, enc)
        with spann.open(p) as idx:
            off = idx.offsets.copy()
        _rewrite(p, "offsets", off[::-1].copy())
        with pytest.raises(IndexCorruptError, match="overlap|misaligned|outside|crosses"):
            spann.open(p)


def test_encoding_changed_in_metadata_is_refused(built, tmp_path):
    p = _copy(built["sq8"], tmp_path)
    meta = read_json(str(p / "zarr.json"))
    meta["attributes"]["spann"]["layout"]["encoding"] = "full"
    write_json(str(p / "zarr.json"), meta)
    with pytest.raises(IndexCorruptError, match="checksum mismatch"):
        spann.open(p)
    write_json(str(p / "zarr.json"), seal_root(meta))  # the same edit with a valid checksum
    with pytest.raises(IndexCorruptError):
        spann.open(p)


def test_oversized_array_shape_is_refused_before_probing_shards(built, tmp_path, monkeypatch):
    """A 2**46-byte shape used to make open probe ~2**30 shard paths (a hang): it is refused
    from the metadata alone, before any shard file of that array is opened."""
    p = _copy(built["sq8"], tmp_path)
    real_open = os.open
    opened = []

    def counting_open(path, *args, **kw):
        opened.append(str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", counting_open)
    for name in ("vectors", "postings"):
        meta = read_json(str(p / name / "zarr.json"))
        old = meta["shape"]
        meta["shape"] = [2**46]
        write_json(str(p / name / "zarr.json"), meta)
        opened.clear()
        with pytest.raises(IndexCorruptError, match="bytes|larger"):
            spann.open(p)
        assert not [o for o in opened if o.startswith(f"{name}/c/")]
        meta["shape"] = old
        write_json(str(p / name / "zarr.json"), meta)


def test_malformed_metadata_values_are_one_line_errors(built, tmp_path):
    p = _copy(built["sq8"], tmp_path)
    meta = read_json(str(p / "zarr.json"))
    meta["attributes"]["spann"]["store"]["dtype"] = "garbage"
    write_json(str(p / "zarr.json"), seal_root(meta))  # past the checksum: the value itself is refused
    with pytest.raises(IndexCorruptError) as e:
        spann.open(p)
    assert "\n" not in str(e.value) and "checksum" not in str(e.value)
    meta["attributes"]["spann"]["store"]["dtype"] = "float32"
    del meta["attributes"]["spann"]["stats"]
    write_json(str(p / "zarr.json"), seal_root(meta))
    with pytest.raises(IndexCorruptError, match="missing key 'stats'"):  # format 5: every key is required
        spann.open(p)
    meta["attributes"]["spann"]["format_version"] = 4  # an older index without statistics
    del meta["attributes"]["spann"][ROOT_CHECKSUM]
    write_json(str(p / "zarr.json"), meta)
    r = CliRunner().invoke(cli, ["info", str(p)])
    assert r.exit_code == 0 and "build statistics: missing" in r.output


def test_huge_queries_and_wrong_params_type_are_refused(built):
    with spann.open(built["sq8"]) as idx:
        with pytest.raises(QueryError, match="too large in magnitude"):
            idx.search(Q[:2] * np.float32(1e20), 10)
        with pytest.raises(ParameterError, match="params must be a spann.SearchParams"):
            idx.search(Q[:2], 10, params={"max_postings": 4})


def test_verify_reports_a_lost_vector(built, tmp_path):
    """A full index whose lists no longer hold vector 0 (its id overwritten by another valid id)."""
    p = _copy(built["full"], tmp_path)
    with spann.open(p) as idx:
        offsets, counts = idx.offsets.copy(), idx.counts.copy()
    raw = np.fromfile(_posting_bytes(p), np.uint8)
    for o, c in zip(offsets, counts):
        ids = raw[o:o + 8 * c].view("<i8")
        ids[ids == 0] = 1
    raw.tofile(_posting_bytes(p))
    with pytest.raises(IndexCorruptError, match="1 vectors are in no posting list"):
        verify_index(p)
    os.remove(p / "zarr.json")
    r = CliRunner().invoke(cli, ["verify", str(p), "--json"])
    assert r.exit_code == 1 and "not a spann index" in r.output
