"""spann: SPANN memory-disk approximate nearest-neighbour search.

``spann.build(data, dir, metric=...)`` -> :class:`Index`; ``spann.open(dir)`` -> :class:`Index`;
``Index.search(queries, k)`` -> ids, distances. Nothing is compiled at import; numba kernels
compile (and are cached on disk) on first use or :meth:`Index.prepare`.
"""

from spann.kernels import cache as kernel_cache  # noqa: F401  (first: installs the kernel cache's locator)

# isort: split
from spann.errors import (DataError, IndexCorruptError, IndexNotFoundError, OutOfMemoryError, ParameterError,
                          QueryError, SpannError, StoreError, VectorFileError)
from spann.index import Index, SearchResult, build, open_index
from spann.params import BuildParams, SearchParams

__version__ = "0.1.0"

open = open_index  # noqa: A001  (spann.open(path), like zarr.open)

__all__ = ["__version__", "build", "open", "open_index", "Index", "SearchResult", "BuildParams", "SearchParams",
           "SpannError", "VectorFileError", "ParameterError", "DataError", "IndexNotFoundError",
           "IndexCorruptError", "QueryError", "StoreError", "OutOfMemoryError"]
