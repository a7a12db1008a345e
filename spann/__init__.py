"""spann: SPANN memory-disk approximate nearest-neighbour search.

Nothing is compiled at import; numba kernels compile (and cache) on first use or
:meth:`Index.prepare`.
"""

from spann.errors import (DataError, IndexCorruptError, IndexNotFoundError, ParameterError, QueryError,
                          SpannError, VectorFileError)

__version__ = "0.1.0"

__all__ = ["__version__", "SpannError", "VectorFileError", "ParameterError", "DataError",
           "IndexNotFoundError", "IndexCorruptError", "QueryError"]
