"""The vector store: every vector once, full precision, for the exact re-rank of coded postings.

One flat byte array (``vectors``, zarr ``uint8``, sharded like the postings). Rows are records
``[vector (dim x dtype, little-endian)][padding to 8][id int64]`` of ``row_bytes``; a row never
straddles a page: ``rows_per_page = 4096 // row_bytes`` rows share a 4 KiB page (rows longer
than a page start on a page and take whole pages), so a candidate costs one read of at most
``page_bytes``. Rows are in the order of the vectors' nearest heads, so a query's candidates,
which come from a few neighbouring lists, often share pages. Row ``r`` lives at byte::

    (r // rows_per_page) * page_bytes + (r % rows_per_page) * row_bytes
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import asdict, dataclass

import numba
import numpy as np

from spann.errors import IndexCorruptError
from spann.format.layout import PAGE
from spann.io.direct import direct_submit
from spann.io.mapped import MappedReader, open_bytes
from spann.io.postings import merge_page_runs
from spann.io.recent import RECENT

__all__ = ["StoreLayout", "VectorsView", "LocalVectors", "store_rows_bytes", "row_offset", "row_vector", "row_id",
           "union_row_pages", "row_page_ranges", "direct_rows", "rows_buffer_view"]


def _up(x: int, a: int) -> int:
    return -(-x // a) * a


@dataclass(frozen=True)
class StoreLayout:
    """n rows of dim x dtype (+ an int64 id); derived: row_bytes, rows_per_page, page_bytes."""

    n: int
    dim: int
    dtype: str

    @property
    def id_offset(self) -> int:
        return _up(self.dim * np.dtype(self.dtype).itemsize, 8)

    @property
    def row_bytes(self) -> int:
        return self.id_offset + 8

    @property
    def rows_per_page(self) -> int:
        return max(1, PAGE // self.row_bytes)

    @property
    def page_bytes(self) -> int:
        return PAGE if self.row_bytes <= PAGE else _up(self.row_bytes, PAGE)

    @property
    def total_bytes(self) -> int:
        return -(-self.n // self.rows_per_page) * self.page_bytes

    def shard_bytes(self, wanted: int, chunk: int) -> int:
        """A shard size near ``wanted`` that holds whole pages and whole zarr chunks."""
        unit = int(np.lcm(self.page_bytes, chunk))
        return max(unit, wanted // unit * unit)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StoreLayout":
        try:
            lay = cls(n=int(d["n"]), dim=int(d["dim"]), dtype=str(d["dtype"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexCorruptError(f"unreadable vector store layout {d!r} ({e})") from None
        if lay.n < 1 or not (1 <= lay.dim <= 1 << 16) or np.dtype(lay.dtype).name not in ("float32", "uint8", "int8"):
            raise IndexCorruptError(f"vector store layout out of range: {d!r}")
        return lay


def store_rows_bytes(lay: StoreLayout, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The bytes of consecutive rows (the first at a page start) as they sit in the array."""
    m = vectors.shape[0]
    pages = -(-m // lay.rows_per_page)
    buf = np.zeros(pages * lay.page_bytes, np.uint8)
    vb = np.ascontiguousarray(vectors, dtype=np.dtype(lay.dtype).newbyteorder("<")).view(np.uint8).reshape(m, -1)
    _scatter_rows(buf, vb, np.ascontiguousarray(ids, dtype=np.int64), lay.rows_per_page, lay.page_bytes,
                  lay.row_bytes, lay.id_offset)
    return buf


@numba.njit(cache=True, nogil=True)
def _scatter_rows(buf, vb, ids, rpp, pb, rb, id_off):
    buf64 = buf.view(np.int64)
    for r in range(vb.shape[0]):
        o = (r // rpp) * pb + (r % rpp) * rb
        for t in range(vb.shape[1]):
            buf[o + t] = vb[r, t]
        buf64[(o + id_off) >> 3] = ids[r]


VectorsView = namedtuple("VectorsView", ["u8", "i64", "vec", "base", "n", "dim", "rows_per_page", "page_bytes",
                                         "row_bytes", "id_offset", "prefetchable", "recent"])


def rows_buffer_view(vv: VectorsView, buf: np.ndarray) -> VectorsView:
    """A view of ``vv``'s rows over a direct reader's buffer ``buf`` (uint8, page-aligned);
    a row's place in it comes from :func:`direct_rows`, not from :func:`row_offset`."""
    return vv._replace(u8=buf, i64=buf.view(np.int64), vec=buf.view(vv.vec.dtype), base=np.int64(buf.ctypes.data),
                       prefetchable=False)


class LocalVectors(MappedReader):
    """The vector store of a local index, mapped; ``view`` is its :class:`VectorsView`."""

    def __init__(self, store, root: str, name: str, lay: StoreLayout, geometry: tuple[int, int, int] | None = None):
        self.layout = lay

        def need(total: int, shard: int) -> np.ndarray:
            if total != -(-lay.total_bytes // shard) * shard:
                raise IndexCorruptError(f"{root}/{name}: {total} bytes, the {lay.n} rows need {lay.total_bytes} "
                                        f"in shards of {shard}")
            n_sh = total // shard
            ends = np.minimum(np.arange(1, n_sh + 1) * shard, lay.total_bytes) - np.arange(n_sh) * shard
            return np.maximum(ends, 0)

        self.mapped = open_bytes(store, root, name, need, geometry)
        u8 = self.mapped.u8
        self.view = VectorsView(u8=u8, i64=u8.view(np.int64), vec=u8.view(np.dtype(lay.dtype)),
                                base=np.int64(u8.ctypes.data), n=np.int64(lay.n), dim=np.int64(lay.dim),
                                rows_per_page=np.int64(lay.rows_per_page), page_bytes=np.int64(lay.page_bytes),
                                row_bytes=np.int64(lay.row_bytes), id_offset=np.int64(lay.id_offset),
                                prefetchable=not self.fetched, recent=RECENT)



@numba.njit(cache=True, nogil=True, inline="always")
def row_offset(vv, r):
    return (r // vv.rows_per_page) * vv.page_bytes + (r % vv.rows_per_page) * vv.row_bytes


@numba.njit(cache=True, nogil=True, inline="always")
def row_vector(vv, r):
    p = row_offset(vv, r) // vv.vec.itemsize
    return vv.vec[p:p + vv.dim]


@numba.njit(cache=True, nogil=True, inline="always")
def row_id(vv, r):
    return vv.i64[(row_offset(vv, r) + vv.id_offset) >> 3]


@numba.njit(cache=True, nogil=True, inline="always")
def row_page_ranges(vv, rows, m, first, last):
    """The page ranges ``[first[j], last[j]]`` (int64) of the rows of ``rows[:m]`` that exist, in
    order; returns how many."""
    k = np.int64(0)  # not the literal 0 (see spann.io.postings.union_pages)
    for j in range(m):
        r = rows[j]
        if r < 0 or r >= vv.n:
            continue
        o = vv.base + row_offset(vv, r)
        first[k] = o // PAGE
        last[k] = (o + vv.row_bytes - 1) // PAGE
        k += 1
    return k


@numba.njit(cache=True, nogil=True)
def union_row_pages(vv, rows, m, epoch):
    """Pages rows[:m] lie on, counted once; with ``epoch`` >= 0 (see :mod:`spann.io.recent`; -1:
    only count) and a prefetchable view, also ask the kernel to read those not requested lately."""
    first = np.empty(max(m, 1), np.int64)
    last = np.empty(max(m, 1), np.int64)
    k = row_page_ranges(vv, rows, m, first, last)
    return merge_page_runs(first, last, k, vv.recent, epoch if vv.prefetchable else np.int64(-1))


@numba.njit(cache=True, nogil=True)
def direct_rows(vv, dr, rows, m, pos):
    """Read rows ``rows[:m]`` (int64) with the direct reader ``dr`` (see
    :mod:`spann.io.direct`); ``pos[j]`` (int64) receives where row j lands in ``dr.buf`` (-1:
    no such row). Returns the bytes requested (whole pages)."""
    starts = np.empty(max(m, 1), np.int64)
    nb = np.empty(max(m, 1), np.int64)
    for j in range(m):
        r = rows[j]
        ok = 0 <= r < vv.n
        starts[j] = row_offset(vv, r) if ok else 0
        nb[j] = vv.row_bytes if ok else 0
    return direct_submit(dr, starts, nb, m, pos)
