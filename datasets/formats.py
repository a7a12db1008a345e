"""Vector file formats: read (memory-mapped, block by block) and write (streamed, atomically).

Formats, chosen from the file extension unless ``fmt`` is given:

=========  ===========================================  ==================
fmt        layout                                       dtypes
=========  ===========================================  ==================
fvecs      per row: int32 d, then d float32             float32
ivecs      per row: int32 d, then d int32               int32 (ids)
bvecs      per row: int32 d, then d uint8               uint8
fbin       uint32 n, uint32 d, then n*d float32         float32
u8bin      same header, uint8 rows                      uint8
i8bin      same header, int8 rows                       int8
ibin       same header, int32 rows                      int32 (ids)
npy        NumPy 2-D array (C order)                    float32/64, uint8, int8, int32/64
hdf5       ann-benchmarks file; ``path.hdf5:train``     any of the above
=========  ===========================================  ==================

Nothing is read whole: :func:`open_vectors` returns a :class:`VectorFile` whose rows are a
memory map (or an h5py dataset), so a 100 GB file costs no RAM until blocks are read.
Every problem with a file raises :class:`~spann.errors.VectorFileError` naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from numpy.lib import format as npf

from spann.datasets.remote import open_remote_vectors
from spann.datasets.vector_file import (FORMATS, MAX_DIM, VectorFile, _check_dim, _check_npy_dtype, _Format,
                                        _split_hdf5, detect_format, split_hdf5)
from spann.errors import DataError, FormatNotSupportedError, ParameterError, VectorFileError
from spann.io.sources import is_url
from spann.kernels.metrics import get_metric

__all__ = [
    "FORMATS",
    "MAX_DIM",
    "VectorFile",
    "VectorWriter",
    "detect_format",
    "open_vectors",
    "read_vectors",
    "write_vectors",
    "check_finite",
    "hdf5_distance",
    "metric_from_hdf5",
    "split_hdf5",
    "check_distinct_paths",
    "check_input_file",
]


def check_input_file(path: str | os.PathLike[str], what: str = "", kind: str = "file") -> Path:
    """``path`` as a Path if it names an existing regular file (symlinks followed); a one-line
    :class:`VectorFileError` otherwise, before anything opens it: a FIFO, socket or device is
    refused (reading a FIFO blocks until a writer comes). ``what`` prefixes the message (e.g.
    ``--ids``); ``kind`` names what was expected. Every input file the CLI reads (vectors,
    ids, labels, ground truth) goes through this check."""
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise VectorFileError(f"{label}: no such file") from None
    except OSError as e:
        raise VectorFileError(f"{label}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VectorFileError(f"{label}: is a directory, expected a {kind}")
    if not stat.S_ISREG(st.st_mode):
        raise VectorFileError(f"{label}: not a regular file (a FIFO, socket or device is refused)")
    return p

def _is_combined_gt(n: int, d: int, size: int) -> bool:
    """big-ann-benchmarks ground truth: header n, k; n*k int32 ids; then n*k float32 distances."""
    return n > 0 and 0 < d <= MAX_DIM and size == 8 + 2 * n * d * 4


def _open_bin(path: Path, f: _Format, size: int, ids: bool = False) -> VectorFile:
    if size < 8:
        raise VectorFileError(f"{path}: truncated .{f.name} header ({size} bytes, need 8)")
    n, d = (int(v) for v in np.fromfile(path, dtype="<u4", count=2))
    _check_dim(path, d)
    want = 8 + n * d * f.dtype.itemsize
    if ids and f.dtype.itemsize == 4 and want != size and _is_combined_gt(n, d, size):
        # ids first (int32 whatever the extension says), distances in the second half
        rows = np.memmap(path, dtype="<i4", mode="r", offset=8, shape=(n, d))
        vf = VectorFile(path, "ibin", rows, np.dtype("<i4"))
        vf.distances = np.memmap(path, dtype="<f4", mode="r", offset=8 + n * d * 4, shape=(n, d))
        return vf
    if want != size:
        what = "truncated" if size < want else "has trailing bytes"
        raise VectorFileError(
            f"{path}: header says {n} x {d} {f.dtype.name} ({want} bytes) but the file has "
            f"{size} bytes ({what})")
    if n == 0:
        raise VectorFileError(f"{path}: contains no vectors (n = 0)")
    rows = np.memmap(path, dtype=f.dtype, mode="r", offset=8, shape=(n, d))
    return VectorFile(path, f.name, rows, f.dtype)


def _open_vecs(path: Path, f: _Format, size: int) -> VectorFile:
    if size < 4:
        raise VectorFileError(f"{path}: truncated .{f.name} file ({size} bytes)")
    d = int(np.fromfile(path, dtype="<i4", count=1)[0])
    _check_dim(path, d)
    row_bytes = 4 + d * f.dtype.itemsize
    if size % row_bytes:
        raise VectorFileError(
            f"{path}: size {size} is not a multiple of the row size {row_bytes} implied by "
            f"dimension {d} (truncated file or inconsistent row dimensions)")
    n = size // row_bytes
    raw = np.memmap(path, dtype="u1", mode="r", shape=(n, row_bytes))
    rows = raw[:, 4:].view(f.dtype)
    dims = raw[:, :4].view("<i4")[:, 0]
    # cheap consistency check at open: first, last and a spread of rows
    probe = np.unique(np.linspace(0, n - 1, num=min(n, 1025)).astype(np.int64))
    bad = probe[np.asarray(dims[probe]) != d]
    if bad.size:
        raise VectorFileError(
            f"{path}: row {int(bad[0])} has dimension {int(dims[bad[0]])}, but row 0 has {d} "
            f"(inconsistent .{f.name} rows)")
    return VectorFile(path, f.name, rows, f.dtype, vecs_dims=dims)


def _open_npy(path: Path, size: int, ids: bool) -> VectorFile:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # object arrays, bad header
        raise VectorFileError(f"{path}: not a readable .npy array ({e})") from None
    except EOFError:
        raise VectorFileError(f"{path}: truncated .npy header") from None
    if arr.ndim != 2:
        raise VectorFileError(f"{path}: expected a 2-D array (n, dim), got shape {arr.shape}")
    _check_npy_dtype(path, arr.dtype, ids)
    if arr.shape[0] == 0:
        raise VectorFileError(f"{path}: contains no vectors (n = 0)")
    _check_dim(path, arr.shape[1])
    return VectorFile(path, "npy", arr, arr.dtype)


def _open_hdf5(path: Path, key: str | None, ids: bool) -> VectorFile:
    try:
        import h5py  # optional extra: spann-ann[hdf5]
    except ImportError:
        raise FormatNotSupportedError(
            f"{path}: reading HDF5 needs h5py; install it with: pip install 'spann-ann[hdf5]'") from None
    try:
        h = h5py.File(path, "r")
    except OSError as e:
        raise VectorFileError(f"{path}: not a readable HDF5 file ({e})") from None
    key = key or "train"
    if key not in h:
        keys = ", ".join(h.keys())
        h.close()
        raise VectorFileError(f"{path}: no dataset {key!r} in the file (has: {keys or 'nothing'})")
    ds = h[key]
    if ds.ndim != 2 or ds.shape[0] == 0:
        h.close()
        raise VectorFileError(f"{path}:{key}: expected a non-empty 2-D dataset, got shape {ds.shape}")
    _check_npy_dtype(path, ds.dtype, ids)
    vf = VectorFile(path, "hdf5", ds, ds.dtype)
    vf._h5file = h
    return vf


def open_vectors(path: str | os.PathLike[str], fmt: str | None = None, *, ids: bool = False,
                 storage_options=None) -> VectorFile:
    """Open a vector file for block reads without loading it.

    ``path`` may name an HDF5 dataset as ``file.hdf5:test`` (default ``train``). ``ids=True``
    also accepts integer id files (.ibin, .ivecs, int npy). Raises :class:`VectorFileError`
    for a missing, empty, truncated or inconsistent file, or an unsupported dtype.
    """
    if is_url(path):
        return open_remote_vectors(str(path), fmt, storage_options)
    p, key = _split_hdf5(path)
    try:
        name = detect_format(path, fmt)
    except FormatNotSupportedError:
        # a big-ann-benchmarks ground-truth file often has no extension (e.g. ``bigann-1M``)
        if not (ids and fmt is None and _combined_gt_header(p)):
            raise
        name = "ibin"
    f = FORMATS[name]
    check_input_file(p, kind="vector file")
    size = p.stat().st_size
    if size == 0:
        raise VectorFileError(f"{p}: file is empty")
    if not ids and f.dtype is not None and f.dtype.kind == "i" and f.dtype.itemsize == 4:
        raise VectorFileError(f"{p}: .{f.name} holds int32 ids, not vectors")
    if f.kind == "bin":
        return _open_bin(p, f, size, ids)
    if f.kind == "vecs":
        return _open_vecs(p, f, size)
    if f.kind == "npy":
        return _open_npy(p, size, ids)
    return _open_hdf5(p, key, ids)


def _combined_gt_header(p: Path) -> bool:
    try:
        if not p.is_file():
            return False
        size = p.stat().st_size
        if size < 8:
            return False
        n, d = (int(v) for v in np.fromfile(p, dtype="<u4", count=2))
    except OSError:
        return False
    return _is_combined_gt(n, d, size)


def read_vectors(path: str | os.PathLike[str], fmt: str | None = None, *, ids: bool = False) -> np.ndarray:
    """Read a whole (small) vector file into RAM, shape (n, dim)."""
    with open_vectors(path, fmt, ids=ids) as vf:
        return vf.read()


class VectorWriter:
    """Streamed, atomic writer: rows are appended block by block to ``<path>.tmp-<pid>`` and the
    file is renamed into place by :meth:`close` (a failure leaves nothing at ``path``).

    ``dtype`` must be one the format allows (float32 for fvecs/fbin, uint8 for bvecs/u8bin,
    int8 for i8bin, int32 for ivecs/ibin; npy takes any supported dtype).
    """

    def __init__(self, path: str | os.PathLike[str], dim: int, dtype, fmt: str | None = None):
        self.fmt = detect_format(path, fmt)
        self.path = Path(os.fspath(path))
        f = FORMATS[self.fmt]
        self.dtype = np.dtype(dtype)
        if self.dtype == np.float64 and f.dtype is not None and f.dtype.kind == "f":
            self.dtype = np.dtype("float32")
        if f.dtype is not None and self.dtype.newbyteorder("<") != f.dtype.newbyteorder("<"):
            raise DataError(f"{self.path}: .{self.fmt} stores {f.dtype.name}, cannot write {self.dtype.name}")
        if f.kind == "hdf5":
            raise FormatNotSupportedError(f"{self.path}: writing HDF5 is not supported; use .npy, .fbin or .ibin")
        if f.kind == "npy":
            _check_npy_dtype(self.path, self.dtype, ids=True)
        if not 0 < dim <= MAX_DIM:
            raise DataError(f"{self.path}: dimension must be in 1..{MAX_DIM}, got {dim}")
        self._f_dtype = f.dtype.newbyteorder("<") if f.dtype is not None else self.dtype.newbyteorder("<")
        self.dim = int(dim)
        self.n = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._fh = open(self._tmp, "wb")
        self._header_len = 0
        if f.kind == "bin":
            self._fh.write(np.zeros(2, "<u4").tobytes())
            self._header_len = 8
        elif f.kind == "npy":
            self._header_len = len(self._npy_header(0))
            self._fh.write(b"\0" * self._header_len)

    def _npy_header(self, n: int, total: int | None = None) -> bytes:
        """A .npy v1.0 header for (n, dim) rows, padded with spaces to ``total`` bytes."""
        d = repr({"descr": npf.dtype_to_descr(self._f_dtype), "fortran_order": False,
                  "shape": (n, self.dim)}).encode("latin1")
        body_len = total - 10 if total is not None else ((10 + len(d) + 1 + 24 + 63) // 64) * 64 - 10
        body = d.ljust(body_len - 1, b" ") + b"\n"
        return b"\x93NUMPY\x01\x00" + np.array([body_len], "<u2").tobytes() + body

    def write(self, block: np.ndarray) -> None:
        """Append rows, shape (m, dim)."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise DataError(f"{self.path}: expected rows of shape (m, {self.dim}), got {block.shape}")
        if block.dtype != self.dtype and not (block.dtype == np.float64 and self.dtype == np.float32):
            raise DataError(f"{self.path}: expected {self.dtype.name} rows, got {block.dtype.name}")
        block = np.ascontiguousarray(block, dtype=self._f_dtype)
        if FORMATS[self.fmt].kind == "vecs":
            m = block.shape[0]
            rows = np.empty((m, 4 + self.dim * block.itemsize), "u1")
            rows[:, :4] = np.full((m, 1), self.dim, "<i4").view("u1")
            rows[:, 4:] = block.view("u1").reshape(m, -1)
            self._fh.write(rows.tobytes())
        else:
            self._fh.write(block.tobytes())
        self.n += block.shape[0]

    def close(self) -> Path:
        """Finish the header and move the file into place; returns the final path."""
        kind = FORMATS[self.fmt].kind
        if kind == "bin":
            if self.n >= 2**32:
                raise DataError(f"{self.path}: {self.n} rows do not fit a .{self.fmt} header")
            self._fh.seek(0)
            self._fh.write(np.array([self.n, self.dim], "<u4").tobytes())
        elif kind == "npy":
            self._fh.seek(0)
            self._fh.write(self._npy_header(self.n, self._header_len))
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VectorWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_vectors(path: str | os.PathLike[str], data: np.ndarray, fmt: str | None = None,
                  block_rows: int = 1 << 16) -> Path:
    """Write a 2-D array (or memmap) to ``path`` in blocks, atomically; returns the path."""
    data = np.asarray(data) if not isinstance(data, np.memmap) else data
    if data.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array (n, dim), got shape {data.shape}")
    with VectorWriter(path, data.shape[1], data.dtype, fmt) as w:
        for s in range(0, data.shape[0], block_rows):
            w.write(data[s:s + block_rows])
    return Path(os.fspath(path))


def check_finite(block: np.ndarray, what: str = "vectors", offset: int = 0) -> None:
    """Raise :class:`DataError` naming the first row of ``block`` holding NaN or Inf."""
    if block.dtype.kind != "f":
        return
    ok = np.isfinite(block).all(axis=1)
    if not ok.all():
        r = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{what}: row {offset + r} contains NaN or Inf")


def hdf5_distance(path: str | os.PathLike[str]) -> str | None:
    """The ``distance`` attribute of an ann-benchmarks HDF5 file (``"angular"``, ``"euclidean"``...),
    or None for other formats, files without the attribute, or files that cannot be read."""
    p, _ = _split_hdf5(path)
    if p.suffix.lower() not in (".hdf5", ".h5") or not p.is_file():
        return None
    try:
        import h5py  # optional extra: spann-ann[hdf5]
        with h5py.File(p, "r") as h:
            v = h.attrs.get("distance")
    except (ImportError, OSError):
        return None
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v.item() if isinstance(v, np.generic) else v)


def metric_from_hdf5(paths, metric: str | None, given_as: str | None = None) -> str | None:
    """Reconcile ``metric`` (None = not given) with the ``distance`` attribute of the HDF5 files
    among ``paths``. Returns the metric to use (the file's when ``metric`` is None; None when
    neither says anything). Raises :class:`ParameterError` if a file's distance is unsupported,
    the files disagree, or ``metric`` contradicts them (``given_as`` words where ``metric``
    came from in that message; default ``--metric METRIC given``)."""
    given = get_metric(metric).name if metric is not None else None
    found: tuple[Path, str, str] | None = None
    for path in paths:
        if path is None:
            continue
        dist = hdf5_distance(path)
        if dist is None:
            continue
        p, _ = _split_hdf5(path)
        try:
            name = get_metric(dist).name
        except ParameterError:
            raise ParameterError(f"{p} says distance={dist}, which spann does not support "
                                 f"(l2/euclidean, ip/dot, cosine/angular)") from None
        if given is not None and name != given:
            raise ParameterError(f"{p} says distance={dist} ({name}), {given_as or f'--metric {metric} given'}")
        if found is not None and found[2] != name:
            raise ParameterError(f"{p} says distance={dist} ({name}) but {found[0]} says "
                                 f"distance={found[1]} ({found[2]})")
        found = found or (p, dist, name)
    return given if given is not None else (found[2] if found else None)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_distinct_paths(outputs, inputs, input_dirs=()) -> None:
    """Refuse (:class:`ParameterError`, one line) an output path that is the same file as an
    input (``file.hdf5:key`` counts as ``file.hdf5``), lies inside an input directory, or is
    the same as another output. ``None`` and ``"-"`` (stdout) are skipped."""
    outs = [(o, _split_hdf5(o)[0]) for o in outputs if o is not None and os.fspath(o) != "-"]
    ins = [(i, _split_hdf5(i)[0]) for i in inputs if i is not None and os.fspath(i) != "-"]
    for k, (o, op) in enumerate(outs):
        for i, ip in ins:
            if _same_file(op, ip):
                raise ParameterError(f"output {o} is the input file {i}; refusing to overwrite it")
        for dpath in input_dirs:
            if dpath is None:
                continue
            d = Path(dpath).resolve()
            if op.resolve() == d or d in op.resolve().parents:
                raise ParameterError(f"output {o} lies inside the input {dpath}; write it elsewhere")
        for o2, op2 in outs[:k]:
            if _same_file(op, op2):
                raise ParameterError(f"outputs {o2} and {o} are the same file")
