"""A vector file: its formats, their detection from a name, and the one reading interface
(:class:`VectorFile`) that local files (:mod:`spann.datasets.formats`) and object-store files
(:mod:`spann.datasets.remote`) both return."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from spann.errors import FormatNotSupportedError, VectorFileError

__all__ = ["FORMATS", "MAX_DIM", "VectorFile", "detect_format", "split_hdf5"]

#: Dimensions above this are treated as a corrupt header rather than real data.
MAX_DIM = 1 << 16


@dataclass(frozen=True)
class _Format:
    name: str
    kind: str  # "vecs" (per-row dim header), "bin" (n, d header), "npy", "hdf5"
    dtype: np.dtype | None  # fixed element dtype; None = taken from the file


FORMATS: dict[str, _Format] = {
    "fvecs": _Format("fvecs", "vecs", np.dtype("<f4")),
    "ivecs": _Format("ivecs", "vecs", np.dtype("<i4")),
    "bvecs": _Format("bvecs", "vecs", np.dtype("u1")),
    "fbin": _Format("fbin", "bin", np.dtype("<f4")),
    "u8bin": _Format("u8bin", "bin", np.dtype("u1")),
    "i8bin": _Format("i8bin", "bin", np.dtype("i1")),
    "ibin": _Format("ibin", "bin", np.dtype("<i4")),
    "npy": _Format("npy", "npy", None),
    "hdf5": _Format("hdf5", "hdf5", None),
}
_EXTENSIONS = {**{k: k for k in FORMATS}, "h5": "hdf5", "bin": "fbin"}

#: dtypes accepted for vectors (float64 is read as float32); int32/int64 only for id files.
_VECTOR_DTYPES = {np.dtype("float32"), np.dtype("float64"), np.dtype("uint8"), np.dtype("int8")}
_ID_DTYPES = {np.dtype("int32"), np.dtype("int64"), np.dtype("uint32")}


def _split_hdf5(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    s = os.fspath(path)
    m = re.search(r"\.(hdf5|h5):", s, re.IGNORECASE)
    if m:
        return Path(s[: m.end() - 1]), s[m.end():]
    return Path(s), None


def split_hdf5(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``"f.hdf5:test"`` -> ``(Path("f.hdf5"), "test")``; any other path -> ``(Path(path), None)``."""
    return _split_hdf5(path)


def detect_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The format name for ``path``: ``fmt`` if given, else from the extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise FormatNotSupportedError(
                f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    p, _ = _split_hdf5(path)
    ext = p.suffix.lower().lstrip(".")
    if ext not in _EXTENSIONS:
        raise FormatNotSupportedError(
            f"{p}: cannot tell the format from extension {p.suffix or '(none)'!r}; "
            f"use one of .{', .'.join(_EXTENSIONS)} or pass a format explicitly")
    return _EXTENSIONS[ext]


class VectorFile:
    """Rows of a vector file, memory mapped.

    Attributes: ``path``, ``fmt``, ``n`` (rows), ``dim``, ``dtype`` (the dtype blocks are
    returned in: float64 sources come back as float32). ``rows`` is the raw (n, dim) view
    (a numpy memmap, possibly strided for *vecs files, or an h5py dataset).
    """

    def __init__(self, path: Path, fmt: str, rows, source_dtype: np.dtype, vecs_dims=None):
        self.path = path
        self.fmt = fmt
        self.rows = rows
        self.n, self.dim = int(rows.shape[0]), int(rows.shape[1])
        self.source_dtype = np.dtype(source_dtype)
        self.dtype = np.dtype("float32") if self.source_dtype == np.float64 else self.source_dtype
        self._vecs_dims = vecs_dims  # int32 memmap of per-row dims (vecs formats only)
        #: float32 (n, dim) distances stored after the ids of a big-ann-benchmarks ground-truth file
        self.distances = None

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.dim)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` as a C-contiguous in-RAM array of ``self.dtype``, shape (m, dim)."""
        stop = self.n if stop is None else min(stop, self.n)
        start = max(0, start)
        if self._vecs_dims is not None and stop > start:
            dims = np.asarray(self._vecs_dims[start:stop])
            bad = np.flatnonzero(dims != self.dim)
            if bad.size:
                r = start + int(bad[0])
                raise VectorFileError(
                    f"{self.path}: row {r} has dimension {int(dims[bad[0]])}, but row 0 has "
                    f"{self.dim} (inconsistent .{self.fmt} rows)")
        # a copy, not a view of the read-only map: in RAM as promised, and writable, so kernels
        # run the specializations compiled for in-memory arrays (numba compiles read-only apart)
        return np.array(self.rows[start:stop], dtype=self.dtype, order="C")

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows at sorted or unsorted positions ``ids`` (int array), shape (len(ids), dim)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.fmt == "hdf5":  # h5py wants increasing, unique indices
            uniq, inv = np.unique(ids, return_inverse=True)
            return np.ascontiguousarray(np.asarray(self.rows[uniq], dtype=self.dtype)[inv])
        return np.ascontiguousarray(self.rows[ids], dtype=self.dtype)

    def iter_blocks(self, block_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` pairs covering all rows in order; blocks are in RAM."""
        for s in range(0, self.n, block_rows):
            yield s, self.read(s, s + block_rows)

    def close(self) -> None:
        f = getattr(self, "_h5file", None)
        if f is not None:
            f.close()
        self.rows = None

    def __enter__(self) -> "VectorFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VectorFile({str(self.path)!r}, fmt={self.fmt}, n={self.n}, dim={self.dim}, dtype={self.dtype})"


def _check_dim(path: Path, d: int) -> None:
    if d <= 0 or d > MAX_DIM:
        raise VectorFileError(
            f"{path}: header gives dimension {d}, expected 1..{MAX_DIM} (corrupt or wrong format?)")


def _check_npy_dtype(path: Path, dt: np.dtype, ids: bool) -> None:
    ok = _ID_DTYPES | _VECTOR_DTYPES if ids else _VECTOR_DTYPES
    if dt not in ok:
        raise VectorFileError(
            f"{path}: dtype {dt} is not supported (vectors: float32, float64, uint8, int8"
            f"{'; ids: int32, int64' if ids else ''})")
