"""Exception hierarchy.

Every error raised for bad user input derives from :class:`SpannError` *and* from the matching
builtin, so callers can catch either (``except ValueError`` keeps working).
Messages are one line and name the file or parameter at fault.
"""

from __future__ import annotations

__all__ = [
    "SpannError",
    "VectorFileError",
    "FormatNotSupportedError",
    "ParameterError",
    "DataError",
    "IndexNotFoundError",
    "IndexExistsError",
    "IndexCorruptError",
    "QueryError",
    "StoreError",
    "OutOfMemoryError",
]


class SpannError(Exception):
    """Base class of every error spann raises on purpose."""


class VectorFileError(SpannError, ValueError):
    """A vector file is unreadable: truncated, empty, inconsistent header, bad dtype."""


class FormatNotSupportedError(VectorFileError):
    """The file extension or explicit format is not one spann reads or writes."""


class ParameterError(SpannError, ValueError):
    """A parameter is out of range or inconsistent with the others."""


class DataError(SpannError, ValueError):
    """Vectors contain NaN/Inf, have the wrong shape, or an unsupported dtype."""


class IndexNotFoundError(SpannError, FileNotFoundError):
    """The path is not a (complete) spann index."""


class IndexExistsError(SpannError, FileExistsError):
    """The target path exists and may not (or cannot safely) be replaced."""


class IndexCorruptError(SpannError, OSError):
    """An index part is missing, truncated, or fails its checksum."""


class StoreError(SpannError, OSError):
    """An object store or web server could not be reached, or refused a request (credentials,
    network, permissions)."""


class QueryError(SpannError, ValueError):
    """Queries disagree with the index (dimension, dtype, metric) or k is invalid."""


class OutOfMemoryError(SpannError, MemoryError):
    """An operation needs more RAM than the machine has available (e.g. ``Index.preload``)."""
