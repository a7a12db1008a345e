"""Vector files in an object store (``s3://bucket/base.fbin``, ``https://host/base.u8bin``):
rows read with ranged GETs, so a (distributed) build can read its base from a URL.

Formats: ``.fbin/.u8bin/.i8bin`` and ``.npy`` (C order); the header is read and checked
against the object's size as for local files. Contiguous rows are one GET; scattered rows
(``take``) are grouped into ranges (rows closer than ``GAP_BYTES`` read along, each range at
most ``RANGE_BYTES``), fetched concurrently.
"""

from __future__ import annotations

import ast

import numpy as np

from spann.datasets.vector_file import FORMATS, VectorFile, _check_dim, _check_npy_dtype, detect_format
from spann.errors import VectorFileError
from spann.io.sources import ObjectStore

__all__ = ["open_remote_vectors", "RemoteRows"]

GAP_BYTES = 256 << 10
RANGE_BYTES = 16 << 20


class RemoteRows:
    """(n, dim) rows of ``dtype`` at byte ``offset`` of object ``key``: sliced or indexed like
    a 2-D array (row slices and integer arrays), each access one batch of ranged GETs."""

    def __init__(self, store, key: str, offset: int, n: int, dim: int, dtype: np.dtype):
        self.store, self.key, self.offset = store, key, offset
        self.shape = (n, dim)
        self.dtype = np.dtype(dtype)
        self.row_bytes = dim * self.dtype.itemsize

    def _ranges(self, starts, stops) -> list[bytes]:
        rb, o = self.row_bytes, self.offset
        return self.store.read_ranges([self.key] * len(starts), [o + a * rb for a in starts],
                                      [o + b * rb for b in stops])

    def __getitem__(self, item) -> np.ndarray:
        n, d = self.shape
        if isinstance(item, slice):
            a, b, step = item.indices(n)
            if step != 1:
                raise IndexError("RemoteRows slices take step 1")
            if b <= a:
                return np.zeros((0, d), self.dtype)
            cuts = list(range(a, b, max(1, RANGE_BYTES // self.row_bytes))) + [b]
            parts = self._ranges(cuts[:-1], cuts[1:])
            return np.frombuffer(b"".join(parts), self.dtype).reshape(b - a, d)
        ids = np.asarray(item, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError("row index out of range")
        uniq, inv = np.unique(ids, return_inverse=True)
        if uniq.size == 0:
            return np.zeros((0, d), self.dtype)
        gap = max(1, GAP_BYTES // self.row_bytes)
        cap = max(1, RANGE_BYTES // self.row_bytes)
        # runs of sorted rows: split where the gap is large or the run grows past the cap
        split = np.flatnonzero(np.diff(uniq) > gap) + 1
        starts, stops = [], []
        for run in np.split(uniq, split):
            for c in range(0, run.size, cap):
                piece = run[c:c + cap]
                starts.append(int(piece[0]))
                stops.append(int(piece[-1]) + 1)
        out = np.empty((uniq.size, d), self.dtype)
        at = 0
        for a, b, raw in zip(starts, stops, self._ranges(starts, stops)):
            block = np.frombuffer(raw, self.dtype).reshape(b - a, d)
            m = np.searchsorted(uniq, b, "left") - at
            out[at:at + m] = block[uniq[at:at + m] - a]
            at += m
        return out[inv]

    def __len__(self) -> int:
        return self.shape[0]


def open_remote_vectors(url: str, fmt: str | None = None, storage_options=None) -> VectorFile:
    """A vector file at an object-store URL, read with ranged GETs."""
    name = detect_format(url.split("?", 1)[0], fmt)
    f = FORMATS[name]
    if f.kind not in ("bin", "npy"):
        raise VectorFileError(f"{url}: .{name} files are read from local paths only (URLs take .fbin, .u8bin, "
                              f".i8bin, .npy)")
    parent, _, key = url.rpartition("/")
    store = ObjectStore(parent, storage_options)
    try:
        size = store.sizes_of([key]).get(key)  # one HEAD
    except OSError as e:
        raise VectorFileError(f"{url}: cannot read ({str(e).splitlines()[0] if str(e) else e})") from None
    if size is None:
        raise VectorFileError(f"{url}: no such object")
    if size == 0:
        raise VectorFileError(f"{url}: file is empty")
    if f.kind == "bin":
        if f.dtype.kind == "i" and f.dtype.itemsize == 4:
            raise VectorFileError(f"{url}: .{f.name} holds int32 ids, not vectors")
        if size < 8:
            raise VectorFileError(f"{url}: truncated .{f.name} header ({size} bytes, need 8)")
        n, d = (int(v) for v in np.frombuffer(store.read_ranges([key], [0], [8])[0], "<u4"))
        _check_dim(url, d)
        want = 8 + n * d * f.dtype.itemsize
        if want != size:
            raise VectorFileError(f"{url}: header says {n} x {d} {f.dtype.name} ({want} bytes) but the object has "
                                  f"{size} bytes ({'truncated' if size < want else 'has trailing bytes'})")
        dt, off = f.dtype, 8
    else:
        head = store.read_ranges([key], [0], [min(size, 4096)])[0]
        try:
            if head[:6] != b"\x93NUMPY":
                raise ValueError("not a .npy file")
            hl = int.from_bytes(head[8:10], "little") if head[6] == 1 else int.from_bytes(head[8:12], "little")
            off = (10 if head[6] == 1 else 12) + hl
            meta = ast.literal_eval(head[10 if head[6] == 1 else 12:off].decode("latin1"))
            dt, shape = np.dtype(meta["descr"]), tuple(meta["shape"])
            if meta.get("fortran_order") or len(shape) != 2:
                raise ValueError("expected a C-order 2-D array")
        except (ValueError, KeyError, SyntaxError, TypeError, IndexError) as e:
            raise VectorFileError(f"{url}: not a readable .npy array ({e})") from None
        _check_npy_dtype(url, dt, False)
        n, d = shape
        _check_dim(url, d)
        if off + n * d * dt.itemsize != size:
            raise VectorFileError(f"{url}: .npy header says {n} x {d} {dt} but the object has {size} bytes")
    if n == 0:
        raise VectorFileError(f"{url}: contains no vectors (n = 0)")
    return VectorFile(url, name, RemoteRows(store, key, off, n, d, dt), dt)
