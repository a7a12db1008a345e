import numpy as np
import pytest

from spann.datasets.formats import VectorWriter, check_finite, detect_format, open_vectors, read_vectors, write_vectors
from spann.errors import DataError, FormatNotSupportedError, VectorFileError

RNG = np.random.default_rng(0)
DATA = {
    "fvecs": RNG.standard_normal((37, 5)).astype(np.float32),
    "fbin": RNG.standard_normal((37, 5)).astype(np.float32),
    "bvecs": RNG.integers(0, 256, (37, 7)).astype(np.uint8),
    "u8bin": RNG.integers(0, 256, (37, 7)).astype(np.uint8),
    "i8bin": RNG.integers(-128, 128, (37, 3)).astype(np.int8),
    "ivecs": RNG.integers(0, 10**6, (37, 4)).astype(np.int32),
    "ibin": RNG.integers(0, 10**6, (37, 4)).astype(np.int32),
    "npy": RNG.standard_normal((37, 6)).astype(np.float32),
}


@pytest.mark.parametrize("fmt", list(DATA))
def test_round_trip(tmp_path, fmt):
    a = DATA[fmt]
    p = tmp_path / f"x.{fmt}"
    write_vectors(p, a, block_rows=10)  # several blocks
    ids = a.dtype == np.int32
    with open_vectors(p, ids=ids) as vf:
        assert (vf.n, vf.dim, vf.dtype) == (a.shape[0], a.shape[1], a.dtype)
        np.testing.assert_array_equal(vf.read(), a)
        np.testing.assert_array_equal(vf.read(5, 9), a[5:9])
        np.testing.assert_array_equal(vf.take(np.array([30, 2, 2])), a[[30, 2, 2]])
        blocks = list(vf.iter_blocks(8))
        assert [s for s, _ in blocks] == [0, 8, 16, 24, 32]
        np.testing.assert_array_equal(np.vstack([b for _, b in blocks]), a)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_npy_int64_ids_and_float64(tmp_path):
    write_vectors(tmp_path / "i.npy", np.arange(12, dtype=np.int64).reshape(4, 3))
    np.testing.assert_array_equal(read_vectors(tmp_path / "i.npy", ids=True), np.arange(12).reshape(4, 3))
    np.save(tmp_path / "f.npy", np.ones((3, 2)))
    assert read_vectors(tmp_path / "f.npy").dtype == np.float32


def test_large_files_are_memory_mapped(tmp_path):
    p = tmp_path / "big.fbin"
    write_vectors(p, np.zeros((5000, 16), np.float32))
    with open_vectors(p) as vf:
        assert isinstance(vf.rows, np.memmap)
    with open_vectors(tmp_path / "big.fbin", fmt="fbin") as vf:
        assert vf.n == 5000


def test_hdf5_ann_benchmarks_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "d.hdf5"
    tr, te = DATA["npy"], DATA["npy"][:4]
    with h5py.File(p, "w") as f:
        f["train"], f["test"] = tr, te
        f["neighbors"] = np.zeros((4, 10), np.int32)
    np.testing.assert_array_equal(read_vectors(p), tr)
    np.testing.assert_array_equal(read_vectors(f"{p}:test"), te)
    with open_vectors(p) as vf:
        np.testing.assert_array_equal(vf.take(np.array([3, 1, 3])), tr[[3, 1, 3]])
    with pytest.raises(VectorFileError, match="no dataset 'nope'"):
        open_vectors(f"{p}:nope")


def test_explicit_format_overrides_extension(tmp_path):
    p = tmp_path / "vectors.dat"
    write_vectors(p, DATA["fbin"], fmt="fbin")
    np.testing.assert_array_equal(read_vectors(p, fmt="fbin"), DATA["fbin"])
    with pytest.raises(FormatNotSupportedError, match="extension"):
        read_vectors(p)
    with pytest.raises(FormatNotSupportedError, match="unknown format"):
        detect_format(p, "parquet")


def test_empty_file(tmp_path):
    p = tmp_path / "e.fbin"
    p.write_bytes(b"")
    with pytest.raises(VectorFileError, match="empty"):
        open_vectors(p)


def test_missing_file(tmp_path):
    with pytest.raises(VectorFileError, match="no such file"):
        open_vectors(tmp_path / "none.fvecs")


def test_truncated_bin(tmp_path):
    p = tmp_path / "t.fbin"
    write_vectors(p, DATA["fbin"])
    raw = p.read_bytes()
    p.write_bytes(raw[:-3])
    with pytest.raises(VectorFileError, match="truncated"):
        open_vectors(p)
    p.write_bytes(raw[:6])
    with pytest.raises(VectorFileError, match="truncated .fbin header"):
        open_vectors(p)
    p.write_bytes(raw + b"xx")
    with pytest.raises(VectorFileError, match="trailing"):
        open_vectors(p)


def test_bin_zero_rows_and_bad_dims(tmp_path):
    p = tmp_path / "z.fbin"
    p.write_bytes(np.array([0, 8], "<u4").tobytes())
    with pytest.raises(VectorFileError, match="no vectors"):
        open_vectors(p)
    p.write_bytes(np.array([1, 0], "<u4").tobytes())
    with pytest.raises(VectorFileError, match="dimension 0"):
        open_vectors(p)
    p.write_bytes(np.array([1, 10**9], "<u4").tobytes())
    with pytest.raises(VectorFileError, match="corrupt or wrong format"):
        open_vectors(p)


def test_fvecs_truncated_and_inconsistent(tmp_path):
    p = tmp_path / "v.fvecs"
    write_vectors(p, DATA["fvecs"])
    raw = bytearray(p.read_bytes())
    (tmp_path / "cut.fvecs").write_bytes(raw[:-2])
    with pytest.raises(VectorFileError, match="not a multiple"):
        open_vectors(tmp_path / "cut.fvecs")
    row = 4 + 5 * 4
    raw[row * 20: row * 20 + 4] = np.array([6], "<i4").tobytes()  # same size, wrong header on row 20
    p.write_bytes(bytes(raw))
    with pytest.raises(VectorFileError, match="row 20 has dimension 6"):
        read_vectors(p)


def test_fvecs_bad_row_found_when_reading_large_file(tmp_path):
    p = tmp_path / "big.fvecs"
    write_vectors(p, np.zeros((5000, 4), np.float32))
    raw = bytearray(p.read_bytes())
    bad = 4001  # not among the rows probed at open
    raw[bad * 20: bad * 20 + 4] = np.array([3], "<i4").tobytes()
    p.write_bytes(bytes(raw))
    with open_vectors(p) as vf:
        vf.read(0, 4000)
        with pytest.raises(VectorFileError, match=f"row {bad} has dimension 3"):
            for _ in vf.iter_blocks(1000):
                pass


def test_dtype_not_allowed(tmp_path):
    with pytest.raises(DataError, match="stores float32, cannot write int8"):
        write_vectors(tmp_path / "x.fvecs", DATA["i8bin"])
    np.save(tmp_path / "h.npy", np.ones((3, 2), np.float16))
    with pytest.raises(VectorFileError, match="dtype float16 is not supported"):
        read_vectors(tmp_path / "h.npy")
    write_vectors(tmp_path / "g.ibin", DATA["ibin"])
    with pytest.raises(VectorFileError, match="int32 ids, not vectors"):
        read_vectors(tmp_path / "g.ibin")
    np.save(tmp_path / "one.npy", np.ones(3, np.float32))
    with pytest.raises(VectorFileError, match="2-D"):
        read_vectors(tmp_path / "one.npy")


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "w.fbin"
    with pytest.raises(DataError):
        with VectorWriter(p, 4, np.float32) as w:
            w.write(np.zeros((3, 4), np.float32))
            w.write(np.zeros((3, 5), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_check_finite_names_row():
    a = np.zeros((10, 3), np.float32)
    check_finite(a)
    a[7, 1] = np.nan
    with pytest.raises(DataError, match="row 107 contains NaN"):
        check_finite(a, "base", offset=100)
    a[7, 1] = np.inf
    with pytest.raises(DataError, match="NaN or Inf"):
        check_finite(a)
