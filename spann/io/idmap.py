"""Users' ids: validation, and the on-disk id map of the base vectors.

The id map is a sharded zarr byte array (``idmap``) of ``n`` records ``(id int64, location
int64)`` sorted by id: the location is the vector's row in the vector store (coded encodings)
or the byte offset of its vector in the posting array (full encoding: the copy in its nearest
head's list). It stays on disk (mapped): ``get`` and updates look ids up by binary search, so
an open index holds nothing per vector in RAM.
"""

from __future__ import annotations

import numba
import numpy as np

from spann.errors import DataError, IndexCorruptError
from spann.io.mapped import MappedReader, open_bytes

__all__ = ["check_ids", "idmap_bytes", "IdMap", "lookup_sorted"]

MAX_ID = 2**63 - 2


def check_ids(ids, n: int, what: str = "ids") -> np.ndarray:
    """``ids`` as int64 (n,): integers in 0..2**63-2, all distinct; one-line DataError else."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{what}: must be integers, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{what}: expected shape ({n},), got {arr.shape}")
    if n == 0:
        return np.zeros(0, np.int64)
    if int(arr.max()) > MAX_ID or int(arr.min()) < 0:
        raise DataError(f"{what}: must be in 0..{MAX_ID}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    s = np.sort(out)
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        raise DataError(f"{what}: id {int(s[dup[0]])} appears more than once ({dup.size} duplicates)")
    return out


def idmap_bytes(keys: np.ndarray, locs: np.ndarray) -> np.ndarray:
    """The id map's bytes: records (id, location) int64 sorted by id, as uint8."""
    order = np.argsort(keys, kind="stable")
    rec = np.empty((keys.shape[0], 2), "<i8")
    rec[:, 0] = keys[order]
    rec[:, 1] = locs[order]
    return rec.reshape(-1).view(np.uint8)


@numba.njit(cache=True, nogil=True)
def _lookup(rec, n, ids, out):
    for j in range(ids.shape[0]):
        x = ids[j]
        lo = 0
        hi = n
        while lo < hi:
            mid = (lo + hi) >> 1
            if rec[2 * mid] < x:
                lo = mid + 1
            else:
                hi = mid
        out[j] = rec[2 * lo + 1] if lo < n and rec[2 * lo] == x else -1


def lookup_sorted(keys: np.ndarray, vals: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """vals[position of ids in sorted ``keys``], -1 where absent (small in-RAM maps)."""
    pos = np.searchsorted(keys, ids)
    pos_c = np.minimum(pos, max(keys.shape[0] - 1, 0))
    hit = (pos < keys.shape[0]) & (keys[pos_c] == ids) if keys.shape[0] else np.zeros(ids.shape, bool)
    return np.where(hit, vals[pos_c] if keys.shape[0] else -1, -1).astype(np.int64)


class IdMap(MappedReader):
    """The id map of a local index, mapped (see the module docstring)."""

    def __init__(self, store, root: str, name: str, n: int, geometry: tuple[int, int, int] | None = None):
        self.n = n

        def need(total: int, shard: int) -> np.ndarray:
            want = 16 * n
            if shard % 16 or total != -(-want // shard) * shard:
                raise IndexCorruptError(f"{root}/{name}: {total} bytes in shards of {shard}, {n} ids need {want}")
            n_sh = total // shard
            return np.maximum(np.minimum(np.arange(1, n_sh + 1) * shard, want) - np.arange(n_sh) * shard, 0)

        self.mapped = open_bytes(store, root, name, need, geometry)
        self.view = self.mapped.u8.view(np.int64)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Locations int64 of ``ids`` (int64 (m,)), -1 for ids not in the base."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty(ids.shape[0], np.int64)
        _lookup(self.view, np.int64(self.n), ids, out)
        return out

    def max_id(self) -> int:
        return int(self.view[2 * (self.n - 1)])

    def all_ids(self) -> np.ndarray:
        """Every base id (int64 (n,), sorted; reads the whole map)."""
        return np.array(self.view[0:2 * self.n:2])
