"""The posting read path: one numba-passable view of every posting list, and the reader behind it.

:class:`PostingsView` is all a scan kernel sees: the posting bytes as typed flat arrays
(``u8``/``i64``/``i32``/``vec`` views of the same memory), the base address of that memory, and
per list its byte offset and entry count. How the bytes got there is the reader's business:

- :class:`MappedPostings` (local files) reserves one contiguous address range for the whole
  posting array and maps every shard file at its place in it, so list ``h`` is simply
  ``u8[offsets[h]:...]``: zero copy when the pages are cached, and all of a query's reads in
  flight at once when they are not (``madvise(WILLNEED)`` on each list's pages, issued from
  the kernel before the scan; ``MADV_RANDOM`` so a fault never pulls megabytes of readahead).
  One map per shard file, however many lists (shards are tens of MiB).

A reader that fetches bytes elsewhere (pread, object storage) fills a buffer and builds a
:class:`PostingsView` over it with list offsets into that buffer; the kernels do not change.
"""

from __future__ import annotations

import ctypes
import os
from collections import namedtuple

import numba
import numpy as np

from spann import osio
from spann.errors import IndexCorruptError
from spann.layout import PAGE, EntryLayout
from spann.zarr_io import check_postings_meta, read_json, read_shard_index

__all__ = ["PostingsView", "MappedPostings", "make_view", "prefetch_lists", "list_pages", "union_pages"]

PostingsView = namedtuple("PostingsView", ["u8", "i64", "i32", "vec", "base", "offsets", "counts", "dim",
                                           "label_width", "prefetchable"])
PostingsView.__doc__ = """Posting lists as numba sees them.

u8, i64, i32, vec: the same bytes as uint8 / int64 / int32 / stored-dtype 1-D arrays;
base: their address (int64); offsets: int64 (H,) byte offset of list h in u8; counts: int32 (H,)
entries of list h; dim, label_width: the entry layout; prefetchable: madvise works on the
memory (a file map), so cold lists can be requested ahead of the scan.
"""


def make_view(u8: np.ndarray, offsets: np.ndarray, counts: np.ndarray, layout: EntryLayout,
              prefetchable: bool) -> PostingsView:
    """A :class:`PostingsView` over ``u8`` (length a multiple of 8, 8-byte aligned)."""
    dt = np.dtype(layout.dtype)
    return PostingsView(u8=u8, i64=u8.view(np.int64), i32=u8.view(np.int32), vec=u8.view(dt),
                        base=np.int64(u8.ctypes.data), offsets=offsets, counts=counts,
                        dim=np.int64(layout.dim), label_width=np.int64(layout.label_width),
                        prefetchable=bool(prefetchable))


class MappedPostings:
    """The posting array of a local index, mapped into one contiguous address range.

    ``dir_fd``: the index directory (opened once); ``name``: the posting array's directory;
    ``offsets``/``counts``: the list directory (validated against the files here).
    """

    def __init__(self, dir_fd: int, root: str, name: str, offsets: np.ndarray, counts: np.ndarray,
                 layout: EntryLayout):
        self.where = os.path.join(root, name)
        meta = read_json(os.path.join(name, "zarr.json"), dir_fd)
        self.total, self.shard_bytes, self.chunk_bytes = check_postings_meta(meta, self.where)
        self.layout = layout
        H = offsets.shape[0]
        nbytes = layout.list_bytes_array(counts)
        self.list_nbytes = nbytes
        nonempty = counts > 0
        if np.any(offsets < 0) or np.any(offsets % 8):
            raise IndexCorruptError(f"{self.where}: list offsets are negative or misaligned")
        end = offsets + nbytes
        if np.any(nonempty & ((end > self.total) | ((end - 1) // self.shard_bytes != offsets // self.shard_bytes))):
            raise IndexCorruptError(f"{self.where}: a posting list lies outside the posting array or crosses a shard")
        n_shards = self.total // self.shard_bytes
        need = np.zeros(n_shards, np.int64)  # bytes each shard must hold
        sh = (offsets[nonempty] // self.shard_bytes).astype(np.int64)
        np.maximum.at(need, sh, (end[nonempty] - sh * self.shard_bytes))
        self.paths: list[str] = []
        self.base = osio.reserve(max(self.total, PAGE))
        self._mapped = True
        try:
            for s in range(n_shards):
                key = os.path.join(name, "c", str(s))
                try:
                    fd = os.open(key, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
                except FileNotFoundError:
                    if need[s]:
                        raise IndexCorruptError(f"{os.path.join(root, key)}: posting shard {s} is missing") from None
                    continue
                try:
                    import stat
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise IndexCorruptError(f"{os.path.join(root, key)}: not a regular file")
                    data_len = read_shard_index(fd, st.st_size, self.shard_bytes, self.chunk_bytes,
                                                os.path.join(root, key))
                    if data_len < need[s]:
                        raise IndexCorruptError(f"{os.path.join(root, key)}: shard holds {data_len} bytes, its lists "
                                                f"need {need[s]} (truncated)")
                    if data_len:
                        osio.map_file_fixed(self.base + s * self.shard_bytes, min(data_len, self.shard_bytes), fd)
                    self.paths.append(os.path.join(root, key))
                finally:
                    os.close(fd)
            osio.madvise(self.base, max(self.total, PAGE), osio.MADV_RANDOM)
        except BaseException:
            self.close()
            raise
        buf = (ctypes.c_uint8 * max(self.total, 8)).from_address(self.base)
        u8 = np.frombuffer(buf, dtype=np.uint8)
        self.view = make_view(u8, offsets.astype(np.int64), counts.astype(np.int32), layout, prefetchable=True)
        self.n_lists = H

    def files(self) -> list[str]:
        return list(self.paths)

    def evict(self) -> None:
        """Drop the posting pages from this process and from the page cache: the next read of
        any list goes to the device."""
        if self._mapped:
            osio.madvise(self.base, max(self.total, PAGE), osio.MADV_DONTNEED)
            osio.evict_files(self.paths)

    def close(self) -> None:
        self.view = None
        if self._mapped:
            self._mapped = False
            osio.unmap(self.base, max(self.total, PAGE))


@numba.njit(cache=True, nogil=True)
def list_pages(pv, h):
    """(first page, last page) of list h in the view's memory; (0, -1) if empty."""
    c = pv.counts[h]
    if c == 0:
        return 0, -1
    o = pv.base + pv.offsets[h]
    n = _list_nbytes(pv, c)
    return o // PAGE, (o + n - 1) // PAGE


@numba.njit(cache=True, nogil=True, inline="always")
def _list_nbytes(pv, c):
    pay = (8 * c + 4 * pv.label_width * c + 7) // 8 * 8
    return (pay + c * pv.dim * pv.vec.itemsize + 15) // 16 * 16


@numba.njit(cache=True, nogil=True)
def union_pages(pv, sel, kept, advise):
    """Pages the first ``kept`` lists of ``sel`` touch, counted once; with ``advise``, also ask
    the kernel to read them now (one madvise(WILLNEED) per run of adjacent pages)."""
    if kept == 0:
        return 0
    first = np.empty(kept, np.int64)
    last = np.empty(kept, np.int64)
    m = 0
    for j in range(kept):
        a, b = list_pages(pv, sel[j])
        if b >= a:
            first[m] = a
            last[m] = b
            m += 1
    if m == 0:
        return 0
    o = np.argsort(first[:m])
    total = 0
    run_a = first[o[0]]
    run_b = last[o[0]]
    for t in range(1, m + 1):
        if t < m and first[o[t]] <= run_b + 1:
            if last[o[t]] > run_b:
                run_b = last[o[t]]
            continue
        total += run_b - run_a + 1
        if advise:
            osio.madvise_nb(run_a * PAGE, (run_b - run_a + 1) * PAGE, np.int32(osio.MADV_WILLNEED))
        if t < m:
            run_a = first[o[t]]
            run_b = last[o[t]]
    return total


def prefetch_lists(pv: PostingsView, sel: np.ndarray, kept: np.ndarray) -> None:
    """Request the pages of every selected list of a batch (sel (nq, m), kept (nq,))."""
    if pv.prefetchable:
        _prefetch_batch(pv, sel, kept)


@numba.njit(cache=True, nogil=True)
def _prefetch_batch(pv, sel, kept):
    for i in range(sel.shape[0]):
        union_pages(pv, sel[i], kept[i], True)
