"""Full check of an index's on-disk data (``spann verify``): what opening does not read.

Opening validates metadata and the in-RAM arrays (checksums, shapes, ranges). The posting
array and the vector store are only mapped, so damage there shows up as wrong results at
search time. :func:`verify_index` reads all of it once:

- every shard's crc32c against the one recorded at build time;
- every posting entry: id (full) or store row (coded) in ``[0, n)``; full float vectors finite;
  rabitq factors finite with ``0 < <o_bar, u> <= 1``;
- every vector present in at least one list (nothing lost);
- coded: every store row's id in ``[0, n)`` and each id stored exactly once, vectors finite.
"""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np

from spann.errors import IndexCorruptError
from spann.postings import aux_offset, codes_offset, entry_id
from spann.vector_store import row_offset

__all__ = ["verify_index"]


@numba.njit(cache=True, nogil=True)
def _scan_lists(pv, n, check_vectors, rabitq):
    """(entries per id/row int64 (n,), bad ids, non-finite vectors, bad rabitq factors)."""
    seen = np.zeros(n, np.int64)
    bad_id = 0
    bad_vec = 0
    bad_aux = 0
    isz = pv.vec.itemsize
    for h in range(pv.counts.shape[0]):
        c = pv.counts[h]
        o = pv.offsets[h]
        for t in range(c):
            r = entry_id(pv, o, t)
            if r < 0 or r >= n:
                bad_id += 1
            else:
                seen[r] += 1
        if check_vectors:
            po = (o + codes_offset(pv, c)) // isz
            for e in range(c * pv.dim):
                if not np.isfinite(pv.vec[po + e]):
                    bad_vec += 1
                    break
        if rabitq:
            ao = (o + aux_offset(pv, c)) >> 2
            for t in range(c):
                nr = pv.f32[ao + pv.aux_floats * t]
                a = pv.f32[ao + pv.aux_floats * t + 1]
                if not (np.isfinite(nr) and nr >= 0.0 and a > 0.0 and a <= 1.0 + 1e-5):
                    bad_aux += 1
    return seen, bad_id, bad_vec, bad_aux


@numba.njit(cache=True, nogil=True)
def _scan_store(vv, check_vectors):
    """(rows per stored id int64 (n,), bad ids, non-finite rows)."""
    n = vv.n
    seen = np.zeros(n, np.int64)
    bad_id = 0
    bad_vec = 0
    for r in range(n):
        o = row_offset(vv, r)
        i = vv.i64[(o + vv.id_offset) >> 3]
        if i < 0 or i >= n:
            bad_id += 1
        else:
            seen[i] += 1
        if check_vectors:
            p = o // vv.vec.itemsize
            for e in range(vv.dim):
                if not np.isfinite(vv.vec[p + e]):
                    bad_vec += 1
                    break
    return seen, bad_id, bad_vec


def _check_crcs(index, problems: list[str]) -> int:
    import google_crc32c
    recorded = index.attrs.get("data_crc32c")
    if not isinstance(recorded, dict):
        problems.append("no shard checksums recorded (index built by an older spann)")
        return 0
    checked = 0
    for name, shards in recorded.items():
        if name not in ("postings", "vectors") or not isinstance(shards, dict):
            problems.append(f"bad checksum record for {name!r}")
            continue
        for s, rec in shards.items():
            if not (isinstance(rec, list) and len(rec) == 2 and all(isinstance(v, int) for v in rec)
                    and str(s).isdigit()):
                problems.append(f"bad checksum record for {name}/c/{s}")
                continue
            nbytes, want = rec
            path = os.path.join(str(index.path), name, "c", str(int(s)))
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
    from spann.index import Index
    problems: list[str] = []
    with Index(path) as index:
        n = index.n
        shards = _check_crcs(index, problems)
        lay = index.layout
        pv = index.store.view
        floats = np.dtype(lay.dtype).kind == "f"
        seen, bad_id, bad_vec, bad_aux = _scan_lists(pv, np.int64(n), bool(floats and not lay.coded),
                                                     lay.encoding == "rabitq")
        if bad_id:
            problems.append(f"{bad_id} posting entries hold ids outside 0..{n - 1}")
        if bad_vec:
            problems.append(f"{bad_vec} posting lists hold NaN or Inf vectors")
        if bad_aux:
            problems.append(f"{bad_aux} posting entries have invalid rabitq factors")
        lost = int((seen == 0).sum())
        if lost:
            problems.append(f"{lost} vectors are in no posting list")
        summary = {"path": str(index.path), "vectors": n, "lists": int(index.counts.shape[0]),
                   "entries": int(index.counts.sum()), "shards_checksummed": shards}
        if index.vectors is not None:
            sseen, sbad, svec = _scan_store(index.vectors.view, bool(floats))
            if sbad:
                problems.append(f"{sbad} vector-store rows hold ids outside 0..{n - 1}")
            missing, multi = int((sseen == 0).sum()), int((sseen > 1).sum())
            if missing or multi:
                problems.append(f"vector store: {missing} ids missing, {multi} stored more than once")
            if svec:
                problems.append(f"{svec} vector-store rows hold NaN or Inf")
            summary["store_rows"] = n
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise IndexCorruptError(f"{path}: {problems[0]}{more}")
    return {**summary, "ok": True}
