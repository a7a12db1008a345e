"""A sharded byte array of an index in an object store (or an unaligned zip), fetched on demand.

The array gets the same kind of address range a local index maps its shard files into
(:mod:`spann.io.mapped`), but anonymous and writable: byte ``i`` of the array is byte ``i`` of the
range, so the scan kernels and their views do not change. Before a search scans a list (or
re-ranks a row), :meth:`FetchedBytes.ensure` fetches what is not resident: one ranged GET per
list (or vector-store page), all of a call's GETs in flight together. Memory is committed only
where bytes were written.

:class:`FetchCache` bounds what stays resident across searches: fetched units (a list, a page)
in least-recently-used order, up to ``cache_bytes``; an evicted unit's pages go back to the
system (``MADV_DONTNEED``). A page that an evicted unit shares with another is kept and
counted; when such pages pass a quarter of the budget the whole cache is emptied. With
``cache_bytes = 0`` every search fetches all it reads.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict

import numpy as np

from spann.errors import IndexCorruptError
from spann.format.zarr_v3 import check_shard_index, shard_index_bytes
from spann.io import osio

__all__ = ["FetchCache", "FetchedBytes"]

PAGE = osio.PAGE


class FetchCache:
    """Least-recently-used fetched units of an index's arrays, bounded by ``budget`` bytes.
    Not thread-safe: the index serialises searches that fetch."""

    def __init__(self, budget: int):
        self.budget = max(0, int(budget))
        self.lru: OrderedDict = OrderedDict()  # (array id, key) -> None
        self.arrays: dict[int, "FetchedBytes"] = {}
        self.resident_bytes = 0
        self.residue_bytes = 0
        self.requests = 0
        self.fetched_bytes = 0

    def register(self, arr: "FetchedBytes") -> None:
        self.arrays[id(arr)] = arr

    def unregister(self, arr: "FetchedBytes") -> None:
        self.arrays.pop(id(arr), None)
        for k in [k for k in self.lru if k[0] == id(arr)]:
            del self.lru[k]
        self.resident_bytes -= sum(b - a for a, b in arr.resident.values())

    def touch(self, arr: "FetchedBytes", key: int) -> None:
        self.lru.move_to_end((id(arr), key))

    def added(self, arr: "FetchedBytes", key: int, nbytes: int) -> None:
        self.lru[(id(arr), key)] = None
        self.resident_bytes += nbytes

    def trim(self) -> None:
        """Evict least recently used units until the budget holds (call between searches)."""
        if self.budget == 0:
            self.clear()
            return
        while self.resident_bytes + self.residue_bytes > self.budget and self.lru:
            (aid, key), _ = self.lru.popitem(last=False)
            arr = self.arrays[aid]
            a, b = arr.resident.pop(key)
            self.resident_bytes -= b - a
            self.residue_bytes += arr.free(a, b)
        if self.residue_bytes > self.budget // 4:
            self.clear()

    def clear(self) -> None:
        """Empty the cache: every array's memory goes back to the system."""
        for arr in self.arrays.values():
            arr.drop_all()
        self.lru.clear()
        self.resident_bytes = self.residue_bytes = 0


class FetchedBytes:
    """Array ``name`` of the index in ``store`` (a :class:`spann.io.sources.Store`), fetched on
    demand into an anonymous range. ``need_fn`` as for :class:`spann.io.mapped.MappedBytes`:
    shard files are checked (present, index crc, long enough) when the array is opened."""

    prefetchable = False

    def __init__(self, store, root: str, name: str, need_fn, cache: FetchCache, geometry: tuple[int, int, int]):
        self.where = f"{root}/{name}"
        self.store, self.name, self.cache = store, name, cache
        self.total, self.shard_bytes, self.chunk_bytes = geometry
        need = need_fn(self.total, self.shard_bytes)
        n_shards = self.total // self.shard_bytes
        sizes = store.sizes_of([f"{name}/c/{s}" for s in range(n_shards)])
        n_idx = shard_index_bytes(self.shard_bytes, self.chunk_bytes)
        keys, starts, ends, shards = [], [], [], []
        for s in range(n_shards):
            key = f"{name}/c/{s}"
            size = sizes.get(key)
            if size is None:
                if need[s]:
                    raise IndexCorruptError(f"{root}/{key}: shard {s} is missing")
                continue
            if size < n_idx:
                raise IndexCorruptError(f"{root}/{key}: shard file is truncated ({size} bytes)")
            keys.append(key)
            starts.append(size - n_idx)
            ends.append(size)
            shards.append(s)
        for s, key, raw, size in zip(shards, keys, store.read_ranges(keys, starts, ends), ends):
            data_len = check_shard_index(raw, size, self.shard_bytes, self.chunk_bytes, f"{root}/{key}")
            if data_len < need[s]:
                raise IndexCorruptError(f"{root}/{key}: shard holds {data_len} bytes, the index needs {need[s]} "
                                        f"(truncated)")
        self.size = max(self.total, PAGE)
        self.base = osio.reserve_writable(self.size)
        self._mapped = True
        self.u8 = np.frombuffer((ctypes.c_uint8 * self.size).from_address(self.base), dtype=np.uint8)
        self.resident: dict[int, tuple[int, int]] = {}
        cache.register(self)

    def files(self) -> list[str]:
        return []

    def ensure(self, keys: np.ndarray, starts: np.ndarray, ends: np.ndarray, owners: np.ndarray,
               n_owners: int) -> tuple[np.ndarray, np.ndarray]:
        """Make units ``keys`` (int, any order, repeats allowed) resident: unit k is array bytes
        [starts, ends) (inside one shard). Returns (GETs, bytes fetched) per owner int64
        (n_owners,), each GET counted for the first owner that needed it."""
        req = np.zeros(n_owners, np.int64)
        got = np.zeros(n_owners, np.int64)
        keys = np.asarray(keys, np.int64)
        if keys.size == 0:
            return req, got
        uk, first = np.unique(keys, return_index=True)
        order = np.argsort(first, kind="stable")  # first needed first
        miss_k, miss_a, miss_b, miss_o = [], [], [], []
        res = self.resident
        for j in order:
            k = int(uk[j])
            if k in res:
                self.cache.touch(self, k)
                continue
            i = first[j]
            a, b = int(starts[i]), int(ends[i])
            if b <= a:
                continue
            miss_k.append(k)
            miss_a.append(a)
            miss_b.append(b)
            miss_o.append(int(owners[i]))
        if not miss_k:
            return req, got
        S = self.shard_bytes
        sh = [a // S for a in miss_a]
        for a, b, s in zip(miss_a, miss_b, sh):
            if a < 0 or b > self.total or (b - 1) // S != s:
                raise IndexCorruptError(f"{self.where}: a range [{a}, {b}) lies outside the array or crosses a shard")
        data = self.store.read_ranges([f"{self.name}/c/{s}" for s in sh], [a - s * S for a, s in zip(miss_a, sh)],
                                      [b - s * S for b, s in zip(miss_b, sh)])
        for k, a, b, o, d in zip(miss_k, miss_a, miss_b, miss_o, data):
            if len(d) != b - a:
                raise IndexCorruptError(f"{self.where}: short read ({len(d)} of {b - a} bytes)")
            self.u8[a:b] = np.frombuffer(d, np.uint8)
            res[k] = (a, b)
            self.cache.added(self, k, b - a)
            req[o] += 1
            got[o] += b - a
        self.cache.requests += len(miss_k)
        self.cache.fetched_bytes += int(sum(miss_b) - sum(miss_a))
        return req, got

    def free(self, a: int, b: int) -> int:
        """Give back the pages wholly inside [a, b); returns the bytes of its boundary pages,
        which stay (another unit may share them)."""
        p0, p1 = -(-a // PAGE), b // PAGE
        if p1 > p0:
            osio.madvise(self.base + p0 * PAGE, (p1 - p0) * PAGE, osio.MADV_DONTNEED)
        spanned = -(-b // PAGE) - a // PAGE
        return (spanned - max(0, p1 - p0)) * PAGE

    def drop_all(self) -> None:
        if self._mapped:
            osio.madvise(self.base, self.size, osio.MADV_DONTNEED)
        self.resident.clear()

    def evict(self) -> None:
        pass  # the index empties the shared cache under its fetch lock (Index.evict)

    def close(self) -> None:
        self.u8 = None
        self.cache.unregister(self)
        self.resident.clear()
        if self._mapped:
            self._mapped = False
            osio.unmap(self.base, self.size)
