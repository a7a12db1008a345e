"""User data (a numpy array or a vector file) behind one reading interface for the build."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spann.datasets.formats import VectorFile, open_vectors
from spann.errors import DataError

__all__ = ["array_source", "as_vector_source", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = ("float32", "uint8", "int8")


def array_source(arr: np.ndarray):
    """An in-RAM (or memmap) array behind the :class:`VectorFile` reading interface."""
    if arr.ndim != 2:
        raise DataError(f"vectors must be a 2-D array (n, dim), got shape {arr.shape}")
    return VectorFile(Path("<array>"), "array", arr, arr.dtype)


def as_vector_source(data, fmt: str | None = None, storage_options=None):
    """An array, a path (or URL; ``storage_options`` for its store) or an open VectorFile -> an
    object with n, dim, dtype, read, take, iter_blocks."""
    if isinstance(data, (str, os.PathLike)):
        src = open_vectors(data, fmt, storage_options=storage_options)
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
