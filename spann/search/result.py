"""What a search returns: ids, distances and what each query read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SearchResult"]


@dataclass
class SearchResult:
    """Results of a batch: ``ids`` int64 (nq, k) and ``distances`` float32 (nq, k), ascending,
    -1 / inf padded; per query (int64 (nq,)): ``lists_read`` posting lists, ``bytes_read``
    bytes of the 4 KiB pages those lists and the re-ranked rows span (what a cold query reads
    from the device; a single query on head groups that requests its lists from the device
    also counts the lists it requested early and then did not keep, see
    :func:`spann.search.kernels.select_lists_early`; with ``direct=True``, the pages requested: a
    page shared by an early and a late request, or a bridged gap, counts each time it is read),
    ``distance_evals`` (heads + entries); for an index in an object store, ``requests``
    (ranged GETs, 0 for what the cache held) and ``bytes_fetched`` (0 for local indexes)."""

    ids: np.ndarray
    distances: np.ndarray
    lists_read: np.ndarray
    bytes_read: np.ndarray
    distance_evals: np.ndarray
    requests: np.ndarray | None = None
    bytes_fetched: np.ndarray | None = None

    def __post_init__(self) -> None:
        nq = self.ids.shape[0]
        if self.requests is None:
            self.requests = np.zeros(nq, np.int64)
        if self.bytes_fetched is None:
            self.bytes_fetched = np.zeros(nq, np.int64)

    def __iter__(self):  # ids, distances = index.search(...)
        return iter((self.ids, self.distances))
