"""A sharded zarr byte array of an index, mapped into one contiguous address range.

Both on-disk byte arrays (the posting lists and the vector store) are read this way: one
address range is reserved for the whole array and every shard file is mapped at its place in
it, so byte ``i`` of the array is byte ``i`` of the range. Zero copy when the pages are cached;
``MADV_RANDOM`` so a fault never pulls megabytes of readahead; one map per shard file (shards
are tens of MiB), whatever the number of lists or rows.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading

import numpy as np

from spann.errors import IndexCorruptError, ParameterError
from spann.format.zarr_v3 import check_postings_meta, check_shard_index, read_json, shard_index_bytes
from spann.io import osio
from spann.io.fetched import FetchedBytes
from spann.io.recent import forget
from spann.io.sources import ZipStore

__all__ = ["MappedBytes", "MappedReader", "open_bytes"]


class MappedBytes:
    """Array ``name`` of the index in ``store`` (a local directory, or a zip file whose members
    are page-aligned), mapped read-only.

    ``need``: int64 (n_shards,) bytes each shard must hold for the caller's directory (lists
    or rows) to be readable; shards with need 0 may be absent. Raises IndexCorruptError when a
    file is missing, damaged, or shorter than needed.
    """

    def __init__(self, store, root: str, name: str, need_fn, geometry: tuple[int, int, int]):
        self.where = os.path.join(root, name)
        self.total, self.shard_bytes, self.chunk_bytes = geometry
        n_shards = self.total // self.shard_bytes
        need = need_fn(self.total, self.shard_bytes)
        self.paths: list[str] = []
        self._maps: list[tuple[int, int]] = []  # (address, bytes) of each shard's map
        #: (shard, file, offset of its data in the file, data bytes, (st_dev, st_ino)) of each mapped shard
        self.shard_files: list[tuple[int, str, int, int, tuple[int, int]]] = []
        self._direct = None  # see direct_files
        self._direct_lock = threading.Lock()
        top = os.path.abspath(store.where)
        self.size = max(self.total, osio.PAGE)
        self.base = osio.reserve(self.size)
        self._mapped = True
        zipped = store.dir_fd is None
        try:
            for s in range(n_shards):
                key = f"{name}/c/{s}"
                where = os.path.join(root, key)
                if zipped:  # one file, each shard a stored member at a page-aligned offset
                    if key not in store.members:
                        if need[s]:
                            raise IndexCorruptError(f"{where}: shard {s} is missing")
                        continue
                    fd, at, size = os.dup(store.fd), store.member_offset(key), store.members[key][1]
                else:
                    try:
                        fd = os.open(key, os.O_RDONLY | os.O_NONBLOCK, dir_fd=store.dir_fd)
                    except FileNotFoundError:
                        if need[s]:
                            raise IndexCorruptError(f"{where}: shard {s} is missing") from None
                        continue
                    at, size = 0, None
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise IndexCorruptError(f"{where}: not a regular file")
                    if size is None:
                        size = st.st_size
                    n_idx = shard_index_bytes(self.shard_bytes, self.chunk_bytes)
                    if size < n_idx:
                        raise IndexCorruptError(f"{where}: shard file is truncated ({size} bytes)")
                    data_len = check_shard_index(os.pread(fd, n_idx, at + size - n_idx), size, self.shard_bytes,
                                                 self.chunk_bytes, where)
                    if data_len < need[s]:
                        raise IndexCorruptError(f"{where}: shard holds {data_len} bytes, the index needs {need[s]} "
                                                f"(truncated)")
                    if data_len:
                        osio.map_file_fixed(self.base + s * self.shard_bytes, min(data_len, self.shard_bytes), fd,
                                            at)
                        self._maps.append((self.base + s * self.shard_bytes, min(data_len, self.shard_bytes)))
                        self.shard_files.append((s, top if zipped else os.path.join(top, key), at,
                                                 min(data_len, self.shard_bytes), (st.st_dev, st.st_ino)))
                    self.paths.append(store.where if zipped else where)
                finally:
                    os.close(fd)
            osio.madvise(self.base, self.size, osio.MADV_RANDOM)
        except BaseException:
            self.close()
            raise
        buf = (ctypes.c_uint8 * self.size).from_address(self.base)
        self.u8 = np.frombuffer(buf, dtype=np.uint8)
        self.paths = sorted(set(self.paths))

    def files(self) -> list[str]:
        return list(self.paths)

    def preload(self) -> None:
        """Read the whole array into the page cache and map every page into this process, so
        that no read of it faults (what a long-running warm process reaches by itself)."""
        if self._mapped:
            for addr, n in self._maps:  # read ahead in big requests (MADV_RANDOM reads page by page)
                osio.madvise(addr, n, osio.MADV_SEQUENTIAL)
                try:
                    osio.populate(addr, n, self.u8)
                finally:
                    osio.madvise(addr, n, osio.MADV_RANDOM)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of file data mapped (what :meth:`preload` brings into RAM)."""
        return sum(n for _, n in self._maps)

    def evict(self) -> None:
        """Drop the array's pages from this process and from the page cache."""
        if self._mapped:
            osio.madvise(self.base, self.size, osio.MADV_DONTNEED)
            osio.evict_files(self.paths)

    def direct_files(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fds, offsets, data bytes), int64 (S,) per shard: O_DIRECT descriptors of the mapped
        shard files (-1: absent), opened once and shared by every direct reader (one per file:
        a zip's shards share one), checked to be the files that were mapped. Raises
        ParameterError where the file system refuses O_DIRECT, IndexCorruptError when a file
        was replaced since the index was opened."""
        with self._direct_lock:
            if self._direct is not None:
                return self._direct
            S = self.total // self.shard_bytes
            fds, ats, lens = np.full(S, -1, np.int64), np.zeros(S, np.int64), np.zeros(S, np.int64)
            by_file: dict[str, int] = {}
            try:
                for s, path, at, n, ident in self.shard_files:
                    if at % osio.PAGE:
                        raise ParameterError(f"{path}: shard {s} does not start on a page of its file; direct "
                                             f"reads need page-aligned shards")
                    fd = by_file.get(path)
                    if fd is None:
                        try:
                            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                        except OSError as e:
                            hint = "; the file system may not support O_DIRECT" if e.errno == errno.EINVAL else ""
                            raise ParameterError(f"{path}: cannot open for direct reads ({e.strerror}){hint}") from None
                        by_file[path] = fd
                        st = os.fstat(fd)
                        if (st.st_dev, st.st_ino) != ident:
                            raise IndexCorruptError(f"{path}: replaced since the index was opened; open it again")
                    fds[s], ats[s], lens[s] = fd, at, n
            except BaseException:
                for fd in by_file.values():
                    os.close(fd)
                raise
            self._direct_fds = list(by_file.values())
            self._direct = (fds, ats, lens)
            return self._direct

    def close(self) -> None:
        self.u8 = None
        with self._direct_lock:
            if self._direct is not None:
                for fd in self._direct_fds:
                    os.close(fd)
                self._direct = None
        if self._mapped:
            self._mapped = False
            osio.unmap(self.base, self.size)
            forget()  # the addresses may be mapped again, to other pages


def open_bytes(store, root: str, name: str, need_fn, geometry: tuple[int, int, int] | None = None):
    """Array ``name`` of the index in ``store``: mapped (a local directory; a zip file whose
    members are page-aligned) or fetched on demand (object stores, other zips; see
    :mod:`spann.io.fetched`, with the store's ``cache``). ``geometry``: its (total, shard, inner
    chunk bytes) when the opener already checked its metadata (else read and checked here)."""
    if geometry is None:
        geometry = array_geometry(store, root, name)
    if store.dir_fd is None and not (isinstance(store, ZipStore) and store.aligned("")):  # all mapped, or none
        return FetchedBytes(store, root, name, need_fn, store.cache, geometry)
    return MappedBytes(store, root, name, need_fn, geometry)


def array_geometry(store, root: str, name: str) -> tuple[int, int, int]:
    """(total, shard, inner chunk bytes) of byte array ``name``, from its checked metadata."""
    return check_postings_meta(read_json(f"{name}/zarr.json", store=store), os.path.join(root, name))


class MappedReader:
    """Base of the readers (postings, vector store, id map): ``mapped`` a :class:`MappedBytes`
    (or :class:`spann.io.fetched.FetchedBytes`), ``view`` the numba view over it."""

    mapped: MappedBytes
    view: object

    @property
    def fetched(self) -> bool:
        """The bytes are fetched on demand (call ``mapped.ensure`` before reading them)."""
        return not isinstance(self.mapped, MappedBytes)

    def files(self) -> list[str]:
        return self.mapped.files()

    def preload(self) -> None:
        """Map every page in (see :meth:`MappedBytes.preload`); fetched bytes: nothing."""
        if not self.fetched:
            self.mapped.preload()

    def evict(self) -> None:
        self.mapped.evict()

    def close(self) -> None:
        self.view = None
        self.mapped.close()


def need_for_ranges(offsets: np.ndarray, nbytes: np.ndarray, where: str):
    """A ``need_fn`` for byte ranges [offsets, offsets + nbytes) (empty ranges ignored): checks
    they lie inside the array without crossing a shard, returns bytes needed per shard."""
    def fn(total: int, shard: int) -> np.ndarray:
        ne = nbytes > 0
        if np.any(offsets[ne] < 0) or np.any(offsets[ne] % 8):
            raise IndexCorruptError(f"{where}: negative or misaligned offsets")
        end = offsets + nbytes
        if np.any(ne & ((end > total) | ((end - 1) // shard != offsets // shard))):
            raise IndexCorruptError(f"{where}: a range lies outside the array or crosses a shard")
        if ne.any() and total > -(-int(end[ne].max()) // shard) * shard:
            raise IndexCorruptError(f"{where}: the array ({total} bytes) is larger than its lists need")
        need = np.zeros(total // shard, np.int64)
        sh = (offsets[ne] // shard).astype(np.int64)
        np.maximum.at(need, sh, end[ne] - sh * shard)
        return need
    return fn
