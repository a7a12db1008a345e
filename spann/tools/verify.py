"""Full check of an index's on-disk data (``spann verify``): what opening does not read.

Opening validates metadata and the in-RAM arrays (checksums, shapes, ranges). The posting
array and the vector store are only mapped, so damage there shows up as wrong results at
search time. :func:`verify_index` reads all of it once:

- every shard's crc32c against the one recorded at build time;
- every posting entry: id (full: one of the id map's) or store row (coded) in ``[0, n)``; full
  float vectors finite; rabitq factors finite with ``0 < <o_bar, u> <= 1``;
- every vector present in at least one list (nothing lost);
- coded: every store row's id in the id map and each id stored exactly once, vectors finite;
- the id map sorted, its ids distinct;
- an updated index: the current generation's delta lists (checksums, every entry's id one of
  the delta's ids and every delta id in a list, vectors finite);
- the commit record against the data: the live count is the number of ids stored and not
  deleted, and ``next_id`` lies above every stored id (format 5 and later indexes also carry a checksum of
  the root metadata, checked at open; formats 3 and 4 have none: the summary says so).
"""

from __future__ import annotations

import os
from typing import Any

import google_crc32c
import numba
import numpy as np

from spann.errors import IndexCorruptError, ParameterError
from spann.index import Index
from spann.io.idmap import MAX_ID
from spann.io.postings import aux_offset, codes_offset, entry_id
from spann.io.vector_store import row_offset

__all__ = ["verify_index"]


@numba.njit(cache=True, nogil=True)
def _scan_lists(pv, check_vectors, rabitq):
    """(every entry's id or row int64 (e,), non-finite vectors, bad rabitq factors)."""
    total = 0
    for h in range(pv.counts.shape[0]):
        total += pv.counts[h]
    keys = np.empty(total, np.int64)
    e = 0
    bad_vec = 0
    bad_aux = 0
    isz = pv.vec.itemsize
    for h in range(pv.counts.shape[0]):
        c = pv.counts[h]
        o = pv.offsets[h]
        for t in range(c):
            keys[e] = entry_id(pv, o, t)
            e += 1
        if check_vectors:
            po = (o + codes_offset(pv, c)) // isz
            for j in range(c * pv.dim):
                if not np.isfinite(pv.vec[po + j]):
                    bad_vec += 1
                    break
        if rabitq:
            ao = (o + aux_offset(pv, c)) >> 2
            for t in range(c):
                nr = pv.f32[ao + pv.aux_floats * t]
                a = pv.f32[ao + pv.aux_floats * t + 1]
                if not (np.isfinite(nr) and nr >= 0.0 and a > 0.0 and a <= 1.0 + 1e-5):
                    bad_aux += 1
    return keys, bad_vec, bad_aux


@numba.njit(cache=True, nogil=True)
def _scan_store(vv, check_vectors):
    """(the id of every row int64 (n,), non-finite rows)."""
    n = vv.n
    ids = np.empty(n, np.int64)
    bad_vec = 0
    for r in range(n):
        o = row_offset(vv, r)
        ids[r] = vv.i64[(o + vv.id_offset) >> 3]
        if check_vectors:
            p = o // vv.vec.itemsize
            for e in range(vv.dim):
                if not np.isfinite(vv.vec[p + e]):
                    bad_vec += 1
                    break
    return ids, bad_vec


def _counts_in(keys: np.ndarray, universe: np.ndarray) -> tuple[np.ndarray, int]:
    """(occurrences of each of sorted ``universe`` in ``keys``, keys not in it)."""
    pos = np.searchsorted(universe, keys)
    pc = np.minimum(pos, max(universe.size - 1, 0))
    hit = (pos < universe.size) & (universe[pc] == keys) if universe.size else np.zeros(keys.shape, bool)
    return np.bincount(pc[hit], minlength=universe.size), int((~hit).sum())


def _check_crcs(index, problems: list[str]) -> int:
    recorded = index.attrs.get("data_crc32c")
    if not isinstance(recorded, dict):
        problems.append("no shard checksums recorded (index built by an older spann)")
        return 0
    checked = _check_crc_record(index, recorded, "", ("postings", "vectors", "idmap", "label_lists"), problems)
    upd = index.attrs.get("updates_crc32c")
    if index.generation > 1:
        if not isinstance(upd, dict):
            problems.append("no checksums recorded for the current generation's delta")
        else:
            checked += _check_crc_record(index, upd, index.attrs["generation_path"], ("delta", "delta_labels"),
                                         problems)
    return checked


def _check_crc_record(index, recorded: dict, prefix: str, names: tuple, problems: list[str]) -> int:
    checked = 0
    for name, shards in recorded.items():
        if name not in names or not isinstance(shards, dict):
            problems.append(f"bad checksum record for {name!r}")
            continue
        for s, rec in shards.items():
            if not (isinstance(rec, list) and len(rec) == 2 and all(isinstance(v, int) for v in rec)
                    and str(s).isdigit()):
                problems.append(f"bad checksum record for {name}/c/{s}")
                continue
            nbytes, want = rec
            path = os.path.join(str(index.path), prefix, name, "c", str(int(s)))
            h = google_crc32c.Checksum()
            try:
                with open(path, "rb") as fh:
                    left = nbytes
                    while left > 0:
                        b = fh.read(min(left, 8 << 20))
                        if not b:
                            break
                        h.update(b)
                        left -= len(b)
            except OSError as e:
                problems.append(f"{name}/c/{s}: {e.strerror}")
                continue
            if left > 0 or int.from_bytes(h.digest(), "big") != want:
                problems.append(f"{name}/c/{s}: data checksum mismatch")
            checked += 1
    return checked


def verify_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the whole index at ``path`` and check it (see the module docstring). Returns a
    summary dict; raises :class:`~spann.errors.IndexCorruptError` listing the problems found."""
    problems: list[str] = []
    with Index(path) as index:
        if index.read_only:
            raise ParameterError(f"{path}: verify reads a local index directory (export a verified one)")
        n = index.n
        shards = _check_crcs(index, problems)
        lay = index.layout
        pv = index._base.postings.view  # the base lists as built (retired ones included)
        floats = np.dtype(lay.dtype).kind == "f"
        all_ids = index._base.idmap.all_ids()
        if np.any(all_ids[1:] <= all_ids[:-1]) or (all_ids.size and all_ids[0] < 0):
            problems.append("the id map is not sorted or holds duplicate or negative ids")
        locs = np.array(index._base.idmap.view[1:2 * n:2])
        top = n - 1 if lay.coded else pv.u8.shape[0] - lay.dim * np.dtype(lay.dtype).itemsize
        if locs.size and (locs.min() < 0 or locs.max() > top):
            problems.append("the id map holds locations outside the index")
        keys, bad_vec, bad_aux = _scan_lists(pv, bool(floats and not lay.coded), lay.codec.verify_factors)
        if lay.coded:
            bad_id = int(((keys < 0) | (keys >= n)).sum())
            seen = np.bincount(keys[(keys >= 0) & (keys < n)], minlength=n)
            what = f"store rows outside 0..{n - 1}"
        else:
            seen, bad_id = _counts_in(keys, all_ids)
            what = "ids that are not in the id map"
        if bad_id:
            problems.append(f"{bad_id} posting entries hold {what}")
        if bad_vec:
            problems.append(f"{bad_vec} posting lists hold NaN or Inf vectors")
        if bad_aux:
            problems.append(f"{bad_aux} posting entries have invalid rabitq factors")
        lost = int((seen == 0).sum())
        if lost:
            problems.append(f"{lost} vectors are in no posting list")
        snap = index._snap
        live_ids = np.union1d(np.setdiff1d(all_ids, snap.dead_ids), np.setdiff1d(snap.delta_ids, snap.delta_dead))
        if live_ids.size != len(index):
            problems.append(f"the metadata says {len(index)} live vectors, the index holds {live_ids.size}")
        top = max(int(all_ids.max()) if all_ids.size else -1, int(snap.delta_ids.max()) if snap.delta_ids.size else -1)
        next_id = int(index.attrs.get("next_id", 0))
        if top >= next_id and next_id <= MAX_ID:
            problems.append(f"next automatic id {next_id} is not above the largest stored id {top}")
        summary = {"path": str(index.path), "vectors": n, "live": len(index), "lists": int(pv.counts.shape[0]),
                   "entries": int(pv.counts.sum()), "shards_checksummed": shards, "generation": index.generation,
                   "root_checksummed": index.attrs.get("format_version") not in (3, 4)}
        if index.vectors is not None:
            sids, svec = _scan_store(index.vectors.view, bool(floats))
            sseen, sbad = _counts_in(sids, all_ids)
            if sbad:
                problems.append(f"{sbad} vector-store rows hold ids that are not in the id map")
            missing, multi = int((sseen == 0).sum()), int((sseen > 1).sum())
            if missing or multi:
                problems.append(f"vector store: {missing} ids missing, {multi} stored more than once")
            if svec:
                problems.append(f"{svec} vector-store rows hold NaN or Inf")
            summary["store_rows"] = n
        if snap.delta_ids.size:
            dkeys, dvec, _ = _scan_lists(snap.dv, bool(floats), False)
            dseen, dbad = _counts_in(dkeys, snap.delta_ids)
            if dbad or int((dseen == 0).sum()):
                problems.append(f"delta lists: {dbad} entries with unknown ids, {int((dseen == 0).sum())} delta ids "
                                f"in no list")
            if dvec:
                problems.append(f"{dvec} delta lists hold NaN or Inf vectors")
            summary["delta_vectors"] = int(snap.delta_ids.size)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise IndexCorruptError(f"{path}: {problems[0]}{more}")
    return {**summary, "ok": True}
