"""Exact ground truth for a base/query pair, written to vector files (ids and distances)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from spann.datasets.formats import (VectorFile, check_distinct_paths, check_finite, detect_format, open_vectors,
                                    write_vectors)
from spann.errors import DataError, FormatNotSupportedError, ParameterError
from spann.kernels.exact import exact_knn

__all__ = ["compute_ground_truth", "ground_truth_files", "distances_path_for", "check_k", "check_ids_output"]

#: formats an ids file (ground truth, search results) can be written in
IDS_FORMATS = ("ibin", "ivecs", "npy")


def check_ids_output(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The format of ids output ``path``; refuses (one line) formats that cannot hold ids."""
    f = detect_format(path, fmt)
    if f not in IDS_FORMATS:
        raise ParameterError(f"{path}: ids are written as .ibin, .ivecs or .npy, not .{f}")
    return f


class _FiniteBase:
    """A base (VectorFile or array) whose blocks are checked for NaN/Inf as exact_knn reads them,
    so a bad row is refused (naming the row) instead of silently ranking last."""

    def __init__(self, base, what: str):
        self._base, self._what = base, what
        self.shape = base.shape
        self.dtype = base.dtype
        self._read = base.read if hasattr(base, "iter_blocks") else (lambda s, e: np.asarray(base[s:e]))

    def __len__(self) -> int:
        return len(self._base)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = len(self) if stop is None else stop
        block = self._read(start, stop)
        check_finite(np.asarray(block), self._what, start)
        return block

    def iter_blocks(self, block_rows: int = 65536):
        for s in range(0, len(self), block_rows):
            yield s, self.read(s, s + block_rows)

    def take(self, ids: np.ndarray) -> np.ndarray:
        if hasattr(self._base, "take") and hasattr(self._base, "iter_blocks"):
            return self._base.take(ids)
        return np.asarray(self._base)[np.asarray(ids, dtype=np.int64)]

    def __getattr__(self, name: str):  # anything else exact_knn may ask of the base
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._base, name)


def check_k(k: int, n: int, what: str = "the base") -> None:
    """Refuse ``k`` larger than the ``n`` rows of the base (the result would be padded with -1)."""
    if k > n:
        raise ParameterError(f"k = {k} exceeds the {n} vectors in {what}")


def compute_ground_truth(base: VectorFile | np.ndarray, queries: np.ndarray, k: int, metric: str, *,
                         progress: bool = False, desc: str = "ground truth") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ids (int64, (nq, k)) and distances (float32, (nq, k)) of ``queries`` in ``base``.

    ``base`` is streamed in blocks (memory stays bounded by the block size and nq * k). A NaN or
    Inf in ``base`` or ``queries`` raises :class:`~spann.errors.DataError` naming the row; ``k``
    may not exceed the number of base rows. ``progress``: show a progress bar (``desc``) on stderr.
    """
    check_finite(np.asarray(queries), "queries")
    what = str(base.path) if isinstance(base, VectorFile) else "base"
    check_k(k, len(base), what)
    base = _FiniteBase(base, what)
    bar = tqdm(total=len(base), desc=desc, unit="vec", unit_scale=True, disable=not progress, leave=False)
    try:
        return exact_knn(base, queries, k, metric, progress=bar.update)
    finally:
        bar.close()


def distances_path_for(ids_path: str | os.PathLike[str]) -> Path:
    """Where the distances that go with an ids file are written: ``gt.ibin`` -> ``gt.dist.fbin``."""
    p = Path(ids_path)
    try:
        fmt = detect_format(p)
    except FormatNotSupportedError:  # e.g. an extension-less big-ann-benchmarks ground-truth file
        return p.with_name(p.name + ".dist.fbin")
    ext = {"ibin": "fbin", "ivecs": "fvecs", "npy": "npy"}.get(fmt, "fbin")
    return p.with_name(p.name[: -len(p.suffix)] + f".dist.{ext}")


def ground_truth_files(base_path: str | os.PathLike[str], queries_path: str | os.PathLike[str],
                       out_path: str | os.PathLike[str], k: int, metric: str, *,
                       base_fmt: str | None = None, queries_fmt: str | None = None,
                       out_fmt: str | None = None, progress: bool = False) -> tuple[Path, Path]:
    """Compute ground truth between two vector files; write ids to ``out_path`` (int32, or int64
    for .npy) and distances beside it (see :func:`distances_path_for`). Returns both paths.
    ``progress``: show a progress bar on stderr."""
    fmt = check_ids_output(out_path, out_fmt)
    dpath = distances_path_for(out_path) if out_fmt is None else Path(str(out_path) + ".dist.npy")
    check_distinct_paths([out_path, dpath], [base_path, queries_path])
    with open_vectors(base_path, base_fmt) as base, open_vectors(queries_path, queries_fmt) as qf:
        check_k(k, base.n, str(base_path))
        if qf.dim != base.dim:
            raise DataError(f"{queries_path}: queries have dimension {qf.dim}, base {base_path} has {base.dim}")
        ids, dists = compute_ground_truth(base, qf.read(), k, metric, progress=progress)
    ids_out = ids if fmt == "npy" else ids.astype(np.int32)
    write_vectors(out_path, ids_out, fmt)
    write_vectors(dpath, dists)
    return Path(out_path), dpath
