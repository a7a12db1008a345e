"""Entries -> posting-list bytes (the write side of :mod:`spann.format.layout`).

The builder fills the main posting array shard by shard with :func:`fill_entries`; the smaller
arrays written whole (label lists at build time, the delta lists of an update) go through
:func:`pack_entries`, which groups entries by list, packs the lists page-aware and returns the
bytes with the list directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from spann.format.layout import EntryLayout, pack_lists

__all__ = ["fill_entries", "PackedLists", "pack_entries"]


@numba.njit(cache=True, nogil=True)
def fill_entries(buf, id_pos, ids, id_bytes, lab_pos, labels, aux_pos, aux, code_pos, codes):
    """Scatter entry e into ``buf`` (uint8, 8-byte aligned length): its id (int64, or int32 if
    ``id_bytes`` is 4) at byte id_pos[e], its labels (int32 (e, L)) at lab_pos[e], its aux
    floats (float32 (e, A)) at aux_pos[e], its code bytes (uint8 (e, B)) at code_pos[e]."""
    buf64 = buf.view(np.int64)
    buf32 = buf.view(np.float32)
    bufi = buf.view(np.int32)
    for e in range(ids.shape[0]):
        if id_bytes == 4:
            bufi[id_pos[e] >> 2] = np.int32(ids[e])
        else:
            buf64[id_pos[e] >> 3] = ids[e]
        for t in range(labels.shape[1]):
            bufi[(lab_pos[e] >> 2) + t] = labels[e, t]
        for t in range(aux.shape[1]):
            buf32[(aux_pos[e] >> 2) + t] = aux[e, t]
        p = code_pos[e]
        for t in range(codes.shape[1]):
            buf[p + t] = codes[e, t]


def entry_positions(layout: EntryLayout, list_off: np.ndarray, count: np.ndarray, t: np.ndarray):
    """Byte positions (id, labels, aux, code) of entries at position ``t`` of lists starting at
    ``list_off`` with ``count`` entries (int64 arrays, one value per entry)."""
    c = count.astype(np.int64)
    lab0 = -(-(layout.id_bytes * c) // 8) * 8
    aux0 = -(-(lab0 + 4 * layout.label_width * c) // 8) * 8
    cod0 = -(-(aux0 + 4 * layout.aux_floats * c) // 8) * 8
    return (list_off + layout.id_bytes * t, list_off + lab0 + 4 * layout.label_width * t,
            list_off + aux0 + 4 * layout.aux_floats * t, list_off + cod0 + layout.code_bytes * t)


@dataclass(frozen=True)
class PackedLists:
    """Posting bytes for ``len(counts)`` lists: ``data`` uint8 (used bytes of a ``total``-byte
    array of ``shard_bytes`` shards), ``offsets`` int64 and ``counts`` int32 per list, and each
    entry's code position (int64 (e,), in the caller's entry order)."""

    data: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    total: int
    shard_bytes: int
    code_pos: np.ndarray


def pack_entries(layout: EntryLayout, lists: np.ndarray, n_lists: int, ids: np.ndarray,
                 labels: np.ndarray | None, aux: np.ndarray | None, codes: np.ndarray, shard_bytes: int,
                 chunk_bytes: int) -> PackedLists:
    """Lay out entries (list index int (e,), ids int64 (e,), labels int32 (e, L), aux float32
    (e, A), codes uint8 (e, B)) as posting lists; within a list entries keep the caller's order."""
    lists = np.asarray(lists, dtype=np.int64)
    e = lists.shape[0]
    order = np.argsort(lists, kind="stable")
    counts = np.bincount(lists, minlength=n_lists).astype(np.int64)
    nbytes = layout.list_bytes_array(counts)
    longest = int(nbytes.max()) if nbytes.size else 0
    shard = max(shard_bytes, -(-longest // chunk_bytes) * chunk_bytes)
    offsets, total = pack_lists(nbytes, shard)
    used = int((offsets + nbytes).max()) if e else 0
    buf = np.zeros(max(8, -(-used // 8) * 8), np.uint8)
    ls = lists[order]
    starts = np.concatenate([[0], np.cumsum(counts)])
    t = np.arange(e, dtype=np.int64) - starts[ls]
    ip, lp, ap, cp = entry_positions(layout, offsets[ls], counts[ls], t)
    L, A = layout.label_width, layout.aux_floats
    lab = np.zeros((e, L), np.int32) if labels is None else np.asarray(labels, np.int32)[order]
    ax = np.zeros((e, A), np.float32) if aux is None else np.asarray(aux, np.float32)[order]
    fill_entries(buf, ip, np.ascontiguousarray(ids, dtype=np.int64)[order], layout.id_bytes, lp,
                 np.ascontiguousarray(lab.reshape(e, L)), ap, np.ascontiguousarray(ax.reshape(e, A)), cp,
                 np.ascontiguousarray(codes)[order])
    code_pos = np.empty(e, np.int64)
    code_pos[order] = cp
    return PackedLists(data=buf[:used], offsets=offsets, counts=counts.astype(np.int32), total=total,
                       shard_bytes=shard, code_pos=code_pos)
