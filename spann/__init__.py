"""spann: SPANN memory-disk approximate nearest-neighbour search.

``spann.build(data, dir, metric=...)`` -> :class:`Index`; ``spann.open(dir)`` -> :class:`Index`;
``Index.search(queries, k)`` -> ids, distances. Nothing is compiled at import; numba kernels
compile (and are cached on disk) on first use or :meth:`Index.prepare`.

The library prints nothing: progress bars only with ``progress=True``, messages (a build's
stages, ...) as :mod:`logging` records of the ``spann`` loggers (``spann.builder.pipeline``,
...), shown once the application configures logging, e.g. ``logging.basicConfig(level="INFO")``.
"""

import logging

from spann.kernels import cache as kernel_cache  # noqa: F401  (first: installs the kernel cache's locator)

# isort: split
from spann.errors import (DataError, IndexCorruptError, IndexNotFoundError, OutOfMemoryError, ParameterError,
                          QueryError, SpannError, StoreError, VectorFileError)
from spann.index import Index, SearchResult, build, open_index
from spann.params import BuildParams, SearchParams
from spann.search.breakdown import RecallBreakdown
from spann.search.operating_points import OperatingPoints

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())  # silent unless the application configures logging

open = open_index  # noqa: A001  (spann.open(path), like zarr.open)

__all__ = ["__version__", "build", "open", "open_index", "Index", "SearchResult", "RecallBreakdown", "OperatingPoints",
           "BuildParams",
           "SearchParams", "SpannError", "VectorFileError", "ParameterError", "DataError", "IndexNotFoundError",
           "IndexCorruptError", "QueryError", "StoreError", "OutOfMemoryError"]
