"""Adapters between user data (arrays or vector files) and the index's head space.

``head_space`` maps raw rows to what clustering, the head graph and assignment compare:
float32 rows (unit-normalised for cosine) plus one extra coordinate (inner product only:
``sqrt(M^2 - ||x||^2)``, the MIPS-to-L2 transform with M the largest base norm; zero otherwise).
"""

from __future__ import annotations

import os

import numpy as np

from spann.errors import DataError
from spann.metrics import normalize_rows

__all__ = ["array_source", "as_vector_source", "head_space", "stored_rows", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = ("float32", "uint8", "int8")


def array_source(arr: np.ndarray):
    """An in-RAM (or memmap) array behind the :class:`VectorFile` reading interface."""
    from pathlib import Path
    from spann.datasets.formats import VectorFile
    if arr.ndim != 2:
        raise DataError(f"vectors must be a 2-D array (n, dim), got shape {arr.shape}")
    return VectorFile(Path("<array>"), "array", arr, arr.dtype)


def as_vector_source(data, fmt: str | None = None):
    """An array, a path or an open VectorFile -> an object with n, dim, dtype, read, take, iter_blocks."""
    if isinstance(data, (str, os.PathLike)):
        from spann.datasets.formats import open_vectors
        src = open_vectors(data, fmt)
    elif isinstance(data, np.ndarray):
        src = array_source(data)
    elif hasattr(data, "iter_blocks"):
        src = data
    else:
        raise DataError(f"expected a numpy array or a vector file path, got {type(data).__name__}")
    if src.dtype.name not in SUPPORTED_DTYPES:
        raise DataError(f"{src.path}: dtype {src.dtype} is not supported (use float32, uint8 or int8)")
    if src.n < 2:
        raise DataError(f"{src.path}: an index needs at least 2 vectors, got {src.n}")
    return src


def stored_rows(block: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the index stores them: unit-normalised float32 for cosine, unchanged otherwise."""
    return normalize_rows(block) if metric == "cosine" else block


def head_space(block: np.ndarray, metric: str, max_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """(float32 rows (b, d), extra coordinate float32 (b,)) in the head space."""
    if metric == "cosine":
        return normalize_rows(block), np.zeros(block.shape[0], np.float32)
    x = np.ascontiguousarray(block, dtype=np.float32)
    if metric == "ip":
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        return x, np.sqrt(np.maximum(max_norm * max_norm - sq, 0.0)).astype(np.float32)
    return x, np.zeros(x.shape[0], np.float32)
