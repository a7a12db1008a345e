"""Updates of a built index: add, delete, and list splits, SPFresh's way; each batch is one
new *generation* of the index, switched in atomically.

State of a generation (``gen-NNNNNN/`` inside the index, named by the root ``zarr.json``):

- the head index (heads, graph), grown by splits;
- the base lists' directory and ``base_live`` (a split retires its base list);
- tombstones: ``dead_keys`` (what the base lists store: ids for full vectors, vector-store rows
  for coded postings) and ``dead_ids``, both sorted; searches skip them;
- the *delta*: every vector added since the build (or moved by a split), full precision, in
  variable-length lists per head under the build's closure and RNG rules (whole vectors: no SOAR),
  plus the label lists of its rare labels.

An insert goes to its nearest heads' delta lists. A list (base + delta) grown past
``split_factor`` times the build's mean length is split: 2-means of its live vectors, the old
head moves to one centre and a new head (linked into the head graph) takes the other, the
list's vectors go to the nearer half (and to the other under the closure and RNG rules; their
other lists keep them), and delta vectors
of the neighbouring lists that are now nearer to a new centre gain a replica there. A deleted
id is tombstoned (in the base lists, and in the delta until the next batch that rewrites the
delta drops it); base tombstones stay until a rebuild (a vector's replicas in other lists are
not known without a scan).

Durability and atomicity: a batch writes the whole new generation directory, fsyncs it, then
replaces the root ``zarr.json`` (write + rename + fsync, sealed with its checksum by
:func:`spann.io.index_files.write_root`, through
:class:`spann.io.index_writer.GenerationWriter`): a crash before the rename leaves the previous
generation current (the orphan directory and temporary root file are removed by the next
update), after it the new one. Writers take an exclusive lock file; readers never block.
Searches in flight keep the generation they started with; other processes pick up a new one
at their next call.

Automatic ids (``add`` without ids) start above the largest id stored (base id map and delta),
whatever ``next_id`` says, and are checked against the live ids before they are used.

Cost: each batch rewrites the delta (it grows with the vectors added since the build; a
rebuild folds it into the base).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np

from spann.datasets.formats import check_finite
from spann.errors import DataError, IndexCorruptError, QueryError
from spann.format.labels import check_labels
from spann.format.layout import delta_layout, full_entries
from spann.format.list_writer import pack_entries
from spann.heads.assign import assign_block
from spann.heads.compact import as_head_dtype, to_grid
from spann.heads.graph import beam_search, entry_seeds, no_walk_codes
from spann.heads.groups import group_of_heads, nearest_group
from spann.io.idmap import MAX_ID, check_ids, lookup_sorted
from spann.io.index_files import read_root
from spann.io.index_writer import GenerationWriter, writer_lock
from spann.io.postings import codes_offset, labels_start

__all__ = ["add", "delete", "locate"]


# -- reading entries back ------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _read_lists(pv, lists):
    """Entries of ``lists``: (list index int64 (e,), ids or rows int64 (e,), labels int32 (e, L),
    codes uint8 (e, B))."""
    total = 0
    for h in lists:
        total += pv.counts[h]
    L = pv.label_width
    B = pv.code_bytes
    li = np.empty(total, np.int64)
    ids = np.empty(total, np.int64)
    lab = np.empty((total, L), np.int32)
    codes = np.empty((total, B), np.uint8)
    e = 0
    for h in lists:
        c = pv.counts[h]
        o = pv.offsets[h]
        lo = labels_start(pv, o, c, 0)
        co = o + codes_offset(pv, c)
        for t in range(c):
            li[e] = h
            if pv.id_bytes == 4:
                ids[e] = pv.i32[(o >> 2) + t]
            else:
                ids[e] = pv.i64[(o >> 3) + t]
            for j in range(L):
                lab[e, j] = pv.i32[lo + t * L + j]
            for j in range(B):
                codes[e, j] = pv.u8[co + t * B + j]
            e += 1
    return li, ids, lab, codes


@numba.njit(cache=True, nogil=True)
def _gather(u8, offsets, nbytes):
    out = np.empty((offsets.shape[0], nbytes), np.uint8)
    for i in range(offsets.shape[0]):
        for j in range(nbytes):
            out[i, j] = u8[offsets[i] + j]
    return out


def _store_rows(vv, rows: np.ndarray, dtype: np.dtype, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (m, dim), ids int64 (m,)) of vector-store rows."""
    off = (rows // vv.rows_per_page) * vv.page_bytes + (rows % vv.rows_per_page) * vv.row_bytes
    vec = _gather(vv.u8, off.astype(np.int64), int(dim * dtype.itemsize)).view(dtype)
    ids = _gather(vv.u8, (off + vv.id_offset).astype(np.int64), 8).view(np.int64)[:, 0]
    return vec, ids


def locate(index, snap, ids: np.ndarray, missing: str = "raise",
           vectors: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """Stored vectors of ``ids`` (int64 (m,)): (vectors (m, dim), live mask bool (m,)). Rows of
    ids that are not live are zero; with ``missing="raise"`` they raise QueryError. With
    ``vectors=False`` only the mask is computed (no vector is read)."""
    dt = index.dtype
    m = ids.shape[0]
    out = np.zeros((m, index.dim), dt) if vectors else None
    dl = lookup_sorted(snap.delta_ids, snap.delta_locs, ids)
    if snap.delta_dead.size:
        dl[np.isin(ids, snap.delta_dead)] = -1
    found = dl >= 0
    row = index.dim * dt.itemsize
    if found.any() and (dl[found].min() < 0 or dl[found].max() + row > snap.dv.u8.shape[0]):
        raise IndexCorruptError(f"{index.path}: delta locations outside the delta lists (run spann verify)")
    if vectors and found.any():
        out[found] = _gather(snap.dv.u8, dl[found], row).view(dt)
    rest = np.flatnonzero(~found)
    if rest.size:
        loc = index.base.idmap.lookup(ids[rest])
        key = loc if index.layout.coded else ids[rest]
        ok = (loc >= 0) & ~np.isin(key, snap.dead_keys)
        sel = rest[ok]
        lim = index.n if index.layout.coded else index.base.postings.view.u8.shape[0] - row
        if sel.size and loc[ok].max() > lim - (1 if index.layout.coded else 0):
            raise IndexCorruptError(f"{index.path}: id map locations out of range (run spann verify)")
        if sel.size and not vectors:
            found[sel] = True
        elif sel.size:
            if index.layout.coded:
                out[sel] = _store_rows(index.base.vectors.view, loc[ok], dt, index.dim)[0]
            else:
                out[sel] = _gather(index.base.postings.view.u8, loc[ok], index.dim * dt.itemsize).view(dt)
            found[sel] = True
    if missing == "raise" and not found.all():
        raise QueryError(f"id {int(ids[np.flatnonzero(~found)[0]])} is not in the index "
                         f"({int((~found).sum())} of {m} missing)")
    return out, found


# -- the mutable state of one batch ------------------------------------------------------------

@dataclass
class _Delta:
    """Delta entries in RAM while a batch is applied: list int64 (e,), id int64 (e,), labels
    int32 (e, L), vector (e, dim) stored dtype."""

    lists: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    vecs: np.ndarray

    def keep(self, mask: np.ndarray) -> None:
        self.lists, self.ids, self.labels, self.vecs = (self.lists[mask], self.ids[mask], self.labels[mask],
                                                         self.vecs[mask])

    def append(self, lists, ids, labels, vecs) -> None:
        self.lists = np.concatenate([self.lists, lists])
        self.ids = np.concatenate([self.ids, ids])
        self.labels = np.concatenate([self.labels, labels])
        self.vecs = np.concatenate([self.vecs, vecs])


class _Batch:
    """Everything a batch changes, loaded from the current generation."""

    def __init__(self, index, snap):
        self.index = index
        self.snap = snap
        self.head_dtype = snap.heads.dtype  # 8-bit heads (spann.heads.compact): updated as float32, stored back
        self.heads = snap.heads.astype(np.float32)
        self.neighbors = snap.neighbors  # padded: a new array
        self.entries = snap.entries
        self.offsets = snap.offsets.copy()
        self.orig_counts = snap.orig_counts.astype(np.int32).copy()  # base lists as built (padded)
        self.base_live = snap.base_live.astype(bool).copy()  # False: retired by a split
        self.dead_keys = snap.dead_keys
        self.dead_ids = snap.dead_ids
        self.delta_dead = snap.delta_dead  # deleted ids still in the delta's files
        self.graph_dirty = False  # heads/graph/base directory changed (a split)
        self._seeder = snap.seeds  # where assignment walks start; rebuilt after a split moves heads
        groups = snap.groups  # every head's group (the searches' head groups), kept for the heads a split moves
        self.group_labels = group_of_heads(groups) if groups.centroids.shape[0] else None
        self.split_floor = snap.split_floor.astype(np.int64).copy()  # sizes at which splits failed
        self.live = int(snap.live)
        self.next_id = int(snap.next_id)
        self._delta: _Delta | None = None  # read on first use: a batch of base deletes never needs it
        self.noop = False  # nothing changed: no new generation
        lab_dir = snap.labels
        self.label_values = lab_dir["values"].copy() if lab_dir is not None else np.zeros(0, np.int32)
        self.label_counts = lab_dir["counts"].copy() if lab_dir is not None else np.zeros(0, np.int64)
        self.label_listed = lab_dir["listed"].copy() if lab_dir is not None else np.zeros(0, np.uint8)
        p = index.build_params
        stats = index.attrs.get("stats", {})
        self.split_limit = max(8, int(p.split_factor * float(stats.get("posting_mean", 64))))
        self.splits = 0

    @property
    def delta(self) -> _Delta:
        """The delta entries, read back from the current generation; using them marks the delta
        as changed (it is rewritten at commit)."""
        if self._delta is None:
            ix = self.index
            dv = self.snap.dv
            li, ids, lab, codes = _read_lists(dv, np.flatnonzero(dv.counts > 0).astype(np.int64))
            e = ids.shape[0]
            self._delta = _Delta(li, ids, lab.reshape(e, ix.layout.label_width),
                                 codes.view(ix.dtype).reshape(e, ix.dim))
            if self.delta_dead.size:  # rewritten anyway: purge the delta's tombstones
                _drop_from_delta(self, self.delta_dead)
                self.delta_dead = np.zeros(0, np.int64)
        return self._delta

    def delta_counts(self) -> np.ndarray:
        H = self.heads.shape[0]
        if self._delta is None:
            c = np.zeros(H, np.int64)
            c[:self.snap.dv.counts.shape[0]] = self.snap.dv.counts
            return c
        return np.bincount(self._delta.lists, minlength=H)[:H]

    # -- head space ---------------------------------------------------------------------------
    def head_space(self, stored: np.ndarray) -> np.ndarray:
        """float32 (m, Dh) head-space rows of stored-form vectors (rotated for rabitq)."""
        ix = self.index
        x = ix.metric.head_space(stored, float(ix.attrs.get("max_norm", 0.0)))
        x = ix.layout.codec.to_head_space(x, ix.dim, ix.codebook.rotation)
        return np.ascontiguousarray(x, dtype=np.float32)

    def assign(self, xh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Replica heads of head-space rows under the build's closure and RNG rules (delta lists
        hold whole vectors, so inserts take the RNG rule even where the build took SOAR's): (rows
        into ``xh`` int64 (a,), heads int64 (a,), squared distances float32 (a,))."""
        p = self.index.build_params
        R = int(p.replica_count)
        if self._seeder is None:
            self._seeder = entry_seeds(self.heads, self.entries)
        seeds = self._seeder.for_rows(xh)
        rep_i, rep_d, _ = assign_block(xh, self.heads, self.neighbors, seeds, max(p.assign_candidates, 32),
                                       p.assign_candidates, R, np.float32(p.closure_eps), np.float32(p.rng_factor),
                                       np.float32(0.0), max(1, min(xh.shape[0], 16)))
        ok = rep_i >= 0
        rows = np.broadcast_to(np.arange(xh.shape[0])[:, None], rep_i.shape)[ok]
        return rows.astype(np.int64), rep_i[ok].astype(np.int64), rep_d[ok]

    def list_sizes(self) -> np.ndarray:
        """Entries per head now (base lists as built, tombstones included, plus delta)."""
        return self.orig_counts.astype(np.int64) * self.base_live + self.delta_counts()

    # -- splits -------------------------------------------------------------------------------
    def split_overfull(self) -> None:
        for _ in range(64):  # a split can overfill a neighbour; bounded per batch
            # a list splits when it outgrows split_factor x the build's mean, or half again its
            # own size at build time (lists born long are not split for that alone), or half again
            # the size at which a split last failed to shrink it
            sizes = self.list_sizes()
            floor = np.maximum((1.5 * self.orig_counts).astype(np.int64), (1.5 * self.split_floor).astype(np.int64))
            over = sizes - np.maximum(self.split_limit, floor)
            h = int(np.argmax(over))
            if over[h] <= 0:
                return
            if not self.split(h):
                self.split_floor[h] = sizes[h]

    def _base_members(self, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Live entries of base list h: (ids, labels, vectors)."""
        ix = self.index
        pv = self.snap.pv
        if h >= pv.counts.shape[0] or not self.base_live[h] or pv.counts[h] == 0:
            L = ix.layout.label_width
            return np.zeros(0, np.int64), np.zeros((0, L), np.int32), np.zeros((0, ix.dim), ix.dtype)
        _, keys, lab, codes = _read_lists(pv, np.array([h], np.int64))
        alive = ~np.isin(keys, self.dead_keys)
        keys, lab, codes = keys[alive], lab[alive], codes[alive]
        if ix.layout.coded:
            vec, ids = _store_rows(ix.base.vectors.view, keys, ix.dtype, ix.dim)
        else:
            vec, ids = codes.view(ix.dtype).reshape(-1, ix.dim), keys
        return ids, lab, vec

    def split(self, h: int) -> bool:
        """Split list h in two (see the module docstring). Returns False, changing nothing, when
        its vectors do not separate (duplicates, one tight cluster)."""
        d = self.delta
        b_ids, b_lab, b_vec = self._base_members(h)
        in_h = d.lists == h
        ids = np.concatenate([b_ids, d.ids[in_h]])
        lab = np.concatenate([b_lab, d.labels[in_h]])
        vec = np.concatenate([b_vec, d.vecs[in_h]])
        ids, first = np.unique(ids, return_index=True)
        lab, vec = lab[first], vec[first]
        xh = self.head_space(vec)
        c1, c2 = (to_grid(c[None], self.head_dtype)[0]
                  for c in _two_means(xh, seed=self.index.build_params.seed + self.splits))
        side = ((xh - c2) ** 2).sum(1) < ((xh - c1) ** 2).sum(1)
        if min(int(side.sum()), int((~side).sum())) < max(2, ids.shape[0] // 10):
            return False
        self.splits += 1
        self.graph_dirty = True
        self._seeder = None  # head h moves (it may be an entry)
        # list h's entries leave (its base list retires); the vectors' other lists keep theirs
        d.keep(~in_h)
        self.base_live[h] = False
        self.heads[h] = c1
        new = self.heads.shape[0]
        self.heads = np.ascontiguousarray(np.vstack([self.heads, c2[None]]))
        self.neighbors = np.vstack([self.neighbors, np.full((1, self.neighbors.shape[1]), -1, np.int32)])
        self.offsets = np.concatenate([self.offsets, [0]])
        self.orig_counts = np.concatenate([self.orig_counts, [0]]).astype(np.int32)
        self.base_live = np.concatenate([self.base_live, [True]])
        self._link(new)
        self._link(h)
        if self.group_labels is not None:  # the moved head and the new one: their nearest groups
            g = nearest_group(self.snap.groups, np.vstack([c1[None], c2[None]]))
            self.group_labels[h] = g[0]
            self.group_labels = np.concatenate([self.group_labels, g[1:]])
        # each vector to the nearer half, and to the other only when nearly as close (closure
        # 0.5 and the strict RNG rule: a split must shrink the list, whatever the build's rules)
        p = self.index.build_params
        eps, rng = min(p.closure_eps, 0.5), min(p.rng_factor, 1.0)
        d1, d2 = ((xh - c1) ** 2).sum(1), ((xh - c2) ** 2).sum(1)
        near_new = d2 < d1
        dn, df = np.minimum(d1, d2), np.maximum(d1, d2)
        both = (df <= (1 + eps) ** 2 * dn) & (rng * float(((c1 - c2) ** 2).sum()) >= df)
        m = ids.shape[0]
        to_h = ~near_new | both
        to_new = near_new | both
        rows = np.concatenate([np.flatnonzero(to_h), np.flatnonzero(to_new)])
        heads = np.concatenate([np.full(int(to_h.sum()), h), np.full(int(to_new.sum()), new)]).astype(np.int64)
        d.append(heads, ids[rows], lab[rows], vec[rows])
        self.split_floor = np.concatenate([self.split_floor, [0]])
        self.split_floor[h] = 0
        self._lire_neighbours(h, new)
        after = self.list_sizes()
        if max(after[h], after[new]) > 0.9 * m:  # it did not shrink: not again before real growth
            self.split_floor[h] = after[h]
            self.split_floor[new] = after[new]
        return True

    def _nearest_heads(self, q: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        H = self.heads.shape[0]
        vis = np.zeros(H, np.uint32)
        sel_i = np.empty(min(m, H), np.int32)
        sel_d = np.empty(min(m, H), np.float32)
        beam_search(q, self.heads, self.neighbors, self.entries, max(2 * m, 64), vis, np.uint32(1), sel_i, sel_d,
                    no_walk_codes(self.heads.shape[1]))
        ok = sel_i >= 0
        return sel_i[ok], sel_d[ok]

    def _link(self, node: int) -> None:
        """(Re)build ``node``'s out-edges from its nearest heads (RNG-pruned, as the build) and
        add the reverse edges, replacing a neighbour's farthest edge when its row is full."""
        R = self.neighbors.shape[1]
        alpha2 = float(self.index.build_params.graph_alpha) ** 2
        cand_i, cand_d = self._nearest_heads(self.heads[node], 2 * R)
        out: list[int] = []
        for c, dc in zip(cand_i, cand_d):
            if c == node:
                continue
            if not out or np.all(alpha2 * ((self.heads[out] - self.heads[c]) ** 2).sum(1) > dc):
                out.append(int(c))
                if len(out) == R:
                    break
        row = np.full(R, -1, np.int32)
        row[:len(out)] = out
        self.neighbors[node] = row
        for v in out:
            nb = self.neighbors[v]
            if node in nb:
                continue
            free = np.flatnonzero(nb < 0)
            if free.size:
                nb[free[0]] = node
                continue
            dv = ((self.heads[nb] - self.heads[v]) ** 2).sum(1)
            far = int(np.argmax(dv))
            if ((self.heads[node] - self.heads[v]) ** 2).sum() < dv[far]:
                nb[far] = node

    def _lire_neighbours(self, h: int, new: int, near: int = 8) -> None:
        """Delta vectors of the lists near the split now closer to one of its two centres than
        to their own list's head gain a replica in that centre's list (LIRE's reassignment; base
        entries stay where they are: their lists are still read by the queries near them)."""
        d = self.delta
        ns = set()
        for c in (h, new):
            ns.update(int(v) for v in self._nearest_heads(self.heads[c], near)[0])
        ns.discard(h)
        ns.discard(new)
        if not ns:
            return
        sel = np.flatnonzero(np.isin(d.lists, list(ns)))
        if sel.size == 0:
            return
        xh = self.head_space(d.vecs[sel])
        own = ((xh - self.heads[d.lists[sel]]) ** 2).sum(1)
        add_l, add_i = [], []
        for c in (h, new):
            dc = ((xh - self.heads[c]) ** 2).sum(1)
            closer = np.flatnonzero(dc < own)
            have = set(d.ids[d.lists == c].tolist())
            for e in closer:
                i = int(d.ids[sel[e]])
                if i not in have:
                    have.add(i)
                    add_l.append(c)
                    add_i.append(sel[e])
        if add_i:
            ai = np.asarray(add_i)
            d.append(np.asarray(add_l, np.int64), d.ids[ai], d.labels[ai], d.vecs[ai])


def _two_means(x: np.ndarray, seed: int, iters: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two centres of float32 rows ``x`` (Lloyd from a far-apart pair)."""
    rng = np.random.default_rng(seed)
    a = x[rng.integers(x.shape[0])]
    b = x[int(np.argmax(((x - a) ** 2).sum(1)))]
    a = x[int(np.argmax(((x - b) ** 2).sum(1)))]
    c = np.stack([a, b]).astype(np.float32)
    for _ in range(iters):
        lab = (((x - c[1]) ** 2).sum(1) < ((x - c[0]) ** 2).sum(1)).astype(np.int64)
        for j in (0, 1):
            if (lab == j).any():
                c[j] = x[lab == j].mean(0)
    return c[0].astype(np.float32), c[1].astype(np.float32)


# -- writing a generation ----------------------------------------------------------------------

def _commit(index, b: _Batch) -> None:
    """Write generation g + 1 of ``index`` from batch ``b`` and switch to it."""
    ix = index
    root = ix.path
    attrs, _ = read_root(str(root), path=str(root / "zarr.json"))  # checked again: it is what we rewrite
    if attrs.get("build_id") != b.snap.build_id or attrs.get("generation", 1) != b.snap.generation:
        raise QueryError(f"{root}: the index was rebuilt or changed under this handle; reopen it to update")
    w = GenerationWriter(root, attrs)
    H = b.heads.shape[0]
    try:
        graph = {"heads": as_head_dtype(b.heads, b.head_dtype), "neighbors": b.neighbors.astype(np.int32),
                 "entries": b.entries.astype(np.int32), "offsets": b.offsets.astype(np.int64),
                 "counts": b.orig_counts.astype(np.int32), "base_live": b.base_live.astype(np.uint8),
                 "split_floor": b.split_floor.astype(np.int64)}
        for name, arr in graph.items():
            if b.graph_dirty or name == "split_floor" or not w.has_previous(name):
                w.write_array(name, arr)
            else:  # unchanged: the new generation links the old files
                w.link_previous(name)
        w.write_array("dead_keys", np.unique(b.dead_keys).astype(np.int64))
        w.write_array("dead_ids", np.unique(b.dead_ids).astype(np.int64))
        w.write_array("delta_dead", np.unique(b.delta_dead).astype(np.int64))
        new_attrs = dict(attrs)
        for e in os.listdir(w.previous):
            if e == "head_groups" and b.graph_dirty and b.group_labels is not None:
                w.write_array(e, b.group_labels)  # every head's group, those splits moved or added included
                new_attrs.update(head_groups=int(b.snap.groups.centroids.shape[0]),
                                 head_group_labels=int(b.group_labels.shape[0]))
            elif e.startswith("code_") or e in ("pruner", "head_groups"):
                w.link_previous(e)
        if b._delta is None:  # unchanged (a batch of base deletes): the new generation links its files
            _reuse_delta(w, new_attrs)
            if ix.layout.label_width or attrs.get("label_lists_path"):
                for name in ("label_values", "label_counts", "label_listed", "label_offsets", "label_list_counts"):
                    w.link_previous(name)
        else:
            _write_delta(ix, b, w, new_attrs)
        new_attrs.update(live=int(b.live), next_id=int(b.next_id), heads_now=H,
                         splits=int(attrs.get("splits", 0)) + b.splits)
    except BaseException:
        w.abort()
        raise
    w.commit(new_attrs)  # the commit point: from here on the new generation is the index


def _write_delta(ix, b: _Batch, w: GenerationWriter, new_attrs: dict) -> None:
    """The delta lists (and the delta's label lists) of batch ``b`` into the new generation."""
    H = b.heads.shape[0]
    p = ix.build_params
    d = b.delta
    dl = delta_layout(ix.layout)
    if d.ids.size:
        xh = b.head_space(d.vecs)
        dist = ((xh - b.heads[d.lists]) ** 2).sum(1)
        order = np.lexsort((dist, d.lists))
        d.keep(order)
        codes = np.ascontiguousarray(d.vecs).view(np.uint8).reshape(d.ids.shape[0], -1)
        pk = pack_entries(dl, d.lists, H, d.ids, d.labels, None, codes, p.shard_bytes, p.chunk_bytes)
        w.write_bytes("delta", pk.data, pk.total, pk.shard_bytes, p.chunk_bytes)
        uid, first = np.unique(d.ids, return_index=True)
        w.write_array("delta_offsets", pk.offsets)
        w.write_array("delta_counts", pk.counts)
        w.write_array("delta_ids", uid)
        w.write_array("delta_locs", pk.code_pos[first])
        new_attrs["delta_path"] = f"{w.gen_name}/delta"
    else:
        new_attrs["delta_path"] = None
    new_attrs["delta_labels_path"] = None
    if ix.layout.label_width or w.attrs.get("label_lists_path"):
        V = b.label_values.shape[0]
        lab = b.snap.labels
        w.write_array("label_values", b.label_values)
        w.write_array("label_counts", np.maximum(b.label_counts, 0))
        w.write_array("label_listed", b.label_listed)
        lo = np.zeros(V, np.int64)
        lc = np.zeros(V, np.int32)
        pos = np.searchsorted(b.label_values, lab["values"])
        lo[pos], lc[pos] = lab["offsets"], lab["list_counts"]
        w.write_array("label_offsets", lo)
        w.write_array("label_list_counts", lc)
        # the delta's vectors of labels with label lists, once per vector and label
        uid, first = np.unique(d.ids, return_index=True)
        rows, cols = np.nonzero(d.labels[first] >= 0)
        v = np.searchsorted(b.label_values, d.labels[first][rows, cols])
        keep = b.label_listed[v] > 0
        rows, v = first[rows[keep]], v[keep]
        if rows.size:
            ll = full_entries(ix.dim, ix.layout.dtype)
            codes = np.ascontiguousarray(d.vecs[rows]).view(np.uint8).reshape(rows.size, -1)
            pk = pack_entries(ll, v, V, d.ids[rows], None, None, codes, p.shard_bytes, p.chunk_bytes)
            w.write_bytes("delta_labels", pk.data, pk.total, pk.shard_bytes, p.chunk_bytes)
            w.write_array("delta_label_offsets", pk.offsets)
            w.write_array("delta_label_counts", pk.counts)
            new_attrs["delta_labels_path"] = f"{w.gen_name}/delta_labels"


def _reuse_delta(w: GenerationWriter, new_attrs: dict) -> None:
    """Share the previous generation's delta arrays with the new one."""
    small = {"delta_path": ("delta_offsets", "delta_counts", "delta_ids", "delta_locs"),
             "delta_labels_path": ("delta_label_offsets", "delta_label_counts")}
    for key, arrays in small.items():
        old = w.attrs.get(key)
        new_attrs[key] = None
        if not old:
            continue
        name = old.split("/")[-1]
        new_attrs[key] = w.reuse_bytes(old, (w.attrs.get("updates_crc32c") or {}).get(name))
        for a in arrays:
            w.link_previous(a)


@contextmanager
def _batch(index):
    """Exclusive update of ``index``: the latest generation loaded, committed at the end."""
    with index.write_lock, writer_lock(index.path):
        index.reload()
        snap = index.enter()
        try:
            b = _Batch(index, snap)
            yield b
            if b.noop:
                return
            _commit(index, b)
        finally:
            index.leave()
        index.reload()  # committed: a failure to load it now is retried by the next call


def _check_vectors(index, vectors) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != index.dim:
        raise DataError(f"vectors must have shape (m, {index.dim}), got {x.shape}")
    if x.shape[0] == 0:
        raise DataError("no vectors to add (0 rows)")
    if x.dtype.kind not in "fiu":
        raise DataError(f"vectors have dtype {x.dtype}; expected float32, uint8 or int8")
    src = np.dtype(index.attrs.get("source_dtype", index.dtype))
    if src.kind in "iu" and x.dtype != src:
        if x.dtype.kind == "f" or int(x.min()) < np.iinfo(src).min or int(x.max()) > np.iinfo(src).max:
            raise DataError(f"vectors must be {src} like the index's (got {x.dtype})")
        x = x.astype(src)
    if x.dtype.kind == "f":
        check_finite(x.astype(np.float32, copy=False), "vectors")
    return index.metric.stored_rows(x).astype(index.dtype, copy=False)


def add(index, vectors, ids=None, labels=None) -> np.ndarray:
    """Insert vectors (see :meth:`spann.Index.add`); returns their ids int64 (m,)."""
    x = _check_vectors(index, vectors)
    m = x.shape[0]
    L = index.layout.label_width
    if labels is not None and not L:
        raise DataError("the index was built without labels; rebuild it with labels to add labelled vectors")
    lab = np.full((m, L), -1, np.int32)
    if labels is not None:
        got = check_labels(labels, m)
        if got.shape[1] > L:
            if np.any(got[:, L:] >= 0):
                raise DataError(f"labels: at most {L} per vector in this index (it was built with {L})")
            got = got[:, :L]
        lab[:, :got.shape[1]] = got
    with _batch(index) as b:
        if ids is None:
            start = max(b.next_id, _largest_id(index, b.snap) + 1)
            if start + m - 1 > MAX_ID:
                raise DataError(f"no automatic ids left after {start - 1}: pass ids explicitly")
            new_ids = np.arange(start, start + m, dtype=np.int64)
            _, live = locate(index, b.snap, new_ids, missing="mask", vectors=False)
            if live.any():
                raise IndexCorruptError(f"{index.path}: automatic id {int(new_ids[np.flatnonzero(live)[0]])} is "
                                        f"already in the index although it is above every stored id (id map "
                                        f"damaged? run spann verify)")
        else:
            new_ids = check_ids(ids, m)
            _, live = locate(index, b.snap, new_ids, missing="mask", vectors=False)
            if live.any():
                raise DataError(f"id {int(new_ids[np.flatnonzero(live)[0]])} is already in the index "
                                f"({int(live.sum())} of {m}); delete it first")
        rows, heads, _ = b.assign(b.head_space(x))
        b.delta.append(heads, new_ids[rows], lab[rows], x[rows])
        b.live += m
        b.next_id = min(max(b.next_id, int(new_ids.max()) + 1), MAX_ID + 1)
        if L:
            vals, cnt = np.unique(lab[lab >= 0], return_counts=True)
            allv = np.union1d(b.label_values, vals).astype(np.int32)
            counts = np.zeros(allv.shape[0], np.int64)
            listed = np.ones(allv.shape[0], np.uint8)
            pos = np.searchsorted(allv, b.label_values)
            counts[pos] = b.label_counts
            listed[pos] = b.label_listed
            counts[np.searchsorted(allv, vals)] += cnt
            fresh = ~np.isin(allv, b.label_values)  # a new label is rare until a rebuild says otherwise
            listed[fresh] = 1
            b.label_values, b.label_counts, b.label_listed = allv, counts, listed
        b.split_overfull()
    return new_ids


def _largest_id(index, snap) -> int:
    """The largest id the index stores (base id map or delta; deleted ones included), -1 if none."""
    top = -1
    if index.n:
        top = index.base.idmap.max_id()
    if snap.delta_ids.size:
        top = max(top, int(snap.delta_ids[-1]))
    return top


def delete(index, ids, missing_ok: bool = False) -> int:
    """Delete ids (see :meth:`spann.Index.delete`); returns how many were live."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise DataError(f"ids must be integers (m,), got {arr.dtype} {arr.shape}")
    if arr.size == 0:
        return 0
    ids = np.unique(arr.astype(np.int64))
    with _batch(index) as b:
        _, live = locate(index, b.snap, ids, missing="mask", vectors=False)
        if not missing_ok and not live.all():
            raise QueryError(f"id {int(ids[np.flatnonzero(~live)[0]])} is not in the index "
                             f"({int((~live).sum())} of {ids.size} missing; missing_ok=True ignores them)")
        ids = ids[live]
        if ids.size == 0:
            b.noop = True
            return 0
        in_delta = np.isin(ids, b.snap.delta_ids)
        if in_delta.any():  # tombstones; the next batch that rewrites the delta purges them
            b.delta_dead = np.union1d(b.delta_dead, ids[in_delta])
        loc = index.base.idmap.lookup(ids)
        inb = loc >= 0
        keys = loc[inb] if index.layout.coded else ids[inb]
        b.dead_keys = np.union1d(b.dead_keys, keys)
        b.dead_ids = np.union1d(b.dead_ids, ids[inb])
        b.live -= int(ids.size)
    return int(ids.size)


def _drop_from_delta(b: _Batch, ids: np.ndarray) -> None:
    d = b.delta
    gone = np.isin(d.ids, ids)
    if b.label_values.size and gone.any():
        uid, first = np.unique(d.ids[gone], return_index=True)
        labs = d.labels[gone][first]
        labs = labs[labs >= 0]
        if labs.size:
            np.subtract.at(b.label_counts, np.searchsorted(b.label_values, labs), 1)
    d.keep(~gone)
