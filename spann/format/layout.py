"""The byte layout of posting lists (pure functions: no I/O).

All posting lists live in one flat byte array (``postings``, zarr ``uint8``). List ``h`` is the
contiguous byte range ``[offsets[h], offsets[h] + list_bytes(counts[h]))``, laid out as
consecutive sections, each starting 8-byte aligned::

    ids      int64    (c,)           full: the vectors' ids; coded: their rows in the vector store
                                     (int32 when the store has fewer than 2**31 rows: id_bytes 4)
    labels   int32    (c, L)         optional (L = label_width), -1 padded
    aux      float32  (c, A)         per-entry code factors (A = aux_floats; rabitq: 2)
    codes    uint8    (c, B)         full: the vector itself (dim x dtype, little-endian);
                                     sq8: one byte per dimension; rabitq: one bit per dimension

A plain zarr client reads list h as::

    raw = postings[off : off + list_bytes(c)]      # off = offsets[h], c = counts[h]
    ids = raw[:id_bytes * c].view("<i8" if id_bytes == 8 else "<i4")
    codes = raw[codes_offset(c):][:c * B].reshape(c, B)   # full: .view(dtype).reshape(c, dim)

Packing (:func:`pack_lists`): lists keep head order (neighbouring heads end up in neighbouring
bytes, so a query's reads often merge), never cross a shard, and never span more 4 KiB pages
than their size needs (``ceil(b / 4096)``): when the next list would straddle one page too many,
a list further ahead in a small window whose tail fits is placed first, else the rest of the
page is left empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np

from spann.codecs.encodings import CODECS, FULL_CODEC, Codec
from spann.errors import IndexCorruptError

__all__ = ["PAGE", "BRIDGE_PAGES", "ALIGN", "EntryLayout", "full_entries", "pack_lists", "pages_spanned"]

PAGE = 4096   #: device page the packing avoids straddling
ALIGN = 16    #: every list starts at a multiple of this
#: two page ranges at most this many pages apart are read as one request (page cache and
#: direct reads alike). Bridging pays while a request costs more than the gap's transfer: on
#: the reference VM a request costs about 1.5 pages (benchmarks/bridge_pages.py measures a
#: device; docs/benchmarks.md)
BRIDGE_PAGES = 1


def _up(x, a):
    return -(-x // a) * a


@dataclass(frozen=True)
class EntryLayout:
    """What one posting entry holds and where each section of a list starts.

    dim: vector dimension; dtype: the vectors' stored dtype (float32, uint8 or int8);
    label_width: int32 labels per entry (0 = none); encoding: the name of the entries'
    :class:`~spann.codecs.Codec` (``full``: the vector itself; ``sq8``, ``rabitq``: compact
    codes, full vectors then live in the vector store), looked up once as :attr:`codec`;
    code_bytes: bytes of an entry's code; aux_floats: float32 factors per entry;
    id_bytes: 8 (int64 ids) or 4 (int32 rows of a coded index with fewer than 2**31 vectors).
    """

    dim: int
    dtype: str
    label_width: int = 0
    encoding: str = FULL_CODEC.name
    code_bytes: int = 0
    aux_floats: int = 0
    id_bytes: int = 8

    def __post_init__(self) -> None:
        codec = CODECS.get(self.encoding) if isinstance(self.encoding, str) else None
        if codec is None:
            raise IndexCorruptError(f"posting encoding {self.encoding!r} is not known to this spann")
        object.__setattr__(self, "_codec", codec)  # not a field: not compared, not in to_dict
        if np.dtype(self.dtype).name not in ("float32", "uint8", "int8"):
            raise IndexCorruptError(f"posting dtype {self.dtype!r} is not float32, uint8 or int8")
        if not (1 <= self.dim <= 1 << 16) or not (0 <= self.label_width <= 64) or not (0 <= self.aux_floats <= 16):
            raise IndexCorruptError(f"posting layout out of range (dim {self.dim}, labels {self.label_width})")
        if self.id_bytes not in (4, 8) or (self.id_bytes == 4 and not codec.coded):
            raise IndexCorruptError(f"posting id size {self.id_bytes} is not 8 (or 4 for coded postings)")
        if self.aux_floats == 0 and codec.aux_floats:
            object.__setattr__(self, "aux_floats", codec.aux_floats)
        if self.code_bytes == 0:
            object.__setattr__(self, "code_bytes", codec.code_bytes(self.dim, self.dtype))
        if self.code_bytes != codec.code_bytes(self.dim, self.dtype):
            raise IndexCorruptError(f"posting code size {self.code_bytes} does not fit encoding {self.encoding} "
                                    f"at dim {self.dim}")

    @property
    def codec(self) -> Codec:
        """The entries' encoding (see :mod:`spann.codecs.encodings`)."""
        return self._codec

    @property
    def coded(self) -> bool:
        """Entries hold codes; the full vectors are in the vector store."""
        return self._codec.coded

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def entry_bytes(self) -> int:
        """Bytes per entry before section padding."""
        return self.id_bytes + 4 * self.label_width + 4 * self.aux_floats + self.code_bytes

    def labels_offset(self, count: int) -> int:
        return _up(self.id_bytes * count, 8)

    def aux_offset(self, count: int) -> int:
        return _up(self.labels_offset(count) + 4 * self.label_width * count, 8)

    def codes_offset(self, count: int) -> int:
        return _up(self.aux_offset(count) + 4 * self.aux_floats * count, 8)

    payload_offset = codes_offset

    def list_bytes(self, count: int) -> int:
        """Bytes list of ``count`` entries occupies (0 for an empty list)."""
        if count == 0:
            return 0
        return _up(self.codes_offset(count) + count * self.code_bytes, ALIGN)

    def list_bytes_array(self, counts: np.ndarray) -> np.ndarray:
        c = counts.astype(np.int64)
        aux = _up(_up(self.id_bytes * c, 8) + 4 * self.label_width * c, 8)
        cod = _up(aux + 4 * self.aux_floats * c, 8)
        b = _up(cod + c * self.code_bytes, ALIGN)
        return np.where(c == 0, 0, b)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EntryLayout":
        try:
            return cls(dim=int(d["dim"]), dtype=str(d["dtype"]), label_width=int(d.get("label_width", 0)),
                       encoding=str(d.get("encoding", FULL_CODEC.name)), code_bytes=int(d.get("code_bytes", 0)),
                       aux_floats=int(d.get("aux_floats", 0)), id_bytes=int(d.get("id_bytes", 8)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexCorruptError(f"unreadable posting layout {d!r} ({e})") from None


def full_entries(dim: int, dtype: str, label_width: int = 0) -> EntryLayout:
    """Entries holding the vector itself with an int64 id: label lists (``label_width`` 0) and
    update deltas (the base's label width)."""
    return EntryLayout(dim=dim, dtype=dtype, label_width=label_width, encoding=FULL_CODEC.name)


def delta_layout(base: EntryLayout) -> EntryLayout:
    """Entries of an update's delta lists: full vectors (exact distances), int64 ids, the base's labels."""
    return full_entries(base.dim, base.dtype, base.label_width)


@numba.njit(cache=True, nogil=True)
def pages_spanned(offset, nbytes):
    """Number of PAGE-sized pages the byte range [offset, offset + nbytes) touches."""
    if nbytes <= 0:
        return 0
    return (offset + nbytes - 1) // PAGE - offset // PAGE + 1


@numba.njit(cache=True, nogil=True)
def _pack(nbytes, shard_bytes, window):
    """Offsets (int64 (H,)) for lists of ``nbytes`` in head order; see :func:`pack_lists`."""
    H = nbytes.shape[0]
    off = np.zeros(H, np.int64)
    placed = np.zeros(H, np.bool_)
    pos = np.int64(0)
    shard_end = np.int64(shard_bytes)
    nxt = 0  # first unplaced list
    while nxt < H:
        if placed[nxt]:
            nxt += 1
            continue
        chosen = -1
        for j in range(nxt, min(H, nxt + window)):
            if placed[j]:
                continue
            b = nbytes[j]
            if b == 0:
                chosen = j
                break
            need = (b + PAGE - 1) // PAGE
            if pages_spanned(pos, b) == need and pos + b <= shard_end:
                chosen = j
                break
        if chosen < 0:
            b = nbytes[nxt]
            if pos + b > shard_end or pos % PAGE == 0:
                # the list does not fit this shard (or even a page-aligned start straddles the
                # shard end): start the next shard
                if pos + b > shard_end:
                    pos = shard_end
                    shard_end += shard_bytes
                chosen = nxt
            else:
                pos = (pos // PAGE + 1) * PAGE  # leave the rest of the page empty
                continue
        off[chosen] = pos
        pos += nbytes[chosen]
        placed[chosen] = True
    return off


def pack_lists(nbytes: np.ndarray, shard_bytes: int, window: int = 16) -> tuple[np.ndarray, int]:
    """Byte offsets of lists of ``nbytes`` (int64 (H,), multiples of ALIGN) in the flat
    posting array, and the array's total length (a multiple of ``shard_bytes``).

    No list crosses a multiple of ``shard_bytes`` (each shard is one file) and every list
    spans exactly ``ceil(nbytes / PAGE)`` pages. Requires ``max(nbytes) <= shard_bytes``.
    """
    nbytes = np.ascontiguousarray(nbytes, dtype=np.int64)
    if nbytes.size and int(nbytes.max()) > shard_bytes:
        raise ValueError(f"a posting list of {int(nbytes.max())} bytes does not fit a shard of {shard_bytes}")
    if np.any(nbytes % ALIGN):
        raise ValueError("list sizes must be multiples of ALIGN")
    off = _pack(nbytes, np.int64(shard_bytes), np.int64(window))
    end = int((off + nbytes).max()) if nbytes.size else 0
    return off, max(shard_bytes, _up(end, shard_bytes))
