"""The posting read path: one numba-passable view of every posting list.

:class:`PostingsView` is all a scan kernel sees: the posting bytes as typed flat arrays
(``u8``/``i64``/``i32``/``f32``/``vec`` views of the same memory), the base address of that
memory, and per list its byte offset and entry count, plus the entry layout. How the bytes got
there is the reader's business: :class:`~spann.io.mapped.MappedBytes` maps local shard files into
one range (all of a query's reads put in flight at once by :func:`union_pages` with an epoch,
see :mod:`spann.io.recent`);
a reader that fetches bytes elsewhere (pread, object storage) fills a buffer and builds a view
over it with list offsets into that buffer. The kernels do not change.
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from spann.format.layout import BRIDGE_PAGES, PAGE, EntryLayout
from spann.io import osio
from spann.io.direct import direct_submit
from spann.io.mapped import MappedReader, need_for_ranges, open_bytes
from spann.io.recent import RECENT, run_is_recent, stamp_run

__all__ = ["PostingsView", "make_view", "buffer_view", "LocalPostings", "union_pages", "prefetch_lists", "list_pages",
           "direct_lists"]

PostingsView = namedtuple("PostingsView", ["u8", "i64", "i32", "f32", "vec", "base", "offsets", "counts", "dim",
                                           "label_width", "aux_floats", "code_bytes", "id_bytes", "prefetchable",
                                           "recent"])
PostingsView.__doc__ = """Posting lists as numba sees them.

u8, i64, i32, f32, vec: the same bytes as uint8 / int64 / int32 / float32 / stored-dtype 1-D
arrays; base: their address (int64); offsets: int64 (H,) byte offset of list h; counts: int32
(H,) entries of list h; dim, label_width, aux_floats, code_bytes, id_bytes: the entry layout;
prefetchable: madvise works on the memory (a file map); recent: the table of pages requested
lately (:data:`spann.io.recent.RECENT`).
"""


def make_view(u8: np.ndarray, offsets: np.ndarray, counts: np.ndarray, layout: EntryLayout,
              prefetchable: bool) -> PostingsView:
    """A :class:`PostingsView` over ``u8`` (length a multiple of 8, 8-byte aligned)."""
    return PostingsView(u8=u8, i64=u8.view(np.int64), i32=u8.view(np.int32), f32=u8.view(np.float32),
                        vec=u8.view(np.dtype(layout.dtype)), base=np.int64(u8.ctypes.data),
                        offsets=np.ascontiguousarray(offsets, dtype=np.int64),
                        counts=np.ascontiguousarray(counts, dtype=np.int32), dim=np.int64(layout.dim),
                        label_width=np.int64(layout.label_width), aux_floats=np.int64(layout.aux_floats),
                        code_bytes=np.int64(layout.code_bytes), id_bytes=np.int64(layout.id_bytes),
                        prefetchable=bool(prefetchable), recent=RECENT)


def buffer_view(pv: PostingsView, buf: np.ndarray) -> PostingsView:
    """A view of ``pv``'s lists over a direct reader's buffer ``buf`` (uint8, page-aligned):
    its offsets (a fresh int64 (H,) array) are set by :func:`direct_lists` for the lists read."""
    return pv._replace(u8=buf, i64=buf.view(np.int64), i32=buf.view(np.int32), f32=buf.view(np.float32),
                       vec=buf.view(pv.vec.dtype), base=np.int64(buf.ctypes.data),
                       offsets=np.zeros(pv.offsets.shape[0], np.int64), prefetchable=False)


class LocalPostings(MappedReader):
    """The posting array of a local index, mapped; ``view`` is its :class:`PostingsView`."""

    def __init__(self, store, root: str, name: str, offsets: np.ndarray, counts: np.ndarray,
                 layout: EntryLayout, geometry: tuple[int, int, int] | None = None):
        self.layout = layout
        nbytes = layout.list_bytes_array(counts)  # not kept: 8 bytes per list
        self.mapped = open_bytes(store, root, name, need_for_ranges(offsets, nbytes, f"{root}/{name}"), geometry)
        self.view = make_view(self.mapped.u8, offsets, counts, layout, prefetchable=not self.fetched)



@numba.njit(cache=True, nogil=True, inline="always")
def aux_offset(pv, c):
    """Byte offset of the aux section in a list of c entries (see EntryLayout)."""
    lab = (pv.id_bytes * c + 7) // 8 * 8
    return (lab + 4 * pv.label_width * c + 7) // 8 * 8


@numba.njit(cache=True, nogil=True, inline="always")
def labels_start(pv, o, c, t):
    """int32 index of entry t's first label in the list of c entries at byte offset o."""
    return ((o + (pv.id_bytes * c + 7) // 8 * 8) >> 2) + t * pv.label_width


@numba.njit(cache=True, nogil=True, inline="always")
def codes_offset(pv, c):
    """Byte offset of the code section in a list of c entries (see EntryLayout)."""
    return (aux_offset(pv, c) + 4 * pv.aux_floats * c + 7) // 8 * 8


@numba.njit(cache=True, nogil=True, inline="always")
def entry_id(pv, o, t):
    """Id (or store row) of entry t of the list at byte offset o."""
    if pv.id_bytes == 4:
        return np.int64(pv.i32[(o >> 2) + t])
    return pv.i64[(o >> 3) + t]


@numba.njit(cache=True, nogil=True, inline="always")
def list_nbytes(pv, c):
    return (codes_offset(pv, c) + c * pv.code_bytes + 15) // 16 * 16


@numba.njit(cache=True, nogil=True)
def list_pages(pv, h):
    """(first page, last page) of list h in the view's memory; (0, -1) if empty."""
    c = pv.counts[h]
    if c == 0:
        return 0, -1
    o = pv.base + pv.offsets[h]
    return o // PAGE, (o + list_nbytes(pv, c) - 1) // PAGE



@numba.njit(cache=True, nogil=True)
def merge_page_runs(first, last, m, recent, epoch):
    """Pages of the ranges [first[j], last[j]] (j < m, in any order) counted once, gaps of up to
    BRIDGE_PAGES pages between ranges read along (one request instead of two). With ``epoch``
    >= 0 (see :mod:`spann.io.recent`), one madvise(WILLNEED) per resulting run, except for runs whose
    pages the table ``recent`` says were requested lately (within ~1 s)."""
    if m == 0:
        return 0
    o = np.argsort(first[:m])
    total = 0
    run_a = first[o[0]]
    run_b = last[o[0]]
    for t in range(1, m + 1):
        if t < m and first[o[t]] <= run_b + 1 + BRIDGE_PAGES:
            if last[o[t]] > run_b:
                run_b = last[o[t]]
            continue
        total += run_b - run_a + 1
        if epoch >= 0 and not run_is_recent(recent, run_a, run_b, epoch):
            osio.madvise_nb(run_a * PAGE, (run_b - run_a + 1) * PAGE, np.int32(osio.MADV_WILLNEED))
            stamp_run(recent, run_a, run_b, epoch)
        if t < m:
            run_a = first[o[t]]
            run_b = last[o[t]]
    return total


@numba.njit(cache=True, nogil=True)
def union_pages(pv, sel, kept, epoch):
    """Pages the first ``kept`` lists of ``sel`` touch, counted once; with ``epoch`` >= 0 (see
    :mod:`spann.io.recent`; -1: only count) and a prefetchable view, also ask the kernel to read
    those not requested lately."""
    first = np.empty(max(kept, 1), np.int64)
    last = np.empty(max(kept, 1), np.int64)
    m = np.int64(0)  # not the literal 0: numba would compile merge_page_runs once more for it
    for j in range(kept):
        a, b = list_pages(pv, sel[j])
        if b >= a:
            first[m] = a
            last[m] = b
            m += 1
    return merge_page_runs(first, last, m, pv.recent, epoch if pv.prefetchable else np.int64(-1))


def prefetch_lists(pv: PostingsView, sel: np.ndarray, kept: np.ndarray, epoch: int) -> None:
    """Request the pages of every selected list of a batch (sel (nq, m), kept (nq,)); ``epoch``
    from :func:`spann.io.recent.epoch_now`."""
    if pv.prefetchable:
        _prefetch_batch(pv, sel, kept, np.int64(epoch))


@numba.njit(cache=True, nogil=True)
def _prefetch_batch(pv, sel, kept, epoch):
    for i in range(sel.shape[0]):
        union_pages(pv, sel[i], kept[i], epoch)


@numba.njit(cache=True, nogil=True)
def direct_lists(pv, dr, sel, n, offs):
    """Read lists ``sel[:n]`` of ``pv`` with the direct reader ``dr`` (see
    :mod:`spann.io.direct`); ``offs[h]`` receives where list h lands in ``dr.buf`` (the offsets
    of its :func:`buffer_view`). Returns the bytes requested (whole pages)."""
    starts = np.empty(max(n, 1), np.int64)
    nb = np.empty(max(n, 1), np.int64)
    pos = np.empty(max(n, 1), np.int64)
    for j in range(n):
        h = sel[j]
        c = pv.counts[h]
        starts[j] = pv.offsets[h]
        nb[j] = list_nbytes(pv, c) if c > 0 else 0
    total = direct_submit(dr, starts, nb, n, pos)
    for j in range(n):
        if pos[j] >= 0:
            offs[sel[j]] = pos[j]
    return total
