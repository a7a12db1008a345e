"""Assignments spilled to disk: the build's external group-by of (head, vector) pairs.

The assignment stage produces ~R (head, distance, id) records per vector, too many to hold in
RAM at 10^8-10^9 vectors. :class:`AssignmentRuns` appends them, block by block, to one file per
*bucket* of consecutive heads (16-byte records); the posting writer then reads one bucket at a
time, sorted by (head, distance), while it fills the shards whose heads the bucket holds
(lists are packed in head order, so a shard's heads lie in one or two buckets). Per vector
only its nearest head stays, in a memory-mapped ``primary.npy``. Memory: the per-head counts,
one block's records, and one bucket.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numba
import numpy as np

__all__ = ["RECORD", "AssignmentRuns", "buckets_for"]

RECORD = np.dtype([("h", "<i4"), ("d", "<f4"), ("id", "<i8")])  #: one (head, distance, id) record
_BUCKET_COST = 48  #: bytes of RAM per record while a bucket is loaded and sorted


def buckets_for(n: int, replicas: int, budget_bytes: int) -> int:
    """Buckets so that loading one costs at most ``budget_bytes``."""
    return max(1, -(-n * replicas * _BUCKET_COST // max(budget_bytes, 1 << 20)))


class AssignmentRuns:
    """Assignment records of ``n`` vectors to ``n_heads`` heads under ``directory``.

    Write with :meth:`add_block` then :meth:`finish`; read with :meth:`lists` (the entries of
    a set of heads, each list nearest first) and :meth:`lists_of_ids`. ``counts`` int64 (H,),
    ``replica_histogram`` int64 (R + 1,) and ``primary`` int32 (n,) (memory-mapped) describe
    the whole assignment.
    """

    def __init__(self, directory: Path, n: int, n_heads: int, n_buckets: int, replica_count: int,
                 create: bool = True, part: tuple[int, int, int] | None = None):
        self.dir = Path(directory)
        self.n, self.H = n, n_heads
        self.n_buckets = max(1, min(n_buckets, n_heads))
        self.bounds = np.linspace(0, n_heads, self.n_buckets + 1).astype(np.int64)
        self.part = part
        self._offset = 0
        self._run = uuid.uuid4().hex[:12]
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
            for b in range(self.n_buckets):
                open(self._path(b), "wb").close()
            self.counts = np.zeros(n_heads, np.int64)
            self.replica_histogram = np.zeros(replica_count + 1, np.int64)
            if part is None:
                self.primary = np.lib.format.open_memmap(self.dir / "primary.npy", "w+", np.int32, (n,))
            else:  # a task's rows part[1] .. part[2] (see :meth:`finish_part`)
                self._offset = part[1]
                self.primary = np.zeros(part[2] - part[1], np.int32)
        self._cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _path(self, b: int) -> Path:
        if self.part is not None:  # (this run's own name: a task run twice at once writes two files)
            return self.dir / f"bucket-{b:05d}.part-{self.part[0]:06d}.bin.{self._run}.tmp"
        return self.dir / f"bucket-{b:05d}.bin"

    def _files(self, b: int) -> list[Path]:
        """Files holding bucket b's records: the local build's one, or every task's part."""
        one = self.dir / f"bucket-{b:05d}.bin"
        return ([one] if one.exists() else []) + sorted(self.dir.glob(f"bucket-{b:05d}.part-*.bin"))

    def _records(self, b: int) -> np.ndarray:
        fs = self._files(b)
        return np.concatenate([np.fromfile(f, dtype=RECORD) for f in fs]) if fs else np.zeros(0, RECORD)

    # -- a distributed assignment: one part per task ---------------------------------------------
    def finish_part(self) -> tuple[np.ndarray, np.ndarray]:
        """Publish a task's part (its bucket files and primary heads renamed into place, so a
        task run again replaces them whole); returns its (counts, replica histogram)."""
        t, a, b = self.part
        tmp = self.dir / f"primary.part-{t:06d}.{self._run}.tmp.npy"
        np.save(tmp, self.primary, allow_pickle=False)
        os.replace(tmp, self.dir / f"primary.part-{t:06d}.npy")
        for k in range(self.n_buckets):
            os.replace(self._path(k), self.dir / f"bucket-{k:05d}.part-{t:06d}.bin")
        return self.counts, self.replica_histogram

    @classmethod
    def from_parts(cls, directory: Path, n: int, n_heads: int, n_buckets: int, replica_count: int,
                   parts: list[tuple[int, int, int]], results: list[tuple[np.ndarray, np.ndarray]]) -> "AssignmentRuns":
        """The whole assignment from the tasks' parts (``parts`` (task, start, stop) covering
        0..n, ``results`` their :meth:`finish_part` values)."""
        r = cls(directory, n, n_heads, n_buckets, replica_count, create=False)
        r.counts = np.sum([c for c, _ in results], axis=0).astype(np.int64)
        r.replica_histogram = np.sum([h for _, h in results], axis=0).astype(np.int64)
        r.primary = np.lib.format.open_memmap(r.dir / "primary.npy", "w+", np.int32, (n,))
        for t, a, b in parts:
            f = r.dir / f"primary.part-{t:06d}.npy"
            r.primary[a:b] = np.load(f, allow_pickle=False)
            f.unlink()
        r.finish()
        return r

    # -- writing -------------------------------------------------------------------------------
    def add_block(self, start: int, rep_i: np.ndarray, rep_d: np.ndarray, cnt: np.ndarray) -> None:
        """Records of vectors ``start .. start + len(rep_i)`` (their replica heads, -1 padded)."""
        self.replica_histogram += np.bincount(cnt, minlength=self.replica_histogram.shape[0])
        self.primary[start - self._offset:start - self._offset + rep_i.shape[0]] = rep_i[:, 0]
        ok = rep_i >= 0
        rec = np.empty(int(ok.sum()), RECORD)
        rec["h"] = rep_i[ok]
        rec["d"] = rep_d[ok]
        rec["id"] = np.broadcast_to(np.arange(start, start + rep_i.shape[0], dtype=np.int64)[:, None],
                                    rep_i.shape)[ok]
        self.counts += np.bincount(rec["h"], minlength=self.H)
        b = np.searchsorted(self.bounds, rec["h"], side="right") - 1
        order = np.argsort(b, kind="stable")
        rec, b = rec[order], b[order]
        edges = np.searchsorted(b, np.arange(self.n_buckets + 1))
        for k in range(self.n_buckets):
            if edges[k + 1] > edges[k]:
                with open(self._path(k), "ab") as fh:
                    rec[edges[k]:edges[k + 1]].tofile(fh)

    def finish(self) -> None:
        self.primary.flush()
        np.save(self.dir / "counts.npy", self.counts, allow_pickle=False)
        np.save(self.dir / "replica_histogram.npy", self.replica_histogram, allow_pickle=False)

    @classmethod
    def open(cls, directory: Path, n: int, n_heads: int, n_buckets: int, replica_count: int) -> "AssignmentRuns":
        """The runs a finished assignment left in ``directory`` (a resumed build)."""
        r = cls(directory, n, n_heads, n_buckets, replica_count, create=False)
        r.counts = np.load(r.dir / "counts.npy", allow_pickle=False)
        r.replica_histogram = np.load(r.dir / "replica_histogram.npy", allow_pickle=False)
        # copy-on-write, not read-only: kernels then run the specializations of a fresh build's
        # writable map (numba compiles read-only arrays apart); nothing writes a finished run
        r.primary = np.load(r.dir / "primary.npy", mmap_mode="c", allow_pickle=False)
        return r

    # -- reading -------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def _bucket(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bucket b sorted by (head, distance): (heads int32, ids int64, list starts int64)."""
        if self._cache is None or self._cache[0] != b:
            rec = self._records(b)
            order = np.lexsort((rec["id"], rec["d"], rec["h"]))
            h = np.ascontiguousarray(rec["h"][order])
            ids = np.ascontiguousarray(rec["id"][order])
            del rec, order
            lo, hi = int(self.bounds[b]), int(self.bounds[b + 1])
            starts = np.concatenate([[0], np.cumsum(self.counts[lo:hi])]).astype(np.int64)
            if starts[-1] != ids.shape[0]:
                raise RuntimeError(f"{self.dir}: bucket {b} holds {ids.shape[0]} records, the counts say {starts[-1]}")
            self._cache = (b, h, ids, starts)
        return self._cache[1], self._cache[2], self._cache[3]

    def lists(self, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entries of ``heads`` (ascending is cheapest): (head int32 (e,), id int64 (e,)), list
        after list in the order given, each nearest first."""
        heads = np.asarray(heads, np.int64)
        out_h, out_i = [], []
        bk = np.searchsorted(self.bounds, heads, side="right") - 1
        for b in np.unique(bk):
            h, ids, starts = self._bucket(int(b))
            sel = heads[bk == b] - self.bounds[b]
            idx = _ranges(starts, sel)
            out_h.append(h[idx])
            out_i.append(ids[idx])
        if not out_h:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        hh, ii = np.concatenate(out_h), np.concatenate(out_i)
        if len(out_h) > 1:  # restore the caller's head order (stable: lists stay nearest first)
            rank = np.empty(self.H, np.int64)
            rank[heads] = np.arange(heads.shape[0])
            o = np.argsort(rank[hh], kind="stable")
            hh, ii = hh[o], ii[o]
        return hh, ii

    def lists_of_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, head) record of the sorted ``ids``: (ids int64, heads int32), by id."""
        e_id, e_h = [], []
        for b in range(self.n_buckets):
            rec = self._records(b)
            hit = np.isin(rec["id"], ids)
            e_id.append(rec["id"][hit])
            e_h.append(rec["h"][hit])
        i, h = np.concatenate(e_id), np.concatenate(e_h)
        o = np.lexsort((h, i))
        return i[o], h[o]


@numba.njit(cache=True, nogil=True)
def _ranges(starts, sel):
    """Concatenated index ranges [starts[s], starts[s + 1]) for s in ``sel``."""
    total = 0
    for s in sel:
        total += starts[s + 1] - starts[s]
    out = np.empty(total, np.int64)
    e = 0
    for s in sel:
        for j in range(starts[s], starts[s + 1]):
            out[e] = j
            e += 1
    return out
