"""One generation of an open index as searches read it (:class:`Snapshot`), over the readers
of the parts a build writes once (:class:`BaseReaders`)."""

from __future__ import annotations

import numpy as np

from spann.errors import IndexCorruptError
from spann.format.layout import BRIDGE_PAGES, PAGE, delta_layout, full_entries
from spann.heads.graph import adjacency, entry_seeds, no_walk_codes, walk_codes
from spann.heads.groups import head_groups
from spann.io.idmap import IdMap
from spann.io.index_files import IndexFiles
from spann.io.postings import LocalPostings, make_view
from spann.io.vector_store import LocalVectors
from spann.search.views import HeadIndex, head_index

__all__ = ["Snapshot", "BaseReaders", "empty_view"]


class Snapshot:
    """One generation of an index as searches read it (immutable once built): heads, graph,
    the base lists' directory (lists replaced by a split read as empty), tombstones, and the
    delta and label lists. A search takes the current snapshot once; an update installs a
    new one; the old one's maps go when its last search ends."""

    def __init__(self, f: IndexFiles, base: "BaseReaders", root: str):
        self.generation = int(f.attrs.get("generation", 1))
        self.build_id = f.build_id
        self.heads, self.entries = f.heads, f.entries
        self.graph = adjacency(f.neighbors)  # searches walk it unpadded
        self.degree = int(f.neighbors.shape[1])
        self.seeds = entry_seeds(self.heads, self.entries)  # many entries: a tree of them
        self.groups = head_groups(self.heads, f.head_groups)  # searches scan these when there are any
        no_groups = self.groups.centroids.shape[0] == 0
        self.walk = walk_codes(self.heads) if no_groups else no_walk_codes(self.heads.shape[1])
        # the single-query kernel compiles only its kind of head search (no groups: None); batches
        # select with the type the build's pruner training compiled for both kinds
        self.hx = head_index(heads=self.heads, walk=self.walk, neighbors=self.graph, groups=self.groups,
                             entries=self.seeds.entries, seeding=self.seeds.groups)
        self.hx_batch = HeadIndex(heads=self.heads, walk=self.walk, neighbors=self.graph, groups=self.groups,
                                  entries=self.seeds.entries, seeding=self.seeds.groups)
        self.kernels: dict = {}  # compiled entry points of the single-query kernel (SearchPlanner.search)
        self.single: dict = {}  # (params, k, rerank factor) -> (entry point, arguments): the unfiltered single query
        self.pruner = f.pruner
        H = self.heads.shape[0]
        self.offsets = f.offsets
        self.orig_counts, self.base_live, self.split_floor = f.counts, f.base_live, f.split_floor
        built = base.postings.view.counts  # the lists the posting array was mapped for
        hb = min(built.shape[0], f.counts.shape[0])
        if not np.array_equal(f.counts[:hb], built[:hb]) or np.any(f.counts[hb:] != 0):
            raise IndexCorruptError(f"{root}: the generation's base list counts differ from the posting array's")
        # lists retired by a split read as empty (an index without splits shares the stored counts)
        self.counts = f.counts if f.base_live.all() else (f.counts * (f.base_live > 0)).astype(np.int32)
        self._layout = f.layout
        nb = f.layout.list_bytes_array(self.counts)  # checked here, recomputed where needed: 8 bytes per head
        self._direct_pages = None  # see direct_list_bytes
        if np.any((self.counts > 0) & ((f.offsets < 0) | (f.offsets + nb > base.postings.mapped.total))) or \
                np.any(f.base_live > 1):
            raise IndexCorruptError(f"{root}: a posting list lies outside the posting array")
        self.pv = base.postings.view._replace(offsets=np.ascontiguousarray(f.offsets),
                                              counts=np.ascontiguousarray(self.counts))
        self.dead_keys, self.dead_ids, self.delta_dead = f.dead_keys, f.dead_ids, f.delta_dead
        self.live, self.next_id = f.live, f.next_id
        self.labels = f.labels
        self.delta_layout = delta_layout(f.layout)
        self._readers = []
        self.delta_ids = np.zeros(0, np.int64)
        self.delta_locs = np.zeros(0, np.int64)
        if f.delta is not None:
            r = LocalPostings(f.store, root, f.delta_path, f.delta["offsets"], f.delta["counts"], self.delta_layout,
                              f.geometry.get(f.delta_path))
            self._readers.append(r)
            self.dv = r.view
            self.delta_ids, self.delta_locs = f.delta["ids"], f.delta["locs"]
        else:
            self.dv = empty_view(H, self.delta_layout)
        #: delta lists exist (an update added vectors): batches scan them (without, their kernel is not even compiled)
        self.has_delta = f.delta is not None
        self.lv = self.dlv = None
        self.delta_reader = self._readers[0] if self._readers else None
        self.dlabel_reader = None
        if f.labels is not None:
            V = f.labels["values"].shape[0]
            ll = full_entries(f.layout.dim, f.layout.dtype)
            if base.label_lists is not None:
                lc = f.labels["list_counts"]
                lb = ll.list_bytes_array(lc)
                lo = f.labels["offsets"]
                if np.any((lc > 0) & ((lo < 0) | (lo + lb > base.label_lists.mapped.total))) or np.any(lc < 0):
                    raise IndexCorruptError(f"{root}: a label list lies outside the label-list array")
                self.lv = base.label_lists.view._replace(offsets=np.ascontiguousarray(f.labels["offsets"]),
                                                         counts=np.ascontiguousarray(lc))
            else:
                self.lv = empty_view(V, ll)
            if f.delta_labels_path is not None:
                r = LocalPostings(f.store, root, f.delta_labels_path, f.labels["delta_offsets"],
                                  f.labels["delta_counts"], ll, f.geometry.get(f.delta_labels_path))
                self._readers.append(r)
                self.dlabel_reader = r
                self.dlv = r.view
            else:
                self.dlv = empty_view(V, ll)

    @property
    def neighbors(self) -> np.ndarray:
        """The head graph padded, int32 (H, R), -1 after each head's neighbours (a new array)."""
        return self.graph.padded(self.degree)

    def direct_list_bytes(self, n: int) -> int:
        """Buffer bytes a direct reader needs for any n lists (the n largest, in whole pages,
        with one more for a list straddling a page and BRIDGE_PAGES for a bridged gap)."""
        if self._direct_pages is None:
            nb = self._layout.list_bytes_array(self.counts)
            pages = np.where(nb > 0, -(-nb // PAGE) + 1 + BRIDGE_PAGES, 0)
            self._direct_pages = np.cumsum(np.sort(pages)[::-1])
        n = min(n, self._direct_pages.shape[0])
        return PAGE * max(int(self._direct_pages[n - 1]) if n else 0, 1)

    def ram_bytes(self) -> int:
        """Bytes this generation holds in RAM: heads, graph, entry rows, head groups, list
        directories, tombstones, the delta's id directory and the label directory (nothing per
        base vector), each array once. Not counted: the zero-filled arrays of an index no update
        has touched (the empty delta's directory, the split sizes), which no search reads, so
        their pages are never made resident."""
        g = self.groups
        eg = self.seeds.groups
        parts = [self.heads, self.walk.u8, self.graph.ptr, self.graph.ids, self.entries, eg.rows, eg.centers, eg.starts,
                 eg.entries, getattr(self.seeds, "norms", self.entries[:0]), getattr(self.seeds, "cnorms", eg.starts),
                 g.perm, g.starts, g.centroids, g.u8, g.rows, g.norms, self.counts, self.orig_counts, self.base_live,
                 self.offsets, self.pv.offsets, self.pv.counts, self.dead_keys, self.dead_ids, self.delta_dead,
                 self.delta_ids, self.delta_locs]
        if self.has_delta:
            parts += [self.dv.offsets, self.dv.counts]
        if self.generation > 1:
            parts.append(self.split_floor)
        if self.labels is not None:
            parts += list(self.labels.values())
        if self._direct_pages is not None:  # direct reads' buffer sizes (made by the first direct search)
            parts.append(self._direct_pages)
        return int(sum(a.nbytes for a in {id(a): a for a in parts}.values()))

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers = []

    def __del__(self) -> None:
        self.close()


def empty_view(n_lists: int, layout):
    return make_view(np.zeros(16, np.uint8), np.zeros(n_lists, np.int64), np.zeros(n_lists, np.int32), layout,
                     prefetchable=False)


class BaseReaders:
    """The readers of the parts a build writes once (posting array, vector store, id map,
    label lists), shared by every generation."""

    def __init__(self, f: IndexFiles, root: str):
        self.postings = self.vectors = self.idmap = self.label_lists = None
        try:
            self.postings = LocalPostings(f.store, root, f.postings_path, f.offsets, f.counts, f.layout,
                                          f.geometry.get(f.postings_path))
            if f.layout.coded:
                self.vectors = LocalVectors(f.store, root, f.vectors_path, f.store_layout,
                                            f.geometry.get(f.vectors_path))
            if not self.postings.fetched and (self.vectors is None or not self.vectors.fetched):
                # (fetched indexes are read-only: no id lookups)
                self.idmap = IdMap(f.store, root, f.idmap_path, int(f.attrs["n"]), f.geometry.get(f.idmap_path))
            if f.label_lists_path is not None:
                ll = full_entries(f.layout.dim, f.layout.dtype)
                self.label_lists = LocalPostings(f.store, root, f.label_lists_path, f.labels["offsets"],
                                                 f.labels["list_counts"], ll, f.geometry.get(f.label_lists_path))
        except BaseException:
            self.close()
            raise

    def readers(self, snap: Snapshot) -> list:
        """Every byte-array reader a search of ``snap`` may read: base postings, vector store,
        label lists and the generation's delta readers."""
        return [r for r in (self.postings, self.vectors, self.label_lists, *snap._readers) if r is not None]

    def close(self) -> None:
        for r in (self.postings, self.vectors, self.idmap, self.label_lists):
            if r is not None:
                r.close()
        self.postings = self.vectors = self.idmap = self.label_lists = None
